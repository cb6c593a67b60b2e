"""Line and bar charts: remaining width per layer, perplexity-vs-parameters trajectory (with recovery training),
loss curve, zero-shot accuracy of several models side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import (
    ADAPTIVE_COLOR,
    ATTN_COLOR,
    MLP_COLOR,
    RECOVERY_COLOR,
    REMOVED_COLOR,
    UNIFORM_COLOR,
    base_layout,
    empty_figure,
    wrap,
)


def _get(w, name: str) -> int:
    return int(w[name] if isinstance(w, Mapping) else getattr(w, name))


def architecture_figure(original: Sequence, current: Sequence) -> go.Figure:
    """Remaining width of every layer: KV groups (left) and MLP channels (right), kept vs removed.

    ``original`` and ``current`` hold one width per original layer (``LayerWidths`` or dicts with
    ``num_kv_heads`` and ``intermediate_size``); a ``current`` entry of None is a layer removed whole (depth
    pruning), drawn as all removed.
    """
    title = "Architecture: remaining width per layer"
    if not current:
        return empty_figure(title, "Load a model")
    if len(original) != len(current):
        raise ValueError("original and current need one entry per layer")
    layers = list(range(len(current)))
    gone = [w is None for w in current]
    kv0 = [_get(w, "num_kv_heads") for w in original]
    kv = [0 if w is None else _get(w, "num_kv_heads") for w in current]
    ch0 = [_get(w, "intermediate_size") for w in original]
    ch = [0 if w is None else _get(w, "intermediate_size") for w in current]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("attention: KV groups (each with its query heads)", "MLP channels"))
    for col, kept, full, color, unit in ((1, kv, kv0, ATTN_COLOR, "groups"), (2, ch, ch0, MLP_COLOR, "channels")):
        removed = [f - k for f, k in zip(full, kept, strict=True)]
        why = [" (the whole layer: depth pruning)" if g else "" for g in gone]
        fig.add_trace(go.Bar(y=layers, x=kept, orientation="h", name=f"{unit} kept", marker_color=color,
                             hovertemplate=f"layer %{{y}}: %{{x}} {unit} kept<extra></extra>"), 1, col)
        fig.add_trace(go.Bar(y=layers, x=removed, orientation="h", name=f"{unit} removed",
                             marker_color=REMOVED_COLOR, customdata=why,
                             hovertemplate=f"layer %{{y}}: %{{x}} {unit} removed%{{customdata}}<extra></extra>"), 1, col)
    fig.update_layout(barmode="stack", bargap=0.15, legend=dict(orientation="h", y=-0.15))
    fig.update_yaxes(autorange="reversed", dtick=max(1, len(layers) // 15))
    fig.update_yaxes(title_text="decoder layer", row=1, col=1)
    fig.update_xaxes(title_text="KV groups", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="channels", row=1, col=2)
    if any(gone):
        title += f"<br><sup>layers {', '.join(str(i) for i, g in enumerate(gone) if g)} removed whole</sup>"
    return base_layout(fig, title, height=480, top=80 if any(gone) else 60)


def trajectory_figure(
    params: Sequence[int],
    perplexities: Sequence[float],
    ppl_label: str = "",
    baseline_params: Sequence[int] | None = None,
    baseline_perplexities: Sequence[float] | None = None,
    steps: Sequence[int] | None = None,
    recovery: Sequence | None = None,
    accel_start: tuple[int, float] | None = None,
) -> go.Figure:
    """Perplexity vs parameters (millions) over the steps; the uniform baseline overlaid when given.

    ``ppl_label`` names the perplexity's settings (dataset, split, window), shown under the title.
    ``recovery``: rounds of recovery training, each with ``label``, ``params``, ``perplexity_before``,
    ``perplexity_after`` and ``stage`` (None for a plain training round; a number for an Adapt-Accel stage)
    as attributes or keys. Adapt-Accel stages are drawn as one saw-tooth line from ``accel_start``
    ``(params, perplexity)``: up when a stage prunes, down when it trains; plain rounds as a drop at their size.
    """
    title = "Trajectory: perplexity vs parameters" + (f"<br><sup>{wrap(ppl_label)}</sup>" if ppl_label else "")
    recovery = [r if isinstance(r, Mapping) else vars(r) for r in (recovery or [])]
    if not params and not recovery:
        return empty_figure(title, "Take a prune step to start the trajectory")
    if len(params) != len(perplexities):
        raise ValueError("params and perplexities need the same length")
    steps = list(steps) if steps is not None else list(range(len(params)))
    fig = go.Figure()
    if params:
        fig.add_trace(go.Scatter(
            x=[p / 1e6 for p in params], y=list(perplexities), mode="lines+markers+text", name="pruning steps",
            text=[str(s) for s in steps], textposition="top center", textfont=dict(size=9),
            marker=dict(color=ADAPTIVE_COLOR, size=8), line=dict(color=ADAPTIVE_COLOR),
            hovertemplate="step %{text}<br>%{x:.2f} M parameters<br>perplexity %{y:.2f}<extra></extra>",
        ))
    stages = [r for r in recovery if r.get("stage") is not None]
    if stages:
        xs, ys, text = [], [], []
        if accel_start is not None:
            xs, ys, text = [accel_start[0] / 1e6], [accel_start[1]], ["start"]
        for r in stages:
            xs += [r["params"] / 1e6, r["params"] / 1e6]
            ys += [r["perplexity_before"], r["perplexity_after"]]
            text += [f"{r['label']}: pruned", f"{r['label']}: trained"]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name="Adapt-Accel (prune ↑, train ↓)", text=text,
            marker=dict(color=RECOVERY_COLOR, size=7, symbol="diamond"), line=dict(color=RECOVERY_COLOR),
            hovertemplate="%{text}<br>%{x:.2f} M parameters<br>perplexity %{y:.2f}<extra></extra>",
        ))
    for i, r in enumerate(r for r in recovery if r.get("stage") is None):
        fig.add_trace(go.Scatter(
            x=[r["params"] / 1e6] * 2, y=[r["perplexity_before"], r["perplexity_after"]], mode="lines+markers",
            name="recovery training", showlegend=i == 0, legendgroup="recovery",
            marker=dict(color=RECOVERY_COLOR, size=[5, 9], symbol=["circle-open", "circle"]),
            line=dict(color=RECOVERY_COLOR, dash="dot"), text=[f"{r['label']}: before", f"{r['label']}: after"],
            hovertemplate="%{text}<br>%{x:.2f} M parameters<br>perplexity %{y:.2f}<extra></extra>",
        ))
    if baseline_params:
        if baseline_perplexities is None or len(baseline_params) != len(baseline_perplexities):
            raise ValueError("baseline_params and baseline_perplexities need the same length")
        fig.add_trace(go.Scatter(
            x=[p / 1e6 for p in baseline_params], y=list(baseline_perplexities), mode="lines+markers",
            name="uniform baseline", marker=dict(color=UNIFORM_COLOR, size=7, symbol="square"),
            line=dict(color=UNIFORM_COLOR, dash="dash"),
            hovertemplate="uniform<br>%{x:.2f} M parameters<br>perplexity %{y:.2f}<extra></extra>",
        ))
    fig.update_xaxes(title_text="parameters (millions)", autorange="reversed", gridcolor="#eee")
    fig.update_yaxes(title_text="perplexity (log scale)", type="log", gridcolor="#eee")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return base_layout(fig, title, top=68 + 12 * title.count("<br>"))


def loss_curve(steps: Sequence[int], losses: Sequence[float], label: str = "training loss",
               stage_starts: Sequence[int] | None = None, stage_labels: Sequence[str] | None = None) -> go.Figure:
    """Loss over optimiser steps (for the training controls); dotted lines mark where stages (or training rounds)
    start, named by ``stage_labels`` when given."""
    title = "Loss curve"
    if not steps:
        return empty_figure(title, "No training yet: press “Train” or “Run Adapt-Accel”")
    if len(steps) != len(losses):
        raise ValueError("steps and losses need the same length")
    fig = go.Figure(go.Scatter(x=list(steps), y=list(losses), mode="lines+markers" if len(steps) < 60 else "lines",
                               name=label, line=dict(color=RECOVERY_COLOR), marker=dict(size=4)))
    names = list(stage_labels or [])
    for i, s in enumerate(stage_starts or []):
        fig.add_vline(x=s, line=dict(color="#999", dash="dot", width=1))
        if i < len(names):
            fig.add_annotation(x=s, y=1, yref="paper", text=names[i], showarrow=False, xanchor="left",
                               yanchor="top", font=dict(size=10, color="#555"))
    fig.update_xaxes(title_text="optimiser step", gridcolor="#eee")
    fig.update_yaxes(title_text=label, gridcolor="#eee")
    return base_layout(fig, title)

def accuracy_bars(rows: Sequence[Mapping], title: str = "Zero-shot accuracy") -> go.Figure:
    """Grouped bars: one group per task, one bar per model, with ±1 standard error.

    ``rows``: dicts with ``model``, ``task``, ``metric`` (acc or acc_norm, shown under the task name), ``value``
    and ``stderr`` (may be None) — the records of :func:`pruner.evaluation.results_table`. The average row, if
    present, comes last.
    """
    rows = [r for r in rows if r.get("value") is not None]
    if not rows:
        return empty_figure(title, "Run an evaluation to compare models")
    models = list(dict.fromkeys(str(r.get("model", "")) for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    tasks = [t for t in tasks if t != "Average"] + (["Average"] if "Average" in tasks else [])
    metric = {r["task"]: r.get("metric", "") for r in rows}
    label = {t: f"{t}<br><sub>{'acc_norm / acc' if t == 'Average' else metric[t]}</sub>" for t in tasks}
    palette = [UNIFORM_COLOR, ADAPTIVE_COLOR, ATTN_COLOR, RECOVERY_COLOR, MLP_COLOR]
    fig = go.Figure()
    for i, m in enumerate(models):
        by_task = {r["task"]: r for r in rows if str(r.get("model", "")) == m}
        shown = [t for t in tasks if t in by_task]
        err = [by_task[t].get("stderr") for t in shown]
        fig.add_trace(go.Bar(
            x=[label[t] for t in shown], y=[by_task[t]["value"] for t in shown], name=m or "model",
            marker_color=palette[i % len(palette)],
            error_y=dict(type="data", array=[e if e is not None and e == e else None for e in err], visible=True,
                         thickness=1, width=3),
            hovertemplate=f"{m}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
        ))
    fig.update_layout(barmode="group", bargap=0.25, legend=dict(orientation="h", y=-0.25))
    fig.update_yaxes(title_text="accuracy", range=[0, 1], gridcolor="#eee")
    return base_layout(fig, title)
