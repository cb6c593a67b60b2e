"""``python -m pruner prune`` and ``python -m pruner info``.

    python -m pruner prune --model default --target 0.8 --method adaptive --criterion taylor \\
        --amplitude 0.02 --out runs/smollm-80 --report runs/smollm-80.json
    python -m pruner prune --model default --target 0.8 --method flap --out runs/flap-80
    python -m pruner info --model runs/smollm-80

``--method`` also takes the other baselines (llm-pruner, shortgpt, wanda-sp, slicegpt; ``docs/methods.md``).
"""

from __future__ import annotations

import json
import time

from pruner.cli import signals
from pruner.cli.common import (
    add_model_args,
    add_ppl_args,
    check_finite,
    check_windows,
    log,
    perplexities,
    positive_int,
    save_or_rescue,
    write_report_or_rescue,
)
from pruner.config import ATTENTION_POLICIES, CRITERIA, METHODS, PruneConfig
from pruner.data import CORPORA
from pruner.errors import AllocationError, ConfigError
from pruner.io.outputs import check_no_alias, check_output_file, check_output_folder
from pruner.methods import method_class
from pruner.runtime.devices import float32_matmuls_for, lean_onednn_cache, slow_half_note

D = PruneConfig  # the defaults live on the config's fields


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune a model to a parameter target and save it")
    add_model_args(p)
    p.add_argument("--target", type=float, required=True,
                   help="fraction of the original parameters to keep (0-1), or a count")
    p.add_argument("--method", choices=METHODS, default=D.method,
                   help="adaptive / uniform / custom (Δ-sized sub-steps), or a one-shot baseline: llm-pruner, flap, "
                        "shortgpt, wanda-sp, slicegpt (docs/methods.md)")
    p.add_argument("--criterion", choices=CRITERIA, default=None,
                   help="unit score (default: the method's own where it has one — llm-pruner: taylor, flap: "
                        "fluctuation, wanda-sp: wanda-sp — else taylor)")
    p.add_argument("--amplitude", type=float, default=D.amplitude, help="A in s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)")
    p.add_argument("--step", type=float, default=D.step, help="Δ: mean sparsity added per sub-step")
    p.add_argument("--max-sparsity", type=float, default=D.max_sparsity)
    p.add_argument("--multiple", type=positive_int, default=D.multiple, help="round MLP widths down to a multiple of this")
    p.add_argument("--attention", choices=ATTENTION_POLICIES, default=None,
                   help="how a layer's budget is split: score (lowest Taylor score per parameter first, groups and "
                        f"channels ranked together) or proportional (attention and MLP share s_l); default: "
                        f"{D.attention}; the baselines split it their own way")
    p.add_argument("--block-layers", default=None, metavar="START:END",
                   help="llm-pruner: prune layers START..END-1 only (default: the released 4:30 of 32 layers, "
                        "scaled to the model's depth)")
    p.add_argument("--no-bias-compensation", action="store_true",
                   help="flap: do not add the removed inputs' mean contribution as o_proj / down_proj biases")
    p.add_argument("--custom", default=None, help="comma-separated final per-layer sparsities (method custom)")
    p.add_argument("--calibration", default=D.calibration,
                   help=f"calibration corpus: {', '.join(CORPORA)} or a text file")
    p.add_argument("--n-windows", type=positive_int, default=D.n_windows)
    p.add_argument("--scan-tokens", type=positive_int, default=None,
                   help="method sensitivity: calibration tokens its scan reads (default 1024, the first whole windows)")
    p.add_argument("--window", type=positive_int, default=D.window)
    p.add_argument("--batch-size", type=positive_int, default=D.batch_size)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false",
                   help="importance without checkpointed layers: faster, about 3.5× more memory")
    p.add_argument("--measure-once", action="store_true",
                   help="measure importance once and reuse the surviving units' scores (faster, not the method)")
    p.add_argument("--out", default=None, help="folder to save the pruned model in")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--report", default=None, help="JSON file for the record and the perplexities")
    add_ppl_args(p)
    p.set_defaults(func=run)

    i = sub.add_parser("info", help="print a model's architecture summary (per-layer widths, parameters)")
    add_model_args(i)
    i.set_defaults(func=run_info)


