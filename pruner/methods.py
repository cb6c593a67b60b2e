"""What the baseline methods decide, as pure functions the planner (:mod:`pruner.planner`) calls; nothing here
touches a model. ``docs/methods.md`` gives each method's definition, published defaults and sources.

* **LLM-Pruner** (block-wise): one ratio for the layers inside a window, the others untouched
  (:func:`llm_pruner_window`, :func:`plan_window_widths`).
* **Wanda-sp**: the same with the window over every layer.
* **FLAP**: per-layer, per-module standardised fluctuation scores, one global threshold over all layers and both
  modules with every unit weighted by its parameter cost (:func:`plan_global`).
* **ShortGPT**: the whole layers of lowest Block Influence ``BI = 1 − cos(x_in, x_out)`` (:func:`plan_depth`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .allocation import plan_widths
from .config import LLM_PRUNER_WINDOW
from .errors import AllocationError, ConfigError
from .structure import Geometry, LayerWidths, group_rows


def llm_pruner_window(n_layers: int, block_layers: Sequence[int] | None = None) -> tuple[int, int]:
    """The layers ``[start, end)`` LLM-Pruner prunes: ``block_layers`` as given, or the released script's window
    (layers 4..29 of 32-layer LLaMA: the first 4 and the last 2 stay whole) scaled to ``n_layers``."""
    if block_layers is not None:
        start, end = int(block_layers[0]), int(block_layers[1])
        if not 0 <= start < end <= n_layers:
            raise ConfigError(f"block_layers [{start}, {end}) does not fit a model with {n_layers} layers")
        return start, end
    s0, e0, n0 = LLM_PRUNER_WINDOW
    start = math.floor(s0 * n_layers / n0 + 0.5)
    end = n_layers - math.floor((n0 - e0) * n_layers / n0 + 0.5)
    return (start, end) if start < end else (0, n_layers)


def plan_window_widths(geo: Geometry, original: Sequence[LayerWidths], current: Sequence[LayerWidths],
                       sparsity: Sequence[float], window: tuple[int, int], min_channels: int = 1,
                       multiple: int = 1) -> tuple[list[LayerWidths], list[int]]:
    """Widths for a uniform ratio inside ``window`` (attention and MLP share it, as in LLM-Pruner and Wanda-sp);
    the layers outside keep their current widths exactly. Returns ``(widths, floored_layers)``."""
    a, b = window
    inner, floored = plan_widths(geo, original[a:b], current[a:b], sparsity[a:b], min_channels, multiple)
    return [*current[:a], *inner, *current[b:]], [a + i for i in floored]


def standardise(x: torch.Tensor) -> torch.Tensor:
    """``(x − mean) / std`` with the unbiased std (``torch.std``, as FLAP's code); zeros where it is undefined."""
    x = x.double()
    if x.numel() < 2:
        return torch.zeros_like(x)
    sd = x.std()
    if not torch.isfinite(sd) or sd <= 0:
        return torch.zeros_like(x)
    return (x - x.mean()) / sd


def flap_scores(geo: Geometry, n_kv: int, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAP's standardised scores of one layer's KV groups and MLP channels (its ``AL-AM`` structure).

    Attention: the WIFV of every o_proj input channel is squared (``metrics[...] ** 2`` in ``prune_flap``),
    standardised over the layer's channels, then averaged over each group's columns. MLP: the WIFV of every
    down_proj input channel, standardised over the layer's channels.
    """
    z_att = standardise(stats["o_metric"].double().pow(2)).view(n_kv, geo.n_rep * geo.head_dim).mean(1)
    return z_att, standardise(stats["down_metric"])


@dataclass
class GlobalPlan:
    """FLAP's decision: per layer the units to keep (indices into the current units) and what it was based on."""

    keep_groups: list[list[int]]
    keep_channels: list[list[int]]
    floored: list[int]
    decision: dict = field(default_factory=dict)


def _summary(t: torch.Tensor) -> list[float]:
    return [round(float(t.min()), 4), round(float(t.median()), 4), round(float(t.max()), 4)] if t.numel() else []


@dataclass
class GlobalRanking:
    """Every unit of every layer in FLAP's global order, computed once per measurement; :meth:`plan` cuts it.

    Units are sorted by standardised score, highest first (ties: lower layer, groups before channels, lower
    index), each weighing its parameter cost (a group ``params_per_group``, a channel ``params_per_channel``:
    FLAP's 512/3 for LLaMA-7B heads). Each layer's best group and best ``floor`` channels are kept regardless.
    """

    current: list[LayerWidths]
    scores: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (group z, channel z)
    floor_keep: list[tuple[list[int], list[int]]]
    floor_z: list[float]  # per layer: the lowest score a floor keeps
    units: list[tuple[float, int, int, int]]  # (z, layer, 0 group / 1 channel, index), in the global order
    cum_cost: torch.Tensor  # [len(units) + 1]: cost of the first k units
    multiple: int = 1

    def plan(self, fraction: float) -> GlobalPlan:
        """Remove ``fraction`` of the removable cost: the kept prefix is the one whose cost lies closest to the
        budget (FLAP: ``argmin |cumsum(weight) − (1 − ratio)·Σ weight|``); the threshold is the last kept score."""
        removable = float(self.cum_cost[-1])
        budget = removable * (1.0 - min(max(fraction, 0.0), 1.0))
        k = int(torch.argmin((self.cum_cost - budget).abs()))
        keep_g = [list(g) for g, _ in self.floor_keep]
        keep_c = [list(c) for _, c in self.floor_keep]
        for _, li, kind, i in self.units[:k]:
            (keep_g if kind == 0 else keep_c)[li].append(i)
        if self.multiple > 1:
            for li, (_, zc) in enumerate(self.scores):
                kept = sorted(keep_c[li], key=lambda i: (-float(zc[i]), i))
                keep_c[li] = kept[:max(len(kept) // self.multiple * self.multiple, len(self.floor_keep[li][1]))]
        threshold = self.units[k - 1][0] if k else None
        decision = {
            "threshold": threshold,
            "removed_cost_share": (removable - float(self.cum_cost[k])) / removable if removable else 0.0,
            "attention_z": [_summary(zg) for zg, _ in self.scores],  # per layer: [min, median, max]
            "mlp_z": [_summary(zc) for _, zc in self.scores],
            "groups_removed": [w.num_kv_heads - len(g) for w, g in zip(self.current, keep_g, strict=True)],
            "channels_removed": [w.intermediate_size - len(c) for w, c in zip(self.current, keep_c, strict=True)],
        }
        floored = [li for li, z in enumerate(self.floor_z) if threshold is None or z < threshold]
        return GlobalPlan([sorted(g) for g in keep_g], [sorted(c) for c in keep_c], floored, decision)


def rank_global(geo: Geometry, current: Sequence[LayerWidths], stats: Sequence[dict], min_channels: int = 1,
                multiple: int = 1) -> GlobalRanking:
    """FLAP's global order of the units of the current model (see :class:`GlobalRanking`)."""
    floor_ch = max(min_channels, multiple, 1)
    scores, floor_keep, floor_z, units = [], [], [], []
    for li, (w, st) in enumerate(zip(current, stats, strict=True)):
        zg, zc = flap_scores(geo, w.num_kv_heads, st)
        og = sorted(range(zg.numel()), key=lambda i: (-float(zg[i]), i))
        oc = sorted(range(zc.numel()), key=lambda i: (-float(zc[i]), i))
        scores.append((zg, zc))
        floor_keep.append((og[:1], oc[:floor_ch]))
        floor_z.append(min([float(zg[og[0]])] + [float(zc[i]) for i in oc[:floor_ch]]))
        units += [(float(zg[i]), li, 0, i) for i in og[1:]] + [(float(zc[i]), li, 1, i) for i in oc[floor_ch:]]
    units.sort(key=lambda u: (-u[0], u[1], u[2], u[3]))
    cost = torch.tensor([0] + [geo.params_per_group if u[2] == 0 else geo.params_per_channel for u in units],
                        dtype=torch.float64)
    return GlobalRanking(list(current), scores, floor_keep, floor_z, units, cost.cumsum(0), multiple)


def restrict_stats(geo: Geometry, stats: dict, keep_groups: Sequence[int], keep_channels: Sequence[int]) -> dict:
    """A layer's per-input statistics for the units that survive a cut (o_proj columns follow the KV groups)."""
    cols, _ = group_rows(geo, sorted(keep_groups))
    ch = torch.tensor(sorted(keep_channels), dtype=torch.long)
    return {k: (v[cols] if k.startswith("o_") else v[ch]) for k, v in stats.items()}


def block_influence(layer_cos: Sequence[float]) -> list[float]:
    """ShortGPT's Block Influence of every layer: ``BI_l = 1 − mean_t cos(x_in, x_out)``."""
    return [1.0 - c for c in layer_cos]


def plan_depth(layer_cos: Sequence[float], n_remove: int) -> tuple[list[int], dict]:
    """The ``n_remove`` layers of lowest Block Influence (ties: the lower index goes first); at least one layer
    stays. Returns the sorted indices and the decision record."""
    n = len(layer_cos)
    if not 0 <= n_remove < n:
        raise AllocationError(f"Cannot remove {n_remove} of {n} layers: at least one must stay")
    bi = block_influence(layer_cos)
    order = sorted(range(n), key=lambda i: (bi[i], i))
    remove = sorted(order[:n_remove])
    return remove, {"block_influence": bi, "order": order, "removed_layers": remove}
