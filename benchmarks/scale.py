"""Benchmark (issue 12): how the cost grows with the model — the default model, Gemma-3-270M and Qwen2.5-0.5B.

Per model (those present; the shipped ones after ``adapt-pruner fetch NAME``):

* load time: first (de-quantizing the GGUF, from the fetch record or timed here for the default model) and cached;
* one importance pass (Taylor, the lean backward): seconds, the ratio to a plain forward+backward of the model's
  own loss on the same tokens, its peak memory and the ratio of (weights + what the pass adds) to the weights;
* one prune to 90 % of the parameters (adaptive, Taylor, score policy): sub-steps, surgery seconds, WikiText-2
  test perplexity (512-token windows, no BOS) against the dense model;
* with ``--compare80`` (Qwen2.5-0.5B): adaptive vs uniform at 80 %.

The JSON file is rewritten after every model, so an interrupted run keeps what it finished.

    .venv/bin/python benchmarks/scale.py --models default,gemma3-270m,qwen2.5-0.5b --compare80 qwen2.5-0.5b \\
        --out benchmarks/results/scale_cpu.json
    .venv/bin/python benchmarks/scale.py report benchmarks/results/scale_cpu.json    # the README's table
    # the 1.5 B row: load, importance pass vs plain fwd+bwd and dense perplexity here; its prune from outside
    .venv/bin/python benchmarks/scale.py --models qwen2.5-coder-1.5b --dtype bfloat16 --no-prune --ppl-tokens 8192 \
        --compare80 "" --out benchmarks/results/scale_cpu_1.5b.json
    .venv/bin/python benchmarks/memory_run.py --models qwen2.5-coder-1.5b --dtypes bfloat16 --target 0.8 \
        --ppl-max-tokens 8192 --out benchmarks/results/memory_run_1.5b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import pruner
from pruner.data import calibration_windows
from pruner.importance.measure import measure_importance
from pruner.io.shipped import SHIPPED, is_fetched, model_dir
from pruner.runtime.devices import float32_matmuls_for, slow_half_note
from pruner.runtime.memory import tame_allocator, touch_weights

#: Per model: calibration windows and per-step budget (the bigger models take fewer, larger sub-steps on a CPU).
SETTINGS = {"default": dict(n_windows=32, window=128, step=0.02),
            "gemma3-270m": dict(n_windows=16, window=128, step=0.04),
            "qwen2.5-0.5b": dict(n_windows=16, window=128, step=0.04),
            # 1.78 B parameters on 2 cores: one batch of calibration (each layer's gradients freed during the
            # backward) and larger sub-steps
            "qwen2.5-coder-1.5b": dict(n_windows=8, window=128, step=0.1)}
PPL = pruner.PerplexityConfig(window=512, max_tokens=32_768)
#: Gemma is trained with <bos> at the start of every sequence and is far off without it; the others not.
BOS = {"gemma3-270m": True}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_1m_at_start": os.getloadavg()[0]}


def first_load(name: str) -> dict | None:
    """The first load: the GGUF de-quantized (default model: timed now in a temporary cache; shipped models:
    the fetch's own record)."""
    if name == "default":
        tmp = tempfile.mkdtemp(prefix="adapt-pruner-first-")
        old = os.environ.get("ADAPT_PRUNER_CACHE")
        os.environ["ADAPT_PRUNER_CACHE"] = tmp
        try:
            t = time.perf_counter()
            pruner.load_model("default", device="cpu", progress=None)
            return {"seconds": time.perf_counter() - t, "what": "de-quantize the GGUF and cache safetensors"}
        finally:
            if old is None:
                del os.environ["ADAPT_PRUNER_CACHE"]
            else:
                os.environ["ADAPT_PRUNER_CACHE"] = old
            shutil.rmtree(tmp, ignore_errors=True)
    rec = model_dir(name) / "fetch_record.json"
    return json.loads(rec.read_text()) if rec.is_file() else None


def plain_backward_seconds(model, windows: torch.Tensor, batch: int) -> float:
    """The model's own loss, forward + backward, gradients for the same (scored) matrices, no checkpointing."""
    from pruner.model.adapters import adapter_for

    ad = adapter_for(model)
    scored = [p for layer in ad.layers(model) for part in ad.parts(layer).values()
              for p in (part.parameters() if isinstance(part, torch.nn.Module) else [part])]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in scored:
        p.requires_grad_(True)
    t = time.perf_counter()
    for i in range(0, windows.shape[0], batch):
        b = windows[i : i + batch].to(next(model.parameters()).device)
        (model(input_ids=b, labels=b, use_cache=False).loss * b.shape[0] / windows.shape[0]).backward()
    sec = time.perf_counter() - t
    for p, f in zip(model.parameters(), flags, strict=True):
        p.requires_grad_(f)
        p.grad = None
    return sec


def ppl(model, tok, name: str, max_tokens: int | None = None) -> dict:
    return replace(PPL, bos=BOS.get(name, False), max_tokens=max_tokens or PPL.max_tokens).measure(model, tok)


def prune_to(model, tok, target: float, method: str, s: dict, name: str, ppl_tokens: int | None = None) -> dict:
    cfg = pruner.PruneConfig(target=target, method=method, n_windows=s["n_windows"], window=s["window"],
                             step=s["step"])
    p = pruner.Pruner(model, tok, cfg)
    t = time.perf_counter()
    for rec in p.iter_run():
        m = rec.importance_memory or {}
        log(f"  {method} sub-step {rec.index + 1}: {rec.fraction_of_original:.2%}, importance "
            f"{rec.seconds_importance:.1f} s, surgery {rec.seconds_surgery:.2f} s, pass "
            f"{m.get('ratio_to_weights', float('nan')):.2f}× weights")
    seconds = time.perf_counter() - t
    steps = p.record.steps
    out = {"target": target, "method": method, "settings": cfg.to_dict(), "params": p.record.final_params["total"],
           "fraction": p.record.final_params["total"] / p.record.original_params["total"],
           "sub_steps": len(steps), "seconds": seconds,
           "seconds_importance": [r.seconds_importance for r in steps],
           "seconds_surgery": [r.seconds_surgery for r in steps],
           "importance_memory": [r.importance_memory for r in steps],
           "peak_memory_bytes": p.record.peak_memory_bytes, "peak_memory_kind": p.record.peak_memory_kind}
    out["perplexity"] = ppl(model, tok, name, ppl_tokens)
    log(f"  {method} {target:.0%}: {out['fraction']:.2%} in {seconds:.0f} s, ppl {out['perplexity']['perplexity']:.2f}")
    return out


def bench(name: str, args) -> dict:
    s = SETTINGS.get(name, SETTINGS["default"])
    ppl_cfg = replace(PPL, max_tokens=args.ppl_tokens or PPL.max_tokens)
    out = {"model": name, "settings": {**s, "batch_size": 8, "criterion": "taylor", "attention": "score",
                                       "calibration": "wiki", "perplexity": ppl_cfg.to_dict()}}
    out["first_load"] = first_load(name) if args.first_load else None
    t = time.perf_counter()
    model, tok = pruner.load_model(name, device=args.device, dtype=args.dtype, progress=None)
    out["cached_load_seconds"] = time.perf_counter() - t
    out["half_note"] = slow_half_note(model)  # bf16 on a CPU without bf16 instructions: products in float32
    with float32_matmuls_for(model):
        return _bench(name, args, s, out, model, tok)


def _bench(name: str, args, s: dict, out: dict, model, tok) -> dict:
    info = pruner.describe(model)
    out["architecture"] = {k: info[k] for k in ("model_type", "layers", "hidden_size", "head_dim", "vocab_size",
                                                 "params", "dtype", "device")}
    out["architecture"].update(num_heads=info["num_heads"][0], num_kv_heads=info["num_kv_heads"][0],
                               intermediate_size=info["intermediate_size"][0])
    log(f"{name}: {info['params']['total']:,} parameters, loaded in {out['cached_load_seconds']:.1f} s")
    touch_weights(model)
    windows = calibration_windows(tok, "wiki", s["n_windows"], s["window"], seed=0)
    imp = measure_importance(model, windows, "taylor", batch_size=8)
    plain = plain_backward_seconds(model, windows, 8)
    out["importance"] = {"seconds": imp.seconds, "tokens": imp.tokens, "plain_forward_backward_seconds": plain,
                         "ratio_to_plain": imp.seconds / plain, "memory": imp.memory}
    log(f"{name}: importance {imp.seconds:.1f} s vs plain fwd+bwd {plain:.1f} s; pass "
        f"{imp.memory.get('ratio_to_weights', float('nan')):.2f}× weights")
    del imp
    prompt = "The capital of France is"  # what the weights say, beside the perplexity (a content check)
    ids = tok(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=12, do_sample=False)
    out["greedy"] = {"prompt": prompt, "completion": tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)}
    log(f"{name}: greedy {prompt!r} → {out['greedy']['completion']!r}")
    out["dense_perplexity"] = ppl(model, tok, name, args.ppl_tokens)
    log(f"{name}: dense ppl {out['dense_perplexity']['perplexity']:.2f}")
    if not args.prune:  # the prune measured from outside instead (benchmarks/memory_run.py)
        return out
    out["prune_90"] = prune_to(model, tok, args.target, "adaptive", s, name, args.ppl_tokens)
    if name in args.compare80:
        out["adaptive_80"] = prune_to(model, tok, 0.8, "adaptive", s, name, args.ppl_tokens)  # continues
        del model
        model, tok = pruner.load_model(name, device=args.device, dtype=args.dtype, progress=None)
        out["uniform_80"] = prune_to(model, tok, 0.8, "uniform", s, name, args.ppl_tokens)
    return out


