"""Benchmark (issue 20): the whole ``prune`` command's peak memory, measured from outside, against the memory plan.

Per model and dtype, ``/usr/bin/time -v python -m pruner prune ... --report R`` gives the process's peak RSS (every
phase: load, importance passes, surgery, save, perplexity), taken above the bare runtime
(``python -c "import torch, transformers, pruner"``, measured the same way) and divided by the fp32 weight bytes.
Beside it: the step records' per-pass figures (RSS before each pass, its peak, what it added), the WikiText-2
perplexity after the prune, and the memory plan's prediction of every phase (pruner.training.memory_plan).

Goals (issue 20), prune to 90 % on the CPU: fp32 ≤ 2.0× the weight bytes above the runtime; bf16 ≤ 1.0× the fp32
weight bytes, with perplexity within 2 % of the fp32 run. The JSON is rewritten after every run.

    .venv/bin/python benchmarks/memory_run.py --models default,qwen2.5-0.5b --dtypes float32,bfloat16 \\
        --out benchmarks/results/memory_run_cpu.json
    .venv/bin/python benchmarks/memory_run.py report benchmarks/results/memory_run_cpu.json   # the README's table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"float32": 2.0, "bfloat16": 1.0}  # peak above the runtime / fp32 weight bytes


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: its peak RSS (bytes), wall seconds, exit code and the output tail."""
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True, env=env)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", res.stderr)
    secs = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.group(1).split(":")))) if wall else None
    return {"peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None, "seconds": secs, "returncode": res.returncode,
            "tail": (res.stdout + res.stderr)[-2000:] if res.returncode else ""}


