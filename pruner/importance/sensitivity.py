"""Per-layer sensitivity: the loss increase when only one layer is pruned — the oracle beside the heuristic.

For every decoder layer and every level ``p`` (default 25 / 50 / 75 % of the layer's prunable parameters, and 1:
the whole block), the layer's units of lowest score per parameter are masked (:mod:`pruner.model.masking`; KV
groups and MLP channels ranked together, as the ``score`` attention policy does) until ``p`` of its prunable
parameters are gone — level 1 skips the whole block — and the mean causal-LM loss on the calibration windows is
compared with the unpruned loss. Nothing is cut: the model afterwards is the model before.

It costs ``layers × levels + 1`` forward passes over the windows (no backward), each from the pruned layer on:
the layers before it hand on what they returned in the batch's dense forward (:class:`_Prefix`), so the scan
costs about ``levels × (layers + 1) / 2`` full forwards' worth of decoder layers, plus the head every time. The table is what the
``sensitivity`` method allocates with (:mod:`pruner.methods.sensitivity`), measured in its importance pass, and what
the explorer shows beside the paper's layer importance (their rank correlation: :func:`spearman`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pruner.errors import Cancelled, ConfigError
from pruner.importance.lean import head_inputs, instance_forwards, nll_sum
from pruner.model.adapters import adapter_for
from pruner.model.masking import LayerMask, masked
from pruner.model.structure import Geometry, geometry, layer_widths_of

#: The default levels: 25 / 50 / 75 % of a layer's prunable parameters, and the whole block.
LEVELS = (0.25, 0.5, 0.75, 1.0)
#: The scan reads the first windows of the calibration sample up to this many tokens (whole windows, at least one).
#: The losses are paired (the same tokens with and without the cut), so a small sample still ranks the layers: on
#: the default model (2 CPU cores) the scan took 433 s on 2,048 tokens and 267 s on 1,024, whose 120 cells rank
#: as the 2,048-token table's at Spearman ρ = 0.99 (``benchmarks/results/explore_cost_1024.json``). Set it for a
#: process (``--scan-tokens`` in the CLI) or for a block (:func:`scan_budget`).
SCAN_TOKENS = 1024


@contextlib.contextmanager
def scan_budget(tokens: int | None):
    """:data:`SCAN_TOKENS` set to ``tokens`` for the block (None: every calibration token), then put back."""
    global SCAN_TOKENS
    old, SCAN_TOKENS = SCAN_TOKENS, tokens
    try:
        yield
    finally:
        SCAN_TOKENS = old


@dataclass
class Sensitivity:
    """The loss increase of pruning one layer at a time. ``increase[l][k]``: layer ``l`` at ``levels[k]``;
    ``removed[l][k]``: the share of the layer's prunable parameters actually masked (whole units; 1.0 for the
    whole block)."""

    levels: list[float]
    base_loss: float
    increase: list[list[float]]
    removed: list[list[float]]
    tokens: int = 0
    seconds: float = 0.0
    units: dict = field(default_factory=dict)  # how the units were ranked (criterion), for the record

    def curve(self, layer: int) -> tuple[list[float], list[float]]:
        """The layer's points ``(removed share, loss increase)`` from ``(0, 0)``, sorted by share."""
        pts = sorted({0.0: 0.0, **dict(zip(self.removed[layer], self.increase[layer], strict=True))}.items())
        return [x for x, _ in pts], [y for _, y in pts]

    def without_layers(self, remove: Sequence[int]) -> Sensitivity:
        gone = set(remove)
        keep = [li for li in range(len(self.increase)) if li not in gone]
        return Sensitivity(list(self.levels), self.base_loss, [self.increase[li] for li in keep],
                           [self.removed[li] for li in keep], self.tokens, self.seconds, dict(self.units))

    def correlation(self, layer_importance: Sequence[float]) -> dict[str, float | None]:
        """Spearman's rank correlation of every level's column with the paper's layer importance ``I_l``."""
        return {f"{lv:g}": spearman(layer_importance, [row[k] for row in self.increase])
                for k, lv in enumerate(self.levels)}

    def to_dict(self) -> dict:
        return {"levels": self.levels, "base_loss": self.base_loss, "increase": self.increase,
                "removed": self.removed, "tokens": self.tokens, "seconds": self.seconds, "units": self.units}

    @classmethod
    def from_dict(cls, d: dict) -> Sensitivity:
        return cls(list(d["levels"]), float(d["base_loss"]), [list(r) for r in d["increase"]],
                   [list(r) for r in d["removed"]], int(d.get("tokens", 0)), float(d.get("seconds", 0.0)),
                   dict(d.get("units", {})))


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when it is undefined (fewer than 2 values or
    a constant side)."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs two sequences of one length ({len(a)} vs {len(b)})")
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


