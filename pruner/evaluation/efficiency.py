"""Efficiency of a (pruned) model on the current device: parameters, multiply-accumulates per token, batch-1
decoding speed, prefill throughput and memory, each reported with its settings; :func:`compare` gives the
dense-vs-pruned ratios next to the ideal ratio implied by the parameter count."""

from __future__ import annotations

import inspect
import platform
import statistics
import time

import torch
from torch import nn

from pruner.errors import ConfigError
from pruner.model.adapters import adapter_for
from pruner.model.structure import count_parameters, geometry, layer_widths


def macs_per_token(model: nn.Module, context: int = 0) -> dict:
    """Multiply-accumulates for one token: every linear layer (decoder + LM head) once, plus attention's
    scores and weighted sum over ``context`` earlier tokens (2 · heads · head_dim · context per layer).
    ``decoder`` leaves out the LM head, which a prefill computes for the last position only."""
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    head = model.get_output_embeddings()
    lm_head = head.in_features * head.out_features if isinstance(head, nn.Linear) else 0
    geo = geometry(model)
    heads = sum(w.num_heads for w in layer_widths(model))
    attention = 2 * heads * geo.head_dim * context
    return {"linear": linear, "attention": attention, "total": linear + attention, "lm_head": lm_head,
            "decoder": linear - lm_head + attention, "context": context}


def _params(model: nn.Module) -> dict:
    counts = count_parameters(model)
    emb = model.get_input_embeddings().weight.numel()
    return {"total": counts["total"], "decoder_layers": counts["decoder_layers"], "embeddings": emb,
            "other": counts["other"] - emb}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _kv_cache_bytes(model: nn.Module, tokens: int) -> int:
    geo = geometry(model)
    elem = next(model.parameters()).element_size()
    return 2 * sum(w.num_kv_heads for w in layer_widths(model)) * geo.head_dim * tokens * elem


@torch.no_grad()
def efficiency(
    model: nn.Module,
    tokenizer=None,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    prefill_batch: int = 8,
    prefill_tokens: int = 256,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    """Measure ``model`` on its current device. Prompts are seeded random token ids (speed does not depend on
    the text); ``tokenizer`` only bounds the ids to its vocabulary.

    * decode: batch 1, a ``prompt_tokens`` prompt, then ``new_tokens`` greedy steps with the KV cache; the
      median over ``repeats`` of the decoding steps only (prefill excluded), after ``warmup`` runs;
    * prefill: ``prefill_batch`` × ``prefill_tokens`` tokens in one forward, median over ``repeats``;
    * memory: weights, the KV cache at the end of decoding, and the peak (CUDA: allocated during the
      measurement; CPU: the process's resident high-water mark, which never goes down).
    """
    if min(prompt_tokens, new_tokens, prefill_batch, prefill_tokens, repeats) < 1 or warmup < 0:
        raise ConfigError("token counts, batch and repeats must be at least 1 (warmup at least 0)")
    adapter_for(model)  # a clear error for an unsupported architecture
    p = next(model.parameters())
    device = p.device
    vocab = min(model.get_input_embeddings().weight.shape[0], len(tokenizer) if tokenizer is not None else 1 << 30)
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=gen).to(device)
    batch = torch.randint(0, vocab, (prefill_batch, prefill_tokens), generator=gen).to(device)
    was_training = model.training
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # transformers 5 renamed past_key_values to cache; take whichever this version has
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def decode() -> float:
        out = model(input_ids=prompt, use_cache=True)
        past, nxt = getattr(out, cache_arg), out.logits[:, -1:].argmax(-1)
        _sync(device)
        t = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, use_cache=True, **{cache_arg: past})
            past, nxt = getattr(out, cache_arg), out.logits[:, -1:].argmax(-1)
        _sync(device)
        return time.perf_counter() - t

    def prefill() -> float:
        _sync(device)
        t = time.perf_counter()
        model(input_ids=batch, use_cache=False, logits_to_keep=1)
        _sync(device)
        return time.perf_counter() - t

    try:
        for _ in range(warmup):
            decode()
            prefill()
        dec = [decode() for _ in range(repeats)]
        pre = [prefill() for _ in range(repeats)]
    finally:
        model.train(was_training)
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    if device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "CUDA allocated during the measurement"
    else:
        peak, peak_kind = _peak_rss(), "process resident high-water mark (whole process, never decreases)"
    d_med, p_med = statistics.median(dec), statistics.median(pre)
    return {
        "params": _params(model),
        "macs_per_token": macs_per_token(model, context=prompt_tokens + new_tokens // 2),
        "decode_tokens_per_s": new_tokens / d_med,
        "decode_seconds": dec,
        "prefill_tokens_per_s": prefill_batch * prefill_tokens / p_med,
        "prefill_seconds": pre,
        "memory": {"weights_bytes": weights, "kv_cache_bytes": _kv_cache_bytes(model, prompt_tokens + new_tokens),
                   "peak_bytes": peak, "peak_kind": peak_kind},
        "settings": {"device": str(device), "dtype": str(p.dtype).replace("torch.", ""),
                     "threads": torch.get_num_threads(), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                     "prefill_batch": prefill_batch, "prefill_tokens": prefill_tokens, "warmup": warmup,
                     "repeats": repeats, "statistic": "median", "decode": "batch 1, greedy, KV cache, prefill excluded",
                     "machine": platform.processor() or platform.machine()},
    }


def _peak_rss() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if platform.system() == "Darwin" else kb * 1024


def compare(dense: dict, pruned: dict) -> dict:
    """Pruned / dense ratios of two :func:`efficiency` results, next to the ideal speed-up implied by the
    parameter count (dense / pruned parameters), by the MACs per token (decoding: every layer and the LM head
    per token) and by the decoder layers' MACs (prefill: the LM head runs for the last position only)."""
    def ratio(a, b):
        return a / b if a and b else None

    params = ratio(pruned["params"]["total"], dense["params"]["total"])
    macs = ratio(pruned["macs_per_token"]["total"], dense["macs_per_token"]["total"])
    decoder_macs = ratio(pruned["macs_per_token"].get("decoder"), dense["macs_per_token"].get("decoder"))
    return {
        "params_ratio": params,
        "decoder_params_ratio": ratio(pruned["params"]["decoder_layers"], dense["params"]["decoder_layers"]),
        "macs_ratio": macs,
        "ideal_speedup_from_params": 1 / params if params else None,
        "ideal_speedup_from_macs": 1 / macs if macs else None,
        "ideal_prefill_speedup_from_decoder_macs": 1 / decoder_macs if decoder_macs else None,
        "decode_speedup": ratio(pruned["decode_tokens_per_s"], dense["decode_tokens_per_s"]),
        "prefill_speedup": ratio(pruned["prefill_tokens_per_s"], dense["prefill_tokens_per_s"]),
        "weights_memory_ratio": ratio(pruned["memory"]["weights_bytes"], dense["memory"]["weights_bytes"]),
        "kv_cache_ratio": ratio(pruned["memory"]["kv_cache_bytes"], dense["memory"]["kv_cache_bytes"]),
        "note": "speed-ups are pruned / dense tokens per second on the same device and settings; "
                "ratios are pruned / dense",
    }
