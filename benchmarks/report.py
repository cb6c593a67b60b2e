"""Render a benchmark JSON result as Markdown tables (the README's tables are pasted from this output).

Usage: .venv/bin/python benchmarks/report.py runs/core_prune.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def core_prune(d: dict) -> str:
    windows = [p["window"] for p in d["dense"]["perplexity"]]
    head = "| model | method | parameters | % of original | " + " | ".join(
        f"WikiText-2 test ppl ({w}-tok windows)" for w in windows) + " | sub-steps | peak RSS |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    dense = d["dense"]
    lines.append(f"| dense | — | {dense['params']['total']:,} | 100.0 % | "
                 + " | ".join(f"{p['perplexity']:.2f}" for p in dense["perplexity"]) + " | — | — |")
    for r in sorted(d["runs"], key=lambda r: (-r["target"], r["method"])):
        lines.append(
            f"| {r['target']:.0%} target | {r['method']} | {r['params']['total']:,} | {r['fraction_of_original']:.2%} | "
            + " | ".join(f"{p['perplexity']:.2f}" for p in r["perplexity"])
            + f" | {r['sub_steps_total']} | {r['peak_rss_bytes_during_pruning'] / 2**30:.2f} GiB |")
    t = d.get("importance_timing")
    ppl0 = dense["perplexity"][0]
    notes = [
        "",
        f"Perplexity: {d['settings']['perplexity']} ({ppl0['tokens_scored']:,} tokens scored at {ppl0['window']}).",
        f"Calibration: {d['settings']['calibration']}; Taylor criterion, A = {d['settings']['amplitude']}, "
        f"Δ = {d['settings']['step']}.",
    ]
    if t:
        notes.append(
            f"Importance measurement (layer cosines + Taylor scores of every unit, one pass) over "
            f"{t['calibration_tokens']:,} tokens: {t['importance_measurement_s']:.1f} s vs "
            f"{t['plain_forward_backward_s']:.1f} s for a plain forward+backward over the same tokens "
            f"(ratio {t['ratio']:.2f}×).")
    runs = d["runs"]
    if runs:
        notes.append(
            f"Surgery per sub-step: mean {sum(r['surgery_s_mean'] for r in runs) / len(runs):.2f} s, "
            f"max {max(r['surgery_s_max'] for r in runs):.2f} s; importance per sub-step: mean "
            f"{sum(r['importance_s_mean'] for r in runs) / len(runs):.1f} s.")
    if d.get("machine"):
        notes.append(f"Machine: {d['machine']}.")
    return "\n".join(lines + notes)


def main() -> None:
    for path in sys.argv[1:]:
        d = json.loads(Path(path).read_text())
        if d.get("benchmark") == "core_prune":
            print(core_prune(d))
        else:
            print(json.dumps(d, indent=1)[:4000])


if __name__ == "__main__":
    main()