def report(path: str) -> str:
    """The README's table (Markdown) from a result file."""
    data = json.loads(Path(path).read_text())
    gib = 2**30
    rows = ["| model | parameters | first load | cached load | importance pass (tokens) | plain fwd+bwd | ratio | "
            "pass peak / weights | surgery per sub-step | prune to 90 % (sub-steps) | WikiText-2 ppl dense → 90 % |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in data["models"].items():
        if "prune_90" not in m:  # --no-prune
            continue
        imp, p90, arch = m["importance"], m["prune_90"], m["architecture"]
        first = m.get("first_load") or {}
        first_s = f"{first['seconds']:.0f} s" if "seconds" in first else "—"
        mem = imp["memory"]
        ratios = [r["ratio_to_weights"] for r in p90["importance_memory"] if r]
        surgery = p90["seconds_surgery"]
        rows.append(
            f"| {name} ({arch['model_type']}, {arch['layers']} layers) | {arch['params']['total']:,} | {first_s} | "
            f"{m['cached_load_seconds']:.1f} s | {imp['seconds']:.1f} s ({imp['tokens']:,}) | "
            f"{imp['plain_forward_backward_seconds']:.1f} s | {imp['ratio_to_plain']:.2f}× | "
            f"{(mem['weights_bytes'] + mem['pass_extra_bytes']) / gib:.2f} / {mem['weights_bytes'] / gib:.2f} GiB = "
            f"{mem['ratio_to_weights']:.2f}× (steps {min(ratios):.2f}–{max(ratios):.2f}×) | "
            f"{min(surgery):.2f}–{max(surgery):.2f} s | {p90['fraction']:.2%} in {p90['seconds']:.0f} s "
            f"({p90['sub_steps']}) | {m['dense_perplexity']['perplexity']:.2f} → {p90['perplexity']['perplexity']:.2f}"
            f"{'' if p90['target'] == 0.9 else ' at ' + format(p90['target'], '.0%')}"
            f"{'' if p90['perplexity']['max_tokens'] == PPL.max_tokens else ' (' + format(p90['perplexity']['tokens_scored'], ',') + ' tokens)'} |")
    mach = data["machine"]
    rows.append("")
    rows.append(f"{mach['cpu']}, {mach['cpu_count']} cores, {mach['torch_threads']} torch threads, torch "
                f"{mach['torch']}, {data['dtype']} on {data['device']}; 1-minute load average "
                f"{mach.get('loadavg_1m_at_start', float('nan')):.2f} at the start, "
                f"{mach.get('loadavg_1m_at_end', float('nan')):.2f} at the end.")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "report":
        print(report(sys.argv[2]))
        return
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--models", default="default,gemma3-270m,qwen2.5-0.5b")
    a.add_argument("--compare80", default="qwen2.5-0.5b", help="models that also get adaptive vs uniform at 80 %%")
    a.add_argument("--device", default="cpu")
    a.add_argument("--dtype", default="float32")
    a.add_argument("--target", type=float, default=0.9, help="the prune's target (the table's 'prune' column)")
    a.add_argument("--ppl-tokens", type=int, default=None, help=f"perplexity tokens (default {PPL.max_tokens:,})")
    a.add_argument("--no-first-load", dest="first_load", action="store_false")
    a.add_argument("--no-prune", dest="prune", action="store_false",
                   help="load, importance pass, plain fwd+bwd and dense perplexity only")
    a.add_argument("--out", required=True)
    args = a.parse_args()
    args.compare80 = [m for m in args.compare80.split(",") if m]
    if args.compare80 and args.target <= 0.8:
        a.error(f"--compare80 continues from --target to 80 %: --target {args.target} is not above it "
                "(pass --compare80 \"\")")
    tame_allocator()
    result = {"machine": machine(), "device": args.device, "dtype": args.dtype, "models": {}, "skipped": {}}
    for name in [m for m in args.models.split(",") if m]:
        if name in SHIPPED and not is_fetched(name):
            result["skipped"][name] = f"not fetched (adapt-pruner fetch {name})"
            log(f"{name}: skipped, not fetched")
            continue
        result["models"][name] = bench(name, args)
        Path(args.out).write_text(json.dumps(result, indent=1))
    result["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