def lowest_units(geo: Geometry, group_scores: torch.Tensor, channel_scores: torch.Tensor,
                 share: float) -> tuple[list[int], list[int], float]:
    """The units a layer keeps when ``share`` of its prunable parameters go, lowest score per parameter first
    (groups and channels ranked together; ties: groups first, then the lower index); one group and one channel
    always stay. Returns ``(keep_groups, keep_channels, share actually removed)``."""
    G, C = geo.params_per_group, geo.params_per_channel
    n_g, n_c = group_scores.numel(), channel_scores.numel()
    total = n_g * G + n_c * C
    units = sorted([(float(s) / G, 0, i) for i, s in enumerate(group_scores)]
                   + [(float(s) / C, 1, i) for i, s in enumerate(channel_scores)])
    gone_g, gone_c, removed, budget = set(), set(), 0, share * total
    for _, kind, i in units:
        cost = G if kind == 0 else C
        if removed + cost / 2 > budget:
            continue  # a cheaper unit further down may still fit
        if kind == 0 and len(gone_g) < n_g - 1:
            gone_g.add(i)
            removed += cost
        elif kind == 1 and len(gone_c) < n_c - 1:
            gone_c.add(i)
            removed += cost
    return ([i for i in range(n_g) if i not in gone_g], [i for i in range(n_c) if i not in gone_c],
            removed / total)


@torch.no_grad()
def mean_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 8,
              should_stop: Callable[[], bool] | None = None) -> float:
    """The mean next-token loss over windows ``[n, T]`` (every window weighing the same)."""
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, windows.shape[0], batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled("sensitivity cancelled")
        batch = windows[i : i + batch_size].to(device)
        total += _batch_loss(model, batch) * batch.shape[0]
    return total / windows.shape[0]


class _Prefix:
    """Layers ``0 … upto-1`` answer with what they returned in the dense forward of the same batch, so a forward
    with one layer masked computes only that layer and the ones after it (the embedding, the masks and the
    positional terms are the model's own, whatever the architecture). Installed as an instance ``forward`` and put
    back as it was (an accelerate dispatch wrapper there stays)."""

    def __init__(self, layers: Sequence[nn.Module]):
        self.layers = layers
        self.outputs: list = [None] * len(layers)

    def record(self) -> contextlib.AbstractContextManager:
        """While active, every layer's output is kept (the dense forward of one batch)."""

        def keep(i):
            def hook(module, args, output):
                self.outputs[i] = output
            return hook

        stack = contextlib.ExitStack()
        for i, layer in enumerate(self.layers):
            stack.callback(layer.register_forward_hook(keep(i)).remove)
        return stack

    def replayed(self, upto: int) -> contextlib.AbstractContextManager:
        return instance_forwards(self.layers[:upto], lambda i, _layer: (lambda *a, **k: self.outputs[i]))


def _budget(max_tokens):
    """``...`` (the default of the functions below): :data:`SCAN_TOKENS` as it is at call time."""
    return SCAN_TOKENS if max_tokens is ... else max_tokens


