"""Adapt-Pruner Studio: layer-wise adaptive structural pruning of causal language models.

The public API, usable from scripts and notebooks::

    from pruner import load_model, Pruner, PruneConfig, perplexity, save_pruned
"""

from .adapters import SUPPORTED, UnsupportedArchitectureError, adapter_for
from .allocation import Allocation, AllocationError, allocate_sparsity, plan_widths, sparsity_of
from .data import CORPORA, DataError, calibration_windows, load_text
from .importance import CRITERIA, Cancelled, Importance, measure_importance, normalise_importance
from .io import ModelLoadError, describe, load_model, pick_device, save_pruned
from .perplexity import format_perplexity, perplexity
from .prune import PruneConfig, Pruner, PruneRecord, StepRecord, origin_of, prune_to_target
from .structure import LayerWidths, count_parameters, layer_widths

__all__ = [
    "SUPPORTED", "UnsupportedArchitectureError", "adapter_for",
    "Allocation", "AllocationError", "allocate_sparsity", "plan_widths", "sparsity_of",
    "CORPORA", "DataError", "calibration_windows", "load_text",
    "CRITERIA", "Cancelled", "Importance", "measure_importance", "normalise_importance",
    "ModelLoadError", "describe", "load_model", "pick_device", "save_pruned",
    "format_perplexity", "perplexity",
    "PruneConfig", "Pruner", "PruneRecord", "StepRecord", "origin_of", "prune_to_target",
    "LayerWidths", "count_parameters", "layer_widths",
]
