"""Heatmaps: layer importance (layers × steps), unit importance (layers × units), allocated sparsity.

Layers run down the y axis with layer 0 at the top, as in a diagram of the network; steps run left to right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import base_layout, empty_figure, wrap


def _transpose(columns: Sequence[Sequence[float]]) -> list[list[float | None]]:
    """Columns (one per step, one value per layer) → rows (one per layer); ragged columns are padded and None (a
    layer that was gone) stays None."""
    n = max((len(c) for c in columns), default=0)
    return [[float(c[li]) if li < len(c) and c[li] is not None else None for c in columns] for li in range(n)]


def layer_importance_heatmap(
    columns: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    normalised: bool = False,
    one_minus_cos: bool = False,
) -> go.Figure:
    """Layer importance as a heatmap of layers (y) × measurements (x).

    ``columns[k][l]`` is the importance of layer l measured before step k (``I_l = -mean cos(x_in, x_out)``,
    or the normalised ``Ĩ_l`` when ``normalised``). ``labels`` name the columns (default ``"step 1"`` ...).
    ``one_minus_cos`` shows ``I`` as ``1 − cos = 1 + I`` (the same ranking): 0 for a layer that leaves its input
    unchanged, which reads better in a class than values near −1.
    """
    if one_minus_cos and not normalised:
        columns = [[None if v is None else 1.0 + v for v in col] for col in columns]
        title = "Layer importance 1 − cos(x_in, x_out)<br><sup>0 = the layer leaves its input unchanged</sup>"
    else:
        title = "Layer importance " + ("Ĩ (normalised, mean 0)" if normalised else "I = −mean cos(x_in, x_out)")
    if not columns:
        return empty_figure(title, "Press “Measure importance” to fill this map")
    labels = list(labels) if labels is not None else [f"step {k + 1}" for k in range(len(columns))]
    if len(labels) != len(columns):
        raise ValueError(f"{len(labels)} labels for {len(columns)} columns")
    z = _transpose(columns)
    values = np.array([v for row in z for v in row if v is not None], dtype=float)
    # Layer 0 often changes its input far more than any other layer; let it saturate the colour so the others'
    # differences stay visible (hover shows the exact values).
    zmax = float(np.percentile(values, 95)) if values.size > 10 else None
    if zmax is not None and zmax < values.max():
        title += "<br><sup>colour saturates at the 95th percentile; hover for values</sup>"
    else:
        zmax = None
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=list(range(len(z))), colorscale="Viridis", zmax=zmax,
        zmin=float(values.min()) if zmax is not None else None,
        zmid=0 if normalised and zmax is None else None,
        colorbar=dict(title=dict(text="Ĩ" if normalised else ("1 − cos" if one_minus_cos else "I"), side="right"),
                      thickness=12),
        hovertemplate="layer %{y}<br>%{x}<br>importance %{z:.4f}<extra></extra>",
    ))
    fig.update_yaxes(title_text="decoder layer", autorange="reversed", dtick=max(1, len(z) // 15))
    fig.update_xaxes(title_text="measured before", type="category")
    return base_layout(fig, title)


def bin_scores(scores: Sequence[float], n_bins: int, sort: bool = True) -> list[float]:
    """Mean score of ``n_bins`` near-equal bins (ranked high → low when ``sort``); fewer bins if fewer units."""
    a = np.asarray(scores, dtype=float)
    if a.size == 0:
        return []
    if sort:
        a = np.sort(a)[::-1]
    return [float(b.mean()) for b in np.array_split(a, min(n_bins, a.size))]


def unit_score_matrix(per_layer: Sequence[Sequence[float]], n_bins: int | None = None,
                      relative: bool = True) -> list[list[float | None]]:
    """Rows of unit scores per layer, padded with None to the widest layer.

    ``relative`` divides each layer's scores by that layer's mean (units compete only within their layer, and
    raw Taylor scores differ by orders of magnitude between layers). ``n_bins`` ranks the scores high → low and
    averages them in bins (for MLP channels); ``None`` keeps units in index order (for KV groups).
    """
    rows = []
    for scores in per_layer:
        a = np.asarray(scores, dtype=float)
        if relative and a.size and a.mean() != 0:
            a = a / a.mean()
        rows.append(bin_scores(a, n_bins) if n_bins else [float(x) for x in a])
    width = max((len(r) for r in rows), default=0)
    return [r + [None] * (width - len(r)) for r in rows]


def unit_importance_heatmap(
    group_scores: Sequence[Sequence[float]],
    channel_scores: Sequence[Sequence[float]],
    n_bins: int = 16,
    criterion: str | None = "taylor",
    note: str = "",
) -> go.Figure:
    """Unit importance inside every layer: layers × KV groups (left) and layers × ranked MLP channel bins (right).

    Scores are relative to each layer's mean (1 = an average unit of that layer). Channels are sorted high → low
    and averaged in ``n_bins`` bins, so the right panel shows how steeply importance falls off inside a layer —
    the low-ranked bins are what the next step removes. An empty entry (a layer removed by depth pruning) is an
    empty row. ``criterion=None``: a measurement of the layers only (ShortGPT), which has no unit scores.
    """
    # short lines: Plotly does not wrap a title, and a long one was cut in a narrow plot
    first = f"{criterion} score ÷ the layer's mean" + (f" · {note}" if note else "")
    title = (f"Unit importance inside layers<br><sup>{first}<br>g0, g1, …: KV groups · b1, b2, …: MLP channel "
             "bins</sup>")
    if criterion is None:
        return empty_figure("Unit importance inside layers" + (f"<br><sup>{note}</sup>" if note else ""),
                            "This measurement scored whole layers only (ShortGPT's block influence): no unit scores")
    if not group_scores:
        return empty_figure(title, "Press “Measure importance” to fill this map")
    if len(group_scores) != len(channel_scores):
        raise ValueError("group_scores and channel_scores need one entry per layer")
    zg = unit_score_matrix(group_scores)
    zc = unit_score_matrix(channel_scores, n_bins)
    layers = list(range(len(zg)))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.2, 0.8], shared_yaxes=True, horizontal_spacing=0.03)
    common = dict(colorscale="Cividis", zmin=0, coloraxis=None)
    values = np.array([v for row in zg + zc for v in row if v is not None], dtype=float)
    zmax = float(np.percentile(values, 99)) if values.size > 50 else float(values.max())  # outliers saturate
    fig.add_trace(go.Heatmap(z=zg, x=[f"g{g}" for g in range(len(zg[0]))], y=layers, zmax=zmax, showscale=False,
                             hovertemplate="layer %{y}<br>KV group %{x}<br>score ÷ mean %{z:.2f}<extra></extra>",
                             **common), 1, 1)
    fig.add_trace(go.Heatmap(z=zc, x=[f"b{b + 1}" for b in range(len(zc[0]))], y=layers, zmax=zmax,
                             colorbar=dict(title=dict(text="÷ mean", side="right"), thickness=12),
                             hovertemplate="layer %{y}<br>rank bin %{x}<br>score ÷ mean %{z:.2f}<extra></extra>",
                             **common), 1, 2)
    fig.update_yaxes(autorange="reversed", dtick=max(1, len(layers) // 15))
    fig.update_yaxes(title_text="decoder layer", row=1, col=1)
    fig.update_xaxes(type="category", row=1, col=1)  # no title of its own: "KV" ran into the MLP axis' title
    fig.update_xaxes(title_text=f"MLP channels ranked high → low, {n_bins} bins", type="category", row=1, col=2)
    return base_layout(fig, title, top=100)


def allocated_sparsity_heatmap(
    attention: Sequence[Sequence[float]],
    mlp: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    n_done: int | None = None,
    allocated: Sequence[Sequence[float]] | None = None,
    subtitle: str | None = None,
) -> go.Figure:
    """Sparsity per layer after each step: attention (share of KV groups removed) and MLP (channels removed).

    ``attention[k][l]`` / ``mlp[k][l]`` are the sparsities of layer l after step k, steps already taken first
    and previewed (planned) steps after them; ``n_done`` is the number of taken steps (a dashed line separates
    them from the preview). ``allocated[k][l]`` (the rule's s_l) is shown on hover when given; ``subtitle``
    names the settings the plan is for.
    """
    title = "Allocated sparsity per layer and step"
    if not attention:
        return empty_figure(title, "Measure importance to preview the allocation")
    if len(attention) != len(mlp):
        raise ValueError("attention and mlp need one column per step")
    labels = list(labels) if labels is not None else [str(k + 1) for k in range(len(attention))]
    if len(labels) != len(attention):
        raise ValueError(f"{len(labels)} labels for {len(attention)} steps")
    za, zm = _transpose(attention), _transpose(mlp)
    layers = list(range(len(za)))
    custom = np.array(_transpose(allocated), dtype=float) if allocated is not None else None
    if n_done is not None and 0 < n_done < len(labels):
        title += f"<br><sup>steps 1–{n_done} taken, {n_done + 1}–{len(labels)} previewed (right of the dashed line)</sup>"
    elif n_done == 0:
        title += "<br><sup>preview: nothing cut yet</sup>"
    if subtitle:
        title += f"<br><sup>{wrap('plan for ' + subtitle)}</sup>"
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("attention", "MLP"))
    hover = "layer %{y}<br>step %{x}<br>removed %{z:.1%}" + ("<br>allocated s_l %{customdata:.3f}" if custom is not None else "")
    for col, z in ((1, za), (2, zm)):
        fig.add_trace(go.Heatmap(z=z, x=labels, y=layers, zmin=0, zmax=1, colorscale="Reds", customdata=custom,
                                 showscale=col == 2, hovertemplate=hover + "<extra></extra>",
                                 colorbar=dict(title=dict(text="removed", side="right"), tickformat=".0%",
                                               thickness=12)), 1, col)
    if n_done is not None and 0 < n_done < len(labels):
        for col in (1, 2):
            fig.add_vline(x=n_done - 0.5, line=dict(color="#333", dash="dash", width=1), row=1, col=col)
    fig.update_yaxes(autorange="reversed", dtick=max(1, len(layers) // 15))
    fig.update_yaxes(title_text="decoder layer", row=1, col=1)
    fig.update_xaxes(title_text="step", type="category")
    return base_layout(fig, title, top=max(95, 87 + 14 * title.count("<br>")))
