"""Benchmark (issues 13, 22): Adapt-Pruner against uniform, LLM-Pruner, FLAP, ShortGPT, Wanda-sp and SliceGPT, no
training.

Three steps, each writing JSON (the zero-shot and speed steps reuse ``benchmarks/eval_suite.py``)::

    # 1. prune the default model to 90 / 80 / 70 % with every method (each run from the dense model), save every
    #    model, WikiText-2 test perplexity at 128- and 512-token windows (first 32,768 tokens, no BOS)
    .venv/bin/python benchmarks/compare_methods.py prune --model default --out runs/compare/default.json
    # 2. the paper's seven tasks, 500 seeded examples each (acc_norm: ARC-E/C, HellaSwag, OBQA, PIQA; acc:
    #    WinoGrande, Social-IQa), for the dense model and every pruned one
    .venv/bin/python benchmarks/eval_suite.py --models default runs/compare/default/* --tasks paper --limit 500 \\
        --out runs/compare/default_zeroshot.json
    # 3. decode / prefill speed, every model loaded afresh five times, round-robin (a quiet machine)
    .venv/bin/python benchmarks/eval_suite.py --models default runs/compare/default/* --tasks none --efficiency \\
        --efficiency-repeats 5 --efficiency-runs 5 --out runs/compare/default_speed.json
    # the table (Markdown) and the figure (PNG through headless Chromium)
    .venv/bin/python benchmarks/compare_methods.py report runs/compare/default.json \\
        --zeroshot runs/compare/default_zeroshot.json --speed runs/compare/default_speed.json \\
        --figure assets/compare_methods.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import pruner
from pruner.evaluation import PAPER_TASKS, average
from pruner.importance import sensitivity
from pruner.importance.sensitivity import scan_budget, scan_tokens
from pruner.model.rotation import residual_width

METHODS = ("adaptive", "uniform", "llm-pruner", "flap", "shortgpt", "wanda-sp", "slicegpt")  # the default run
SHOWN = tuple(pruner.config.METHODS)  # the report: every method a result file may hold, in the library's order
TARGETS = (0.9, 0.8, 0.7)
PPL_WINDOWS = (128, 512)
PPL_TOKENS = 32_768


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def perplexities(model, tok, max_tokens: int) -> dict:
    return {str(w): pruner.PerplexityConfig(window=w, max_tokens=max_tokens).measure(model, tok)
            for w in PPL_WINDOWS}


ITERATIVE = pruner.config.INCREMENTAL_METHODS  # one run per method, saved at 90, 80 and 70 % in turn (as core_prune.py)


def _finish(model, tok, p, method: str, target: float, seconds: float, args) -> dict:
    rec = p.record
    folder = Path(args.save_dir) / f"{method}-{round(100 * target)}"
    pruner.save_pruned(model, tok, folder, record=rec, overwrite=True)
    out = {"method": method, "target": target, "folder": str(folder), "config": p.config.to_dict(),
           "params": rec.final_params["total"], "fraction": rec.final_params["total"] / rec.original_params["total"],
           "layers": len(rec.final_widths), "sub_steps": len(rec.steps), "prune_seconds": seconds,
           "peak_memory_bytes": rec.peak_memory_bytes, "peak_memory_kind": rec.peak_memory_kind,
           "widths": rec.final_widths, "decisions": [s.decision for s in rec.steps],
           "residual_width": residual_width(model),  # SliceGPT's sliced stream (else None)
           "perplexity": perplexities(model, tok, args.ppl_tokens)}
    log(f"{method} {target:.0%}: {out['fraction']:.2%} ({out['params']:,}) in {seconds:.0f} s, ppl "
        + ", ".join(f"{w}: {r['perplexity']:.2f}" for w, r in out["perplexity"].items()))
    return out


def prune_method(source: str, method: str, targets: list[float], args):
    """Every target of one method: an iterative method continues from the previous target (its wall time is
    cumulative); a one-shot baseline starts from the dense model every time."""
    model = tok = p = None
    total = 0.0
    dense: dict = {}  # a one-shot method's first measurement of the dense model: the same at every target
    for target in sorted(targets, reverse=True):
        cfg = pruner.PruneConfig(target=target, method=method, n_windows=args.n_windows, window=args.window,
                                 step=args.step, checkpoint=args.checkpoint)
        if p is None or method not in ITERATIVE:
            model, tok = pruner.load_model(source, device=args.device, progress=None)
            p, total = pruner.Pruner(model, tok, cfg), 0.0
            p.record.source = source
        else:
            p.configure(cfg)
        reused = method not in ITERATIVE and "importance" in dense
        if method not in ITERATIVE:
            p.measure = _first_measurement_kept(p.measure, dense)
        t = time.perf_counter()
        p.run()
        total += time.perf_counter() - t
        if reused:  # its time counts as if measured again
            total += dense["importance"].seconds
        run = _finish(model, tok, p, method, target, total, args)
        run["dense_measurement_reused"] = reused
        if method == "sensitivity":
            run["scan_tokens"] = scan_tokens(args.n_windows, args.window)
        yield run


def _first_measurement_kept(measure, dense: dict):
    """``Pruner.measure`` that keeps the dense model's measurement (step 0) and hands it back at the next target of
    a one-shot method (same model, same calibration windows: the same numbers; the sensitivity scan is long)."""

    def wrapped(step_index=None, should_stop=None):
        if step_index == 0 and "importance" in dense:
            return dense["importance"]
        imp = measure(step_index, should_stop)
        if step_index == 0:
            dense["importance"] = imp
        return imp

    return wrapped


def cmd_prune(args) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "machine": {"cpu": platform.processor() or platform.machine(),
                                              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                              "torch": torch.__version__},
              "settings": {"n_windows": args.n_windows, "window": args.window, "calibration": "wiki",
                           "checkpoint": args.checkpoint,
                           "perplexity": f"WikiText-2 test, windows {list(PPL_WINDOWS)}, first {args.ppl_tokens} tokens, "
                                         "no BOS", "training": "none",
                           "protocol": "adaptive and uniform: one run each, saved at 90, 80, 70 % in turn (wall time "
                                       "cumulative); the one-shot baselines: from the dense model at every target"},
              "runs": json.loads(out.read_text())["runs"] if out.is_file() and args.resume else []}
    done = {r["method"] for r in result["runs"]}
    if "dense" not in done:
        model, tok = pruner.load_model(args.model, device=args.device, progress=None)
        result["runs"].append({"method": "dense", "target": 1.0, "params": pruner.count_parameters(model)["total"],
                               "fraction": 1.0, "layers": model.config.num_hidden_layers,
                               "perplexity": perplexities(model, tok, args.ppl_tokens)})
        del model
    targets = [float(t) for t in args.targets.split(",")]
    for method in args.methods.split(","):
        if method in done:
            continue
        for run in prune_method(args.model, method, targets, args):
            result["runs"].append(run)
            out.write_text(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------- report


def _by_folder(paths) -> dict | None:
    """eval_suite results by folder name (``dense`` for the default model); a later file's entry wins."""
    if not paths:
        return None
    out = {}
    for path in paths:
        for m in json.loads(Path(path).read_text())["models"]:
            out[Path(m["source"]).name if m["source"] != "default" else "dense"] = m
    return out


