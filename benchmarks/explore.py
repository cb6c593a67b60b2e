"""Benchmark (issue 23): what the schedule explorer costs, and how good its estimate is.

Two steps, each writing JSON (run them one at a time on a quiet machine)::

    # 1. costs on the default model: one what-if vs a plain forward over the same evaluation tokens, a 30-point
    #    sweep from one importance measurement per criterion, the sensitivity scan (30 layers × 4 levels)
    .venv/bin/python benchmarks/explore.py cost --model default --out benchmarks/results/explore_cost.json
    # 2. the estimate against real runs: adaptive at A ∈ {0, 0.02, 0.05, 0.1} at 80 %, every other method at 80 %,
    #    adaptive at 90 and 70 % (12 real runs, about 7 minutes each on a 2-core CPU; --resume continues).
    #    --measured-from takes the runs the method comparison already made (every method at 90 / 80 / 70 %, same
    #    WikiText-2 test protocol) instead of re-running them; only the missing ones (A = 0, 0.05, 0.1) run here.
    .venv/bin/python benchmarks/explore.py correlation --model default \
        --measured-from benchmarks/results/compare_methods_default.json --out benchmarks/results/explore_corr.json
    # 3. its scatter for the README (headless Chromium)
    .venv/bin/python benchmarks/explore.py figure benchmarks/results/explore_corr.json --out assets/explore_correlation.png

Predicted: the what-if on the explorer's sample (WikiText-2 validation, the first ``--eval-tokens`` tokens — 1,024 by
default, the README's runs name theirs —, 128-token windows).
Measured: the real run (importance re-measured before every sub-step, as the method does), WikiText-2 test at 128-
and 512-token windows (first 32,768 tokens, no BOS, as ``compare_methods.py``), and the explorer's own validation
sample. Spearman's ρ between predicted and each measured perplexity is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import pruner
from pruner.explore import EvalSample, Explorer, run_sweep, sweep_grid
from pruner.importance import sensitivity
from pruner.importance.sensitivity import scan_budget, spearman

PPL_TOKENS = 32_768
SYMBOLS = {0.9: "circle", 0.8: "square", 0.7: "diamond"}  # the figure's marker per target
BASELINES_80 = ("uniform", "llm-pruner", "flap", "shortgpt", "wanda-sp", "sensitivity")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()), "torch": torch.__version__}


def write(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1))


def thirty_points(base: pruner.PruneConfig) -> list[pruner.PruneConfig]:
    """6 methods × 3 targets, adaptive at A ∈ {0, 0.05, 0.1} × 3 targets, adaptive proportional × 3 targets."""
    targets = [0.9, 0.8, 0.7]
    grid = sweep_grid(base, ["adaptive", "uniform", "llm-pruner", "flap", "shortgpt", "wanda-sp"], targets)
    grid += sweep_grid(base, ["adaptive"], targets, amplitudes=[0.0, 0.05, 0.1])
    grid += sweep_grid(base, ["adaptive"], targets, policies=["proportional"])
    return grid


def cost(args) -> int:
    model, tok = pruner.load_model(args.model, device=args.device)
    base = pruner.PruneConfig(target=0.8)
    sample = EvalSample(max_tokens=args.eval_tokens, window=args.eval_window)
    out = {"model": args.model, "sample": sample.to_dict(), "scan_tokens": sensitivity.SCAN_TOKENS,
           "machine_before": machine()}
    ex = Explorer(pruner.Pruner(model, tok, base), sample)
    t0 = time.perf_counter()
    ex.measurement(base)
    out["importance_seconds"] = time.perf_counter() - t0
    plan = ex.plan(base)
    forwards, whatifs = [], []
    for i in range(args.repeats):  # alternate, so both see the same load
        forwards.append(ex._perplexity(None)["seconds"])
        whatifs.append(ex.what_if(plan, base).seconds)
        log(f"repeat {i + 1}: forward {forwards[-1]:.2f} s, what-if {whatifs[-1]:.2f} s")
    out["forward_seconds"], out["what_if_seconds"] = forwards, whatifs
    out["what_if_over_forward"] = min(whatifs) / min(forwards)
    log(f"what-if / plain forward: {out['what_if_over_forward']:.3f} (best of {args.repeats})")

    fresh = Explorer(pruner.Pruner(model, tok, base), sample)
    grid = thirty_points(base)
    t0 = time.perf_counter()
    for cfg in grid:  # the sweep's importance measurements (one per criterion), timed on their own
        fresh.measurement(cfg)
    measured = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep = run_sweep(fresh, grid, progress=lambda p, i, n: log(f"  sweep {i}/{n}: {p.settings['method']} "
                                                                  f"{p.settings['target']} ppl {p.perplexity}"))
    points = time.perf_counter() - t0
    out["sweep"] = {"points": len(grid), "seconds": measured + points, "seconds_points": points,
                    "seconds_measurements": measured, "estimated_seconds": sweep.estimated_seconds,
                    "result": sweep.to_dict()}
    log(f"sweep of {len(grid)} points: {points:.0f} s, its measurements {measured:.0f} s")

    t0 = time.perf_counter()
    report = fresh.sensitivity()
    out["sensitivity"] = {"seconds_with_measurement": time.perf_counter() - t0,
                          "seconds_scan": report.table.seconds, "layers": len(report.table.increase),
                          "levels": report.table.levels, "report": report.to_dict()}
    log(f"sensitivity scan: {report.table.seconds:.0f} s ({len(report.table.increase)} layers × "
        f"{len(report.table.levels)} levels); Spearman ρ per level {report.correlation}")
    out["machine_after"] = machine()
    write(args.out, out)  # before anything else can fail
    if args.reference:
        out["agreement"] = agreement(json.loads(Path(args.reference).read_text()), out)
        out["agreement"]["reference"] = args.reference
        log(f"against {args.reference}: {out['agreement']}")
        write(args.out, out)
    return 0


def agreement(ref: dict, new: dict) -> dict:
    """How a cheaper setting ranks against a reference run of ``cost`` (say 1,024 tokens against 4,096): Spearman's
    ρ between the sweeps' predicted perplexities (points matched by their settings), between the scans' cells (all
    layers × levels, and per level), and the scans' correlations with the layer importance side by side."""
    def by_settings(run):
        return {json.dumps([p[k] for k in ("method", "target", "amplitude", "step", "attention", "criterion")]):
                p["perplexity"] for p in run["sweep"]["result"]["points"] if p.get("perplexity") is not None}
    a, b = by_settings(ref), by_settings(new)
    keys = sorted(set(a) & set(b))
    out = {"sweep_points": len(keys), "sweep_spearman": spearman([a[k] for k in keys], [b[k] for k in keys])}
    ta, tb = ref["sensitivity"]["report"]["table"], new["sensitivity"]["report"]["table"]
    if ta["levels"] == tb["levels"] and len(ta["increase"]) == len(tb["increase"]):
        flat = lambda t: [v for row in t["increase"] for v in row]  # noqa: E731
        out["scan_tokens"] = [ta.get("tokens"), tb.get("tokens")]
        out["scan_cells_spearman"] = spearman(flat(ta), flat(tb))
        out["scan_per_level_spearman"] = {
            f"{lv:g}": spearman([r[k] for r in ta["increase"]], [r[k] for r in tb["increase"]])
            for k, lv in enumerate(ta["levels"])}
        out["layer_importance_spearman"] = [ref["sensitivity"]["report"]["spearman"],
                                            new["sensitivity"]["report"]["spearman"]]
    return out


