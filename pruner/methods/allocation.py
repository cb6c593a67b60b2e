"""Per-layer sparsity allocation, and the translation of a layer's sparsity into whole units.

The sparsity ``s_l`` of a layer is the fraction of its prunable parameters (attention KV groups and MLP
channels, shared as in the reference code) removed relative to the *original* model. One step of the
adaptive rule (docs/method.md)::

    s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)

with per-step budget Δ, amplitude A and normalised layer importance Ĩ (mean 0), so the mean sparsity grows by
Δ per step until clipping bites; ``A = 0`` is the uniform (LLM-Pruner-style) baseline. Removed units cannot
grow back, so a layer never goes below the sparsity it already has ("held").

Widths from a sparsity (:func:`plan_widths`): the MLP keeps ``(1 − s_l)`` of its channels; attention moves in
whole KV groups, so the model-wide number of groups follows the allocation and the groups are handed to the
layers by largest remainder. The total therefore moves smoothly and lands on the target, instead of jumping by
a whole head-group step in every layer at once. A floor keeps at least one KV group and ``min_channels``
channels in every layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from pruner.errors import AllocationError
from pruner.model.structure import Geometry, LayerWidths


@dataclass
class Allocation:
    """Result of one allocation step, with the constraints that changed it."""

    sparsity: list[float]
    requested: list[float]
    clipped_low: list[int] = field(default_factory=list)  # wanted < 0
    clipped_high: list[int] = field(default_factory=list)  # wanted > s_max
    held: list[int] = field(default_factory=list)  # wanted less than already removed (units can't regrow)

    def to_dict(self) -> dict:
        return asdict(self)

    def notes(self) -> list[str]:
        out = []
        if self.clipped_low:
            out.append(f"layers {self.clipped_low}: allocation clipped at 0")
        if self.clipped_high:
            out.append(f"layers {self.clipped_high}: allocation clipped at s_max")
        if self.held:
            out.append(f"layers {self.held}: kept at their current sparsity (pruned units cannot grow back)")
        return out


def allocate_sparsity(
    current: Sequence[float],
    importance_norm: Sequence[float] | None,
    step: float,
    amplitude: float = 0.02,
    max_sparsity: float = 0.99,
) -> Allocation:
    """One step of the rule ``s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)`` from the layers' ``current`` sparsities
    (``amplitude = 0``: uniform, and ``importance_norm`` may be None)."""
    n = len(current)
    _check_step(step, max_sparsity)
    if amplitude and (importance_norm is None or len(importance_norm) != n):
        raise AllocationError("Adaptive allocation needs one normalised importance per layer")
    imp = importance_norm if amplitude else [0.0] * n
    return clip_allocation([s + step - amplitude * i for s, i in zip(current, imp, strict=True)], current,
                           max_sparsity)


def allocate_toward(current: Sequence[float], final: Sequence[float], step: float,
                    max_sparsity: float = 0.99) -> Allocation:
    """Move every layer toward the user's ``final`` sparsities so that the mean grows by ``step`` (a custom
    schedule): each layer covers the same share of its remaining gap."""
    n = len(current)
    _check_step(step, max_sparsity)
    if len(final) != n:
        raise AllocationError(f"A custom schedule needs one sparsity per layer ({n} values)")
    if any(not 0 <= c < 1 for c in final):
        raise AllocationError("Custom sparsities must lie in [0, 1)")
    gap = [max(c - s, 0.0) for c, s in zip(final, current, strict=True)]
    mean_gap = sum(gap) / n
    frac = 1.0 if mean_gap <= step else step / mean_gap
    return clip_allocation([s + g * frac for s, g in zip(current, gap, strict=True)], current, max_sparsity)


def _check_step(step: float, max_sparsity: float) -> None:
    if not 0 < max_sparsity < 1:
        raise AllocationError(f"s_max must lie in (0, 1), got {max_sparsity}")
    if step < 0:
        raise AllocationError(f"The per-step budget must be ≥ 0, got {step}")


def clip_allocation(requested: Sequence[float], current: Sequence[float], max_sparsity: float) -> Allocation:
    """Requested sparsities clipped to ``[0, s_max]`` and never below the current ones (units cannot regrow),
    with the layers each constraint changed."""
    out, lo, hi, held = [], [], [], []
    for li, (r, s) in enumerate(zip(requested, current, strict=True)):
        v = r
        if v < 0:
            v, _ = 0.0, lo.append(li)
        if v > max_sparsity:
            v, _ = max_sparsity, hi.append(li)
        if v < s:
            v, _ = s, held.append(li)
        out.append(v)
    return Allocation(out, list(requested), lo, hi, held)


def allocate_window(current: Sequence[float], window: tuple[int, int], ratio: float,
                    max_sparsity: float = 0.99) -> Allocation:
    """One ratio for the layers inside ``window = [start, end)``, the others untouched (LLM-Pruner's block-wise
    pruning; the window over every layer is Wanda-sp's uniform ratio). Removed units cannot grow back ("held")."""
    a, b = window
    return clip_allocation([ratio if a <= li < b else s for li, s in enumerate(current)], current, max_sparsity)


def plan_widths(
    geo: Geometry,
    original: Sequence[LayerWidths],
    current: Sequence[LayerWidths],
    sparsity: Sequence[float],
    min_channels: int = 1,
    multiple: int = 1,
) -> tuple[list[LayerWidths], list[int]]:
    """Widths that realise per-layer sparsities; returns ``(widths, floored_layers)``.

    MLP: ``round(I₀ · (1 − s_l))`` channels (rounded down to ``multiple`` where asked, at least
    ``max(min_channels, multiple)``). Attention: the ideal ``a_l = n_kv₀ · (1 − s_l)`` groups is fractional
    but groups go whole, so the model keeps ``K = round(Σ a_l)`` groups in total, handed out by largest
    remainder: a layer drops to ``floor(a_l)`` when it is among those furthest into their next group. The
    aggregate attention width thus follows the allocation one group at a time instead of every layer dropping a
    group in the same sub-step. At least one group per layer; widths never exceed the current ones.
    """
    floor_ch = max(min_channels, multiple, 1)
    ideal = [o.num_kv_heads * (1.0 - s) for o, s in zip(original, sparsity, strict=True)]
    kv = [max(1, min(math.ceil(a - 1e-9), c.num_kv_heads)) for a, c in zip(ideal, current, strict=True)]
    total = max(round(sum(ideal)), len(kv))
    while sum(kv) > total:
        cands = [li for li, (k, a) in enumerate(zip(kv, ideal, strict=True)) if k > 1 and k > a - 1e-9]
        if not cands:
            break
        li = min(cands, key=lambda i: (ideal[i] - (kv[i] - 1), i))
        kv[li] -= 1
    widths, floored = [], []
    for li, (orig, cur, s) in enumerate(zip(original, current, sparsity, strict=True)):
        ch = round(orig.intermediate_size * (1.0 - s) + 1e-9)
        if multiple > 1:
            ch = (ch // multiple) * multiple
        if ch < floor_ch or ideal[li] < 1 - 1e-9:
            floored.append(li)
        ch = min(max(ch, floor_ch), cur.intermediate_size)
        widths.append(LayerWidths(kv[li] * geo.n_rep, kv[li], ch))
    return widths, floored


def sparsity_of(geo: Geometry, original: Sequence[LayerWidths], widths: Sequence[LayerWidths]) -> list[float]:
    """Actual per-layer sparsity (fraction of prunable parameters removed) of the given widths."""
    out = []
    for o, w in zip(original, widths, strict=True):
        po = o.num_kv_heads * geo.params_per_group + o.intermediate_size * geo.params_per_channel
        pw = w.num_kv_heads * geo.params_per_group + w.intermediate_size * geo.params_per_channel
        out.append(1.0 - pw / po)
    return out


def plan_widths_by_score(
    geo: Geometry,
    original: Sequence[LayerWidths],
    current: Sequence[LayerWidths],
    sparsity: Sequence[float],
    group_scores: Sequence,
    channel_scores: Sequence,
    min_channels: int = 1,
    multiple: int = 1,
    presorted: tuple[Sequence, Sequence] | None = None,
) -> tuple[list[LayerWidths], list[int]]:
    """Like :func:`plan_widths`, but each layer meets its parameter budget by removing its units of lowest
    score *per parameter*, KV groups and MLP channels ranked together (``PruneConfig(attention="score")``).

    The split between attention and MLP inside a layer then follows the measured importance instead of
    being proportional. ``presorted``: the scores per parameter already sorted (:func:`ascending` of each layer's
    groups and channels), when the caller keeps them. A KV group is only removed when that does not undershoot the layer's budget by more
    than half a group; at least one group and ``max(min_channels, multiple)`` channels stay.
    """
    floor_ch = max(min_channels, multiple, 1)
    G, C = geo.params_per_group, geo.params_per_channel
    widths, floored = [], []
    for li, (orig, cur, s) in enumerate(zip(original, current, sparsity, strict=True)):
        budget = (1.0 - s) * (orig.num_kv_heads * G + orig.intermediate_size * C)
        kv, ch = cur.num_kv_heads, cur.intermediate_size
        params = kv * G + ch * C
        if presorted is not None:
            gs, cs = presorted[0][li], presorted[1][li]
        else:
            gs, cs = ascending(group_scores[li], G), ascending(channel_scores[li], C)
        gi = ci = 0
        groups_open = True
        while params > budget:
            can_g = groups_open and kv > 1
            can_c = ch > floor_ch
            if not can_g and not can_c:
                floored.append(li)
                break
            take_group = can_g and (not can_c or gs[gi] <= cs[ci])
            if take_group:
                if params - G < budget - G / 2:
                    groups_open = False
                    continue
                kv, params, gi = kv - 1, params - G, gi + 1
            else:
                ch, params, ci = ch - 1, params - C, ci + 1
        if multiple > 1:
            ch = max((ch // multiple) * multiple, floor_ch)
        widths.append(LayerWidths(kv * geo.n_rep, kv, min(ch, cur.intermediate_size)))
    return widths, floored


def ascending(values, per: int) -> list[float]:
    """A layer's scores per parameter (``score / per`` in float64, as Python would divide), ascending."""
    t = torch.as_tensor(values, dtype=torch.float64).detach() / per
    return torch.sort(t).values.tolist()
