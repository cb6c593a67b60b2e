"""The one planner: from importance to the next sub-step, and to a whole schedule, without touching the model.

A sub-step is planned in three moves (``docs/method.md``):

1. **allocate** — ``s_l ← clip(s_l + f·Δ − f·A·Ĩ_l, 0, s_max)`` (:func:`pruner.allocation.allocate_sparsity`),
   where ``f ≤ 1`` is the share of the per-step budget this sub-step uses;
2. **widths** — each layer's sparsity becomes whole units by the attention policy (``score``: lowest score per
   parameter first; ``proportional``: attention and MLP share s_l), and the units to keep are the layer's
   highest-scoring ones;
3. **count** — the parameters of the model with those widths.

The sub-step that would overshoot the target is shortened: ``f`` is bisected so the total lands on the target.
:meth:`Planner.next_step` is what :meth:`pruner.Pruner.step` executes, and :meth:`Planner.schedule` repeats it
with the scores of the surviving units, which is what the studio previews and what
:meth:`pruner.Pruner.preview` returns — so the preview's first step *is* the next real step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .allocation import Allocation, allocate_sparsity, plan_widths, plan_widths_by_score, sparsity_of
from .config import PruneConfig
from .errors import AllocationError, ConfigError
from .structure import Geometry, LayerWidths

BISECTION_STEPS = 40  # halvings of the budget fraction when the last sub-step is shortened


def target_tolerance(original_total: int) -> int:
    """How close to the target a run must land to count as there: 0.1 % of the original parameters."""
    return max(1, int(0.001 * original_total))


def target_params(target: float, original_total: int) -> int:
    """A target (fraction < 1 of the original, or a count ≥ 2) as a parameter count."""
    return int(round(target * original_total)) if target < 1 else int(target)


def top_units(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, ascending; ties go to the lower index."""
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


@dataclass
class UnitScores:
    """What the planner needs of a measurement: normalised layer importance and the current units' scores."""

    layer_importance_norm: list[float] | None
    group_scores: list[torch.Tensor] | None  # per layer: one score per current KV group
    channel_scores: list[torch.Tensor] | None  # per layer: one score per current MLP channel

    @classmethod
    def of(cls, importance) -> UnitScores:
        """From a :class:`pruner.importance.Importance` (or None: nothing measured)."""
        if importance is None:
            return cls(None, None, None)
        return cls(list(importance.layer_importance_norm), list(importance.group_scores),
                   list(importance.channel_scores))

    @property
    def has_units(self) -> bool:
        return self.group_scores is not None and self.channel_scores is not None

    def restricted(self, keep_groups: Sequence[Sequence[int]], keep_channels: Sequence[Sequence[int]]) -> UnitScores:
        """The same measurement for the units that survive a cut (indices into the current units)."""
        if not self.has_units:
            return self
        return UnitScores(self.layer_importance_norm,
                          [g[list(k)] for g, k in zip(self.group_scores, keep_groups, strict=True)],
                          [c[list(k)] for c, k in zip(self.channel_scores, keep_channels, strict=True)])


@dataclass
class PlannedStep:
    """One planned sub-step: what :meth:`pruner.Pruner.step` would allocate, keep and reach."""

    index: int  # 0-based sub-step index in the run
    fraction: float  # share of the full per-step budget (< 1 for the target-meeting last step)
    allocation: Allocation
    widths: list[LayerWidths]
    floored: list[int]  # layers whose plan hit the unit floor
    params: int  # total parameters after the sub-step
    keep_groups: list[list[int]] | None = None  # per layer, indices into the current KV groups (None: unscored)
    keep_channels: list[list[int]] | None = None
    estimate: bool = False  # planned with scores measured before an earlier step

    @property
    def sparsity(self) -> list[float]:
        return self.allocation.sparsity

    def notes(self) -> list[str]:
        return self.allocation.notes() + ([f"layers {self.floored}: at the floor"] if self.floored else [])

    def to_dict(self) -> dict:
        return {"index": self.index, "fraction": self.fraction, "allocated_sparsity": self.sparsity,
                "widths": [w.to_dict() for w in self.widths], "params": self.params, "estimate": self.estimate,
                "notes": self.notes()}


@dataclass
class Schedule:
    """The planned sub-steps from the current model to the target."""

    steps: list[PlannedStep]
    target: int
    reached: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"target": self.target, "reached": self.reached, "notes": self.notes,
                "steps": [s.to_dict() for s in self.steps]}