def runs(base: pruner.PruneConfig) -> list[pruner.PruneConfig]:
    """The issue's ≥ 10 real runs."""
    out = [replace(base, amplitude=a) for a in (0.0, 0.02, 0.05, 0.1)]
    out += [pruner.PruneConfig(**{**base.to_dict(), "method": m, "criterion": None}) for m in BASELINES_80]
    out += [replace(base, target=t) for t in (0.9, 0.7)]
    return out


def key_of(cfg: pruner.PruneConfig) -> str:
    return f"{cfg.method}-{cfg.target:g}-A{cfg.amplitude:g}"


def measured_runs(path: str) -> dict:
    """Real runs already measured by ``compare_methods.py prune`` (same WikiText-2 test protocol: first 32,768
    tokens, 128- and 512-token windows, no BOS), keyed as :func:`key_of`; each keeps its own config, which the
    what-if then predicts."""
    data = json.loads(Path(path).read_text())
    out = {}
    for r in data["runs"]:
        if "config" not in r:  # the dense model
            continue
        cfg = pruner.PruneConfig(**r["config"])
        out[key_of(cfg)] = {"config": cfg.to_dict(), "params": r["params"], "prune_seconds": r.get("prune_seconds"),
                            "measured": {w: r["perplexity"][w] for w in ("128", "512")},
                            "from": f"{path} ({data.get('model', '')})"}
    return out


