"""Figures of a comparison of pruning methods: their trajectories on one plot, the remaining width of every layer
per method side by side, and the difference of each method's widths from Adapt-Pruner's (adaptive).

Widths come as one entry per *original* layer (``LayerWidths`` or dicts with ``num_kv_heads`` and
``intermediate_size``); None is a layer the method removed whole (ShortGPT), shown as width 0 and marked ✕.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .charts import _get
from .style import (
    ADAPTIVE_COLOR,
    ATTN_COLOR,
    MLP_COLOR,
    RECOVERY_COLOR,
    UNIFORM_COLOR,
    base_layout,
    empty_figure,
)

#: One colour per method (others cycle through the palette).
METHOD_COLORS = {"adaptive": ADAPTIVE_COLOR, "uniform": UNIFORM_COLOR, "llm-pruner": ATTN_COLOR,
                 "flap": MLP_COLOR, "shortgpt": "#8e44ad", "wanda-sp": RECOVERY_COLOR, "custom": "#16a085",
                 "slicegpt": "#b7950b", "sensitivity": "#e84393"}
PALETTE = ("#2c3e50", "#e67e22", "#1abc9c", "#9b59b6")
UNITS = (("num_kv_heads", "attention: KV groups"), ("intermediate_size", "MLP: channels"))


def method_color(method: str, i: int = 0) -> str:
    return METHOD_COLORS.get(method, PALETTE[i % len(PALETTE)])


def kept_share(original: Sequence, widths: Sequence, name: str) -> list[float]:
    """Per original layer: the share of its units (``name``: num_kv_heads or intermediate_size) still there
    (0 for a removed layer)."""
    if len(original) != len(widths):
        raise ValueError(f"{len(widths)} widths for {len(original)} original layers")
    return [0.0 if w is None else _get(w, name) / _get(o, name) for w, o in zip(widths, original, strict=True)]


def methods_trajectory(series: Mapping[str, tuple[Sequence[int], Sequence[float]]], ppl_label: str = "",
                       reference: str = "adaptive") -> go.Figure:
    """Perplexity (log) against parameters (millions, falling to the right), one line per method.

    ``series[method] = (params, perplexities)``, one point per sub-step from the original (a one-shot method has
    two points: the original and its result)."""
    title = "Trajectories: perplexity vs parameters, per method" + (f"<br><sup>{ppl_label}</sup>" if ppl_label else "")
    if not series:
        return empty_figure(title, "Run a comparison to draw every method's trajectory")
    fig = go.Figure()
    for i, (method, (params, ppl)) in enumerate(series.items()):
        if len(params) != len(ppl):
            raise ValueError(f"{method}: params and perplexities need the same length")
        color = method_color(method, i)
        fig.add_trace(go.Scatter(
            x=[p / 1e6 for p in params], y=list(ppl), mode="lines+markers", name=method,
            marker=dict(color=color, size=7), line=dict(color=color, dash="solid" if method == reference else "dot"),
            hovertemplate=f"{method}<br>%{{x:.3f}} M parameters<br>perplexity %{{y:.2f}}<extra></extra>",
        ))
    fig.update_xaxes(title_text="parameters (millions)", autorange="reversed", gridcolor="#eee")
    fig.update_yaxes(title_text="perplexity (log scale)", type="log", gridcolor="#eee")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return base_layout(fig, title, top=80)


def _width_panels(original: Sequence, per_method: Mapping[str, Sequence], title: str, subtitle: str,
                  values, zmin: float, zmax: float, colorscale, colorbar: str, hover: str) -> go.Figure:
    """Two heatmaps (attention, MLP): layers × methods, ``values(name, widths)`` per method column."""
    methods = list(per_method)
    layers = list(range(len(original)))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[label for _, label in UNITS])
    for col, (name, _) in enumerate(UNITS, start=1):
        columns = [values(name, per_method[m]) for m in methods]
        z = [[c[li] for c in columns] for li in layers]
        kept = [[("✕" if per_method[m][li] is None else str(_get(per_method[m][li], name))) for m in methods]
                for li in layers]
        fig.add_trace(go.Heatmap(
            z=z, x=methods, y=layers, zmin=zmin, zmax=zmax, colorscale=colorscale, text=kept,
            texttemplate="%{text}" if len(methods) * len(layers) <= 400 else None, showscale=col == 2,
            colorbar=dict(title=dict(text=colorbar, side="right"), thickness=12),
            hovertemplate="layer %{y}<br>%{x}: %{text} kept<br>" + hover + "<extra></extra>",
        ), 1, col)
    fig.update_annotations(font_size=12)  # the panel titles: two panels share a half-width figure on the page
    fig.update_yaxes(autorange="reversed", dtick=max(1, len(layers) // 15))
    fig.update_yaxes(title_text="decoder layer", row=1, col=1)
    fig.update_xaxes(type="category")
    return base_layout(fig, title + (f"<br><sup>{subtitle}</sup>" if subtitle else ""), height=480, top=95)


def method_widths(original: Sequence, per_method: Mapping[str, Sequence]) -> go.Figure:
    """The remaining width of every layer, one column per method: the share of its KV groups (left) and of its
    MLP channels (right) kept, the kept count written in each cell (✕: the layer was removed whole)."""
    title = "Remaining width per layer and method"
    if not per_method:
        return empty_figure(title, "Run a comparison to see every method's layers side by side", height=480)
    removed = [m for m, ws in per_method.items() if any(w is None for w in ws)]
    sub = f"✕: layer removed whole ({', '.join(removed)})" if removed else "cell: units kept; colour: share kept"
    return _width_panels(original, per_method, title, sub, lambda name, ws: kept_share(original, ws, name),
                         0.0, 1.0, "Blues", "kept", "share kept %{z:.0%}")


def method_width_difference(original: Sequence, per_method: Mapping[str, Sequence],
                            reference: str = "adaptive") -> go.Figure:
    """Per layer and method: the share of KV groups and of MLP channels kept minus ``reference``'s (Adapt-Pruner),
    in [−1, 1]: red where a method keeps less of a layer than Adapt-Pruner, blue where it keeps more."""
    title = f"Difference from {reference} (share kept − {reference}'s)"
    if reference not in per_method:
        return empty_figure(title, f"Include {reference} in the comparison to see the difference", height=480)
    others = {m: ws for m, ws in per_method.items() if m != reference}
    if not others:
        return empty_figure(title, f"Add another method besides {reference}", height=480)
    ref = {name: kept_share(original, per_method[reference], name) for name, _ in UNITS}

    def diff(name, ws):
        return [a - b for a, b in zip(kept_share(original, ws, name), ref[name], strict=True)]

    return _width_panels(original, others, title, "cell: units kept; red: fewer than Adapt-Pruner, blue: more", diff,
                         -1.0, 1.0, "RdBu", "Δ share", f"Δ vs {reference} %{{z:+.0%}}")
