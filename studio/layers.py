"""Which of the original decoder layers a model still has, step by step.

Depth pruning (ShortGPT) removes whole layers, so the widths of a later step have fewer entries than the
original model. Every per-layer figure of the studio keeps one row per *original* layer: a layer that was removed
is shown as fully removed instead of the rows below it moving up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def width_of(w, name: str) -> int:
    """A field of a ``LayerWidths`` or of its dict."""
    return int(w[name] if isinstance(w, Mapping) else getattr(w, name))


def as_dict(w) -> dict:
    return dict(w) if isinstance(w, Mapping) else w.to_dict()


@dataclass
class LayerMap:
    """The original depth, the original widths of every original layer, and which original layers were present
    before every step of a record (``kept[k]`` before step k; ``kept[-1]``: the model now)."""

    n_layers: int
    original: list[dict]  # per original layer: its widths before any pruning (num_heads, num_kv_heads, ...)
    kept: list[list[int]]

    @classmethod
    def of(cls, origin, steps: Sequence = (), original_widths: Sequence | None = None) -> LayerMap:
        """From a model's :class:`pruner.model.structure.Origin` (the present) and the step records that led there (each
        with ``removed_original_layers``); ``original_widths`` (a record's, aligned with the layers before its first
        step) fills in the widths of layers removed since."""
        now = list(origin.kept_layers)
        kept = [now]
        for rec in reversed(list(steps)):
            removed = getattr(rec, "removed_original_layers", None) or []
            kept.insert(0, sorted(set(kept[0]) | set(removed)))
        by_index = {i: as_dict(w) for i, w in zip(now, origin.widths, strict=True)}
        if original_widths is not None and len(original_widths) == len(kept[0]):
            for i, w in zip(kept[0], original_widths, strict=True):
                by_index.setdefault(i, as_dict(w))
        # a layer removed before this record began (a loaded depth-pruned model): the supported architectures
        # start with the same widths in every layer, so any known layer's widths stand in for it
        fallback = next(iter(by_index.values()))
        return cls(origin.n_layers, [by_index.get(i, fallback) for i in range(origin.n_layers)], kept)

    @property
    def now(self) -> list[int]:
        return self.kept[-1]

    def spread(self, values: Sequence, kept: Sequence[int], fill=None) -> list:
        """Per-layer ``values`` of the layers ``kept`` (original indices, in order) → one entry per original
        layer, ``fill`` where a layer is gone."""
        if len(values) != len(kept):
            raise ValueError(f"{len(values)} values for {len(kept)} layers")
        out = [fill] * self.n_layers
        for i, v in zip(kept, values, strict=True):
            out[i] = v
        return out

    def full_widths(self, widths: Sequence, kept: Sequence[int] | None = None) -> list[dict | None]:
        """Widths per original layer (dicts), None for a removed layer."""
        return self.spread([as_dict(w) for w in widths], self.now if kept is None else kept)

    def removed_share(self, widths: Sequence, kept: Sequence[int] | None = None) -> tuple[list[float], list[float]]:
        """Per original layer: the share of its KV groups and of its MLP channels removed (1.0 for a removed
        layer)."""
        attn, mlp = [], []
        for w, o in zip(self.full_widths(widths, kept), self.original, strict=True):
            if w is None:
                attn.append(1.0)
                mlp.append(1.0)
            else:
                attn.append(1 - width_of(w, "num_kv_heads") / width_of(o, "num_kv_heads"))
                mlp.append(1 - width_of(w, "intermediate_size") / width_of(o, "intermediate_size"))
        return attn, mlp

    @staticmethod
    def after_removal(kept: Sequence[int], remove: Sequence[int]) -> list[int]:
        """``kept`` without the layers at the current positions ``remove``."""
        gone = set(remove)
        return [k for i, k in enumerate(kept) if i not in gone]