def _seven(entry: dict | None) -> tuple[float | None, float | None]:
    """The paper's seven-task average and its standard error (None where a model did not run all seven)."""
    if not entry or not all(t in entry.get("tasks", {}) for t in PAPER_TASKS):
        return None, None
    avg = average({t: entry["tasks"][t] for t in PAPER_TASKS})  # also for files written before it had a stderr
    return avg["paper_seven"], avg["paper_seven_stderr"]


def _cell(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table(prune: dict, zeroshot: dict | None, speed: dict | None) -> str:
    rows = ["| target | method | parameters | % of original | layers | WikiText-2 ppl (128) | ppl (512) | "
            "zero-shot avg (7 tasks) | decode tok/s | prefill tok/s | prune wall (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(("dense", *SHOWN))}
    for r in sorted(prune["runs"], key=lambda r: (-r["target"], order.get(r["method"], 99))):
        key = "dense" if r["method"] == "dense" else Path(r["folder"]).name
        value, stderr = _seven((zeroshot or {}).get(key))
        sp = (speed or {}).get(key, {}).get("efficiency") or {}
        avg = _cell(value, ".3f") + (f" ± {stderr:.3f}" if stderr else "")
        target = "—" if r["method"] == "dense" else f"{r['target']:.0%}"
        rows.append(f"| {target} | {r['method']} | {r['params']:,} | {r['fraction']:.2%} | {r.get('layers', '—')} | "
                    f"{r['perplexity']['128']['perplexity']:.2f} | {r['perplexity']['512']['perplexity']:.2f} | {avg} | "
                    f"{_cell(sp.get('decode_tokens_per_s'), '.1f')} | {_cell(sp.get('prefill_tokens_per_s'), '.0f')} | "
                    f"{_cell(r.get('prune_seconds'), '.0f')} |")
    return "\n".join(rows)


def figure(prune: dict, zeroshot: dict | None, path: Path) -> None:
    """Perplexity (512-token windows) and the zero-shot average against the parameters, one line per method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("WikiText-2 test perplexity (512-token windows, log)",
                                                        "zero-shot average, the paper's 7 tasks (sizes evaluated)"))
    dense = next(r for r in prune["runs"] if r["method"] == "dense")
    from visualizations.compare import method_color  # the studio's colour of each method

    for i, method in enumerate(SHOWN):
        runs = sorted((r for r in prune["runs"] if r["method"] == method), key=lambda r: -r["params"])
        if not runs:
            continue
        x = [dense["params"] / 1e6] + [r["params"] / 1e6 for r in runs]
        fig.add_trace(go.Scatter(x=x, y=[dense["perplexity"]["512"]["perplexity"]] +
                                 [r["perplexity"]["512"]["perplexity"] for r in runs], name=method,
                                 mode="lines+markers", legendgroup=method, line_color=method_color(method, i)), 1, 1)
        if zeroshot:
            zs = [_seven(zeroshot.get("dense"))[0]] + [_seven(zeroshot.get(Path(r["folder"]).name))[0] for r in runs]
            have = [(px, v) for px, v in zip(x, zs, strict=True) if v is not None]  # sizes not evaluated: left out
            fig.add_trace(go.Scatter(x=[px for px, _ in have], y=[v for _, v in have], name=method,
                                     mode="lines+markers", legendgroup=method, showlegend=False,
                                     line_color=method_color(method, i)), 1, 2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="parameters (M)", autorange="reversed")
    fig.update_layout(template="plotly_white", title=f"{prune['model']}: pruning methods without training")
    from figures import write_png  # benchmarks/figures.py, beside this script

    write_png(fig, path, 1200, 480)


def cmd_report(args) -> int:
    prune = json.loads(Path(args.prune).read_text())
    zeroshot, speed = _by_folder(args.zeroshot), _by_folder(args.speed)
    print(table(prune, zeroshot, speed))
    if args.figure:
        figure(prune, zeroshot, Path(args.figure))
        log(f"wrote {args.figure}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune")
    p.add_argument("--model", default="default")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
    p.add_argument("--n-windows", type=int, default=pruner.PruneConfig.n_windows)
    p.add_argument("--window", type=int, default=pruner.PruneConfig.window)
    p.add_argument("--step", type=float, default=pruner.PruneConfig.step,
                   help="the iterative methods' budget per sub-step (Δ)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--ppl-tokens", type=int, default=PPL_TOKENS, help="perplexity on the first N tokens")
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false",
                   help="importance without checkpointed layers (faster; the same scores)")
    p.add_argument("--save-dir", default=None, help="default: next to --out, named after the model")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    p.add_argument("--scan-tokens", type=int, default=None,
                   help="method sensitivity: calibration tokens its scan reads (default: SCAN_TOKENS, 1024)")
    p.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("prune")
    r.add_argument("--zeroshot", nargs="+", default=None, help="eval_suite JSON files (the paper's seven tasks)")
    r.add_argument("--speed", nargs="+", default=None, help="eval_suite --efficiency JSON files")
    r.add_argument("--figure", default=None)
    args = ap.parse_args(argv)
    if args.command == "prune":
        if args.threads:
            torch.set_num_threads(args.threads)
        args.save_dir = args.save_dir or str(Path(args.out).with_suffix(""))
        with scan_budget(args.scan_tokens or sensitivity.SCAN_TOKENS):
            return cmd_prune(args)
    return cmd_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
