"""Figures of the studio: pure functions, data in, Plotly figure out (no model, no state)."""

from .charts import accuracy_bars, architecture_figure, loss_curve, trajectory_figure
from .compare import kept_share, method_width_difference, method_widths, methods_trajectory
from .explore import pareto_front, sensitivity_figure, sweep_amplitude, sweep_curves, sweep_pareto
from .heatmaps import (
    allocated_sparsity_heatmap,
    bin_scores,
    layer_importance_heatmap,
    unit_importance_heatmap,
    unit_score_matrix,
)
from .teaching import amplitude_effect, importance_bars, layer_units, score_per_parameter

__all__ = [
    "accuracy_bars", "allocated_sparsity_heatmap", "architecture_figure", "bin_scores", "kept_share",
    "layer_importance_heatmap", "loss_curve", "method_width_difference", "method_widths", "methods_trajectory",
    "pareto_front", "sensitivity_figure", "sweep_amplitude", "sweep_curves", "sweep_pareto",
    "trajectory_figure", "unit_importance_heatmap", "unit_score_matrix",
    "amplitude_effect", "importance_bars", "layer_units", "score_per_parameter",
]
