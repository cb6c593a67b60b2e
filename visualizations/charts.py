"""Line and bar charts: remaining width per layer, perplexity-vs-parameters trajectory, loss curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import (
    ADAPTIVE_COLOR,
    ATTN_COLOR,
    MLP_COLOR,
    REMOVED_COLOR,
    UNIFORM_COLOR,
    base_layout,
    empty_figure,
)


def _get(w, name: str) -> int:
    return int(w[name] if isinstance(w, Mapping) else getattr(w, name))


def architecture_figure(original: Sequence, current: Sequence) -> go.Figure:
    """Remaining width of every layer: KV groups (left) and MLP channels (right), kept vs removed.

    ``original`` and ``current`` hold one width per layer (``LayerWidths`` or dicts with ``num_kv_heads`` and
    ``intermediate_size``).
    """
    title = "Architecture: remaining width per layer"
    if not current:
        return empty_figure(title, "Load a model")
    if len(original) != len(current):
        raise ValueError("original and current need one entry per layer")
    layers = list(range(len(current)))
    kv0 = [_get(w, "num_kv_heads") for w in original]
    kv = [_get(w, "num_kv_heads") for w in current]
    ch0 = [_get(w, "intermediate_size") for w in original]
    ch = [_get(w, "intermediate_size") for w in current]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("attention: KV groups (each with its query heads)", "MLP channels"))
    for col, kept, full, color, unit in ((1, kv, kv0, ATTN_COLOR, "groups"), (2, ch, ch0, MLP_COLOR, "channels")):
        removed = [f - k for f, k in zip(full, kept, strict=True)]
        fig.add_trace(go.Bar(y=layers, x=kept, orientation="h", name=f"{unit} kept", marker_color=color,
                             hovertemplate=f"layer %{{y}}: %{{x}} {unit} kept<extra></extra>"), 1, col)
        fig.add_trace(go.Bar(y=layers, x=removed, orientation="h", name=f"{unit} removed",
                             marker_color=REMOVED_COLOR,
                             hovertemplate=f"layer %{{y}}: %{{x}} {unit} removed<extra></extra>"), 1, col)
    fig.update_layout(barmode="stack", bargap=0.15, legend=dict(orientation="h", y=-0.15))
    fig.update_yaxes(autorange="reversed", dtick=max(1, len(layers) // 15))
    fig.update_yaxes(title_text="decoder layer", row=1, col=1)
    fig.update_xaxes(title_text="KV groups", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="channels", row=1, col=2)
    return base_layout(fig, title, height=480)


def trajectory_figure(
    params: Sequence[int],
    perplexities: Sequence[float],
    ppl_label: str = "",
    baseline_params: Sequence[int] | None = None,
    baseline_perplexities: Sequence[float] | None = None,
    steps: Sequence[int] | None = None,
) -> go.Figure:
    """Perplexity vs parameters (millions) over the steps; the uniform baseline overlaid when given.

    ``ppl_label`` names the perplexity's settings (dataset, split, window), shown under the title.
    """
    title = "Trajectory: perplexity vs parameters" + (f"<br><sup>{ppl_label}</sup>" if ppl_label else "")
    if not params:
        return empty_figure(title, "Take a prune step to start the trajectory")
    if len(params) != len(perplexities):
        raise ValueError("params and perplexities need the same length")
    steps = list(steps) if steps is not None else list(range(len(params)))
    fig = go.Figure(go.Scatter(
        x=[p / 1e6 for p in params], y=list(perplexities), mode="lines+markers+text", name="adaptive (this run)",
        text=[str(s) for s in steps], textposition="top center", textfont=dict(size=9),
        marker=dict(color=ADAPTIVE_COLOR, size=8), line=dict(color=ADAPTIVE_COLOR),
        hovertemplate="step %{text}<br>%{x:.2f} M parameters<br>perplexity %{y:.2f}<extra></extra>",
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
    return base_layout(fig, title, top=80)


def loss_curve(steps: Sequence[int], losses: Sequence[float], label: str = "training loss",
               stage_starts: Sequence[int] | None = None) -> go.Figure:
    """Loss over optimiser steps (for the training controls); dotted lines mark where stages start."""
    title = "Loss curve"
    if not steps:
        return empty_figure(title, "No training yet")
    if len(steps) != len(losses):
        raise ValueError("steps and losses need the same length")
    fig = go.Figure(go.Scatter(x=list(steps), y=list(losses), mode="lines", name=label,
                               line=dict(color=ADAPTIVE_COLOR)))
    for s in stage_starts or []:
        fig.add_vline(x=s, line=dict(color="#999", dash="dot", width=1))
    fig.update_xaxes(title_text="optimiser step", gridcolor="#eee")
    fig.update_yaxes(title_text=label, gridcolor="#eee")
    return base_layout(fig, title)
