"""Figures of the studio: pure functions, data in, Plotly figure out (no model, no state)."""

from .charts import accuracy_bars, architecture_figure, loss_curve, trajectory_figure
from .heatmaps import (
    allocated_sparsity_heatmap,
    bin_scores,
    layer_importance_heatmap,
    unit_importance_heatmap,
    unit_score_matrix,
)

__all__ = [
    "accuracy_bars", "allocated_sparsity_heatmap", "architecture_figure", "bin_scores", "layer_importance_heatmap", "loss_curve",
    "trajectory_figure", "unit_importance_heatmap", "unit_score_matrix",
]
