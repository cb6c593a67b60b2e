"""Adapt-Pruner Studio: layer-wise adaptive structural pruning of causal language models.

The public API, usable from scripts and notebooks::

    from pruner import load_model, Pruner, PruneConfig, perplexity, save_pruned
"""

from .adapters import SUPPORTED, adapter_for
from .allocation import Allocation, allocate_sparsity, plan_widths, sparsity_of
from .config import ATTENTION_POLICIES, CRITERIA, METHOD_SPECS, METHODS, PruneConfig
from .data import CORPORA, calibration_windows, load_text
from .errors import (
    AllocationError,
    Cancelled,
    ConfigError,
    DataError,
    ModelLoadError,
    PrunerError,
    UnsupportedArchitectureError,
)
from .importance import Importance, measure_importance, normalise_importance
from .io import describe, load_model, pick_device, save_pruned
from .perplexity import format_perplexity, perplexity
from .planner import PlannedStep, Planner, Schedule, target_tolerance
from .prune import Pruner, PruneRecord, StepRecord, prune_to_target
from .structure import LayerWidths, count_parameters, layer_widths, origin_of

__all__ = [
    "PrunerError", "ConfigError", "UnsupportedArchitectureError", "AllocationError", "DataError", "ModelLoadError",
    "Cancelled",
    "SUPPORTED", "adapter_for",
    "METHODS", "METHOD_SPECS", "CRITERIA", "ATTENTION_POLICIES", "PruneConfig",
    "Allocation", "allocate_sparsity", "plan_widths", "sparsity_of",
    "Planner", "PlannedStep", "Schedule", "target_tolerance",
    "CORPORA", "calibration_windows", "load_text",
    "Importance", "measure_importance", "normalise_importance",
    "describe", "load_model", "pick_device", "save_pruned",
    "format_perplexity", "perplexity",
    "Pruner", "PruneRecord", "StepRecord", "prune_to_target",
    "LayerWidths", "count_parameters", "layer_widths", "origin_of",
]
