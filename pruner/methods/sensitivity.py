"""Sensitivity allocation: every layer's sparsity chosen to minimise the summed measured loss increase under the
parameter target, one shot (issue 23; ``docs/methods.md``).

Its importance pass also measures the per-layer sensitivity table on the same calibration windows
(:mod:`pruner.importance.sensitivity`: the loss increase of masking 25 / 50 / 75 % of one layer's prunable
parameters, lowest score first, and of skipping the block). Each layer's cost ``f_l(x)`` of losing a share ``x``
of its prunable parameters is the piecewise-linear interpolation of its points from ``(0, 0)``; the plan takes the
segments of the layers' lower convex hulls in order of cost per parameter (greedy, optimal for the convexified
costs) until a share ``f`` of everything ``s_max`` allows is removed. The planner bisects ``f`` onto the target like
any one-shot method's budget fraction, and the attention policy turns the sparsities into units.
"""

from __future__ import annotations

from collections.abc import Sequence

from pruner.errors import AllocationError
from pruner.importance.sensitivity import LEVELS, Sensitivity
from pruner.methods.allocation import clip_allocation
from pruner.methods.base import Method, register


def lower_hull(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    """The lower convex hull of points sorted by ``x`` (Andrew's monotone chain), from the first to the last."""
    hull: list[tuple[float, float]] = []
    for p in zip(xs, ys, strict=True):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear ``y(x)`` through the points (sorted by ``x``), constant beyond the last."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def capped_curve(table: Sensitivity, layer: int, cap: float) -> tuple[list[float], list[float]]:
    """The layer's measured points up to the share ``cap`` (the last one interpolated at ``cap``)."""
    xs, ys = table.curve(layer)
    keep = [(x, y) for x, y in zip(xs, ys, strict=True) if x < cap]
    keep.append((cap, interpolate(xs, ys, cap)))
    return [x for x, _ in keep], [y for _, y in keep]


def allocate_by_sensitivity(table: Sensitivity, prunable: Sequence[float], caps: Sequence[float],
                            fraction: float) -> tuple[list[float], float]:
    """The share ``x_l`` of every layer's prunable parameters to remove (``prunable``: their counts; ``caps``:
    the most each may lose) so that ``fraction`` of ``Σ caps·prunable`` goes at the least convexified cost.
    Returns the shares and the predicted summed loss increase."""
    segments = []  # (cost per parameter, layer, start share, end share, cost increase)
    for li, (n, cap) in enumerate(zip(prunable, caps, strict=True)):
        if cap <= 0 or n <= 0:
            continue
        hull = lower_hull(*capped_curve(table, li, cap))
        for (x0, y0), (x1, y1) in zip(hull, hull[1:], strict=False):
            if x1 > x0:
                segments.append(((y1 - y0) / ((x1 - x0) * n), li, x0, x1, y1 - y0))
    segments.sort(key=lambda s: (s[0], s[1], s[2]))
    budget = min(max(fraction, 0.0), 1.0) * sum(c * n for c, n in zip(caps, prunable, strict=True))
    share, cost = [0.0] * len(prunable), 0.0
    for _slope, li, x0, x1, dy in segments:
        if budget <= 0:
            break
        take = min(x1 - x0, budget / prunable[li])
        share[li] = x0 + take
        cost += dy * take / (x1 - x0)
        budget -= take * prunable[li]
    return share, cost


@register
class SensitivityAllocation(Method):
    """Per-layer sparsity from the measured loss increase of pruning each layer alone (one planned step)."""

    order = 3
    name = "sensitivity"
    title = "Sensitivity"
    summary = "per-layer sparsity minimising the summed measured loss increase (sensitivity table)"
    baseline = False
    uses_attention_policy = True
    tunes = ("attention",)
    sensitivity_levels = LEVELS

    def plan(self, sparsity, widths, scores, fraction=1.0, index=0, units=True):
        c = self.config
        table = scores.sensitivity
        if table is None or len(table.increase) != len(widths):
            raise AllocationError("Measure importance first: the sensitivity method allocates with the per-layer "
                                  "sensitivity table its importance pass measures")
        geo = self.geo
        prunable = [w.num_kv_heads * geo.params_per_group + w.intermediate_size * geo.params_per_channel
                    for w in widths]
        # the table's shares count the current units: s_max caps the share of what is left
        caps = [max(0.0, (c.max_sparsity - s) / (1.0 - s)) if s < 1 else 0.0 for s in sparsity]
        share, predicted = allocate_by_sensitivity(table, prunable, caps, fraction)
        requested = [s + (1.0 - s) * x for s, x in zip(sparsity, share, strict=True)]
        alloc = clip_allocation(requested, sparsity, c.max_sparsity)
        new, floored = self.widths_for(alloc, widths, scores, c.attention)
        decision = {"predicted_loss_increase": predicted, "layer_share": share, "base_loss": table.base_loss,
                    "levels": list(table.levels), "loss_increase": table.increase, "removed_share": table.removed}
        return self._step(index, fraction, alloc, new, floored, scores, units, decision)
