"""Perplexity on a corpus, with every setting recorded next to the number.

Windows are non-overlapping by default (``stride = window``); with ``stride < window`` each window re-reads
``window - stride`` tokens of context and only its last ``stride`` tokens are scored. Whether a BOS token is
put in front of each window is explicit (``bos``, default False as in LLM-Pruner-style evaluations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pruner.data import DataError, tokenize_corpus
from pruner.errors import ConfigError
from pruner.importance.lean import CHUNK_LOGITS, head_inputs, nll_sum
from pruner.importance.measure import Cancelled


@dataclass(frozen=True)
class PerplexityConfig:
    """How a perplexity is measured — the one home of these settings for the CLI, Adapt-Accel, the studio and the
    benchmarks. The defaults are the benchmarks': WikiText-2 test, 512-token windows, the whole split, no BOS."""

    dataset: str = "wikitext2"
    """A corpus of :data:`pruner.data.CORPORA` or a text file."""
    split: str = "test"
    """``valid`` or ``test`` (``wikitext2`` only)."""
    window: int = 512
    """Tokens per window."""
    max_tokens: int | None = None
    """Score only the first N tokens (None: all)."""
    stride: int | None = None
    """Advance of the windows (None: the window, no overlap)."""
    bos: bool = False
    """Put a BOS token in front of every window."""
    batch_size: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            raise ConfigError(f"The perplexity window must be a whole number ≥ 2 tokens, got {self.window!r}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 2):
            raise ConfigError(f"The perplexity token limit must be a whole number ≥ 2, got {self.max_tokens!r}")
        if self.dataset == "wikitext2" and self.split not in ("valid", "test"):
            raise ConfigError(f"WikiText-2 has the splits valid and test, not '{self.split}'")

    def measure(self, model: nn.Module, tokenizer, should_stop: Callable[[], bool] | None = None) -> dict:
        """:func:`perplexity` with these settings (they are in the result)."""
        return perplexity(model, tokenizer, self.dataset, self.split, window=self.window, stride=self.stride,
                          max_tokens=self.max_tokens, bos=self.bos, batch_size=self.batch_size,
                          should_stop=should_stop)

    def describe(self) -> str:
        """``"wikitext2 test, 256-token windows, first 2,048 tokens, no BOS"``."""
        where = self.dataset + (f" {self.split}" if self.dataset == "wikitext2" else "")
        amount = f"first {self.max_tokens:,} tokens" if self.max_tokens else "the whole text"
        stride = f", stride {self.stride}" if self.stride and self.stride != self.window else ""
        return f"{where}, {self.window}-token windows{stride}, {amount}, {'BOS' if self.bos else 'no BOS'}"

    def to_dict(self) -> dict:
        return asdict(self)


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
    rows = max(1, CHUNK_LOGITS // model.get_output_embeddings().weight.shape[0])  # tokens per logits chunk
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
            with head_inputs(model) as seen:
                model(input_ids=inp.to(device), attention_mask=mask.to(device), use_cache=False)
            last = seen[-1]  # on the device of the last layer (several devices when the model is dispatched)
            sel = score[:, 1:].to(last.device)
            hidden = last[:, :-1][sel]  # the scored positions' final hidden states
            tgt = inp[:, 1:][sel.cpu()]
            seen.clear()
            nll += nll_sum(model, hidden, tgt, rows)
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
    """``"18.3 (wikitext2 test, 512-token windows, no BOS, 32,704 tokens scored)"``: the tokens predicted, fewer than
    the text's ``max_tokens`` (a window's first token has no context to be predicted from)."""
    where = r["dataset"] + (f" {r['split']}" if r.get("split") else "")
    stride = "" if r["stride"] == r["window"] else f", stride {r['stride']}"
    return (f"{r['perplexity']:.2f} ({where}, {r['window']}-token windows{stride}, "
            f"{'BOS' if r['bos'] else 'no BOS'}, {r['tokens_scored']:,} tokens scored)")
