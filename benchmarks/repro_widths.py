"""Check that a refactor kept behaviour: re-prune the default model to a target with each method of a committed
``compare_methods`` result file, and compare the per-layer widths and parameter counts (and, with --ppl, the
WikiText-2 test perplexity at 512-token windows of the first N tokens) with the committed ones. Writes JSON.

    .venv/bin/python benchmarks/repro_widths.py --target 0.9 --methods flap,shortgpt,wanda-sp,llm-pruner,adaptive \\
        --ppl flap --out runs/repro90.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import pruner
from pruner.model.structure import layer_widths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="benchmarks/results/compare_methods_default.json")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--methods", default="flap,shortgpt,wanda-sp,llm-pruner,adaptive")
    ap.add_argument("--ppl", default="", help="methods whose perplexity is compared too (comma-separated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    committed = json.loads(Path(args.results).read_text())
    ppl_tokens = int(committed["runs"][1]["perplexity"]["512"]["max_tokens"])
    rows = []
    for method in args.methods.split(","):
        ref = next(r for r in committed["runs"] if r["method"] == method and r.get("target") == args.target)
        model, tok = pruner.load_model("default", progress=None)
        cfg = {k: v for k, v in ref["config"].items() if k != "target"}
        p = pruner.Pruner(model, tok, pruner.PruneConfig(target=args.target, **cfg), keep_history=0)
        t0 = time.perf_counter()
        p.run()
        widths = [w.to_dict() for w in layer_widths(model)]
        row = {"method": method, "seconds": time.perf_counter() - t0,
               "params": pruner.count_parameters(model)["total"], "params_committed": ref["params"],
               "widths_equal": widths == ref["widths"], "params_equal": pruner.count_parameters(model)["total"] == ref["params"]}
        if method in args.ppl.split(","):
            r = pruner.PerplexityConfig(window=512, max_tokens=ppl_tokens).measure(model, tok)
            row.update(ppl_512=r["perplexity"], ppl_512_committed=ref["perplexity"]["512"]["perplexity"])
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"target": args.target, "results": args.results, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