def correlation(args) -> int:
    base = pruner.PruneConfig(target=0.8, method="adaptive", amplitude=0.02)
    sample = EvalSample(max_tokens=args.eval_tokens, window=args.eval_window)
    done = json.loads(Path(args.out).read_text()) if args.resume and Path(args.out).exists() else {}
    results = done.get("runs", {})
    if args.measured_from:  # reuse real runs measured by the comparison benchmark, predict each with its config
        for k, r in measured_runs(args.measured_from).items():
            results.setdefault(k, r)
        if key_of(base) in results:  # the runs made here follow that benchmark's protocol (windows, calibration)
            base = pruner.PruneConfig(**results[key_of(base)]["config"])
    configs = runs(base)
    if args.measured_from:
        known = {key_of(c) for c in configs}
        configs += [pruner.PruneConfig(**r["config"]) for k, r in results.items() if k not in known]
        configs = [pruner.PruneConfig(**results[key_of(c)]["config"]) if key_of(c) in results else c
                   for c in configs]
    model, tok = pruner.load_model(args.model, device=args.device)
    if "predicted" not in done or any(key_of(c) not in done["predicted"] for c in configs):
        done.setdefault("predicted", {})
        ex = Explorer(pruner.Pruner(model, tok, base), sample)
        for c in configs:
            if key_of(c) in done["predicted"] or key_of(c) in done.setdefault("not_predicted", {}):
                continue
            try:
                done["predicted"][key_of(c)] = ex.what_if(config=c).to_dict()
            except pruner.PrunerError as exc:  # e.g. SliceGPT: a rotation has no masked what-if
                done["not_predicted"][key_of(c)] = str(exc)
                log(f"not predicted {key_of(c)}: {exc}")
                continue
            log(f"predicted {key_of(c)}: {done['predicted'][key_of(c)]['perplexity']['perplexity']:.2f}")
        done["baseline"] = ex.baseline()
        done["machine"] = machine()
        done["sample"], done["scan_tokens"] = sample.to_dict(), sensitivity.SCAN_TOKENS
        write(args.out, done)
    del model
    configs = [c for c in configs if key_of(c) in done["predicted"]]
    new_runs = 0
    for cfg in configs:
        k = key_of(cfg)
        if k in results:
            continue
        if args.max_new_runs is not None and new_runs >= args.max_new_runs:
            log(f"not run (--max-new-runs {args.max_new_runs}): {k}")
            continue
        new_runs += 1
        model, tok = pruner.load_model(args.model, device=args.device)
        p = pruner.Pruner(model, tok, cfg)
        t0 = time.perf_counter()
        p.run()
        sec = time.perf_counter() - t0
        measured = {str(w): pruner.perplexity(model, tok, "wikitext2", "test", window=w, max_tokens=PPL_TOKENS)
                    for w in (128, 512)}
        measured["sample"] = pruner.perplexity(model, tok, sample.dataset, sample.split, window=sample.window,
                                               max_tokens=sample.max_tokens)
        results[k] = {"config": cfg.to_dict(), "params": p.params_total(), "prune_seconds": sec,
                      "measured": measured, "load_average": list(os.getloadavg())}
        log(f"{k}: predicted {done['predicted'][k]['perplexity']['perplexity']:.2f}, measured test-512 "
            f"{measured['512']['perplexity']:.2f} ({sec:.0f} s)")
        done["runs"] = results
        write(args.out, done)
        del model
    keys = [key_of(c) for c in configs if key_of(c) in results]
    pred = [done["predicted"][k]["perplexity"]["perplexity"] for k in keys]
    done["spearman"] = {w: spearman(pred, [results[k]["measured"][w]["perplexity"] for k in keys])
                        for w in ("128", "512")}
    with_sample = [k for k in keys if "sample" in results[k]["measured"]]
    if len(with_sample) >= 3:  # the explorer's own validation sample: only the runs made here measured it
        done["spearman"]["sample"] = spearman([done["predicted"][k]["perplexity"]["perplexity"] for k in with_sample],
                                              [results[k]["measured"]["sample"]["perplexity"] for k in with_sample])
    done["n_runs"] = len(keys)
    log(f"Spearman ρ predicted vs measured over {len(keys)} runs: {done['spearman']}")
    write(args.out, done)
    return 0


