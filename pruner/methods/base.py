"""What every pruning method is, and the plan types they share.

A method (one module each in :mod:`pruner.methods`) is a subclass of :class:`Method` registered under its name. It
owns everything that makes it that method: its unit criterion (or that it scores whole layers), whether it moves in
Δ-sized sub-steps or plans one step, how a budget fraction becomes per-layer widths and the units to keep
(:meth:`Method.plan`), the smallest size it can reach, and what its record's ``decision`` says. The planner
(:mod:`pruner.pruning.planner`) keeps what is common: the target, its tolerance, the bisection of the last
sub-step and the schedule. Nothing outside this package switches on a method's name: adding a method is adding a
module here (plus its explanation and colour in the studio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from pruner.errors import AllocationError, ConfigError
from pruner.importance.sensitivity import Sensitivity
from pruner.methods.allocation import Allocation, plan_widths, plan_widths_by_score
from pruner.model.masking import LayerMask
from pruner.model.structure import Geometry, LayerWidths, group_rows


def restrict_stats(geo: Geometry, stats: dict, keep_groups: Sequence[int], keep_channels: Sequence[int]) -> dict:
    """A layer's per-input statistics for the units that survive a cut (o_proj columns follow the KV groups)."""
    cols, _ = group_rows(geo, sorted(keep_groups))
    ch = torch.tensor(sorted(keep_channels), dtype=torch.long)
    return {k: (v[cols] if k.startswith("o_") else v[ch]) for k, v in stats.items()}


def top_units(scores: torch.Tensor, keep: int, order: list[int] | None = None) -> list[int]:
    """Indices of the ``keep`` highest scores, ascending; ties go to the lower index. ``order``: the scores'
    :func:`descending` order when already known."""
    return sorted((descending(scores) if order is None else order)[:keep])


def descending(scores) -> list[int]:
    """Indices from the highest score down; equal scores keep the lower index first (a stable sort)."""
    t = scores if isinstance(scores, torch.Tensor) else torch.tensor(scores, dtype=torch.float64)
    return torch.sort(t, descending=True, stable=True).indices.tolist()


def _batched(scores: Sequence, descending: bool = False, per: int = 1) -> list[list]:
    """Every layer's scores sorted in one call (padded to the longest layer): the descending order of indices
    (as :func:`descending`), or the ascending values per parameter (as :func:`pruner.methods.allocation.ascending`).
    One sort of a [layers, units] tensor instead of one per layer: the preview sorts after every planned step."""
    sizes = [len(t) for t in scores]
    pad = -math.inf if descending else math.inf  # the padding sorts last either way
    rows = torch.full((len(scores), max(sizes, default=0)), pad, dtype=torch.float64)
    for i, t in enumerate(scores):
        rows[i, : sizes[i]] = torch.as_tensor(t, dtype=torch.float64)
    if descending:
        out = torch.sort(rows, dim=1, descending=True, stable=True).indices.tolist()
    else:
        out = torch.sort(rows / per, dim=1).values.tolist()
    return [row[:n] for row, n in zip(out, sizes, strict=True)]


def _index(keep: Sequence[int]) -> torch.Tensor:
    """Kept units as an index tensor (indexing with a Python list costs a conversion per element)."""
    return torch.as_tensor(list(keep), dtype=torch.long)


