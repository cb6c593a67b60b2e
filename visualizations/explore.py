"""Figures of the schedule explorer: a sweep's predicted perplexity against parameters (one curve per method and
setting), its Pareto view (the front highlighted), and the per-layer sensitivity beside the paper's layer
importance.

A sweep point is a dict with ``method``, ``params``, ``perplexity`` (None: the point has no result) and ``label``
(its settings in words, for the hover and the curve's name); methods keep the Compare tab's colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .compare import method_color
from .style import base_layout, empty_figure

FRONT_COLOR = "#111111"


def _done(points: Sequence[Mapping]) -> list[Mapping]:
    return [p for p in points if p.get("perplexity") is not None and p.get("params") is not None]


def pareto_front(points: Sequence[Mapping]) -> list[int]:
    """Indices (into ``points``) of the points no other point beats: none has at most as many parameters and at
    most the perplexity, one of them strictly less. Ordered by parameters, smallest first."""
    ok = [(i, p["params"], p["perplexity"]) for i, p in enumerate(points)
          if p.get("perplexity") is not None and p.get("params") is not None]
    front = [i for i, n, y in ok
             if not any((n2 <= n and y2 <= y) and (n2 < n or y2 < y) for _, n2, y2 in ok)]
    return sorted(front, key=lambda i: (points[i]["params"], points[i]["perplexity"]))


def _title(text: str, ppl_label: str) -> str:
    return text + (f"<br><sup>{ppl_label}</sup>" if ppl_label else "")


def sweep_curves(points: Sequence[Mapping], ppl_label: str = "", baseline: float | None = None) -> go.Figure:
    """Predicted perplexity (log) against parameters (millions, falling to the right): one curve per ``curve``
    key of the points (a method and the settings other than the target), coloured by method; ``baseline``: the
    model as it is, a dotted line."""
    title = _title("Predicted perplexity vs parameters, per method", ppl_label)
    done = _done(points)
    if not done:
        return empty_figure(title, "Run a sweep to draw the predicted perplexity of every point")
    fig = go.Figure()
    curves: dict[str, list[Mapping]] = {}
    for p in done:
        curves.setdefault(p.get("curve", p["method"]), []).append(p)
    methods = list(dict.fromkeys(p["method"] for p in done))
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    seen: dict[str, int] = {}
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["params"])
        method = pts[0]["method"]
        k = seen[method] = seen.get(method, -1) + 1
        fig.add_trace(go.Scatter(
            x=[p["params"] / 1e6 for p in pts], y=[p["perplexity"] for p in pts], name=name,
            mode="lines+markers", line=dict(color=method_color(method, methods.index(method)),
                                            dash=dashes[k % len(dashes)], width=2),
            text=[p.get("label", name) for p in pts],
            hovertemplate="%{text}<br>%{x:.3f} M parameters<br>predicted perplexity %{y:.2f}<extra></extra>"))
    if baseline is not None:
        # a trace, not add_hline: on a log axis an hline's annotation is placed at 10**y and the autorange
        # follows it (a baseline of 41 stretched the axis to 1e41)
        xs = [p["params"] / 1e6 for p in done]
        fig.add_trace(go.Scatter(
            x=[min(xs), max(xs)], y=[baseline, baseline], name=f"the model now: {baseline:.2f}", mode="lines",
            line=dict(color="#888", dash="dot", width=1),
            hovertemplate=f"the model now: perplexity {baseline:.2f}<extra></extra>"))
    fig.update_xaxes(title_text="parameters (M)", autorange="reversed")
    fig.update_yaxes(title_text="predicted perplexity (log)", type="log")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return base_layout(fig, title)


def sweep_pareto(points: Sequence[Mapping], ppl_label: str = "") -> go.Figure:
    """Every point with a result, one colour per method, and the Pareto front (fewest parameters for the lowest
    predicted perplexity) drawn through the points on it."""
    title = _title("Pareto view: size against predicted perplexity", ppl_label)
    done = _done(points)
    if not done:
        return empty_figure(title, "Run a sweep to see which settings are on the Pareto front")
    fig = go.Figure()
    methods = list(dict.fromkeys(p["method"] for p in done))
    for i, m in enumerate(methods):
        pts = [p for p in done if p["method"] == m]
        fig.add_trace(go.Scatter(
            x=[p["params"] / 1e6 for p in pts], y=[p["perplexity"] for p in pts], name=m, mode="markers",
            marker=dict(color=method_color(m, i), size=9, opacity=0.8), text=[p.get("label", m) for p in pts],
            hovertemplate="%{text}<br>%{x:.3f} M parameters<br>predicted perplexity %{y:.2f}<extra></extra>"))
    front = [done[i] for i in pareto_front(done)]
    fig.add_trace(go.Scatter(
        x=[p["params"] / 1e6 for p in front], y=[p["perplexity"] for p in front], name="Pareto front",
        mode="lines+markers", line=dict(color=FRONT_COLOR, width=2.5, shape="hv"),
        marker=dict(symbol="circle-open", size=15, color=FRONT_COLOR, line=dict(width=2)),
        text=[p.get("label", "") for p in front],
        hovertemplate="on the front: %{text}<br>%{x:.3f} M, predicted perplexity %{y:.2f}<extra></extra>"))
    fig.update_xaxes(title_text="parameters (M)", autorange="reversed")
    fig.update_yaxes(title_text="predicted perplexity (log)", type="log")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return base_layout(fig, title)


def sweep_amplitude(points: Sequence[Mapping], ppl_label: str = "") -> go.Figure:
    """Predicted perplexity against the amplitude A at each fixed target: one line per ``family`` (a method and
    its settings other than A and the target) and target; a point whose ``amplitude`` is None (its method ignores
    A) is left out."""
    title = _title("Predicted perplexity vs amplitude A, per target", ppl_label)
    done = [p for p in _done(points) if p.get("amplitude") is not None]
    lines: dict[str, list[Mapping]] = {}
    for p in done:
        lines.setdefault(f"{p.get('family', p['method'])} · target {100 * p['target']:g} %", []).append(p)
    if not any(len(v) > 1 for v in lines.values()):
        return empty_figure(title, "Sweep two or more amplitudes to compare A at a fixed target")
    fig = go.Figure()
    methods = list(dict.fromkeys(p["method"] for p in done))
    for k, (name, pts) in enumerate(lines.items()):
        pts = sorted(pts, key=lambda p: p["amplitude"])
        fig.add_trace(go.Scatter(
            x=[p["amplitude"] for p in pts], y=[p["perplexity"] for p in pts], name=name, mode="lines+markers",
            line=dict(color=method_color(pts[0]["method"], methods.index(pts[0]["method"])), width=2),
            marker=dict(symbol=("circle", "square", "diamond", "triangle-up", "x")[k % 5], size=8),
            text=[p.get("label", name) for p in pts],
            hovertemplate="%{text}<br>A = %{x:g}<br>predicted perplexity %{y:.2f}<extra></extra>"))
    fig.update_xaxes(title_text="amplitude A")
    fig.update_yaxes(title_text="predicted perplexity (log)", type="log")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return base_layout(fig, title)


def level_label(level: float) -> str:
    return "whole block" if level >= 1 else f"{100 * level:g} %"


def sensitivity_figure(increase: Sequence[Sequence[float]] | None, levels: Sequence[float] = (),
                       importance: Sequence[float] = (), spearman: Mapping[str, float | None] | None = None,
                       note: str = "") -> go.Figure:
    """The loss increase of pruning one layer at a time (layers × levels) beside the paper's layer importance
    ``1 − cos`` (``importance``: I = −cos per layer, shown as 1 + I), with Spearman's ρ per level in the title."""
    title = "Sensitivity (measured loss increase) beside layer importance 1 − cos"
    if not increase:
        return empty_figure(title, "Tick “sensitivity scan” and run it to measure every layer")
    rho = "; ".join(f"{level_label(float(k))}: {'—' if v is None else f'{v:+.2f}'}"
                    for k, v in (spearman or {}).items())
    title += f"<br><sup>Spearman ρ (sensitivity vs −cos) — {rho}" + (f" · {note}" if note else "") + "</sup>"
    n = len(increase)
    layers = list(range(n))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.68, 0.32], horizontal_spacing=0.04,
                        subplot_titles=("loss increase when only this layer is pruned", "1 − cos(x_in, x_out)"))
    fig.add_trace(go.Heatmap(
        z=[list(r) for r in increase], x=[level_label(v) for v in levels], y=layers, colorscale="Reds",
        colorbar=dict(title=dict(text="Δ loss", side="right"), thickness=12),
        hovertemplate="layer %{y}<br>%{x} pruned<br>loss +%{z:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(
        x=[1.0 + v for v in importance], y=layers[:len(importance)], orientation="h", marker_color="#3b6fb6",
        name="1 − cos", showlegend=False,
        hovertemplate="layer %{y}<br>1 − cos %{x:.4f}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(title_text="decoder layer", autorange="reversed", dtick=max(1, n // 15), row=1, col=1)
    fig.update_xaxes(title_text="share of the layer's prunable parameters", type="category", row=1, col=1)
    fig.update_xaxes(title_text="1 − cos", row=1, col=2)
    return base_layout(fig, title, top=90)