def scan_tokens(n_windows: int, window: int, max_tokens=...) -> int:
    """The tokens a scan reads of a calibration sample of ``n_windows × window`` (``max_tokens``: None reads all,
    ``...`` the module's :data:`SCAN_TOKENS`)."""
    max_tokens = _budget(max_tokens)
    n = n_windows if max_tokens is None else min(n_windows, max(1, max_tokens // window))
    return n * window


def scan_forwards(model: nn.Module, levels: Sequence[float] = LEVELS) -> float:
    """What a scan costs in plain forward passes over its tokens (:func:`scan_tokens`): the dense forward, then
    per layer and level the layers from the pruned one on and the LM head (weighed by their parameters, as their
    time is)."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    n = len(layers)
    if n == 0:
        return 1.0
    body = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    head = model.get_output_embeddings().weight.numel()
    full = sum(body) + head
    suffix = [sum(body[li:]) for li in range(n)]
    return 1.0 + len(levels) * sum((s + head) / full for s in suffix)


def _batch_loss(model: nn.Module, batch: torch.Tensor) -> float:
    """The mean next-token loss of a batch, the LM head run a chunk of tokens at a time (no full logits held)."""
    with head_inputs(model) as seen:
        model(input_ids=batch, use_cache=False)
    hidden = seen[-1][:, :-1]
    targets = batch[:, 1:].reshape(-1)
    return nll_sum(model, hidden.reshape(-1, hidden.shape[-1]), targets) / targets.numel()


def measure_sensitivity(model: nn.Module, windows: torch.Tensor, group_scores: Sequence[torch.Tensor],
                        channel_scores: Sequence[torch.Tensor], levels: Sequence[float] = LEVELS,
                        batch_size: int = 8, should_stop: Callable[[], bool] | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        max_tokens=...) -> Sensitivity:
    """Measure the :class:`Sensitivity` table on ``windows`` (the first whole windows up to ``max_tokens``; None:
    all; ``...``: :data:`SCAN_TOKENS`) with the given unit scores (one per current unit of every layer). A level of
    1 skips the whole block. The model is left exactly as it was."""
    max_tokens = _budget(max_tokens)
    if max_tokens is not None:
        windows = windows[: max(1, max_tokens // windows.shape[1])]
    levels = [float(v) for v in levels]
    if not levels or any(not 0 < v <= 1 for v in levels):
        raise ConfigError(f"Sensitivity levels must lie in (0, 1], got {levels}")
    adapter = adapter_for(model)
    geo = geometry(model, adapter)
    layers = adapter.layers(model)
    if len(group_scores) != len(layers) or len(channel_scores) != len(layers):
        raise ConfigError(f"One set of unit scores per layer is needed ({len(layers)})")
    masks = []
    for li, layer in enumerate(layers):
        w = layer_widths_of(layer, adapter, geo)
        if group_scores[li].numel() != w.num_kv_heads or channel_scores[li].numel() != w.intermediate_size:
            raise ConfigError(f"layer {li}: the unit scores do not match its widths")
        row = []
        for lv in levels:
            if lv >= 1.0:
                row.append((LayerMask(skip=True), 1.0))
            else:
                g, c, share = lowest_units(geo, group_scores[li], channel_scores[li], lv)
                row.append((LayerMask(g, c), share))
        masks.append(row)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = windows.shape[0]
    base, losses = 0.0, [[0.0] * len(levels) for _ in layers]
    prefix = _Prefix(layers)
    done, todo = 0, len(layers) * len(levels) * math.ceil(n / batch_size)
    try:
        for i in range(0, n, batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("sensitivity cancelled")
            batch = windows[i : i + batch_size].to(device)
            weight = batch.shape[0] / n  # every window weighs the same
            with torch.no_grad():
                with prefix.record():
                    base += _batch_loss(model, batch) * weight
                for li in range(len(layers)):
                    with prefix.replayed(li):  # layers before li: their dense outputs, not computed again
                        for k, (mask, _) in enumerate(masks[li]):
                            if should_stop is not None and should_stop():
                                raise Cancelled("sensitivity cancelled")
                            with masked(model, {li: mask}, adapter):
                                losses[li][k] += _batch_loss(model, batch) * weight
                            done += 1
                            if progress is not None:
                                progress(done, todo)
            prefix.outputs = [None] * len(layers)
    finally:
        prefix.outputs = [None] * len(layers)
        model.train(was_training)
    increase = [[loss - base for loss in row] for row in losses]
    removed = [[share for _, share in row] for row in masks]
    return Sensitivity(levels, base, increase, removed, int(windows.numel()), time.perf_counter() - t0)
