"""Figures of a history of runs: measured perplexity against parameters over every run (colour: the method,
marker: the kind of run), and the per-layer widths one run reached.

Rows come as :meth:`pruner.explore.History.rows` gives them (``params``, ``measured_ppl``, ``kind``, ``method``,
``id``, ``notes``); widths as one entry per original layer (dicts with ``num_kv_heads`` and ``intermediate_size``,
None for a layer removed whole).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from .charts import _get, architecture_figure
from .compare import method_color
from .style import base_layout, empty_figure

#: One marker per kind of run (the colour is the method's, as on the Compare tab).
KIND_SYMBOLS = {"prune": "circle", "compare": "diamond", "accel": "triangle-up", "train": "star",
                "what-if": "circle-open"}


def runs_scatter(rows: Sequence[Mapping], ppl_label: str = "") -> go.Figure:
    """Measured quick perplexity (log) against parameters (millions, falling to the right), one point per run
    that has one; one legend entry per kind and method."""
    title = "Runs: measured perplexity vs parameters" + (f"<br><sup>{ppl_label}</sup>" if ppl_label else "")
    shown = [(i, r) for i, r in enumerate(rows) if r.get("measured_ppl") is not None]
    if not shown:
        return empty_figure(title, "Prune, compare or train: every run with a measured perplexity appears here"
                            if not rows else f"{len(rows)} run(s), none with a measured perplexity yet")
    groups: dict[tuple[str, str], list[tuple[int, Mapping]]] = {}
    for i, r in shown:
        groups.setdefault((str(r.get("kind") or "?"), str(r.get("method") or "?")), []).append((i, r))
    methods = list(dict.fromkeys(m for _, m in groups))
    fig = go.Figure()
    for (kind, method), pts in groups.items():
        fig.add_trace(go.Scatter(
            x=[r["params"] / 1e6 for _, r in pts], y=[r["measured_ppl"] for _, r in pts], mode="markers",
            name=f"{kind} · {method}", customdata=[[r.get("id", ""), i + 1, r.get("notes", "")] for i, r in pts],
            marker=dict(size=11, color=method_color(method, methods.index(method)),
                        symbol=KIND_SYMBOLS.get(kind, "square"), line=dict(width=1, color="#333")),
            hovertemplate=f"run #%{{customdata[1]}} · {kind} · {method}<br>%{{x:.3f}} M parameters, perplexity "
                          "%{y:.2f}<br>%{customdata[2]}<extra></extra>"))
    xs = [r["params"] / 1e6 for _, r in shown]
    pad = max((max(xs) - min(xs)) * 0.08, max(xs) * 0.03)
    fig.update_xaxes(title_text="parameters (M)", range=[max(xs) + pad, min(xs) - pad])  # falling to the right
    fig.update_yaxes(title_text="quick perplexity", type="log")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    n_missing = len(rows) - len(shown)
    if n_missing:
        title += f"<br><sup>{n_missing} run(s) without a measured perplexity are not drawn</sup>"
    return base_layout(fig, title, height=440, top=80 if ppl_label or n_missing else 60)


def run_widths(widths: Sequence, original: Sequence | None = None, label: str = "") -> go.Figure:
    """The widths one run reached, per original layer (KV groups and MLP channels, kept vs removed). Without
    ``original`` widths of the same depth, the widest layer of the run stands in for the original."""
    title = "Widths per layer" + (f": {label}" if label else "")
    if not widths:
        return empty_figure(title, "Select a run to see the widths it reached")
    if original is None or len(original) != len(widths):
        present = [w for w in widths if w is not None]
        widest = {k: max(_get(w, k) for w in present) for k in ("num_kv_heads", "intermediate_size")}
        original = [widest] * len(widths)
    fig = architecture_figure(original, widths)
    fig.update_layout(title=dict(text=title))
    return fig
