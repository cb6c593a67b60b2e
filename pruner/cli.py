"""Command line: ``python -m pruner {prune,eval,info} ...``.

Examples::

    python -m pruner prune --model default --target 0.8 --method adaptive --criterion taylor \\
        --amplitude 0.02 --out runs/smollm-80 --report runs/smollm-80.json
    python -m pruner eval --model runs/smollm-80 --report runs/smollm-80-eval.json
    python -m pruner info --model runs/smollm-80
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from .data import CORPORA

PLUGIN_MODULES = ("eval_cli", "export_cli", "accel_cli")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a folder, a .gguf file or a hub id")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")


def _add_ppl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ppl-dataset", default="wikitext2", help=f"corpus for perplexity: {', '.join(CORPORA)} or a text file")
    p.add_argument("--ppl-split", default="test", help="split for wikitext2 (valid or test)")
    p.add_argument("--ppl-windows", default="512", help="comma-separated window lengths, e.g. 128,512")
    p.add_argument("--ppl-max-tokens", type=int, default=None, help="score only the first N tokens (default: all)")
    p.add_argument("--ppl-bos", action="store_true", help="put a BOS token in front of every window")
    p.add_argument("--no-ppl", action="store_true", help="skip perplexity")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pruner", description="Adapt-Pruner: layer-wise adaptive structural pruning")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model to a parameter target and save it")
    _add_model_args(p)
    p.add_argument("--target", type=float, required=True, help="fraction of the original parameters to keep (0-1), or a count")
    p.add_argument("--method", choices=["adaptive", "uniform", "custom"], default="adaptive")
    p.add_argument("--criterion", choices=["taylor", "magnitude", "activation"], default="taylor")
    p.add_argument("--amplitude", type=float, default=0.02, help="A in s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)")
    p.add_argument("--step", type=float, default=0.02, help="Δ: mean sparsity added per sub-step")
    p.add_argument("--max-sparsity", type=float, default=0.99)
    p.add_argument("--multiple", type=int, default=1, help="round MLP widths down to a multiple of this")
    p.add_argument("--attention", choices=["proportional", "score"], default="score",
                   help="how a layer's budget is split: proportional (attention and MLP share s_l) or score "
                        "(lowest Taylor score per parameter first, groups and channels ranked together)")
    p.add_argument("--custom", default=None, help="comma-separated final per-layer sparsities (method custom)")
    p.add_argument("--calibration", default="wiki", help=f"calibration corpus: {', '.join(CORPORA)} or a text file")
    p.add_argument("--n-windows", type=int, default=32)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder to save the pruned model in")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--report", default=None, help="JSON file for the record and the perplexities")
    _add_ppl_args(p)

    i = sub.add_parser("info", help="print a model's architecture summary (per-layer widths, parameters)")
    _add_model_args(i)
    i.set_defaults(func=cmd_info)
    p.set_defaults(func=cmd_prune)
    # Sub-commands that live in their own modules register themselves here (one file each, so that the
    # evaluation, export and training layers do not all edit this file).
    for name in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        mod.register(sub, _add_model_args, _add_ppl_args)
    return ap


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def perplexities(model, tok, args) -> list[dict]:
    from .perplexity import format_perplexity, perplexity

    out = []
    if args.no_ppl:
        return out
    for w in [int(x) for x in str(args.ppl_windows).split(",") if x.strip()]:
        r = perplexity(model, tok, args.ppl_dataset, args.ppl_split, window=w, max_tokens=args.ppl_max_tokens,
                       bos=args.ppl_bos)
        log(f"perplexity {format_perplexity(r)} in {r['seconds']:.1f} s")
        out.append(r)
    return out


def write_report(path, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1))
        log(f"report written to {path}")


def cmd_prune(args) -> int:
    from .io import describe, load_model, save_pruned
    from .prune import PruneConfig, Pruner

    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()) and not args.force:
        log(f"error: '{args.out}' exists and is not empty (use --force to overwrite)")
        return 2
    custom = [float(x) for x in args.custom.split(",")] if args.custom else None
    cfg = PruneConfig(target=args.target, method=args.method, criterion=args.criterion, amplitude=args.amplitude,
                      step=args.step, max_sparsity=args.max_sparsity, attention=args.attention, multiple=args.multiple, custom=custom,
                      calibration=args.calibration, n_windows=args.n_windows, window=args.window,
                      batch_size=args.batch_size, seed=args.seed)
    t = time.perf_counter()
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype, progress=log)
    log(f"loaded {args.model} in {time.perf_counter() - t:.1f} s: {describe(model)['params']['total']:,} parameters")
    pruner = Pruner(model, tok, cfg)
    pruner.record.source = str(args.model)
    target = pruner.target_params()
    log(f"target {target:,} parameters ({target / pruner.origin.params['total']:.1%} of the original); "
         f"calibration {cfg.n_windows} × {cfg.window} tokens of '{cfg.calibration}' per sub-step")

    def progress(rec):
        log(f"  step {rec.index + 1:3d}: {rec.params_total:,} params ({rec.fraction_of_original:.1%}), "
             f"importance {rec.seconds_importance:.1f} s, surgery {rec.seconds_surgery:.2f} s"
             + (f", calib loss {rec.calibration_loss:.3f}" if rec.calibration_loss is not None else ""))

    try:
        record = pruner.run(progress=progress)
    except KeyboardInterrupt:
        log("interrupted: the model keeps the completed sub-steps")
        record = pruner.record
        record.stopped = "cancelled"
    log(f"done: {record.final_params['total']:,} parameters "
         f"({record.final_params['total'] / record.original_params['total']:.2%} of the original) "
         f"in {len(record.steps)} sub-steps, {record.seconds_total:.1f} s")
    ppl = perplexities(model, tok, args)
    if args.out:
        save_pruned(model, tok, args.out, record=record, overwrite=args.force)
        log(f"saved to {args.out}")
    write_report(args.report, {"record": record.to_dict(), "perplexity": ppl, "model": describe(model)})
    return 0


def cmd_info(args) -> int:
    from .io import describe, load_model

    model, _ = load_model(args.model, device=args.device, dtype=args.dtype, progress=log)
    print(json.dumps(describe(model), indent=1))
    return 0


def main(argv=None) -> int:
    from .adapters import UnsupportedArchitectureError
    from .allocation import AllocationError
    from .data import DataError
    from .io import ModelLoadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UnsupportedArchitectureError, AllocationError, DataError, ModelLoadError, FileExistsError, ValueError) as exc:
        log(f"error: {exc}")
        return 2
