"""The one planner: from importance to the next sub-step, and to a whole schedule, without touching the model.

What a sub-step removes is the method's decision (:meth:`pruner.methods.base.Method.plan`: allocation, per-layer
widths, the units to keep, the parameter count, for a share ``f ≤ 1`` of the per-step budget). The planner keeps what
every method shares (``docs/method.md``):

* the **target** as a parameter count, its **tolerance**, and the refusal of a target the method cannot reach;
* the **last sub-step shortened** to land on the target: ``f`` is bisected (or, for a method whose fractions are
  discrete, such as ShortGPT's whole layers, the smallest sufficient one is taken);
* the **schedule**: the sub-steps to the target, each planned on the scores of the units that survive the ones
  before.

:meth:`Planner.next_step` is what :meth:`pruner.Pruner.step` executes, and :meth:`Planner.schedule` repeats it, which
is what the studio previews and what :meth:`pruner.Pruner.preview` returns — so the preview's first step *is* the
next real step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pruner.errors import AllocationError
from pruner.methods import Method, PlannedStep, UnitScores, method_class, top_units
from pruner.methods.allocation import sparsity_of
from pruner.model.structure import Geometry, LayerWidths

__all__ = ["BISECTION_STEPS", "PlannedStep", "Planner", "Schedule", "UnitScores", "target_params",
           "target_tolerance", "top_units"]

BISECTION_STEPS = 40  # halvings of the budget fraction when the last sub-step is shortened
GROW_LIMIT = 64  # at most this many per-step budgets in one sub-step, when one budget removes no unit anywhere


def target_tolerance(original_total: int) -> int:
    """How close to the target a run must land to count as there: 0.1 % of the original parameters."""
    return max(1, int(0.001 * original_total))


def target_params(target: float, original_total: int) -> int:
    """A target (fraction < 1 of the original, or a count ≥ 2) as a parameter count."""
    return int(round(target * original_total)) if target < 1 else int(target)


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

    ``original``: the unpruned widths of the current layers (sparsity is relative to them); ``fixed_params``: the
    parameters outside the decoder layers (embeddings, lm_head, the final norm), which pruning never touches.
    """

    def __init__(self, geo: Geometry, original: Sequence[LayerWidths], fixed_params: int, config,
                 original_total: int):
        self.geo = geo
        self.original = list(original)
        self.fixed_params = fixed_params
        self.config = config
        self.original_total = original_total
        self.method: Method = method_class(config.method)(config, geo, self.original, fixed_params)

    # ------------------------------------------------------------------ sizes and targets
    @property
    def result_geo(self) -> Geometry:
        return self.method.result_geo

    def params_of(self, widths: Sequence[LayerWidths], geo: Geometry | None = None) -> int:
        return self.method.params_of(widths, geo)

    @property
    def tolerance(self) -> int:
        return target_tolerance(self.original_total)

    def reached(self, widths: Sequence[LayerWidths], target: int) -> bool:
        return self.params_of(widths) <= target + self.tolerance

    def smallest_reachable(self, widths: Sequence[LayerWidths]) -> tuple[int, str]:
        """The smallest size this method can prune ``widths`` to, and why it cannot go further."""
        return self.method.smallest_reachable(widths)

    def check_target(self, widths: Sequence[LayerWidths]) -> int:
        """The configured target as a parameter count; raises for a target the model cannot be pruned to."""
        n, now, total0 = target_params(self.config.target, self.original_total), self.params_of(widths), self.original_total
        if n >= now:
            raise AllocationError(
                f"The target ({n:,} parameters, {n / total0:.1%} of the original) is not below the model's "
                f"current size ({now:,}, {now / total0:.1%})")
        smallest, why = self.smallest_reachable(widths)
        if n < smallest:
            raise AllocationError(
                f"The target ({n:,} parameters, {n / total0:.1%}) cannot be met without emptying a layer: the "
                f"smallest reachable size with {why} is {smallest:,} ({smallest / total0:.1%})")
        return n

    # ------------------------------------------------------------------ one sub-step
    def plan(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores,
             fraction: float = 1.0, index: int = 0, units: bool = True) -> PlannedStep:
        """The method's sub-step for ``fraction`` of the per-step budget from the state (``sparsity``,
        ``widths``). ``units=False`` may leave out which units to keep (the bisection only needs the size)."""
        return self.method.plan(sparsity, widths, scores, fraction, index, units)

    def next_step(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores, target: int,
                  index: int = 0) -> PlannedStep:
        """The full sub-step, or — when that would undershoot ``target`` — the largest budget fraction whose plan
        lands closest to it (a needless overshoot is avoided). A one-shot method never stops above the target's
        tolerance; a method of discrete fractions (ShortGPT) takes the smallest one that reaches it."""
        discrete = self.method.fractions(widths)
        if discrete is not None:
            for f in discrete:
                step = self.plan(sparsity, widths, scores, f, index)
                if step.params <= target + self.tolerance:
                    return step
            return self.plan(sparsity, widths, scores, 1.0, index)
        full, lo, hi = self.plan(sparsity, widths, scores, 1.0, index), 0.0, 1.0
        if self.method.incremental and full.widths == list(widths) and not full.changes_structure:
            # Δ is below one unit in every layer (a small model): the smallest doubling of the budget that removes one
            while hi < GROW_LIMIT and full.widths == list(widths):
                lo, hi = hi, 2 * hi
                full = self.plan(sparsity, widths, scores, hi, index)
            full.decision["budget_multiple"] = hi
        if full.params >= target:
            return full
        # params(lo) > target >= params(hi)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            if self.plan(sparsity, widths, scores, mid, index, units=False).params > target:
                lo = mid
            else:
                hi = mid
        p_lo, p_hi = self.plan(sparsity, widths, scores, lo, index), self.plan(sparsity, widths, scores, hi, index)
        closer = (p_lo.params - target) < (target - p_hi.params) and lo > 0
        closer = closer and p_lo.widths != list(widths)  # a step that removes nothing is no step: overshoot instead
        if not self.method.incremental:
            closer = closer and p_lo.params <= target + self.tolerance
        return p_lo if closer else p_hi

    # ------------------------------------------------------------------ a whole schedule
    def schedule(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores, target: int,
                 first_index: int = 0, max_steps: int | None = None) -> Schedule:
        """Every sub-step to ``target``, each planned on the scores of the units that survive the ones before.

        Later steps are estimates when the run re-measures importance before every sub-step (the default).
        """
        out = Schedule([], target, False)
        sp, w, geo = list(sparsity), list(widths), self.geo
        for k in range(self.config.max_steps if max_steps is None else max_steps):
            if self.params_of(w, geo) <= target + self.tolerance:
                out.reached = True
                break
            step = self.next_step(sp, w, scores, target, first_index + k)
            if step.widths == w and not step.changes_structure:
                out.notes.append("the plan stalls: every layer is at its floor, its s_max or its allocation "
                                 "before the target")
                break
            step.estimate = k > 0 and self.config.remeasure
            out.steps.append(step)
            for note in step.notes():
                if note not in out.notes:
                    out.notes.append(note)
            sp, w = step.sparsity, step.widths
            geo = self.result_geo if step.compensate else geo
            if step.changes_structure:  # a new depth or residual width: the next plan needs a new planner
                out.reached = step.params <= target + self.tolerance
                break
            if step.keep_groups is not None:
                scores = scores.restricted(step.keep_groups, step.keep_channels, self.geo)
        else:
            out.reached = self.params_of(w, geo) <= target + self.tolerance
        return out

    def actual_sparsity(self, widths: Sequence[LayerWidths]) -> list[float]:
        return sparsity_of(self.geo, self.original, widths)
