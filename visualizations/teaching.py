"""The guided tour's pictures (the studio's "Learn" tab): one idea each, drawn from a live model's numbers.

Layers run down the y axis with layer 0 at the top, as in the heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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
    wrap,
)

LESS_COLOR = "#2e6fb5"  # a layer pruned less (blue), beside ADAPTIVE_COLOR for more (red)


def _top(fig: go.Figure) -> go.Figure:
    """The title hangs from the figure's top edge, clear of the panels' own titles below it."""
    fig.update_layout(title=dict(y=1, yref="container", yanchor="top", pad=dict(t=18)))
    return fig


def importance_bars(one_minus_cos: Sequence[float], layers: Sequence[int] | None = None) -> go.Figure:
    """Layer importance as bars of 1 − mean cos(x_in, x_out), one per layer: 0 means the layer leaves its input
    unchanged; the most and least important layers are coloured."""
    title = ("What each layer does to its input<br><sup>1 − cos(x_in, x_out) · 0 = the layer changes nothing"
             "<br>a longer bar = a more important layer</sup>")
    if not one_minus_cos:
        return empty_figure(title, "Press the button above to measure")
    v = [float(x) for x in one_minus_cos]
    layers = list(layers) if layers is not None else list(range(len(v)))
    hi, lo = int(np.argmax(v)), int(np.argmin(v))
    colors = [ADAPTIVE_COLOR if i == hi else LESS_COLOR if i == lo else UNIFORM_COLOR for i in range(len(v))]
    fig = go.Figure(go.Bar(x=v, y=layers, orientation="h", marker_color=colors, text=[f"{x:.3f}" for x in v],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="layer %{y}: 1 − cos = %{x:.4f}<extra></extra>"))
    fig.update_yaxes(title_text="decoder layer", autorange="reversed", dtick=max(1, len(v) // 15))
    fig.update_xaxes(title_text="1 − cos (0 = does nothing)", rangemode="tozero", range=[0, 1.15 * max(max(v), 1e-9)])
    return _top(base_layout(fig, title, height=max(320, 160 + 16 * len(v)), top=90))


def amplitude_effect(layers: Sequence[int], low: Sequence[float], high: Sequence[float], a_low: float,
                     a_high: float, steps: tuple[int, int] | None = None) -> go.Figure:
    """The final sparsity s_l of the plan to the same target with two amplitudes, side by side (left) and as their
    difference (right: red = the larger A prunes the layer more, blue = less)."""
    title = f"How A shifts sparsity<br><sup>the plan to the target with A = {a_low:g} and A = {a_high:g}"
    title += (f"<br>nothing cut · {steps[0]} and {steps[1]} planned step(s)</sup>" if steps is not None else "</sup>")
    if not low:
        return empty_figure(title, "Press the button above to plan")
    if len(low) != len(high) or len(low) != len(layers):
        raise ValueError("low, high and layers need one entry per layer")
    diff = [h - lo for h, lo in zip(high, low, strict=True)]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06, column_widths=[0.6, 0.4],
                        subplot_titles=("final sparsity s_l", "difference"))
    for vals, name, color in ((low, f"A = {a_low:g}", UNIFORM_COLOR), (high, f"A = {a_high:g}", ADAPTIVE_COLOR)):
        fig.add_trace(go.Bar(x=list(vals), y=list(layers), orientation="h", name=name, marker_color=color,
                             hovertemplate=f"layer %{{y}}<br>{name}: s = %{{x:.1%}}<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=diff, y=list(layers), orientation="h", showlegend=False,
                         marker_color=[ADAPTIVE_COLOR if d > 0 else LESS_COLOR for d in diff],
                         hovertemplate="layer %{y}<br>%{x:+.1%}<extra></extra>"), 1, 2)
    fig.update_layout(barmode="group", bargap=0.2, legend=dict(orientation="h", y=-0.3))
    fig.update_yaxes(autorange="reversed", dtick=max(1, len(layers) // 15))
    fig.update_yaxes(title_text="decoder layer", row=1, col=1)
    fig.update_xaxes(tickformat=".0%", row=1, col=1)
    fig.update_xaxes(tickformat="+.0%", zeroline=True, zerolinecolor="#888",
                     title_text=f"A = {a_high:g} minus A = {a_low:g}",
                     row=1, col=2)
    fig = _top(base_layout(fig, title, height=max(380, 200 + 22 * len(layers)), top=110))
    fig.update_layout(margin=dict(b=95))  # the legend below the axis titles
    return fig


def layer_units(layer: int, group_scores: Sequence[float], channel_scores: Sequence[float], n_rep: int,
                criterion: str = "taylor") -> go.Figure:
    """The units of one layer and their scores: every KV group with the query heads that share it (left) and every
    MLP channel, ranked high → low (right). The lowest of each kind go first."""
    title = (f"The units of layer {layer}<br><sup>{len(group_scores)} KV groups, {len(channel_scores)} MLP channels"
             "<br>KV group = one key/value head + its query heads<br>MLP channel = a row of gate and up, a column of "
             "down</sup>")
    if not len(group_scores):
        return empty_figure("The units of a layer",
                            "Pick a layer and press the button above")
    g = [float(x) for x in group_scores]
    c = sorted((float(x) for x in channel_scores), reverse=True)
    names = [f"KV {k}<br>q {k * n_rep}–{(k + 1) * n_rep - 1}" if n_rep > 1 else f"KV {k}<br>q {k}"
             for k in range(len(g))]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.35, 0.65], horizontal_spacing=0.1,
                        subplot_titles=("KV groups", "MLP channels, ranked"))
    lowest_g = int(np.argmin(g))
    fig.add_trace(go.Bar(x=names, y=g, marker_color=[REMOVED_COLOR if k == lowest_g else ATTN_COLOR
                                                     for k in range(len(g))], showlegend=False,
                         hovertemplate="%{x}<br>score %{y:.3g}<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=list(range(1, len(c) + 1)), y=c, marker_color=MLP_COLOR, marker_line_width=0,
                         showlegend=False, hovertemplate="rank %{x}<br>score %{y:.3g}<extra></extra>"), 1, 2)
    fig.update_layout(bargap=0.15)
    fig.update_yaxes(title_text=f"{criterion} score", row=1, col=1)
    fig.update_xaxes(type="category", row=1, col=1)
    fig.update_xaxes(title_text="channel rank", row=1, col=2)
    fig.update_annotations(yshift=6)  # the panels' titles clear of the subtitle
    return _top(base_layout(fig, title, top=130))


def score_per_parameter(layer: int, units: Sequence[tuple[str, float, int, bool]], to_remove: float,
                        note: str = "") -> go.Figure:
    """One layer's units ranked by score per parameter (lowest first), each bar as wide as the unit's parameters,
    and the layer's budget for the step as a line: the units left of it go. ``units``: (kind "group" or
    "channel", score per parameter, parameters, removed in the plan)."""
    title = f"Layer {layer}: units by score per parameter" + (f"<br><sup>{wrap(note, 48)}</sup>" if note else "")
    if not units:
        return empty_figure("Units by score per parameter", "Press the button above to rank the units")
    order = sorted(units, key=lambda u: u[1])
    left = np.cumsum([0] + [u[2] for u in order[:-1]])
    fig = go.Figure()
    for kind, color, light, name in (("group", ATTN_COLOR, "#bccde6", "KV group (with its query heads)"),
                                     ("channel", MLP_COLOR, "#f2d3b3", "MLP channel")):
        for removed in (True, False):
            sel = [(x, u) for x, u in zip(left, order, strict=True) if u[0] == kind and u[3] == removed]
            if not sel:
                continue
            fig.add_trace(go.Bar(
                x=[x + u[2] / 2 for x, u in sel], y=[u[1] for _, u in sel], width=[u[2] for _, u in sel],
                customdata=[u[2] for _, u in sel],
                marker=dict(color=color if removed else light, line=dict(width=0)),
                name=f"{name}: {'removed' if removed else 'kept'}",
                hovertemplate=f"{name}<br>score per parameter %{{y:.3g}}<br>%{{customdata:,}} parameters<extra></extra>"))
    fig.add_vline(x=float(to_remove), line=dict(color="#333", dash="dash", width=2))
    fig.add_annotation(x=float(to_remove), y=1, yref="paper", text="the layer's budget for this step",
                       showarrow=False, xanchor="left", yanchor="bottom", font=dict(size=11))
    fig.update_layout(bargap=0, legend=dict(orientation="h", y=-0.22))
    fig.update_xaxes(title_text="parameters, lowest score first", rangemode="tozero")
    fig.update_yaxes(title_text="score per parameter", rangemode="tozero", exponentformat="power")
    return _top(base_layout(fig, title, top=76 + 14 * title.count("<br>")))
