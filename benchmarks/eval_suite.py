"""Evaluate a list of models on the benchmark tasks; write one JSON with scores, settings and timings.

    nice -n 10 .venv/bin/python benchmarks/eval_suite.py --models default runs/adaptive-80 runs/uniform-80 \\
        --limit 500 --out benchmarks/results/eval_suite.json --efficiency

The first model is the reference for the efficiency ratios. ``--limit`` is per task (MMLU: over all 57
subjects together). The JSON is rewritten after every task, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pruner import load_model
from pruner.evaluation import average, compare, efficiency, evaluate, resolve_tasks
from pruner.evaluation.perplexity import format_perplexity, perplexity


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(source: str):
    return load_model(source, device="cpu" if not torch.cuda.is_available() else None, progress=log)


def log_speed(label: str, e: dict) -> None:
    log(f"{label}: decode {e['decode_tokens_per_s']:.1f} tok/s, prefill {e['prefill_tokens_per_s']:.0f} tok/s")


def efficiency_runs(report: dict, args) -> None:
    """``--efficiency-runs K``: K − 1 more rounds over the models, each model loaded afresh; every entry's
    ``efficiency`` then holds the median tokens/s over the K runs, and ``efficiency_runs`` every run."""
    entries = report["models"]
    runs = {id(e): [e["efficiency"]] for e in entries}
    for k in range(1, args.efficiency_runs):
        for e in entries:
            model, tok = load(e["source"])
            runs[id(e)].append(efficiency(model, tok, repeats=args.efficiency_repeats))
            log_speed(f"{e['source']} run {k + 1}", runs[id(e)][-1])
            del model
    for e in entries:
        rs = runs[id(e)]
        e["efficiency"] = {**rs[0], "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in rs),
                           "prefill_tokens_per_s": statistics.median(r["prefill_tokens_per_s"] for r in rs),
                           "settings": {**rs[0]["settings"], "runs": len(rs)}}
        e["efficiency_runs"] = {key: [r[key] for r in rs] for key in ("decode_tokens_per_s", "prefill_tokens_per_s")}
    for e in entries[1:]:
        e["efficiency_vs_first"] = compare(entries[0]["efficiency"], e["efficiency"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default"], help="model sources: 'default', folders, .gguf")
    ap.add_argument("--tasks", default="all",
                    help="comma-separated task names, 'paper', 'all', or 'none' (only --ppl-window / --efficiency)")
    ap.add_argument("--limit", type=int, default=500, help="examples per task, seeded (0: full data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--ppl-window", type=int, default=0, help="also WikiText-2 test perplexity at this window")
    ap.add_argument("--ppl-max-tokens", type=int, default=None, help="perplexity on the first N tokens (default all)")
    ap.add_argument("--efficiency", action="store_true", help="also measure speed and memory (first = reference)")
    ap.add_argument("--efficiency-repeats", type=int, default=3, help="timed repeats (median) of each measurement")
    ap.add_argument("--efficiency-runs", type=int, default=1,
                    help="measure speed this many times, each model loaded afresh every time, round-robin over the "
                         "models; the report gives the median and every run (speed varies from one load to the next)")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/eval_suite.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [] if args.tasks.strip().lower() == "none" else resolve_tasks(args.tasks)
    if not tasks and not (args.ppl_window or args.efficiency):
        ap.error("--tasks none needs --ppl-window or --efficiency (otherwise there is nothing to measure)")
    limit = args.limit or None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "settings": {"tasks": tasks, "limit": limit, "limit_note": "per task; MMLU: over all 57 subjects together",
                     "seed": args.seed, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "machine": platform.platform(),
                     "command": " ".join(sys.argv)},
        "models": [],
    }
    t_all = time.perf_counter()
    for source in args.models:
        t = time.perf_counter()
        model, tok = load(source)
        entry: dict = {"source": source, "load_seconds": time.perf_counter() - t, "tasks": {}}
        report["models"].append(entry)
        for name in tasks:
            res = evaluate(model, tok, [name], limit=limit, batch_size=args.batch_size, seed=args.seed,
                           cache=not args.no_cache)
            r = res["tasks"][name]
            r["wall_seconds"] = res["seconds"]
            entry["tasks"][name] = r
            entry["settings"] = res["settings"]
            log(f"{source} {name}: {r['metric_used']} {r['value']:.4f} ± {r[r['metric_used'] + '_stderr']:.4f} "
                f"(n={r['n']}) in {res['seconds']:.0f} s" + (" [cached]" if r["cached"] else ""))
            entry["average"] = average(entry["tasks"])
            out.write_text(json.dumps(report, indent=1))
        if args.ppl_window:
            ppl = perplexity(model, tok, "wikitext2", "test", window=args.ppl_window, max_tokens=args.ppl_max_tokens)
            entry["perplexity"] = ppl
            log(f"{source} perplexity {format_perplexity(ppl)}")
        if args.efficiency:
            entry["efficiency"] = efficiency(model, tok, repeats=args.efficiency_repeats)
            if report["models"][0] is not entry and "efficiency" in report["models"][0]:
                entry["efficiency_vs_first"] = compare(report["models"][0]["efficiency"], entry["efficiency"])
        entry["seconds"] = time.perf_counter() - t
        if "average" in entry:
            log(f"{source}: average {entry['average']['value']:.4f} ({entry['average']['metric']}) "
                f"in {entry['seconds']:.0f} s")
        if "efficiency" in entry:
            log_speed(source, entry["efficiency"])
        out.write_text(json.dumps(report, indent=1))
        del model
    if args.efficiency and args.efficiency_runs > 1:
        efficiency_runs(report, args)
    report["seconds"] = time.perf_counter() - t_all
    out.write_text(json.dumps(report, indent=1))
    log(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
