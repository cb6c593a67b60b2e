"""Log-likelihood scoring of ``(context, continuation)`` pairs, and the statistics built on it.

Conventions (lm-evaluation-harness): the context and the continuation are tokenized together and the
continuation's tokens are those past the context's own tokenization (trailing spaces of the context move to
the continuation first); no special tokens are added (an empty context gets the BOS/EOS token); inputs longer
than the model's window keep their last tokens.

Batching: identical model inputs are run once (all four MMLU answers are single tokens after the same prompt,
so one forward scores them all); inputs are sorted longest first and right-padded, so padding sits after every
scored position and a causal model's scores do not depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pruner.errors import ConfigError
from pruner.importance.measure import Cancelled


class ByteTokenizer:
    """A tokenizer-free path: one token per UTF-8 byte (id = byte mod ``vocab_size``).

    For tests and tiny random models that have no real tokenizer; it has the small part of the Hugging Face
    tokenizer interface that the evaluation uses.
    """

    def __init__(self, vocab_size: int = 256):
        self.vocab_size = vocab_size
        self.name_or_path = f"bytes-{vocab_size}"
        self.bos_token_id = None
        self.eos_token_id = None
        self.pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def __len__(self) -> int:
        return self.vocab_size


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation, as lm-evaluation-harness splits them."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False) if context else []
    cont = whole[len(ctx):]
    if not cont:  # the context's tokenization swallowed the continuation: score it on its own
        cont = tokenizer.encode(continuation, add_special_tokens=False)
    if not ctx:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [start if start is not None else 0]
    return ctx, cont


def max_length(model: nn.Module, default: int = 2048) -> int:
    """The longest input the model takes (its ``max_position_embeddings``), at most 8192."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None) or default
    return int(min(n, 8192))


@torch.no_grad()
def loglikelihoods(
    model: nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 8,
    max_len: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[tuple[float, bool]]:
    """For each ``(context_ids, continuation_ids)``: (sum of the continuation's log-probabilities, whether
    greedy decoding would produce exactly the continuation).

    ``progress(done, total)`` counts distinct model inputs; ``should_stop()`` returning True raises
    :class:`~pruner.importance.measure.Cancelled` between batches.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    max_len = max_len or max_length(model)
    device = next(model.parameters()).device
    # the model input is everything but the last token; identical inputs are run once
    inputs: dict[tuple[int, ...], list[int]] = {}
    conts: list[list[int]] = []
    for i, (ctx, cont) in enumerate(pairs):
        cont = list(cont)[-(max_len - 1):]  # at least one token of context stays in the window
        if not cont:
            raise ConfigError(f"request {i} has an empty continuation")
        full = (list(ctx) + cont)[:-1][-max_len:]
        conts.append(cont)
        inputs.setdefault(tuple(full), []).append(i)
    order = sorted(inputs, key=lambda k: -len(k))  # stable: ties keep first-seen order
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    was_training = model.training
    model.eval()
    done = 0
    try:
        for b in range(0, len(order), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("evaluation cancelled")
            chunk = order[b : b + batch_size]
            width = len(chunk[0])
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            first = width
            for r, key in enumerate(chunk):
                ids[r, : len(key)] = torch.tensor(key)
                mask[r, : len(key)] = 1
                for i in inputs[key]:
                    first = min(first, len(key) - len(conts[i]))
            keep = torch.arange(first, width)
            logits = _logits(model, ids.to(device), mask.to(device), keep.to(device))
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, key in enumerate(chunk):
                for i in inputs[key]:
                    cont = conts[i]
                    lo = len(key) - len(cont) - first
                    rows = logp[r, lo : lo + len(cont)]
                    tgt = torch.tensor(cont, device=rows.device)
                    ll = rows.gather(-1, tgt[:, None]).squeeze(-1).double().sum().item()
                    out[i] = (ll, bool((rows.argmax(-1) == tgt).all()))
            done += len(chunk)
            if progress is not None:
                progress(done, len(order))
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits at positions ``keep`` only (saves the vocabulary projection elsewhere), or all of them when
    the model does not take ``logits_to_keep``."""
    try:
        return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    except TypeError:
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, keep]


# ------------------------------------------------------------------------------------------- statistics


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n), as lm-evaluation-harness)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def argmax(xs: Sequence[float]) -> int:
    """Index of the largest value (the first on ties)."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def choice_metrics(lls: Sequence[float], gold: int, lengths: Sequence[int]) -> tuple[float, float]:
    """(acc, acc_norm) of one item: acc_norm divides each log-likelihood by its answer's length in characters."""
    norm = [ll / max(n, 1) for ll, n in zip(lls, lengths, strict=True)]
    return float(argmax(lls) == gold), float(argmax(norm) == gold)
