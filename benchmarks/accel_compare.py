"""Benchmark (issue 4): one-shot vs Adapt-Accel vs uniform-incremental, same model, target and token budget.

Runs, each from a fresh copy of the model:

* ``oneshot``  — adaptive pruning straight to the target, then training on all tokens;
* ``accel``    — Adapt-Accel: N stages of adaptive pruning, each followed by its linear token share;
* ``uniform``  — the same incremental schedule with uniform allocation (A = 0).

WikiText-2 test perplexity (512-token windows, no BOS, the first ``--eval-max-tokens`` tokens after every
stage and ``--final-eval-max-tokens`` at the end), training tokens/s and peak memory per run. The JSON file is
rewritten after every run, so an interrupted benchmark keeps the finished runs.

CPU budget used for the figures in docs/accel.md and the README (under an hour on a 2-core machine)::

    .venv/bin/python benchmarks/accel_compare.py --tokens 131072 --stages 5 --lr 1e-4 \\
        --n-windows 16 --window 128 --eval-max-tokens 4096 --final-eval-max-tokens 32768 \\
        --zero-shot-limit 200 --out benchmarks/results/accel_compare_cpu.json
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

from pruner.evaluation.perplexity import PerplexityConfig, format_perplexity
from pruner.io.models import load_model
from pruner.pruning.pruner import PruneConfig
from pruner.training.accel import (
    AccelConfig,
    AccelDone,
    AccelStart,
    StagePruned,
    StageTrained,
    TrainStep,
    iter_accel,
)
from pruner.training.train import TrainConfig, make_accelerator

RUNS = {
    "oneshot": {"mode": "oneshot", "method": "adaptive"},
    "accel": {"mode": "incremental", "method": "adaptive"},
    "uniform": {"mode": "incremental", "method": "uniform"},
}


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def config_for(name: str, args) -> AccelConfig:
    r = RUNS[name]
    return AccelConfig(
        target=args.target, stages=args.stages, tokens=args.tokens, mode=r["mode"],
        prune=PruneConfig(method=r["method"], criterion="taylor", amplitude=args.amplitude, step=args.step,
                          calibration=args.calibration, n_windows=args.n_windows, window=args.window, seed=args.seed),
        train=TrainConfig(lr=args.lr, seq_len=args.seq_len, batch_size=args.batch_size, data=args.data,
                          seed=args.seed),
        eval=PerplexityConfig(window=512, max_tokens=args.eval_max_tokens), final_eval_max_tokens=args.final_eval_max_tokens,
        eval_initial=True,
    )


def run_one(name: str, args, acc) -> dict:
    model, tok = load_model(args.model, device="cpu", dtype="float32", progress=None)
    cfg = config_for(name, args)
    t0 = time.perf_counter()
    report = None
    for ev in iter_accel(model, tok, cfg, accelerator=acc):
        if isinstance(ev, AccelStart) and ev.initial:
            _log(f"[{name}] start {ev.initial['params']:,} params, ppl "
                 f"{format_perplexity(ev.initial['perplexity'])}; steps per stage {[s['steps'] for s in ev.plan]}")
        elif isinstance(ev, StagePruned):
            _log(f"[{name}] stage {ev.stage} pruned to {ev.fraction:.1%}: ppl {format_perplexity(ev.perplexity)}")
        elif isinstance(ev, TrainStep) and (ev.step == ev.steps or ev.step % 5 == 0):
            _log(f"[{name}] stage {ev.stage} step {ev.step}/{ev.steps} loss {ev.loss:.3f} {ev.tokens_per_s:.0f} tok/s")
        elif isinstance(ev, StageTrained):
            _log(f"[{name}] stage {ev.stage} trained: ppl {format_perplexity(ev.perplexity)}")
        elif isinstance(ev, AccelDone):
            report = ev.report
    seconds = time.perf_counter() - t0
    train_s = sum(s["train"]["seconds"] for s in report["stages"])
    prune_s = sum(s["prune"]["seconds"] for s in report["stages"])
    tokens = report["train_tokens"]
    summary = {
        "final_params": report["final"]["params"], "final_fraction": report["final"]["fraction"],
        "final_perplexity": report["final"]["perplexity"],
        "after_prune_perplexity": [s["prune"]["perplexity"]["perplexity"] for s in report["stages"]],
        "after_train_perplexity": [s["train"]["perplexity"]["perplexity"] for s in report["stages"]],
        "train_tokens": tokens, "train_seconds": train_s, "train_tokens_per_s": tokens / train_s if train_s else None,
        "prune_seconds_incl_eval": prune_s, "wall_seconds": seconds,
        "peak_memory_bytes": report["peak_memory_bytes"], "peak_memory_kind": report["peak_memory_kind"],
        "peak_memory_note": "process-wide peak RSS on a CPU: the maximum over this run and the runs before it "
                            "in the same process (includes the per-stage snapshot kept for cancel)"
                            if report["peak_memory_kind"] == "process peak RSS" else "",
    }
    if args.zero_shot_limit > 0:
        from pruner.evaluation import evaluate

        _log(f"[{name}] zero-shot: the paper's seven tasks, {args.zero_shot_limit} examples each ...")
        zs = evaluate(model, tok, "paper", limit=args.zero_shot_limit, cache=False)
        summary["zero_shot"] = {"limit": args.zero_shot_limit, "seed": zs["settings"]["seed"],
                                "average": zs["average"]["value"], "average_metric": zs["average"]["metric"],
                                "tasks": {t: {"metric": r["metric_used"], "value": r["value"],
                                              "stderr": r.get(f"{r['metric_used']}_stderr"), "n": r["n"]}
                                          for t, r in zs["tasks"].items()},
                                "seconds": zs["seconds"]}
        _log(f"[{name}] zero-shot average {zs['average']['value']:.4f} ({zs['seconds']:.0f} s)")
    del model
    return {"summary": summary, "report": report}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32_768)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--data", default="wiki,c4,stories")
    ap.add_argument("--amplitude", type=float, default=0.02)
    ap.add_argument("--step", type=float, default=0.02)
    ap.add_argument("--calibration", default="wiki")
    ap.add_argument("--n-windows", type=int, default=16)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--eval-max-tokens", type=int, default=4096)
    ap.add_argument("--final-eval-max-tokens", type=int, default=16_384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="oneshot,accel,uniform")
    ap.add_argument("--cpu", action="store_true", help="force the CPU even where CUDA is available")
    ap.add_argument("--zero-shot-limit", type=int, default=0,
                    help="also the paper's seven zero-shot tasks on each final model, N examples each (0: skip)")
    ap.add_argument("--out", default="runs/accel_bench.json")
    args = ap.parse_args(argv)

    acc = make_accelerator("auto", cpu=True if args.cpu else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "issue 4: one-shot vs Adapt-Accel vs uniform incremental",
        "settings": vars(args),
        "evaluation": "WikiText-2 test perplexity, 512-token windows, no BOS; first eval_max_tokens tokens after "
                      "each prune/train, first final_eval_max_tokens tokens at the end",
        "machine": {"platform": platform.platform(), "device": str(acc.device), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "load_average_start": os.getloadavg(),
                    "note": "times and tokens/s depend on other load on the machine: see the load averages"},
        "runs": {},
    }
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        _log(f"=== {name} ===")
        result["runs"][name] = run_one(name, args, acc)
        result["machine"]["load_average_now"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1))
        s = result["runs"][name]["summary"]
        _log(f"[{name}] final {s['final_fraction']:.1%} params: ppl {format_perplexity(s['final_perplexity'])}; "
             f"train {s['train_tokens_per_s']:.0f} tokens/s; peak {s['peak_memory_bytes'] / 2**30:.2f} GiB "
             f"({s['peak_memory_kind']}); {s['wall_seconds']:.0f} s")
    _log(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
