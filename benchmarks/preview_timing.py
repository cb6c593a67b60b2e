"""Where the seconds of one schedule-preview redraw go, with importance measured (the studio's preview handler).

    PYTHONPATH=. .venv/bin/python benchmarks/preview_timing.py --model tiny --out benchmarks/results/preview_timing_tiny.json
    PYTHONPATH=. .venv/bin/python benchmarks/preview_timing.py --model default --repeats 3 \
        --out benchmarks/results/preview_timing_default.json

For a few targets it times one whole redraw through the handler (:meth:`studio.handlers.Handlers.preview`, the
plan not cached), then its parts: the library's plan (:meth:`pruner.Pruner.preview` via
:meth:`studio.schedule.ScheduleControl.preview`), the figure, the cost line and the figure's JSON (what Gradio sends
to the browser). The importance measurement before them is timed too, but is not part of
a redraw. The JSON names the model, the machine's load and every setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]}


def session_for(model: str):
    from studio import StudioSession

    if model == "tiny":
        from tests.test_session import tiny_model, tiny_tokenizer

        return StudioSession(tiny_model(), tiny_tokenizer(), name="tiny")
    return StudioSession.load(model, device="cpu")


def controls(target: float, s) -> tuple:
    """The page's control values (percent on the page) for ``target`` and the studio's defaults."""
    d = s.settings
    return (target, d.prune.amplitude, 100 * d.prune.step, d.criterion_choice, d.prune.method, None,
            d.prune.calibration, None, d.prune.n_windows, d.prune.window, d.prune.seed, d.quick_ppl.max_tokens,
            d.max_new_tokens)


def time_one(s, handlers, values) -> dict:
    """One redraw through the handler (the plan not cached), then its parts: the plan alone, the figure on the
    cached plan, the cost line and the figure's JSON."""
    from studio.handlers import settings_from
    from studio.views import allocation_figure

    settings = settings_from(*values)
    s.panel.want(settings)  # the edit that asks for this preview
    s.schedule._plan = None  # a fresh plan, as after an edit
    t0 = time.perf_counter()
    out = handlers.preview(s, *values)
    t1 = time.perf_counter()
    if any(isinstance(v, str) and v.startswith("⚠️") for v in out.values()) or not out:
        raise SystemExit(f"the preview failed: {out}")
    s.schedule._plan = None
    t2 = time.perf_counter()
    plan = s.schedule.preview(settings)
    t3 = time.perf_counter()
    fig, _, _ = allocation_figure(s, settings)  # the plan is cached now: the figure alone
    t4 = time.perf_counter()
    s.costs.prune_markdown(settings)
    t5 = time.perf_counter()
    fig.to_json()
    t6 = time.perf_counter()
    return {"handler_s": t1 - t0, "plan_s": t3 - t2, "figure_s": t4 - t3, "cost_line_s": t5 - t4,
            "figure_json_s": t6 - t5, "planned_steps": len(plan.params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (the tests' 3-layer model) or anything load_model takes")
    ap.add_argument("--targets", default="90,80,60,40", help="targets in %% of the original parameters")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the JSON here (printed either way)")
    args = ap.parse_args()

    import torch

    from studio.handlers import Handlers

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    s = session_for(args.model)
    t1 = time.perf_counter()
    imp = s.schedule.measure()
    t2 = time.perf_counter()
    names = ("alloc_fig", "alloc_md", "cost", "n_steps", "step", "status", "input_note")
    handlers = Handlers(SimpleNamespace(**{n: n for n in names}), shared=None, pool=None)
    runs = []
    for target in [float(t) for t in args.targets.split(",")]:
        for _ in range(args.repeats):
            runs.append({"target_percent": target, **time_one(s, handlers, controls(target, s))})
    keys = [k for k in runs[0] if k.endswith("_s")]
    summary = {k: {"median": statistics.median(r[k] for r in runs), "max": max(r[k] for r in runs)} for k in keys}
    result = {"model": args.model, "params": s.work.original_total, "machine": machine(),
              "settings": s.settings.public(), "seconds_load": t1 - t0,
              "seconds_measure_importance": t2 - t1, "importance_tokens": imp.tokens,
              "redraw": summary, "runs": runs}
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(json.dumps({"model": args.model, "redraw": summary}, indent=1))


if __name__ == "__main__":
    main()