class Planner:
    """Plans sub-steps for one model shape under one :class:`PruneConfig`; never changes a model.

    ``original``: the unpruned widths (sparsity is relative to them); ``fixed_params``: the parameters pruning
    never touches (embeddings, lm_head, norms).
    """

    def __init__(self, geo: Geometry, original: Sequence[LayerWidths], fixed_params: int, config: PruneConfig,
                 original_total: int):
        self.geo = geo
        self.original = list(original)
        self.fixed_params = fixed_params
        self.config = config
        self.original_total = original_total
        if config.method == "custom" and len(config.custom or ()) != len(self.original):
            raise ConfigError(f"A custom schedule needs one final sparsity per layer ({len(self.original)} values, "
                              f"got {len(config.custom or ())})")
        narrowest = min(w.intermediate_size for w in self.original)
        if max(config.multiple, config.min_channels) > narrowest:
            raise ConfigError(f"The MLP width multiple / floor ({max(config.multiple, config.min_channels)}) is larger "
                              f"than the model's narrowest MLP ({narrowest} channels)")

    # ------------------------------------------------------------------ sizes and targets
    def params_of(self, widths: Sequence[LayerWidths]) -> int:
        return self.fixed_params + sum(self.geo.layer_prunable_params(w) for w in widths)

    @property
    def tolerance(self) -> int:
        return target_tolerance(self.original_total)

    def reached(self, widths: Sequence[LayerWidths], target: int) -> bool:
        return self.params_of(widths) <= target + self.tolerance

    def smallest_reachable(self, widths: Sequence[LayerWidths]) -> int:
        c = self.config
        plan, _ = plan_widths(self.geo, self.original, widths, [c.max_sparsity] * len(widths), c.min_channels,
                              c.multiple)
        return self.params_of(plan)

    def check_target(self, widths: Sequence[LayerWidths]) -> int:
        """The configured target as a parameter count; raises for a target the model cannot be pruned to."""
        n, now, total0 = target_params(self.config.target, self.original_total), self.params_of(widths), self.original_total
        if n >= now:
            raise AllocationError(
                f"The target ({n:,} parameters, {n / total0:.1%} of the original) is not below the model's "
                f"current size ({now:,}, {now / total0:.1%})")
        smallest = self.smallest_reachable(widths)
        if n < smallest:
            raise AllocationError(
                f"The target ({n:,} parameters, {n / total0:.1%}) cannot be met without emptying a layer: the "
                f"smallest reachable size with s_max={self.config.max_sparsity} and one KV group / "
                f"{max(self.config.min_channels, self.config.multiple)} channel(s) per layer is {smallest:,} "
                f"({smallest / total0:.1%})")
        return n

    # ------------------------------------------------------------------ one sub-step
    def plan(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores,
             fraction: float = 1.0, index: int = 0) -> PlannedStep:
        """The sub-step that uses ``fraction`` of the per-step budget from the state (``sparsity``, ``widths``)."""
        c = self.config
        if c.method == "adaptive" and c.amplitude > 0 and scores.layer_importance_norm is None:
            raise AllocationError("Measure importance first: the adaptive allocation needs the layer importance")
        alloc = allocate_sparsity(sparsity, scores.layer_importance_norm, c.step * fraction, c.amplitude * fraction,
                                  c.method, c.max_sparsity, c.custom)
        if c.attention == "score":
            if not scores.has_units:
                raise AllocationError("Measure importance first: the 'score' policy splits each layer's budget "
                                      "by the unit scores")
            new, floored = plan_widths_by_score(self.geo, self.original, widths, alloc.sparsity, scores.group_scores,
                                                scores.channel_scores, c.min_channels, c.multiple)
        else:
            new, floored = plan_widths(self.geo, self.original, widths, alloc.sparsity, c.min_channels, c.multiple)
        keep_g = keep_c = None
        if scores.has_units:
            keep_g = [top_units(g, w.num_kv_heads) for g, w in zip(scores.group_scores, new, strict=True)]
            keep_c = [top_units(ch, w.intermediate_size) for ch, w in zip(scores.channel_scores, new, strict=True)]
        return PlannedStep(index, fraction, alloc, new, floored, self.params_of(new), keep_g, keep_c)

    def next_step(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores, target: int,
                  index: int = 0) -> PlannedStep:
        """The full sub-step, or — when that would undershoot ``target`` — the largest budget fraction whose plan
        lands closest to it (a needless overshoot is avoided)."""
        full = self.plan(sparsity, widths, scores, 1.0, index)
        if full.params >= target:
            return full
        lo, hi = 0.0, 1.0  # params(lo) > target >= params(hi)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            if self.plan(sparsity, widths, scores, mid, index).params > target:
                lo = mid
            else:
                hi = mid
        p_lo, p_hi = self.plan(sparsity, widths, scores, lo, index), self.plan(sparsity, widths, scores, hi, index)
        return p_lo if (p_lo.params - target) < (target - p_hi.params) and lo > 0 else p_hi

    # ------------------------------------------------------------------ a whole schedule
    def schedule(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores, target: int,
                 first_index: int = 0, max_steps: int | None = None) -> Schedule:
        """Every sub-step to ``target``, each planned on the scores of the units that survive the ones before.

        Later steps are estimates when the run re-measures importance before every sub-step (the default).
        """
        out = Schedule([], target, False)
        sp, w = list(sparsity), list(widths)
        for k in range(self.config.max_steps if max_steps is None else max_steps):
            if self.reached(w, target):
                out.reached = True
                break
            step = self.next_step(sp, w, scores, target, first_index + k)
            if step.widths == w:
                out.notes.append("the plan stalls: every layer is at its floor, its s_max or its allocation "
                                 "before the target")
                break
            step.estimate = k > 0 and self.config.remeasure
            out.steps.append(step)
            for note in step.notes():
                if note not in out.notes:
                    out.notes.append(note)
            sp, w = step.sparsity, step.widths
            if step.keep_groups is not None:
                scores = scores.restricted(step.keep_groups, step.keep_channels)
        else:
            out.reached = self.reached(w, target)
        return out

    def actual_sparsity(self, widths: Sequence[LayerWidths]) -> list[float]:
        return sparsity_of(self.geo, self.original, widths)
