"""FLAP (An et al., AAAI 2024; ``docs/methods.md``): the fluctuation of every o_proj / down_proj input across
tokens (WIFV), standardised per layer and module, one global threshold over all layers and both modules with every
unit weighted by its parameter cost, and a bias that puts back the removed inputs' mean contribution; one shot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pruner.errors import AllocationError
from pruner.methods.allocation import Allocation, sparsity_of
from pruner.methods.base import Method, PlannedStep, register
from pruner.model.structure import Geometry, LayerWidths


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


@register
class FLAP(Method):
    """One global threshold over the standardised fluctuation scores of every unit (:class:`GlobalRanking`)."""

    order = 11
    name = "flap"
    title = "FLAP"
    summary = "FLAP (An et al., AAAI 2024): fluctuation metric, one global threshold, bias compensation"
    criterion = "fluctuation"
    published_calibration = (1024, 128, "wikitext2")  # scripts/llama_7b.sh --nsamples 1024; model.seqlen = 128

    @classmethod
    def card_note(cls, config: dict) -> str:
        if not config.get("bias_compensation", True):
            return ""
        return (" o_proj and down_proj carry biases that add back the removed inputs' mean contribution (FLAP's "
                "bias compensation).")

    def __init__(self, config, geo, original, fixed_params):
        super().__init__(config, geo, original, fixed_params)
        self.compensates = bool(config.bias_compensation)
        self._ranking: tuple | None = None  # (key, GlobalRanking) of the last measurement planned with

    @property
    def result_geo(self) -> Geometry:
        # the compensation gives every o_proj and down_proj a bias
        return self.geo.with_output_biases() if self.compensates else self.geo

    def smallest_reachable(self, widths):
        c = self.config
        ch = max(c.min_channels, c.multiple, 1)
        low = [LayerWidths(self.geo.n_rep, 1, min(ch, w.intermediate_size)) for w in widths]
        return self.params_of(low, self.result_geo), f"FLAP keeps {self.floor_text}"

    def simulate(self, step, widths, scores):
        """The removed units masked, and with the bias compensation every removed o_proj / down_proj input
        replaced by its calibration mean (what the compensating bias adds back)."""
        masks = super().simulate(step, widths, scores)
        if step.compensate:
            for li, m in masks.items():
                m.o_fill, m.down_fill = scores.stats[li]["o_mean"], scores.stats[li]["down_mean"]
        return masks

    def plan(self, sparsity, widths, scores, fraction=1.0, index=0, units=True):
        c = self.config
        if scores.stats is None:
            raise AllocationError("Measure importance first: FLAP needs the fluctuation statistics of every layer")
        key = (id(scores.stats), tuple(widths))
        if self._ranking is None or self._ranking[0] != key:
            self._ranking = (key, rank_global(self.geo, widths, scores.stats, c.min_channels, c.multiple))
        g = self._ranking[1].plan(fraction)
        new = [LayerWidths(len(kg) * self.geo.n_rep, len(kg), len(kc))
               for kg, kc in zip(g.keep_groups, g.keep_channels, strict=True)]
        sp = sparsity_of(self.geo, self.original, new)
        decision = {**g.decision, "bias_compensation": self.compensates}
        return PlannedStep(index, fraction, Allocation(sp, list(sp)), new, g.floored,
                           self.params_of(new, self.result_geo), g.keep_groups, g.keep_channels, method=self.name,
                           compensate=self.compensates, decision=decision)
