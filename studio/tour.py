"""The guided tour of the "Learn" tab: five steps that walk a class through Adapt-Pruner on the live model.

Each step is one action on a :class:`~studio.session.StudioSession` and one picture (from
:mod:`visualizations.teaching`), returned as ``(figure, note)``. Steps 1–4 read the model (step 1 measures
importance, 2–4 ask the library's planner; nothing is cut); step 5 prunes the session's model two steps. A step
whose prerequisite is missing — importance of the current model, a target below the model's size — raises
:class:`TourPrerequisite` with what to do, in the page's words.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import visualizations as viz
from pruner.methods import method_class

from . import text
from .inputs import BOUNDS
from .session import StudioSession
from .settings import StudioSettings
from .views import trajectory_figure
from .workspace import SessionError


@dataclass(frozen=True)
class TourStep:
    title: str
    explain: str
    action: str


STEPS = tuple(TourStep(*s) for s in text.TOUR_STEPS)
#: The "large A" of step 2: the amplitude slider's maximum.
LARGE_AMPLITUDE = BOUNDS["amplitude"].high
#: Steps pruned by step 5.
TRAJECTORY_STEPS = 2


class TourPrerequisite(SessionError):
    """A step cannot run yet; the message says what to do first."""


def position(k: int) -> str:
    """The header of step ``k`` (0-based)."""
    return text.TOUR_POSITION.format(k=k + 1, n=len(STEPS), title=STEPS[k].title)


def _importance(s: StudioSession):
    """The importance of the model as it is now, or :class:`TourPrerequisite` saying how to get it."""
    imp = s.schedule.current_importance()
    if imp is None:
        why = text.TOUR_MODEL_CHANGED if s.pruner.last_measurement is not None or s.steps_taken else \
            text.TOUR_NO_MEASUREMENT
        raise TourPrerequisite(text.TOUR_NEEDS_IMPORTANCE.format(why=why))
    if imp.group_scores is None or imp.channel_scores is None:
        raise TourPrerequisite(text.TOUR_LAYERS_ONLY.format(method=s.settings.prune.method))
    return imp


def _incremental(settings: StudioSettings) -> tuple[StudioSettings, str]:
    """The settings with an incremental allocation (a one-shot baseline is replaced by adaptive, and said so)."""
    m = method_class(settings.prune.method)
    if m.incremental and not m.baseline:
        return settings, ""
    return settings.with_method("adaptive", custom=None), text.TOUR_BASELINE_PLAN.format(method=settings.prune.method)


def _plan(s: StudioSession, settings: StudioSettings):
    if s.pruner.reached(settings.prune):
        raise TourPrerequisite(text.TOUR_AT_TARGET)
    return s.schedule.preview(settings)


# ---------------------------------------------------------------------- step 1
def measure_importance(s: StudioSession, settings: StudioSettings):
    """Measure (or reuse) the importance of the current model; the picture: 1 − cos per layer."""
    imp = s.schedule.measure(settings)
    values = [1.0 + v for v in imp.layer_importance]  # I = −cos, so 1 − cos = 1 + I
    layers = s.schedule.layer_map().now
    hi, lo = max(range(len(values)), key=values.__getitem__), min(range(len(values)), key=values.__getitem__)
    note = (f"Measured on {imp.tokens:,} calibration tokens. Layer **{layers[hi]}** changes its input most "
            f"(1 − cos = {values[hi]:.3f}); layer **{layers[lo]}** least ({values[lo]:.3f}): it would be pruned "
            f"most under the adaptive rule.")
    return viz.importance_bars(values, layers), note


# ---------------------------------------------------------------------- step 2
def amplitude_effect(s: StudioSession, settings: StudioSettings, large: float = LARGE_AMPLITUDE):
    """The plan to the target on screen with A = 0 and with a large A (adaptive, nothing cut): the final s_l of
    each, side by side and as their difference."""
    _importance(s)
    low_s = settings.with_method("adaptive", custom=None, amplitude=0.0)
    high_s = settings.with_method("adaptive", custom=None, amplitude=float(large))
    low, high = _plan(s, low_s), _plan(s, high_s)
    layers = list(range(len(low.allocated[-1])))
    lo, hi = low.allocated[-1], high.allocated[-1]
    diff = [h - x for h, x in zip(hi, lo, strict=True)]
    more, less = max(layers, key=diff.__getitem__), min(layers, key=diff.__getitem__)
    note = (f"Both plans reach {100 * settings.prune.target:g} % of the original with Δ = {100 * settings.prune.step:g} %."
            f" With A = 0 every layer ends near s = {sum(lo) / len(lo):.1%}. With A = {large:g} layer **{more}** ends "
            f"at {hi[more]:.1%} ({diff[more]:+.1%}) and layer **{less}** at {hi[less]:.1%} ({diff[less]:+.1%}). "
            f"The amplitude on the left is A = {settings.prune.amplitude:g}.")
    fig = viz.amplitude_effect(layers, lo, hi, 0.0, float(large), steps=(len(low.params), len(high.params)))
    return fig, note


# ---------------------------------------------------------------------- step 3
def layer_choices(s: StudioSession) -> list[int]:
    """The layers the model has now (original numbering)."""
    return list(s.schedule.layer_map().now)


def units_of_layer(s: StudioSession, layer: int):
    """The KV groups (with their query heads) and MLP channels of one layer (original numbering), with scores."""
    imp = _importance(s)
    now = s.schedule.layer_map().now
    if layer not in now:
        raise TourPrerequisite(f"⚠️ Layer {layer} is not in the model now; pick one of {', '.join(map(str, now))}.")
    i = now.index(layer)
    g, c = imp.group_scores[i].tolist(), imp.channel_scores[i].tolist()
    n_rep = s.pruner.geo.n_rep
    lowest = min(range(len(g)), key=g.__getitem__)
    note = (f"Layer **{layer}** has {len(g)} KV groups of {n_rep} query head(s) each and {len(c)} MLP channels. "
            f"KV group {lowest} scores lowest (grey); among the channels the right end of the ranking goes first. "
            f"A group weighs {s.pruner.geo.params_per_group:,} parameters, a channel {s.pruner.geo.params_per_channel:,}.")
    return viz.layer_units(layer, g, c, n_rep, imp.criterion or "unit"), note


# ---------------------------------------------------------------------- step 4
def _removed_groups(s: StudioSession, plan) -> list[tuple[int, int]]:
    """(layer position, planned step) of every KV group the plan removes, first step first."""
    now = [w.num_kv_heads for w in s.work.widths()]
    out = []
    for k, widths in enumerate(plan.widths):
        if len(widths) != len(now):
            break  # a change of depth: positions no longer match
        for i, w in enumerate(widths):
            out += [(i, k)] * max(0, now[i] - w["num_kv_heads"])
            now[i] = min(now[i], w["num_kv_heads"])
    return out


def score_policy(s: StudioSession, settings: StudioSettings):
    """The next planned step in one layer: its units by score per parameter, the layer's budget, and what goes. The
    layer: the most important one that loses a KV group in the next step (else the most important one)."""
    imp = _importance(s)
    settings, swapped = _incremental(settings)
    plan = _plan(s, settings)
    if not plan.widths or len(plan.widths[0]) != len(imp.layer_importance):
        raise TourPrerequisite("⚠️ The next planned step changes the model's depth; choose adaptive on the left.")
    cur, nxt = s.work.widths(), plan.widths[0]
    layers = s.schedule.layer_map().now
    geo, origin = s.pruner.geo, s.pruner.origin.widths
    G, C = geo.params_per_group, geo.params_per_channel
    rank = sorted(range(len(layers)), key=lambda i: -imp.layer_importance[i])  # most important first
    losing = [i for i in rank if nxt[i]["num_kv_heads"] < cur[i].num_kv_heads]
    cutting = [i for i in rank if nxt[i] != cur[i].to_dict()]  # a layer the next step cuts at all
    i = (losing or cutting or rank)[0]
    n_g, n_c = cur[i].num_kv_heads - nxt[i]["num_kv_heads"], cur[i].intermediate_size - nxt[i]["intermediate_size"]
    alloc = plan.allocated[0][layers[i]]
    budget = (1 - alloc) * (origin[i].num_kv_heads * G + origin[i].intermediate_size * C)
    to_remove = max(0.0, cur[i].num_kv_heads * G + cur[i].intermediate_size * C - budget)
    gs, cs = sorted(imp.group_scores[i].tolist()), sorted(imp.channel_scores[i].tolist())
    units = [("group", v / G, G, k < n_g) for k, v in enumerate(gs)]
    units += [("channel", v / C, C, k < n_c) for k, v in enumerate(cs)]
    place = rank.index(i) + 1
    first: dict[int, int] = {}
    for j, k in _removed_groups(s, plan):
        first.setdefault(layers[j], s.steps_taken + k + 1)
    elsewhere = [f"{layer} (first at step {step})" for layer, step in sorted(first.items())]
    note = (f"Layer **{layers[i]}** is the {_ordinal(place)}most important of {len(layers)} (1 − cos = "
            f"{1 + imp.layer_importance[i]:.3f}). Its allocation after the next step is s = {alloc:.1%}, a budget of "
            f"{to_remove:,.0f} parameters this step: the plan removes **{n_g} KV group(s)** and **{n_c} channel(s)**.")
    if not losing:
        note += (" No layer loses a KV group in the next step; this is the most important layer the step cuts."
                 if cutting else " The next step cuts no layer.")
    note += (f" Over the whole plan ({len(plan.params)} steps) KV groups go from layer(s) "
             f"{', '.join(map(str, elsewhere))}." if elsewhere else " The plan to the target removes no KV group;"
             " lower the target on the left to see one go.")
    if swapped:
        note += " " + swapped
    sub = f"next planned step · {settings.prune.method}, target {100 * settings.prune.target:g} %, Δ = " \
          f"{100 * settings.prune.step:g} %, A = {settings.prune.amplitude:g}"
    return viz.score_per_parameter(layers[i], units, to_remove, note=sub), note


def _ordinal(n: int) -> str:
    """"" for 1 (the most important), else "2nd ", "3rd ", "11th " …"""
    if n == 1:
        return ""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')} "


# ---------------------------------------------------------------------- step 5
def prune_and_evaluate(s: StudioSession, settings: StudioSettings, prompt: str,
                       n: int = TRAJECTORY_STEPS) -> Iterator[str]:
    """Prune the session's model ``n`` steps with ``settings``, each followed by the quick evaluation; yields a
    status line before and after each. The picture is :func:`trajectory` afterwards."""
    if s.pruner.reached(settings.prune):
        raise TourPrerequisite(text.TOUR_AT_TARGET)
    start = s.steps_taken
    for k in range(n):
        if s.pruner.reached(settings.prune):
            yield f"The target is reached after {k} step(s)."
            return
        yield f"Tour step 5: pruning step {s.steps_taken + 1} ({k + 1} of {n}) …"
        try:
            rec = s.schedule.step(settings)
            yield f"Step {rec.index + 1} cut to {rec.params_total / 1e6:.2f} M parameters; quick evaluation …"
            s.quality.quick_eval(prompt, settings)
        except SessionError:
            if not s.work.cancelled:
                raise
            yield s.schedule.kept_message(f"during tour step 5's step {start + k + 1}", start)  # what was kept
            return
    yield (f"Tour step 5 done: {n} step(s) pruned, the model has {s.work.params() / 1e6:.2f} M parameters "
           f"({s.work.params() / s.work.original_total:.1%} of the original).")


def trajectory(s: StudioSession):
    """The trajectory and what it says now."""
    traj = s.quality.trajectory
    if len(traj) < 2:
        return trajectory_figure(s), text.TOUR_PRESS.format(action=STEPS[4].action)
    a, b = traj[0], traj[-1]
    note = (f"{len(traj) - 1} step(s) on the trajectory: from {a.params / 1e6:.2f} M parameters at perplexity "
            f"{a.perplexity:.2f} to {b.params / 1e6:.2f} M at {b.perplexity:.2f} "
            f"(×{b.perplexity / a.perplexity:.2f}). {s.quality.label()}.")
    return trajectory_figure(s), note
