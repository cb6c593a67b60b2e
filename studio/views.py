"""Every figure and text of the page, made from a session's state (pure reads; no model work but the preview)."""

from __future__ import annotations

import visualizations as viz

from .session import StudioSession
from .settings import StudioSettings, settings_label
from .text import (
    COMPARE_CAPTION,
    COMPARE_NO_RESULTS,
    COMPARE_NO_ZERO_SHOT,
    COMPARE_ZERO_SHOT,
    LOADING,
    NO_EVAL,
    NO_EVAL_NOW,
    NO_EVAL_ORIGINAL,
    PLAN_FOR,
)
from .workspace import SessionError


def loss_figure(s: StudioSession):
    log = s.training.log
    return viz.loss_curve(list(range(1, len(log.losses) + 1)), log.losses,
                          stage_starts=[i + 1 for i in log.starts], stage_labels=log.labels)


def allocation_figure(s: StudioSession, settings: StudioSettings | None):
    """The allocated sparsity of the steps taken and of the plan to the target, a note about the plan (both
    labelled with the settings they are for), and the number of planned steps (None: no plan). Whoever puts the
    figure on the page marks it drawn (:meth:`studio.panel.SchedulePanel.drawn`)."""
    settings = settings or s.settings
    label = settings_label(settings)
    alloc, attn, mlp = s.schedule.sparsity_history()
    n_planned = None
    try:
        p = s.schedule.preview(settings)
        alloc, attn, mlp = alloc + p.allocated, attn + p.attention, mlp + p.mlp
        n_planned = len(p.params)
        exact = "the first is exactly the next step" if p.exact_first else "all estimated"
        note = (PLAN_FOR.format(label=label) + f": **{s.steps_taken} taken + {n_planned} more step(s)** to "
                f"{(p.params[-1] if p.params else 0) / 1e6:.2f} M parameters ({exact})"
                + ("" if p.reached or not p.params else " (target not reachable)")
                + ("  \n" + "; ".join(p.notes) if p.notes else ""))
    except SessionError as exc:
        note = str(exc)
    labels = [str(k + 1) for k in range(len(attn))]
    fig = viz.allocated_sparsity_heatmap(attn, mlp, labels, n_done=s.steps_taken, allocated=alloc,
                                         subtitle=label if n_planned else None)
    return fig, note, n_planned


def unit_figure(s: StudioSession):
    """The unit scores of the latest measurement, one row per original layer (empty where a layer was gone)."""
    imp, before = s.schedule.shown_importance()
    if imp is None:
        return viz.unit_importance_heatmap([], [])
    note = f"measured before step {before}"
    if imp.group_scores is None:  # ShortGPT measures the layers only
        return viz.unit_importance_heatmap([], [], criterion=None, note=note)
    layers = s.schedule.layer_map()
    kept = layers.kept[before - 1] if 0 < before <= len(layers.kept) else layers.now
    groups, channels = list(imp.group_scores), list(imp.channel_scores)
    if len(groups) == len(kept):
        groups, channels = layers.spread(groups, kept, []), layers.spread(channels, kept, [])
    return viz.unit_importance_heatmap(groups, channels, criterion=imp.criterion, note=note)


def architecture(s: StudioSession):
    """Remaining width of every original layer (a layer removed by depth pruning: all removed)."""
    layers = s.schedule.layer_map()
    return viz.architecture_figure(layers.original, layers.full_widths(s.work.widths()))


def trajectory_figure(s: StudioSession):
    q, t = s.quality, s.training
    traj, base = q.trajectory, q.baseline
    return viz.trajectory_figure([p.params for p in traj], [p.perplexity for p in traj], q.label(),
                                 [p.params for p in base] or None, [p.perplexity for p in base] or None,
                                 steps=[p.step for p in traj], recovery=t.recovery,
                                 accel_start=(t.accel_start.params, t.accel_start.perplexity)
                                 if t.accel_start else None)


