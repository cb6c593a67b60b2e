"""Perplexity on a corpus, with every setting recorded next to the number.

Windows are non-overlapping by default (``stride = window``); with ``stride < window`` each window re-reads
``window - stride`` tokens of context and only its last ``stride`` tokens are scored. Whether a BOS token is
put in front of each window is explicit (``bos``, default False as in LLM-Pruner-style evaluations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from pruner.data import DataError, tokenize_corpus
from pruner.errors import ConfigError
from pruner.importance.measure import Cancelled


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer,
    dataset: str = "wikitext2",
    split: str = "test",
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    bos: bool = False,
    batch_size: int = 4,
    detokenize: bool = False,
    text: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Perplexity of ``model`` on a corpus (see :mod:`pruner.data`) or on ``text``.

    Returns a dict with ``perplexity`` and its settings: dataset, split, window, stride, bos, tokens scored,
    max_tokens, detokenize, seconds.
    """
    if window < 2:
        raise ConfigError(f"The window must hold at least 2 tokens, got {window}")
    stride = stride or window
    if not 0 < stride <= window:
        raise ConfigError(f"The stride must lie in (0, window], got {stride}")
    if text is not None and not text.strip():
        raise DataError("The text is empty")
    ids = tokenize_corpus(tokenizer, dataset, split, detokenize, text=text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    body = window - 1 if bos else window
    if ids.numel() < min(body, 16) + 1:
        raise DataError(f"The text has {ids.numel()} tokens: too short to measure perplexity")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    # windows of `body` tokens advancing by `step`; each scores only the tokens not scored before
    step = min(stride, body)
    spans = []  # (begin, end, first scored position within the window)
    n, prev_end = ids.numel(), 0
    for begin in range(0, n, step):
        end = min(begin + body, n)
        spans.append((begin, end, (end - begin) - (end - prev_end)))
        prev_end = end
        if end == n:
            break
    nll, count = 0.0, 0
    bos_id = tokenizer.bos_token_id
    try:
        for bi in range(0, len(spans), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("perplexity cancelled")
            chunk = spans[bi : bi + batch_size]
            width = max(e - s for s, e, _ in chunk) + (1 if bos else 0)
            inp = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            score = torch.zeros((len(chunk), width), dtype=torch.bool)
            for r, (s, e, first) in enumerate(chunk):
                seq = ids[s:e]
                if bos:
                    seq = torch.cat([torch.tensor([bos_id]), seq])
                    first += 1
                inp[r, : seq.numel()] = seq
                mask[r, : seq.numel()] = 1
                # position p is predicted from p-1: score targets at positions max(first,1)..len-1
                score[r, max(first, 1) : seq.numel()] = True
            logits = model(input_ids=inp.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = inp[:, 1:].to(device)
            tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            sel = score[:, 1:].to(device)
            nll -= tok_lp[sel].double().sum().item()
            count += int(sel.sum())
    finally:
        model.train(was_training)
    return {
        "perplexity": math.exp(nll / count),
        "dataset": "text" if text is not None else dataset,
        "split": split if dataset == "wikitext2" and text is None else None,
        "window": window,
        "stride": stride,
        "bos": bos,
        "detokenize": detokenize,
        "tokens_scored": count,
        "max_tokens": max_tokens,
        "seconds": time.perf_counter() - t0,
    }


def format_perplexity(r: dict) -> str:
    """``"18.3 (wikitext2 test, 512-token windows, no BOS, 32,768 tokens)"``."""
    where = r["dataset"] + (f" {r['split']}" if r.get("split") else "")
    stride = "" if r["stride"] == r["window"] else f", stride {r['stride']}"
    return (f"{r['perplexity']:.2f} ({where}, {r['window']}-token windows{stride}, "
            f"{'BOS' if r['bos'] else 'no BOS'}, {r['tokens_scored']:,} tokens)")
