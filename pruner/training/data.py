"""Training data for recovery training: shipped corpora, text files or a streamed Hugging Face dataset, packed
into fixed-length sequences after removing every paragraph that shares a 13-word sequence with the evaluation
text (WikiText-2 test), so training and evaluation never overlap."""

from __future__ import annotations

import functools
import re

import torch

from pruner.data import load_text
from pruner.errors import DataError

_WORD = re.compile(r"\w+")
NGRAM = 13  # the GPT-3 decontamination length


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    w = _WORD.findall(text.lower())
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _overlaps(paragraph: str, grams: set, n: int = NGRAM) -> bool:
    w = _WORD.findall(paragraph.lower())
    return any(tuple(w[i : i + n]) in grams for i in range(len(w) - n + 1))


@functools.lru_cache(maxsize=4)
def exclusion_ngrams(spec: str) -> frozenset:
    """Word 13-grams of the evaluation text ``CORPUS:SPLIT`` (raw and detokenized), cached."""
    if not spec:
        return frozenset()
    name, _, split = spec.partition(":")
    text = load_text(name, split or "test", detokenize=True) + "\n" + load_text(name, split or "test")
    return frozenset(_ngrams(text))


def hf_text(spec: str, max_chars: int) -> str:
    """Text of a Hugging Face dataset, streamed: ``spec`` is ``NAME[:CONFIG[:SPLIT]]`` (split default train).

    Needs the ``datasets`` package and a reachable hub; raises :class:`DataError` with the reason otherwise.
    """
    name, _, rest = spec.partition(":")
    config, _, split = rest.partition(":")
    try:
        import datasets  # noqa: F401  (optional dependency)
    except ImportError as exc:
        raise DataError(
            f"Streaming the Hugging Face dataset '{name}' needs the 'datasets' package (pip install datasets) and "
            "network access to the hub; neither is needed for the shipped corpora (wiki, c4, stories, ...)."
        ) from exc
    from datasets import load_dataset

    try:
        ds = load_dataset(name, config or None, split=split or "train", streaming=True)
        parts, n = [], 0
        for row in ds:
            t = row.get("text") or next((v for v in row.values() if isinstance(v, str)), "")
            parts.append(t)
            n += len(t)
            if n >= max_chars:
                break
    except Exception as exc:  # offline, unknown name, gated ...
        raise DataError(f"Could not stream the Hugging Face dataset '{spec}' (no hub reachable?): {exc}") from exc
    if not parts:
        raise DataError(f"The Hugging Face dataset '{spec}' yielded no text")
    return "\n\n".join(parts)


class PackedData:
    """Training sequences: corpora → paragraphs (minus those overlapping the evaluation text) → tokens, EOS
    between corpora → fixed-length sequences in a seeded order that is reshuffled every epoch.

    ``batch(position, n)`` returns the ``n`` sequences at global positions ``position ... position+n-1``; the
    position alone determines the data, so a resumed run sees exactly the same batches.
    """

    def __init__(self, tokenizer, sources: str = "wiki,c4,stories", seq_len: int = 256, seed: int = 0,
                 exclude: str = "wikitext2:test", hf_max_chars: int = 20_000_000):
        if seq_len < 2:
            raise DataError(f"Training sequences need ≥ 2 tokens, got {seq_len}")
        self.sources = [s.strip() for s in sources.split(",") if s.strip()]
        if not self.sources:
            raise DataError("No training data given")
        self.seq_len, self.seed = seq_len, seed
        grams = exclusion_ngrams(exclude)
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        self.removed_paragraphs = 0
        self.paragraphs = 0
        for src in self.sources:
            text = hf_text(src[3:], hf_max_chars) if src.startswith("hf:") else load_text(src)
            paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
            kept = [p for p in paras if not (grams and _overlaps(p, grams))]
            self.paragraphs += len(paras)
            self.removed_paragraphs += len(paras) - len(kept)
            ids += tokenizer("\n\n".join(kept), add_special_tokens=False, return_attention_mask=False,
                             verbose=False)["input_ids"]
            if eos is not None:
                ids.append(eos)
        n = len(ids) // seq_len
        if n < 1:
            raise DataError(f"The training data has {len(ids)} tokens: too few for one sequence of {seq_len}")
        self.tokens = n * seq_len
        self.sequences = torch.tensor(ids[: self.tokens], dtype=torch.long).view(n, seq_len)
        self.exclude = exclude
        self._perm: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            self._perm = {epoch: torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + epoch))}
        return self._perm[epoch]

    def batch(self, position: int, n: int) -> torch.Tensor:
        rows = []
        for p in range(position, position + n):
            epoch, i = divmod(p, len(self))
            rows.append(int(self._order(epoch)[i]))
        return self.sequences[rows]

    def describe(self) -> dict:
        return {"sources": self.sources, "seq_len": self.seq_len, "sequences": len(self), "tokens": self.tokens,
                "seed": self.seed, "excluded_overlap_with": self.exclude, "paragraphs": self.paragraphs,
                "paragraphs_removed_for_overlap": self.removed_paragraphs, "ngram": NGRAM}