@dataclass
class UnitScores:
    """What the planner needs of a measurement: normalised layer importance and the current units' scores (and,
    for FLAP, the per-input statistics behind them; for ShortGPT the layer cosines)."""

    layer_importance_norm: list[float] | None
    group_scores: list[torch.Tensor] | None  # per layer: one score per current KV group
    channel_scores: list[torch.Tensor] | None  # per layer: one score per current MLP channel
    layer_cos: list[float] | None = None
    stats: list[dict] | None = None  # per layer: criterion statistics per current input (fluctuation)
    sensitivity: Sensitivity | None = None  # per layer: the loss increase of pruning it alone (sensitivity)
    # sorted views of the scores, made once: a preview plans the same scores dozens of times (bisection)
    _sorted: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def orders(self) -> tuple[list[list[int]], list[list[int]]]:
        """Per layer, the KV groups' and the channels' indices from the highest score down (see :func:`descending`)."""
        if "order" not in self._sorted:
            self._sorted["order"] = (_batched(self.group_scores, descending=True),
                                     _batched(self.channel_scores, descending=True))
        return self._sorted["order"]

    def ascending_per_parameter(self, per_group: int, per_channel: int) -> tuple[list, list]:
        """Per layer, the groups' and channels' scores per parameter, ascending (what the ``score`` policy walks)."""
        key = ("ascending", per_group, per_channel)
        if key not in self._sorted:
            self._sorted[key] = (_batched(self.group_scores, per=per_group),
                                 _batched(self.channel_scores, per=per_channel))
        return self._sorted[key]

    @classmethod
    def of(cls, importance) -> UnitScores:
        """From a :class:`pruner.importance.measure.Importance` (or None: nothing measured)."""
        if importance is None:
            return cls(None, None, None)
        g, c = importance.group_scores, importance.channel_scores
        return cls(list(importance.layer_importance_norm), list(g) if g is not None else None,
                   list(c) if c is not None else None, list(importance.layer_cos),
                   list(importance.stats) if importance.stats is not None else None,
                   getattr(importance, "sensitivity", None))

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
            stats = [restrict_stats(geo, st, g, c)
                     for st, g, c in zip(self.stats, keep_groups, keep_channels, strict=True)]
        return UnitScores(self.layer_importance_norm,
                          [g[_index(k)] for g, k in zip(self.group_scores, keep_groups, strict=True)],
                          [c[_index(k)] for c, k in zip(self.channel_scores, keep_channels, strict=True)],
                          self.layer_cos, stats, self.sensitivity)

    def without_layers(self, remove: Sequence[int]) -> UnitScores:
        """The same measurement for the layers that remain after depth pruning."""
        gone = set(remove)

        def keep(values):
            return None if values is None else [v for li, v in enumerate(values) if li not in gone]

        return UnitScores(keep(self.layer_importance_norm), keep(self.group_scores), keep(self.channel_scores),
                          keep(self.layer_cos), keep(self.stats),
                          self.sensitivity.without_layers(remove) if self.sensitivity is not None else None)


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
    slice_width: int | None = None  # SliceGPT: the residual width the stream is rotated and sliced to
    decision: dict = field(default_factory=dict)  # what the method decided, JSON-friendly (window, threshold, ...)

    @property
    def sparsity(self) -> list[float]:
        return self.allocation.sparsity

    @property
    def changes_structure(self) -> bool:
        """The step changes more than the layers' widths (their number, or the residual stream): the next plan
        needs the planner of the new model."""
        return bool(self.remove_layers) or self.slice_width is not None

    def notes(self) -> list[str]:
        out = self.allocation.notes() + ([f"layers {self.floored}: at the floor"] if self.floored else [])
        out += [f"residual stream sliced to {self.slice_width}"] if self.slice_width is not None else []
        return out + ([f"layers {self.remove_layers} removed"] if self.remove_layers else [])

    def to_dict(self) -> dict:
        return {"index": self.index, "fraction": self.fraction, "allocated_sparsity": self.sparsity,
                "widths": [w.to_dict() for w in self.widths], "params": self.params, "estimate": self.estimate,
                "notes": self.notes(), "method": self.method, "remove_layers": list(self.remove_layers),
                "slice_width": self.slice_width, "decision": self.decision}


