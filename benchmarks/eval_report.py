"""Print the Markdown tables of ``eval_suite.py`` results: accuracy per task and model, averages, LAMBADA
perplexity, WikiText-2 perplexity, efficiency (with ratios to the first model) and the time each model took.

    .venv/bin/python benchmarks/eval_report.py benchmarks/results/eval_suite_limit500.json [MORE.json ...]

Several files are read as one list of models (the first model of the first file is the reference); a model
that appears in several files (the same ``source``) is one column with the union of its tasks. A task that a
model was not run on shows "—", and the averages are taken over the tasks every model has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pruner.evaluation import PAPER_TASKS, average, compare


def label(source: str) -> str:
    return "dense" if source == "default" else Path(source).name


def fmt(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def speed(model: dict, key: str, digits: int) -> str:
    """A speed, with its range over the runs when ``--efficiency-runs`` measured it more than once."""
    runs = model.get("efficiency_runs", {}).get(key, [])
    v = f"{model['efficiency'][key]:.{digits}f}"
    return v + (f" ({min(runs):.{digits}f}–{max(runs):.{digits}f})" if len(runs) > 1 else "")


def mean(model: dict, tasks: list[str]) -> str:
    """The average over ``tasks`` (bold) with its standard error."""
    a = average({t: model["tasks"][t] for t in tasks})
    return f"**{fmt(a['value'])}**" + (f" ± {fmt(a['stderr'])}" if a.get("stderr") is not None else "")


def merge(entries: list[dict]) -> list[dict]:
    """One entry per model source, in first-seen order: a model evaluated in several files (e.g. MMLU run
    later on its own) gets the union of its tasks (the later file wins a task run twice), the perplexity and
    efficiency of whichever file has them (the later file wins), and the sum of the seconds spent on tasks (an
    efficiency-only entry, ``--tasks none``, adds no evaluation time)."""
    merged: dict[str, dict] = {}
    for m in entries:
        into = merged.setdefault(m["source"], {k: v for k, v in m.items() if k != "seconds"} | {"tasks": {}})
        into["tasks"].update(m["tasks"])
        for key in ("perplexity", "efficiency", "efficiency_runs"):
            if key in m:
                into[key] = m[key]
        if "seconds" in m and m["tasks"]:
            into["seconds"] = into.get("seconds", 0) + m["seconds"]
    return list(merged.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+")
    args = ap.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in args.results]
    d = runs[0]
    models = merge([m for r in runs for m in r["models"]])
    names = [label(m["source"]) for m in models]
    tasks = list(dict.fromkeys(t for r in runs for t in r["settings"]["tasks"]))
    common = [t for t in tasks if all(t in m["tasks"] for m in models)]
    lines = ["| task | metric | n | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for t in tasks:
        first = next(m["tasks"][t] for m in models if t in m["tasks"])
        metric = first["metric_used"]
        cells = [f"{fmt(m['tasks'][t]['value'])} ± {fmt(m['tasks'][t].get(metric + '_stderr'))}"
                 if t in m["tasks"] else "—" for m in models]
        lines.append(f"| {first['title']} | {metric} | {first['n']} of {first['n_total']} | " + " | ".join(cells) + " |")
    if all(t in common for t in PAPER_TASKS):
        lines.append("| **average, paper's 7** | acc_norm / acc | | "
                     + " | ".join(mean(m, list(PAPER_TASKS)) for m in models) + " |")
    lines.append(f"| **average, {len(common)} tasks every model ran** | acc_norm / acc | | "
                 + " | ".join(mean(m, common) for m in models) + " |")
    if "lambada" in common:
        lines.append("| LAMBADA last-word perplexity | ppl | | "
                     + " | ".join(fmt(m["tasks"]["lambada"].get("perplexity"), 2) for m in models) + " |")
    if all("perplexity" in m for m in models):
        p = models[0]["perplexity"]
        lines.append(f"| WikiText-2 {p['split']} perplexity ({p['window']}-token windows, no BOS, "
                     f"{p['tokens_scored']:,} tokens) | ppl | | "
                     + " | ".join(fmt(m["perplexity"]["perplexity"], 2) for m in models) + " |")
    print("\n".join(lines))
    print()
    if all("efficiency" in m for m in models):
        e0 = models[0]["efficiency"]
        print(f"Efficiency ({e0['settings']['device']}, {e0['settings']['dtype']}, {e0['settings']['threads']} threads; "
              f"decode: batch 1, {e0['settings']['prompt_tokens']}-token prompt, {e0['settings']['new_tokens']} new "
              f"tokens, KV cache; prefill: {e0['settings']['prefill_batch']} × {e0['settings']['prefill_tokens']} "
              f"tokens; median of {e0['settings']['repeats']} after {e0['settings']['warmup']} warm-up"
              + (f"; then the median over {e0['settings']['runs']} runs, each model loaded afresh every run, "
                 "range in brackets" if e0["settings"].get("runs", 1) > 1 else "") + "):")
        print()
        print("| model | parameters | decoder layers | MACs / token | decode tokens/s | prefill tokens/s | "
              "decode speed-up | ideal (MACs) | prefill speed-up | ideal (decoder MACs) | ideal (params) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n, m in zip(names, models, strict=True):
            e = m["efficiency"]
            c = compare(e0, e) if m is not models[0] else {}
            print(f"| {n} | {e['params']['total']:,} | {e['params']['decoder_layers']:,} | "
                  f"{e['macs_per_token']['total'] / 1e6:.1f} M | {speed(m, 'decode_tokens_per_s', 1)} | "
                  f"{speed(m, 'prefill_tokens_per_s', 0)} | {fmt(c.get('decode_speedup'), 2)} | "
                  f"{fmt(c.get('ideal_speedup_from_macs'), 2)} | {fmt(c.get('prefill_speedup'), 2)} | "
                  f"{fmt(c.get('ideal_prefill_speedup_from_decoder_macs'), 2)} | "
                  f"{fmt(c.get('ideal_speedup_from_params'), 2)} |")
        print()
    times = ", ".join(f"{n} {m['seconds'] / 60:.1f} min" for n, m in zip(names, models, strict=True) if "seconds" in m)
    total = sum(m.get("seconds", 0) for m in models)
    print(f"Time: {times}" + (f"; {total / 60:.1f} min of evaluation in all" if total else "") + ".")
    print(f"Settings: limit {d['settings']['limit']} per task ({d['settings']['limit_note']}), seed "
          f"{d['settings']['seed']}, batch {d['settings']['batch_size']}, {d['settings']['threads']} threads, "
          f"torch {d['settings']['torch']}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