def figure(args) -> int:
    """The scatter of a correlation result: predicted (the what-if) against measured WikiText-2 test perplexity at
    128- and 512-token windows, one colour per method, log axes, Spearman's ρ in each panel's title."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from visualizations.compare import method_color

    done = json.loads(Path(args.result).read_text())
    keys = [k for k in done["predicted"] if k in done["runs"]]
    rho = done["spearman"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=[
        f"measured at {w}-token windows: Spearman ρ = {rho[w]:.3f} over {len(keys)} runs" for w in ("128", "512")])
    methods = list(dict.fromkeys(done["predicted"][k]["settings"]["method"] for k in keys))
    for col, w in enumerate(("128", "512"), start=1):
        for i, m in enumerate(methods):
            ks = [k for k in keys if done["predicted"][k]["settings"]["method"] == m]
            fig.add_trace(go.Scatter(
                x=[done["predicted"][k]["perplexity"]["perplexity"] for k in ks],
                y=[done["runs"][k]["measured"][w]["perplexity"] for k in ks], mode="markers", name=m,
                marker=dict(size=10, color=method_color(m, i), line=dict(width=1, color="white"),
                            symbol=[SYMBOLS.get(done["predicted"][k]["settings"]["target"], "x") for k in ks]),
                legendgroup=m, showlegend=col == 1), 1, col)
        fig.update_xaxes(type="log", title_text="predicted (what-if, WikiText-2 validation, 128-token windows)",
                         row=1, col=col)
        fig.update_yaxes(type="log", title_text=f"measured (real run, WikiText-2 test, {w}-token windows)",
                         row=1, col=col)
    fig.update_layout(template="plotly_white", title="The explorer's estimate against real runs, default model "
                      "(● 90 %, ■ 80 %, ◆ 70 %; adaptive at 80 %: A = 0, 0.02, 0.05, 0.1)")
    from figures import write_png  # benchmarks/figures.py, beside this script

    write_png(fig, Path(args.out), 1200, 520)
    log(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, fn in (("cost", cost), ("correlation", correlation)):
        p = sub.add_parser(name)
        p.add_argument("--model", default="default")
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--eval-tokens", type=int, default=EvalSample.max_tokens)
        p.add_argument("--eval-window", type=int, default=128)
        p.add_argument("--out", required=True)
        p.add_argument("--scan-tokens", type=int, default=None,
                       help="the sensitivity scan's token budget (default: SCAN_TOKENS; for correlation: the one "
                            "the measured sensitivity runs were planned with)")
        if name == "cost":
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--reference", default=None,
                           help="an earlier cost JSON: how this run's sweep and scan rank against it")
        else:
            p.add_argument("--resume", action="store_true")
            p.add_argument("--max-new-runs", type=int, default=None,
                           help="prune at most this many runs here (the rest: --resume later)")
            p.add_argument("--measured-from", default=None,
                           help="a compare_methods.py result: its runs count as measured (not re-run)")
        p.set_defaults(func=fn)
    f = sub.add_parser("figure", help="the scatter of a correlation result, as a PNG")
    f.add_argument("result")
    f.add_argument("--out", required=True)
    f.add_argument("--threads", type=int, default=None)
    f.set_defaults(func=figure)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with scan_budget(getattr(args, "scan_tokens", None) or sensitivity.SCAN_TOKENS):
        return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