#: Every method by name, in the order of the choice lists (filled by :func:`register`).
REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method known by its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The method registered as ``name``; a :class:`ConfigError` naming the choices otherwise."""
    if name not in REGISTRY:
        raise ConfigError(f"Unknown method '{name}': use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


class Method:
    """A pruning method over one model shape and one configuration (a :class:`pruner.config.PruneConfig`).

    ``geo``: the model's geometry; ``original``: the unpruned widths of the current layers (sparsity is relative
    to them); ``fixed_params``: the parameters outside the decoder layers, which pruning never touches.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    """How the method is called in tables and cards."""
    summary: ClassVar[str] = ""
    """One line: what the method removes and how it decides."""
    criterion: ClassVar[str | None] = None
    """The method's own unit criterion; None: the configured one (:attr:`PruneConfig.criterion`)."""
    incremental: ClassVar[bool] = False
    """Moves in Δ-sized sub-steps with the allocation rule (Adapt-Accel prunes with these); otherwise one planned
    step whose budget fraction is bisected to land on the target."""
    uses_attention_policy: ClassVar[bool] = False
    """Splits each layer's budget by :attr:`PruneConfig.attention`; otherwise the method splits it its own way."""
    uses_custom: ClassVar[bool] = False
    """Reads :attr:`PruneConfig.custom` (the final per-layer sparsities); other methods allocate their own."""
    layers_only: ClassVar[bool] = False
    """Scores whole layers only (the importance pass measures the layer cosines, no unit scores)."""
    baseline: ClassVar[bool] = True
    """A published method this project compares Adapt-Pruner with (``docs/methods.md``)."""
    published_calibration: ClassVar[tuple | None] = None
    """The calibration its released code uses: (windows or None for all, tokens per window, corpus)."""
    order: ClassVar[int] = 100
    """Place in the choice lists (Adapt-Pruner and its variants first, then the baselines)."""
    repeatable: ClassVar[bool] = True
    """Can prune again a model it has pruned (SliceGPT slices the residual stream once)."""
    measured_by_the_cut: ClassVar[tuple[str, ...]] = ()
    """Keys the cut itself adds to the step's ``decision`` (SliceGPT: the variance its PCAs kept), beyond the plan's."""
    tunes: ClassVar[tuple[str, ...]] = ()
    """The settings besides the target that change its plan, among those a sweep varies (``amplitude``,
    ``step``, ``attention``): a sweep plans each method once per combination of these only."""
    sensitivity_levels: ClassVar[tuple[float, ...] | None] = None
    """Levels of the per-layer sensitivity table its importance pass measures (None: none needed)."""

    def __init__(self, config, geo: Geometry, original: Sequence[LayerWidths], fixed_params: int):
        self.config = config
        self.geo = geo
        self.original = list(original)
        self.fixed_params = fixed_params
        self.check_model()

    @classmethod
    def card_note(cls, config: dict) -> str:
        """What a model card adds about a model this method pruned (``config``: the record's settings)."""
        return ""

    # ------------------------------------------------------------------ checks
    @classmethod
    def check_config(cls, config) -> None:
        """The method's checks of the settings alone (called by ``PruneConfig``); raise :class:`ConfigError`."""

    def check_model(self) -> None:
        """The method's checks of the settings against the model's shape; raise :class:`ConfigError`."""
        c = self.config
        narrowest = min(w.intermediate_size for w in self.original)
        if max(c.multiple, c.min_channels) > narrowest:
            raise ConfigError(f"The MLP width multiple / floor ({max(c.multiple, c.min_channels)}) is larger "
                              f"than the model's narrowest MLP ({narrowest} channels)")

    # ------------------------------------------------------------------ sizes
    @property
    def result_geo(self) -> Geometry:
        """The geometry of a planned result (FLAP's compensation gives every o_proj and down_proj a bias)."""
        return self.geo

    @property
    def measured_criterion(self) -> str | None:
        """What the importance pass scores units with (None: the layers only)."""
        return None if self.layers_only else self.config.criterion

    def params_of(self, widths: Sequence[LayerWidths], geo: Geometry | None = None) -> int:
        geo = geo or self.geo
        return self.fixed_params + sum(geo.layer_params(w) for w in widths)

    @property
    def floor_text(self) -> str:
        c = self.config
        return f"one KV group / {max(c.min_channels, c.multiple)} channel(s) per layer"

    def smallest_reachable(self, widths: Sequence[LayerWidths]) -> tuple[int, str]:
        """The smallest size this method can prune ``widths`` to, and why it cannot go further."""
        c = self.config
        plan, _ = plan_widths(self.geo, self.original, widths, [c.max_sparsity] * len(widths), c.min_channels,
                              c.multiple)
        return self.params_of(plan), f"s_max={c.max_sparsity} and {self.floor_text}"

    def resolution(self, widths: Sequence[LayerWidths]) -> int:
        """The most parameters one notch of this method's size moves (a plan cannot land on a target finer than
        this): a KV group here; a layer for ShortGPT, one slice of the residual stream for SliceGPT."""
        return self.geo.params_per_group

    def fractions(self, widths: Sequence[LayerWidths]) -> list[float] | None:
        """The budget fractions the method can take, when they are discrete (whole layers); None: any in [0, 1]."""
        return None

    # ------------------------------------------------------------------ simulating a plan
    def simulate(self, step: PlannedStep, widths: Sequence[LayerWidths], scores: UnitScores) -> dict[int, LayerMask]:
        """The step as masks over the model before it (``widths``; ``scores``: the measurement it was planned on):
        what :func:`pruner.model.masking.masked` needs to evaluate the model as if the step had been cut. The units
        a step removes are masked (zeroed); a method that cuts differently says so here."""
        if step.keep_groups is None or step.keep_channels is None:
            raise AllocationError("Measure importance first: the plan does not say which units go")
        return {li: LayerMask(list(g), list(c))
                for li, (g, c, w) in enumerate(zip(step.keep_groups, step.keep_channels, widths, strict=True))
                if len(g) != w.num_kv_heads or len(c) != w.intermediate_size}

    # ------------------------------------------------------------------ planning
    def plan(self, sparsity: Sequence[float], widths: Sequence[LayerWidths], scores: UnitScores,
             fraction: float = 1.0, index: int = 0, units: bool = True) -> PlannedStep:
        """The sub-step that uses ``fraction`` of the per-step budget from the state (``sparsity``, ``widths``).
        ``units=False`` may leave out which units to keep (the bisection only needs the size)."""
        raise NotImplementedError

    def _step(self, index: int, fraction: float, alloc: Allocation, new: list[LayerWidths], floored: list[int],
              scores: UnitScores, units: bool, decision: dict | None = None) -> PlannedStep:
        """A planned step keeping, in every layer, its highest-scoring units up to the planned widths."""
        keep_g = keep_c = None
        if scores.has_units and units:
            og, oc = scores.orders()
            keep_g = [top_units(g, w.num_kv_heads, o) for g, w, o in zip(scores.group_scores, new, og, strict=True)]
            keep_c = [top_units(ch, w.intermediate_size, o)
                      for ch, w, o in zip(scores.channel_scores, new, oc, strict=True)]
        return PlannedStep(index, fraction, alloc, new, floored, self.params_of(new), keep_g, keep_c,
                           method=self.name, decision=decision or {})

    def widths_for(self, alloc: Allocation, widths: Sequence[LayerWidths], scores: UnitScores,
                   policy: str) -> tuple[list[LayerWidths], list[int]]:
        """Per-layer sparsities as whole units: ``score`` (lowest score per parameter first inside each layer's
        budget) or ``proportional`` (attention and MLP share s_l)."""
        c = self.config
        if policy == "score":
            if not scores.has_units:
                raise AllocationError("Measure importance first: the 'score' policy splits each layer's budget "
                                      "by the unit scores")
            return plan_widths_by_score(self.geo, self.original, widths, alloc.sparsity, scores.group_scores,
                                        scores.channel_scores, c.min_channels, c.multiple,
                                        presorted=scores.ascending_per_parameter(self.geo.params_per_group,
                                                                                 self.geo.params_per_channel))
        return plan_widths(self.geo, self.original, widths, alloc.sparsity, c.min_channels, c.multiple)


class IncrementalMethod(Method):
    """A method of the rule ``s_l ← clip(s_l + f·Δ − f·A·Ĩ_l, 0, s_max)`` in Δ-sized sub-steps; subclasses say how
    a sub-step's sparsities are allocated (:meth:`allocate`), the attention policy turns them into units."""

    incremental = True
    baseline = False
    uses_attention_policy = True
    tunes = ("step", "attention")

    def allocate(self, sparsity: Sequence[float], scores: UnitScores, fraction: float) -> Allocation:
        raise NotImplementedError

    def plan(self, sparsity, widths, scores, fraction=1.0, index=0, units=True):
        alloc = self.allocate(sparsity, scores, fraction)
        new, floored = self.widths_for(alloc, widths, scores, self.config.attention)
        return self._step(index, fraction, alloc, new, floored, scores, units)