def parse_custom(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--custom needs comma-separated final sparsities, one per layer (e.g. 0.1,0.3,0.2), "
                          f"got '{text}'") from None


def _block_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError as exc:
        raise ConfigError(f"--block-layers must be START:END (two integers), got '{text}'") from exc
    return [start, end]


def config_from_args(args) -> PruneConfig:
    return PruneConfig(target=args.target, method=args.method, criterion=args.criterion,
                       amplitude=args.amplitude, step=args.step, max_sparsity=args.max_sparsity,
                       attention=args.attention or D.attention,
                       multiple=args.multiple, custom=parse_custom(args.custom), calibration=args.calibration,
                       n_windows=args.n_windows, window=args.window, batch_size=args.batch_size, seed=args.seed,
                       remeasure=not args.measure_once, block_layers=_block_layers(args.block_layers),
                       bias_compensation=not args.no_bias_compensation, checkpoint=args.checkpoint)


def describe_decision(rec) -> str:
    """One line on what a baseline's step decided (empty for the adaptive rule)."""
    d = rec.decision
    if rec.removed_layers:
        return f"removed layers {rec.removed_original_layers} (lowest block influence)"
    if "threshold" in d:
        thr = "none" if d["threshold"] is None else f"{d['threshold']:.3f}"
        return (f"global threshold {thr}: removed {sum(d['groups_removed'])} KV groups and "
                f"{sum(d['channels_removed'])} channels, bias compensation {'on' if d['bias_compensation'] else 'off'}")
    if "residual_width" in d:
        kept = d.get("variance_kept") or [1.0]
        return (f"residual stream rotated and sliced to {d['residual_width']} of {d['hidden_size']} "
                f"(slicing {d['slicing']:.1%}, {d['params_share']:.1%} of the parameters; variance kept per layer "
                f"{min(kept):.3f}–{max(kept):.3f})")
    if "window" in d:
        return f"ratio {d['ratio']:.3f} in layers [{d['window'][0]}, {d['window'][1]}), the others untouched"
    return ""


def check_prune_outputs(args) -> None:
    """Every output of ``prune`` checked before any work: usable, and aliasing neither the model nor each other."""
    check_no_alias({"--model": args.model if args.model != "default" else None}, {"--out": args.out},
                   {"--report": args.report})
    if args.out:
        check_output_folder(args.out, args.force, "--out folder", "use --force")
    if args.report:
        check_output_file(args.report, "--report file")


def run(args) -> int:
    from pruner.io.models import describe, load_model
    from pruner.pruning.pruner import Pruner

    cfg = config_from_args(args)  # every setting is checked before anything is loaded
    if args.custom and not method_class(cfg.method).uses_custom:
        raise ConfigError(f"--custom gives the final per-layer sparsities of --method custom; {cfg.method} allocates "
                          "its own: drop --custom or use --method custom")
    check_prune_outputs(args)
    if args.attention and not method_class(cfg.method).uses_attention_policy:
        log(f"note: {cfg.method} splits each layer's budget its own way; --attention ignored")
    t = time.perf_counter()
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype, progress=log, device_map=args.device_map)
    for note in (slow_half_note(model), lean_onednn_cache(model)):
        if note is not None:
            log(note)
    log(f"loaded {args.model} in {time.perf_counter() - t:.1f} s: {describe(model)['params']['total']:,} parameters")
    check_finite(model, args.model)
    check_windows(model, **{"--window": cfg.window},
                  **({} if args.no_ppl else {"--ppl-windows": max(args.ppl_windows)}))
    # no undo history: a command never undoes, and the history would hold what every sub-step removed
    pruner = Pruner(model, tok, cfg, keep_history=0)  # checks the custom schedule and --multiple against the model
    pruner.record.source = str(args.model)
    target = pruner.target_params()  # an unreachable target is refused before the first measurement
    log(f"target {target:,} parameters ({target / pruner.origin.params['total']:.1%} of the original); "
        f"calibration {cfg.n_windows} × {cfg.window} tokens of '{cfg.calibration}' per sub-step")
    with float32_matmuls_for(model):  # a half dtype on a CPU without its matrix instructions: products in fp32
        record, interrupted = _prune(pruner)
        return _finish(args, model, tok, record, interrupted)