def no_evaluation(s: StudioSession) -> str:
    """What the metrics say when the model as it is has no quick evaluation: after a step, or back at the original
    (after an undo) whose reference perplexity the trajectory already shows, or before anything."""
    if s.steps_taken:
        return NO_EVAL_NOW.format(step=s.steps_taken)
    start = [p for p in s.quality.trajectory if p.step == 0]
    return NO_EVAL_ORIGINAL.format(ppl=start[0].perplexity) if start else NO_EVAL


def page_views(page, s: StudioSession | None, settings: StudioSettings | None = None) -> dict:
    """Every figure and text of ``page`` from the session's state."""
    if s is None:
        return {page.status: LOADING}
    if s.work.closed:
        return {page.status: f"⚠️ This session was closed because {s.work.closed}; reload the page to start again."}
    labels, cols = s.schedule.importance_columns()
    planned, plan_note, n_planned = allocation_figure(s, settings)
    s.panel.drawn(settings or s.settings)  # the page now shows this plan
    ev = s.quality.last_eval
    steps = {page.n_steps: n_planned} if n_planned else {}  # "number of steps" follows the plan on screen
    return {**steps,
        page.summary: s.summary_markdown(),
        page.layer_fig: viz.layer_importance_heatmap(cols, labels, one_minus_cos=True),
        page.unit_fig: unit_figure(s),
        page.alloc_fig: planned,
        page.alloc_md: plan_note,
        page.arch_fig: architecture(s),
        page.traj_fig: trajectory_figure(s),
        page.loss_fig: loss_figure(s),
        page.metrics: ev.summary() if ev else no_evaluation(s),
        page.gen_orig: ev.original_generation if ev else "",
        page.gen_pruned: ev.generation if ev else "",
        page.cost: s.costs.prune_markdown(settings or s.settings),
        page.whatif_md: s.explore.whatif_markdown(),  # marked as no longer holding once the model changed
    }


def compare_views(page, s: StudioSession, with_files: bool = True) -> dict:
    """The Compare methods tab from the session's comparison (``with_files``: the downloads too)."""
    c = s.compare
    cfg = c.settings or s.settings
    layers = c.layers or s.schedule.layer_map()
    table = c.table()
    out = {
        page.cmp_traj: viz.methods_trajectory(c.trajectories(), f"quick perplexity: {cfg.quick_ppl.describe()}"),
        page.cmp_widths: viz.method_widths(layers.original, c.widths()),
        page.cmp_diff: viz.method_width_difference(layers.original, c.widths()),
        page.cmp_table: shown_table(table),
        page.cmp_note: compare_caption(s) if c.results else COMPARE_NO_RESULTS,
    }
    if with_files:
        out[page.cmp_files] = c.downloads() or None
    return out


def compare_caption(s: StudioSession) -> str:
    """What every number of the comparison table was measured with."""
    c = s.compare
    cfg = c.settings or s.settings
    zs = (COMPARE_ZERO_SHOT.format(tasks=", ".join(c.zero_shot_settings[0]), limit=c.zero_shot_settings[1])
          if c.zero_shot_settings else COMPARE_NO_ZERO_SHOT)
    pc = cfg.prune
    return COMPARE_CAPTION.format(target=pc.target, params=s.work.original_total, corpus=cfg.calibration_label,
                                  n_windows=pc.n_windows, window=pc.window, seed=pc.seed, ppl=cfg.quick_ppl.describe(),
                                  zero_shot=zs, new_tokens=cfg.max_new_tokens, device=s.work.device.type.upper())


def shown_table(table):
    """The comparison table for the page: the zero-shot average with its standard error in one column, "—" where
    there is no value."""
    t = table.astype(object).where(table.notna(), None)
    t["zero-shot avg"] = [("—" if v is None else f"{v:.3f}" + ("" if se is None else f" ± {se:.3f}"))
                          for v, se in zip(t["zero-shot avg"], t["± se"], strict=True)]
    t = t.drop(columns=["± se"])
    return t.where(t.notna(), "—")
