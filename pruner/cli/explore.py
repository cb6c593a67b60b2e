"""``python -m pruner explore``: the predicted quality of many plans, before anything is cut.

    python -m pruner explore --model default --methods adaptive,uniform,flap --targets 0.9,0.8,0.7 \\
        --amplitudes 0,0.02,0.05 --sensitivity --report runs/explore.json

Every point is a what-if (:mod:`pruner.explore`): the model evaluated as if the plan's final widths were cut,
from one importance measurement per criterion, on a fixed WikiText-2 validation sample. The model is not changed
and nothing is saved but the report.
"""

from __future__ import annotations

import argparse
import time

from pruner.cli.common import add_model_args, check_windows, log, positive_int, write_report_or_rescue
from pruner.config import ATTENTION_POLICIES, METHODS, PruneConfig
from pruner.data import CORPORA
from pruner.errors import ConfigError
from pruner.io.outputs import check_output_file

D = PruneConfig


def _list(kind, choices=None):
    """argparse type: a comma-separated list of ``kind`` (restricted to ``choices``)."""
    def parse(text: str):
        try:
            out = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list, got '{text}'") from None
        bad = [x for x in out if choices is not None and x not in choices]
        if not out or bad:
            raise argparse.ArgumentTypeError(f"use one or more of {', '.join(choices)}" if bad else "is empty")
        return out

    return parse


def register(sub) -> None:
    from pruner.explore.whatif import EvalSample  # its defaults are the command's

    p = sub.add_parser("explore", help="predicted perplexity of many plans (what-if), and per-layer sensitivity")
    add_model_args(p)
    p.add_argument("--methods", type=_list(str, METHODS), default=[D.method],
                   help=f"comma-separated methods: {', '.join(METHODS)}")
    p.add_argument("--targets", type=_list(float), default=[D.target], help="comma-separated targets, e.g. 0.9,0.8")
    p.add_argument("--amplitudes", type=_list(float), default=None, help="comma-separated A values (adaptive)")
    p.add_argument("--steps", type=_list(float), default=None, help="comma-separated Δ values (incremental methods)")
    p.add_argument("--policies", type=_list(str, ATTENTION_POLICIES), default=None,
                   help=f"comma-separated attention policies: {', '.join(ATTENTION_POLICIES)}")
    p.add_argument("--custom", default=None, help="comma-separated final per-layer sparsities (method custom)")
    p.add_argument("--sensitivity", action="store_true",
                   help="also measure the per-layer sensitivity table and its Spearman ρ with the layer importance")
    p.add_argument("--scan-tokens", type=positive_int, default=None,
                   help="calibration tokens the sensitivity scan reads (default 1024: the first whole windows)")
    p.add_argument("--calibration", default=D.calibration, help=f"calibration corpus: {', '.join(CORPORA)} or a file")
    p.add_argument("--n-windows", type=positive_int, default=D.n_windows)
    p.add_argument("--window", type=positive_int, default=D.window)
    p.add_argument("--batch-size", type=positive_int, default=D.batch_size)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--eval-tokens", type=positive_int, default=EvalSample.max_tokens,
                   help="tokens of WikiText-2 validation every what-if is scored on")
    p.add_argument("--eval-window", type=positive_int, default=128, help="window length of that evaluation")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="refuse a sweep whose estimated time is longer than this")
    p.add_argument("--report", default=None, help="JSON file for the table, the settings and the sensitivity")
    p.set_defaults(func=run)


def _custom(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--custom needs comma-separated final sparsities, got '{text}'") from None


def sensitivity_text(report) -> str:
    """The sensitivity table as text: one line per layer, the loss increase per level, and ρ per level."""
    t = report.table
    head = "layer  I_l(−cos) " + " ".join(f"{'Δloss@' + format(lv, 'g'):>11}" for lv in t.levels)
    lines = [head]
    for li, row in enumerate(t.increase):
        lines.append(f"{li:5d} {report.layer_importance[li]:10.4f} " + " ".join(f"{v:11.4f}" for v in row))
    rho = ", ".join(f"{k}: {'—' if v is None else f'{v:+.2f}'}" for k, v in report.correlation.items())
    lines.append(f"Spearman ρ (loss increase vs layer importance) per level: {rho}")
    return "\n".join(lines)


def run(args) -> int:
    from pruner.explore import EvalSample, Explorer, run_sweep, sweep_grid
    from pruner.io.models import load_model
    from pruner.pruning.pruner import Pruner

    base = PruneConfig(target=args.targets[0], method=args.methods[0], calibration=args.calibration,
                       n_windows=args.n_windows, window=args.window, batch_size=args.batch_size, seed=args.seed,
                       custom=_custom(args.custom))
    grid = sweep_grid(base, args.methods, args.targets, args.amplitudes, args.steps, args.policies)
    if args.report:
        check_output_file(args.report, "--report file")
    t = time.perf_counter()
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype, progress=log, device_map=args.device_map)
    log(f"loaded {args.model} in {time.perf_counter() - t:.1f} s")
    check_windows(model, **{"--window": base.window, "--eval-window": args.eval_window})
    explorer = Explorer(Pruner(model, tok, base), EvalSample(window=args.eval_window, max_tokens=args.eval_tokens))

    def progress(point, i, n):
        ppl = "—" if point.perplexity is None else f"{point.perplexity:.2f}"
        log(f"  {i}/{n} {point.settings['method']} target {point.settings['target']:g}: predicted ppl {ppl} "
            f"({point.seconds:.1f} s){' — ' + point.error if point.error else ''}")

    sweep = run_sweep(explorer, grid, progress=progress, max_seconds=args.max_seconds)
    b = sweep.baseline
    print(f"predicted perplexity: WikiText-2 validation, first {b['tokens_scored']:,} tokens scored, "
          f"{b['window']}-token windows, {'BOS' if b['bos'] else 'no BOS'}; the model now: {b['perplexity']:.2f}")
    print(sweep.table())
    for note in sweep.notes:
        print(f"note: {note}")
    report = {"sweep": sweep.to_dict(), "settings": base.to_dict(), "model": str(args.model)}
    if args.sensitivity:
        def scan(i, n):
            if i % 10 == 0 or i == n:
                log(f"  sensitivity: {i}/{n} masked passes")

        sens = explorer.sensitivity(progress=scan)
        print(sensitivity_text(sens))
        report["sensitivity"] = sens.to_dict()
    log(f"{len(sweep.points)} points in {sweep.seconds:.1f} s (estimated {sweep.estimated_seconds:.0f} s)")
    _, rescued = write_report_or_rescue(args.report, report, "explore")
    return 1 if rescued else 0