def _prune(pruner):
    def progress(rec):
        log(f"  step {rec.index + 1:3d}: {rec.params_total:,} params ({rec.fraction_of_original:.1%}), "
            f"importance {rec.seconds_importance:.1f} s, surgery {rec.seconds_surgery:.2f} s"
            + (f", calib loss {rec.calibration_loss:.3f}" if rec.calibration_loss is not None else ""))
        if describe_decision(rec):
            log(f"            {rec.method}: {describe_decision(rec)}")

    try:
        record = pruner.run(progress=progress)
        interrupted = False
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the step under way is undone (steps are atomic)
        signals.stopping()
        record, interrupted = pruner.record, True
        record.stopped = "interrupted"
    except AllocationError as exc:  # a stall: the sub-steps done so far are kept, as on Ctrl-C
        if not pruner.record.steps:
            raise
        record, interrupted = pruner.record, False
        record.stopped = f"stalled: {exc}"
    done = record.final_params["total"] / record.original_params["total"]
    log(f"{'interrupted' if interrupted else 'done'}: {record.final_params['total']:,} parameters ({done:.2%} of "
        f"the original) in {len(record.steps)} sub-steps, {record.seconds_total:.1f} s")
    return record, interrupted


def _finish(args, model, tok, record, interrupted: bool) -> int:
    """Save first (a finished prune is never lost to a failing perplexity or report), then perplexity and the
    report; exit 130 when interrupted (Ctrl-C, SIGTERM), 1 when the run stopped short of its target or something
    had to go to a rescue path (or could not be saved at all)."""
    from pruner.io.models import describe

    saved, rescued = (save_or_rescue(model, tok, args.out, record, args.force, "model") if args.out
                      else (None, False))
    if saved:
        log(f"saved to {saved}")
    interrupted = signals.pending() or interrupted
    ppl = []
    if not interrupted:  # a stalled or missed run's model is complete: it is measured too
        try:
            ppl = perplexities(model, tok, args)
        except KeyboardInterrupt:
            signals.stopping()
            log("perplexity interrupted: the report has none")
            interrupted = True
    report = {"record": record.to_dict(), "perplexity": ppl, "model": describe(model)}
    _, report_rescued = write_report_or_rescue(args.report, report, "report")
    interrupted = signals.pending() or interrupted
    if record.stopped:
        frac = record.final_params["total"] / record.original_params["total"]
        target = args.target if args.target < 1 else args.target / record.original_params["total"]
        why = "" if record.stopped == "interrupted" else f" ({record.stopped})"
        log(f"the run stopped at {frac:.1%} of the original (target {target:.1%}){why}"
            + (f"; the model with its {len(record.steps)} completed sub-step(s) is in {saved}"
               + (f"; continue with `adapt-pruner prune --model {saved} --target {args.target} ...`"
                  if frac > target else "") if saved else "; nothing was saved (no --out)" if not args.out else ""))
    if interrupted or record.stopped == "interrupted":
        return 130
    return 1 if record.stopped or rescued or report_rescued or (args.out and not saved) else 0


def run_info(args) -> int:
    from pruner.io.models import describe, load_model

    model, _ = load_model(args.model, device=args.device, dtype=args.dtype, progress=log, device_map=args.device_map)
    print(json.dumps(describe(model), indent=1))
    return 0
