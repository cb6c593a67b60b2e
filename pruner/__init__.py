"""Adapt-Pruner Studio: layer-wise adaptive structural pruning of causal language models.

The public API, usable from scripts and notebooks::

    from pruner import load_model, Pruner, PruneConfig, perplexity, save_pruned
"""

from pruner.config import ATTENTION_POLICIES, CRITERIA, METHODS, PruneConfig
from pruner.data import CORPORA, calibration_windows, load_text
from pruner.errors import (
    AllocationError,
    Cancelled,
    ConfigError,
    DataError,
    ModelLoadError,
    PrunerError,
    UnsupportedArchitectureError,
)
from pruner.evaluation.perplexity import PerplexityConfig, format_perplexity, perplexity
from pruner.importance.measure import Importance, measure_importance, normalise_importance
from pruner.io.models import describe, load_model, pick_device, save_pruned
from pruner.methods import REGISTRY, Method, method_class
from pruner.methods.allocation import Allocation, allocate_sparsity, plan_widths, sparsity_of
from pruner.model.adapters import SUPPORTED, adapter_for
from pruner.model.structure import LayerWidths, count_parameters, layer_widths, origin_of
from pruner.pruning.planner import PlannedStep, Planner, Schedule, target_tolerance
from pruner.pruning.pruner import Pruner, PruneRecord, StepRecord, prune_to_target

__all__ = [
    "PrunerError", "ConfigError", "UnsupportedArchitectureError", "AllocationError", "DataError", "ModelLoadError",
    "Cancelled",
    "SUPPORTED", "adapter_for",
    "METHODS", "REGISTRY", "Method", "method_class", "CRITERIA", "ATTENTION_POLICIES", "PruneConfig",
    "Allocation", "allocate_sparsity", "plan_widths", "sparsity_of",
    "Planner", "PlannedStep", "Schedule", "target_tolerance",
    "CORPORA", "calibration_windows", "load_text",
    "Importance", "measure_importance", "normalise_importance",
    "describe", "load_model", "pick_device", "save_pruned",
    "PerplexityConfig", "format_perplexity", "perplexity",
    "Pruner", "PruneRecord", "StepRecord", "prune_to_target",
    "LayerWidths", "count_parameters", "layer_widths", "origin_of",
]