def bare_runtime(python: str, repeats: int = 3) -> dict:
    runs = [timed([python, "-c", "import torch, transformers, pruner"])["peak_rss_bytes"] for _ in range(repeats)]
    return {"peak_rss_bytes": sorted(runs)[len(runs) // 2], "runs": runs,
            "command": 'python -c "import torch, transformers, pruner"'}


def plan(name: str, dtype: str, args) -> dict:
    from pruner.config import PruneConfig
    from pruner.training.memory_plan import model_shape, plan_memory

    cfg = PruneConfig(n_windows=args.n_windows, window=args.window, batch_size=args.batch_size,
                      **({"step": args.step} if args.step is not None else {}))
    p = plan_memory(model_shape(name), dtype, "cpu", "1TB", prune=cfg)
    return {ph.name: {"bytes": ph.bytes, "parts": ph.parts} for ph in p.phases}


def prune_run(name: str, dtype: str, args) -> dict:
    out = Path(tempfile.mkdtemp(prefix="memory-run-"))
    report = out / "report.json"
    cmd = [args.python, "-m", "pruner", "prune", "--model", name, "--target", str(args.target), "--device", "cpu",
           "--dtype", dtype, "--n-windows", str(args.n_windows), "--window", str(args.window), "--batch-size",
           str(args.batch_size), "--out", str(out / "model"), "--report", str(report)]
    cmd += ["--step", str(args.step)] if args.step is not None else []
    cmd += ["--no-ppl"] if args.no_ppl else ["--ppl-windows", "512", "--ppl-max-tokens", str(args.ppl_max_tokens)]
    log(f"{name} {dtype}: {' '.join(cmd[1:])}")
    run = timed(cmd, {**os.environ, "PYTHONPATH": str(ROOT)})
    result = {"command": "python " + " ".join(cmd[1:]), **run}
    if report.is_file():
        rep = json.loads(report.read_text())
        rec = rep["record"]
        result["params"] = {"original": rec["original_params"]["total"], "final": rec["final_params"]["total"]}
        result["sub_steps"] = len(rec["steps"])
        result["passes"] = [{k: (s.get("importance_memory") or {}).get(k) for k in
                             ("before_bytes", "peak_bytes", "pass_extra_bytes", "ratio_to_weights")}
                            | {"seconds": s["seconds_importance"]} for s in rec["steps"]]
        result["perplexity"] = rep["perplexity"]
        # each importance pass resets the kernel's peak counter to measure itself, which lowers what
        # /usr/bin/time reports to the peak since the last pass; the record keeps the peak of the stretches
        # before (load, earlier passes, surgery): the whole run's peak is the larger of the two
        result["time_peak_rss_bytes"] = result["peak_rss_bytes"]
        result["record_peak_bytes"] = rec.get("peak_memory_bytes")
        result["peak_rss_bytes"] = max(result["peak_rss_bytes"] or 0, rec.get("peak_memory_bytes") or 0) or None
    shutil.rmtree(out, ignore_errors=True)
    return result


def summarise(r: dict, runtime: int, dtype: str) -> None:
    """Add the peak above the runtime, its ratio to the fp32 weight bytes, and the goal."""
    if r.get("peak_rss_bytes") is None or "params" not in r:
        return
    fp32 = r["params"]["original"] * 4
    r["fp32_weight_bytes"] = fp32
    r["above_runtime_bytes"] = r["peak_rss_bytes"] - runtime
    r["ratio_to_fp32_weights"] = r["above_runtime_bytes"] / fp32
    r["goal"] = GOALS.get(dtype)
    r["meets_goal"] = r["goal"] is not None and r["ratio_to_fp32_weights"] <= r["goal"]


def report(path: str) -> str:
    data = json.loads(Path(path).read_text())
    gb, rt = 1e9, data["runtime"]["peak_rss_bytes"]
    rows = [f"Bare runtime ({data['runtime']['command']}): {rt / gb:.2f} GB peak RSS.", "",
            "| model | dtype | whole-run peak RSS | above runtime / fp32 weights (goal) | memory plan: the prune's "
            "peak phase (vs measured) | per-pass peak RSS (GB) | WikiText-2 ppl after | wall |",
            "|---|---|---|---|---|---|---|---|"]
    for name, by_dtype in data["models"].items():
        fp32_ppl = ((by_dtype.get("float32") or {}).get("perplexity") or [{}])[0].get("perplexity")
        for dtype, r in by_dtype.items():
            if "ratio_to_fp32_weights" not in r:
                rows.append(f"| {name} | {dtype} | failed (exit {r.get('returncode')}) | | | | | |")
                continue
            passes = ", ".join(f"{p['peak_bytes'] / gb:.2f}" for p in r["passes"] if p.get("peak_bytes"))
            ppl = r["perplexity"][0]["perplexity"] if r.get("perplexity") else None
            ppl_s = "—" if ppl is None else f"{ppl:.2f}"
            if ppl is not None and fp32_ppl and dtype != "float32":
                ppl_s += f" ({ppl / fp32_ppl - 1:+.1%} vs fp32)"
            phase, pred = max(((k, v["bytes"]) for k, v in r["plan"].items() if k != "training"), key=lambda kv: kv[1])
            rows.append(f"| {name} | {dtype} | {r['peak_rss_bytes'] / gb:.2f} GB | {r['ratio_to_fp32_weights']:.2f}× "
                        f"({r['goal']}×, {'met' if r['meets_goal'] else 'not met'}) | {phase} {pred / gb:.2f} GB "
                        f"({pred / r['peak_rss_bytes'] - 1:+.0%}) | {passes} | {ppl_s} | {r['seconds']:.0f} s |")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "report":
        print(report(sys.argv[2]))
        return
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--models", default="default,qwen2.5-0.5b")
    a.add_argument("--dtypes", default="float32,bfloat16")
    a.add_argument("--target", type=float, default=0.9)
    a.add_argument("--n-windows", type=int, default=8)
    a.add_argument("--window", type=int, default=128)
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--step", type=float, default=None, help="Δ per sub-step (default: the prune command's)")
    a.add_argument("--ppl-max-tokens", type=int, default=32_768)
    a.add_argument("--no-ppl", action="store_true")
    a.add_argument("--python", default=sys.executable)
    a.add_argument("--out", required=True)
    a.add_argument("--resume", action="store_true", help="keep the runs already in --out that finished")
    args = a.parse_args()
    if not Path("/usr/bin/time").is_file():
        sys.exit("memory_run: needs GNU time at /usr/bin/time (apt-get install time)")
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": {
        "cpu_count": os.cpu_count(), "loadavg_1m_at_start": os.getloadavg()[0]}, "models": {}}
    old = json.loads(Path(args.out).read_text()) if args.resume and Path(args.out).is_file() else {}
    result["models"] = {name: {d: r for d, r in by.items() if r.get("returncode") == 0}
                        for name, by in old.get("models", {}).items()}
    result["runtime"] = bare_runtime(args.python)
    log(f"bare runtime: {result['runtime']['peak_rss_bytes'] / 1e9:.2f} GB")
    for name in [m for m in args.models.split(",") if m]:
        for dtype in [d for d in args.dtypes.split(",") if d]:
            if dtype in result["models"].get(name, {}):
                log(f"{name} {dtype}: kept from {args.out}")
                continue
            r = prune_run(name, dtype, args)
            r["plan"] = plan(name, dtype, args)
            summarise(r, result["runtime"]["peak_rss_bytes"], dtype)
            result["models"].setdefault(name, {})[dtype] = r
            log(f"{name} {dtype}: peak {r.get('peak_rss_bytes', 0) / 1e9:.2f} GB, "
                f"{r.get('ratio_to_fp32_weights', float('nan')):.2f}× fp32 weights above the runtime")
            Path(args.out).write_text(json.dumps(result, indent=1))
    result["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
