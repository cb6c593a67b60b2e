"""Shared look of the studio's figures."""

from __future__ import annotations

import plotly.graph_objects as go

FONT = dict(family="Inter, system-ui, sans-serif", size=12)
HEIGHT = 420
ATTN_COLOR = "#3b6fb6"
MLP_COLOR = "#d9822b"
REMOVED_COLOR = "#d5d8dc"
ADAPTIVE_COLOR = "#c0392b"
UNIFORM_COLOR = "#7f8c8d"
RECOVERY_COLOR = "#27ae60"


def wrap(text: str, width: int = 52, seps: tuple[str, ...] = (" · ", ", ")) -> str:
    """A one-line subtitle broken into lines of about ``width`` characters at its separators (Plotly does not wrap
    a title; a long one is cut in a narrow plot)."""
    for sep in seps:
        if sep in text:
            lines, cur = [], ""
            for part in text.split(sep):
                if cur and len(cur) + len(sep) + len(part) > width:
                    lines.append(cur + sep.rstrip())
                    cur = part
                else:
                    cur = f"{cur}{sep}{part}" if cur else part
            return "<br>".join([*lines, cur])
    return text


def base_layout(fig: go.Figure, title: str, height: int = HEIGHT, top: int = 60) -> go.Figure:
    """Apply the common title, font, margins and background."""
    fig.update_layout(
        # anchored at the top: a title with subtitle lines grows down into the margin kept for it (centred in the
        # margin, a long one ran over the subplots' own titles)
        title=dict(text=title, x=0.01, xanchor="left", y=1, yref="container", yanchor="top", pad=dict(t=20),
                   font=dict(size=14)),
        font=FONT,
        height=height,
        margin=dict(l=60, r=20, t=top, b=50),
        # transparent: the page's light or dark background shows through (the studio's CSS colours the text)
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
        modebar=dict(orientation="v", bgcolor="rgba(0,0,0,0)"),  # down the right edge, off the title
    )
    return fig


def empty_figure(title: str, message: str, height: int = HEIGHT) -> go.Figure:
    """A blank figure with a centred hint (used before there is data)."""
    fig = go.Figure()
    # broken at words: a centred hint of 60 characters was cut at both ends in a half-width plot
    if len(message) > 44:  # at a colon first ("No training yet:" / "press …"), then at words
        message = ":<br>".join(wrap(part, 44, seps=(" ",)) for part in message.split(": "))
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=13, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return base_layout(fig, title, height)
