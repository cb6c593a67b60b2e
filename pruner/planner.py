"""The one planner: from importance to the next sub-step, and to a whole schedule, without touching the model.

A sub-step is planned in three moves (``docs/method.md``):

1. **allocate** — ``s_l ← clip(s_l + f·Δ − f·A·Ĩ_l, 0, s_max)`` (:func:`pruner.allocation.allocate_sparsity`),
   where ``f ≤ 1`` is the share of the per-step budget this sub-step uses;
2. **widths** — each layer's sparsity becomes whole units by the attention policy (``score``: lowest score per
   parameter first; ``proportional``: attention and MLP share s_l), and the units to keep are the layer's
   highest-scoring ones;
3. **count** — the parameters of the model with those widths.

The sub-step that would overshoot the target is shortened: ``f`` is bisected so the total lands on the target.

The baselines (:data:`pruner.config.METHOD_SPECS`, ``docs/methods.md``) are plans too, each a single step whose
``f`` is bisected the same way: LLM-Pruner and Wanda-sp allocate ``f·s_max`` to every layer of their window and
split it proportionally; FLAP removes the share ``f`` of the removable parameters by one global threshold
(:mod:`pruner.methods`); ShortGPT removes the fewest lowest-influence layers that reach the target, and its plan
lists those layers (``PlannedStep.remove_layers``).
:meth:`Planner.next_step` is what :meth:`pruner.Pruner.step` executes, and :meth:`Planner.schedule` repeats it
with the scores of the surviving units, which is what the studio previews and what
:meth:`pruner.Pruner.preview` returns — so the preview's first step *is* the next real step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import methods
from .allocation import (
    Allocation,
    allocate_sparsity,
    allocate_window,
    plan_widths,
    plan_widths_by_score,
    sparsity_of,
)
from .config import PruneConfig, method_spec
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
    """What the planner needs of a measurement: normalised layer importance and the current units' scores (and,
    for FLAP, the per-input statistics behind them; for ShortGPT the layer cosines)."""

    layer_importance_norm: list[float] | None
    group_scores: list[torch.Tensor] | None  # per layer: one score per current KV group
    channel_scores: list[torch.Tensor] | None  # per layer: one score per current MLP channel
    layer_cos: list[float] | None = None
    stats: list[dict] | None = None  # per layer: criterion statistics per current input (fluctuation)

    @classmethod
    def of(cls, importance) -> UnitScores:
        """From a :class:`pruner.importance.Importance` (or None: nothing measured)."""
        if importance is None:
            return cls(None, None, None)
        g, c = importance.group_scores, importance.channel_scores
        return cls(list(importance.layer_importance_norm), list(g) if g is not None else None,
                   list(c) if c is not None else None, list(importance.layer_cos),
                   list(importance.stats) if importance.stats is not None else None)

    @property
    def has_units(self) -> bool:
        return self.group_scores is not None and self.channel_scores is not None

    def restricted(self, keep_groups: Sequence[Sequence[int]], keep_channels: Sequence[Sequence[int]],
                   geo: Geometry | None = None) -> UnitScores:
        """The same measurement for the units that survive a cut (indices into the current units)."""
        if not self.has_units:
            return self
        stats = None
        if self.stats is not None and geo is not None:
            stats = [methods.restrict_stats(geo, st, g, c)
                     for st, g, c in zip(self.stats, keep_groups, keep_channels, strict=True)]
        return UnitScores(self.layer_importance_norm,
                          [g[list(k)] for g, k in zip(self.group_scores, keep_groups, strict=True)],
                          [c[list(k)] for c, k in zip(self.channel_scores, keep_channels, strict=True)],
                          self.layer_cos, stats)

    def without_layers(self, remove: Sequence[int]) -> UnitScores:
        """The same measurement for the layers that remain after depth pruning."""
        gone = set(remove)

        def keep(values):
            return None if values is None else [v for li, v in enumerate(values) if li not in gone]

        return UnitScores(keep(self.layer_importance_norm), keep(self.group_scores), keep(self.channel_scores),
                          keep(self.layer_cos), keep(self.stats))


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
    method: str = "adaptive"
    remove_layers: list[int] = field(default_factory=list)  # depth pruning: current indices of the layers to remove
    compensate: bool = False  # the cut adds FLAP's bias compensation to o_proj / down_proj
    decision: dict = field(default_factory=dict)  # what the method decided, JSON-friendly (window, threshold, ...)

    @property
    def sparsity(self) -> list[float]:
        return self.allocation.sparsity

    def notes(self) -> list[str]:
        out = self.allocation.notes() + ([f"layers {self.floored}: at the floor"] if self.floored else [])
        return out + ([f"layers {self.remove_layers} removed"] if self.remove_layers else [])

    def to_dict(self) -> dict:
        return {"index": self.index, "fraction": self.fraction, "allocated_sparsity": self.sparsity,
                "widths": [w.to_dict() for w in self.widths], "params": self.params, "estimate": self.estimate,
                "notes": self.notes(), "method": self.method, "remove_layers": list(self.remove_layers),
                "decision": self.decision}


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

    def __init__(self, geo: Geometry, original: Sequence[LayerWidths], fixed_params: int, config: PruneConfig,
                 original_total: int):
        self.geo = geo
        self.original = list(original)
        self.fixed_params = fixed_params
        self.config = config
        self.original_total = original_total
        self.spec = method_spec(config.method)
        if config.method == "custom" and len(config.custom or ()) != len(self.original):
            raise ConfigError(f"A custom schedule needs one final sparsity per layer ({len(self.original)} values, "
                              f"got {len(config.custom or ())})")
        narrowest = min(w.intermediate_size for w in self.original)
        if max(config.multiple, config.min_channels) > narrowest:
            raise ConfigError(f"The MLP width multiple / floor ({max(config.multiple, config.min_channels)}) is larger "
                              f"than the model's narrowest MLP ({narrowest} channels)")
        n = len(self.original)
        self.window = (methods.llm_pruner_window(n, config.block_layers) if config.method == "llm-pruner"
                       else (0, n))
        self.compensates = self.spec.compensates and config.bias_compensation
        # the geometry of a planned result: FLAP's compensation gives every o_proj and down_proj a bias
        self.result_geo = geo.with_output_biases() if self.compensates else geo
        self._ranking: tuple | None = None  # FLAP: (key, GlobalRanking) of the last measurement planned with

    # ------------------------------------------------------------------ sizes and targets
    def params_of(self, widths: Sequence[LayerWidths], geo: Geometry | None = None) -> int:
        geo = geo or self.geo
        return self.fixed_params + sum(geo.layer_params(w) for w in widths)

    @property
    def tolerance(self) -> int:
        return target_tolerance(self.original_total)

    def reached(self, widths: Sequence[LayerWidths], target: int) -> bool:
        return self.params_of(widths) <= target + self.tolerance

    def smallest_reachable(self, widths: Sequence[LayerWidths]) -> tuple[int, str]:
        """The smallest size this method can prune ``widths`` to, and why it cannot go further."""
        c, kind = self.config, self.spec.widths
        floor = f"one KV group / {max(c.min_channels, c.multiple)} channel(s) per layer"
        if kind == "depth":
            return self.fixed_params + min(self.geo.layer_params(w) for w in widths), "ShortGPT keeps one layer"
        if kind == "global":
            ch = max(c.min_channels, c.multiple, 1)
            low = [LayerWidths(self.geo.n_rep, 1, min(ch, w.intermediate_size)) for w in widths]
            return self.params_of(low, self.result_geo), f"FLAP keeps {floor}"
        if self.spec.allocation == "window":
            a, b = self.window
            sp = [c.max_sparsity if a <= li < b else 0.0 for li in range(len(widths))]
            plan, _ = methods.plan_window_widths(self.geo, self.original, widths, sp, self.window, c.min_channels,
                                                 c.multiple)
            return self.params_of(plan), f"s_max={c.max_sparsity} and {floor} inside layers [{a}, {b})"
        plan, _ = plan_widths(self.geo, self.original, widths, [c.max_sparsity] * len(widths), c.min_channels,
                              c.multiple)
        return self.params_of(plan), f"s_max={c.max_sparsity} and {floor}"

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
        """The sub-step that uses ``fraction`` of the per-step budget from the state (``sparsity``, ``widths``).
        ``units=False`` leaves out which units to keep where the widths do not need them (the bisection)."""
        if self.spec.widths == "depth":
            return self._plan_depth(sparsity, widths, scores, fraction, index)
        if self.spec.widths == "global":
            return self._plan_global(widths, scores, fraction, index)
        c = self.config
        alloc, decision = self._allocate(sparsity, scores, fraction)
        policy = c.attention if self.spec.widths == "policy" else self.spec.widths
        if self.spec.allocation == "window":
            new, floored = methods.plan_window_widths(self.geo, self.original, widths, alloc.sparsity, self.window,
                                                      c.min_channels, c.multiple)
        elif policy == "score":
            if not scores.has_units:
                raise AllocationError("Measure importance first: the 'score' policy splits each layer's budget "
                                      "by the unit scores")
            new, floored = plan_widths_by_score(self.geo, self.original, widths, alloc.sparsity, scores.group_scores,
                                                scores.channel_scores, c.min_channels, c.multiple)
        else:
            new, floored = plan_widths(self.geo, self.original, widths, alloc.sparsity, c.min_channels, c.multiple)
        keep_g = keep_c = None
        if scores.has_units and units:
            keep_g = [top_units(g, w.num_kv_heads) for g, w in zip(scores.group_scores, new, strict=True)]
            keep_c = [top_units(ch, w.intermediate_size) for ch, w in zip(scores.channel_scores, new, strict=True)]
        return PlannedStep(index, fraction, alloc, new, floored, self.params_of(new), keep_g, keep_c,
                           method=c.method, decision=decision)

    def _allocate(self, sparsity, scores: UnitScores, fraction: float) -> tuple[Allocation, dict]:
        c = self.config
        if self.spec.allocation == "window":
            ratio = fraction * c.max_sparsity
            a, b = self.window
            decision = {"ratio": ratio, "window": [a, b], "untouched_layers": [li for li in range(len(sparsity))
                                                                              if not a <= li < b]}
            return allocate_window(sparsity, self.window, ratio, c.max_sparsity), decision
        if c.method == "adaptive" and c.amplitude > 0 and scores.layer_importance_norm is None:
            raise AllocationError("Measure importance first: the adaptive allocation needs the layer importance")
        return allocate_sparsity(sparsity, scores.layer_importance_norm, c.step * fraction, c.amplitude * fraction,
                                 c.method, c.max_sparsity, c.custom), {}

    def _plan_global(self, widths, scores: UnitScores, fraction: float, index: int) -> PlannedStep:
        """FLAP: one threshold over the standardised fluctuation scores of every unit (:mod:`pruner.methods`)."""
        c = self.config
        if scores.stats is None:
            raise AllocationError("Measure importance first: FLAP needs the fluctuation statistics of every layer")
        key = (id(scores.stats), tuple(widths))
        if self._ranking is None or self._ranking[0] != key:
            self._ranking = (key, methods.rank_global(self.geo, widths, scores.stats, c.min_channels, c.multiple))
        g = self._ranking[1].plan(fraction)
        new = [LayerWidths(len(kg) * self.geo.n_rep, len(kg), len(kc)) for kg, kc in zip(g.keep_groups,
                                                                                        g.keep_channels, strict=True)]
        sp = sparsity_of(self.geo, self.original, new)
        decision = {**g.decision, "bias_compensation": self.compensates}
        return PlannedStep(index, fraction, Allocation(sp, list(sp)), new, g.floored,
                           self.params_of(new, self.result_geo), g.keep_groups, g.keep_channels, method=c.method,
                           compensate=self.compensates, decision=decision)

    def _plan_depth(self, sparsity, widths, scores: UnitScores, fraction: float, index: int) -> PlannedStep:
        """ShortGPT: remove the ``round(f·(L − 1))`` layers of lowest Block Influence."""
        if scores.layer_cos is None:
            raise AllocationError("Measure importance first: ShortGPT ranks layers by their block influence")
        n = round(min(max(fraction, 0.0), 1.0) * (len(widths) - 1))
        remove, decision = methods.plan_depth(scores.layer_cos, n)
        keep = [li for li in range(len(widths)) if li not in set(remove)]
        new, sp = [widths[li] for li in keep], [sparsity[li] for li in keep]
        return PlannedStep(index, fraction, Allocation(sp, list(sp)), new, [], self.params_of(new), method="shortgpt",
                           remove_layers=remove, decision=decision)

    def next_step(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores, target: int,
                  index: int = 0) -> PlannedStep:
        """The full sub-step, or — when that would undershoot ``target`` — the largest budget fraction whose plan
        lands closest to it (a needless overshoot is avoided). A one-shot method never stops above the target's
        tolerance; ShortGPT removes the fewest layers that reach it."""
        if self.spec.widths == "depth":
            last = len(widths) - 1
            for n in range(1, last + 1):
                step = self.plan(sparsity, widths, scores, n / last, index)
                if step.params <= target + self.tolerance:
                    return step
            return self.plan(sparsity, widths, scores, 1.0, index)
        full = self.plan(sparsity, widths, scores, 1.0, index)
        if full.params >= target:
            return full
        lo, hi = 0.0, 1.0  # params(lo) > target >= params(hi)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            if self.plan(sparsity, widths, scores, mid, index, units=False).params > target:
                lo = mid
            else:
                hi = mid
        p_lo, p_hi = self.plan(sparsity, widths, scores, lo, index), self.plan(sparsity, widths, scores, hi, index)
        closer = (p_lo.params - target) < (target - p_hi.params) and lo > 0
        if self.spec.one_shot:
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
            if step.widths == w and not step.remove_layers:
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
            if step.remove_layers:  # a new depth: the next plan needs the planner of the smaller model
                out.reached = self.params_of(w, geo) <= target + self.tolerance
                break
            if step.keep_groups is not None:
                scores = scores.restricted(step.keep_groups, step.keep_channels, self.geo)
        else:
            out.reached = self.params_of(w, geo) <= target + self.tolerance
        return out

    def actual_sparsity(self, widths: Sequence[LayerWidths]) -> list[float]:
        return sparsity_of(self.geo, self.original, widths)
