"""Empty models to load weights into: parameters on the ``meta`` device (no memory, no initialisation), buffers
computed for real, every decoder layer given its own widths through the adapter; then the weights are assigned
with ``load_state_dict(assign=True)`` (the gpt-fast pattern).

Non-persistent buffers are not in weight files, so they are built by the constructors as usual: rotary inverse
frequencies (one set per layer type for Gemma-3) and Gemma's embedding scale √hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pruner.errors import ModelLoadError
from pruner.model.adapters import adapter_for_config, role_sizes
from pruner.model.remote_code.modeling_adapt_pruned import apply_residual_slicing
from pruner.model.structure import LayerWidths


def empty_model(config, dtype: torch.dtype = torch.float32, model_cls=None) -> nn.Module:
    """A model of ``config`` (``AutoModelForCausalLM`` in ``dtype``, or ``model_cls`` as its constructor makes it)
    with parameters on ``meta`` and real buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        if model_cls is not None:
            return model_cls(config)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def resize_layers(model: nn.Module, widths: Sequence[LayerWidths], head_dim: int,
                  biases: Sequence[Sequence[str]] | None = None) -> nn.Module:
    """Give every decoder layer of an empty model the shapes of its widths (its parts stay on ``meta``), and, with
    ``biases`` (per layer, the paths of the projections that carry a bias), those biases (FLAP's compensation
    adds o_proj / down_proj biases that no stock config describes)."""
    adapter = adapter_for_config(model.config)
    hidden = model.config.hidden_size
    for li, (layer, w) in enumerate(zip(adapter.layers(model), widths, strict=True)):
        adapter.resize(layer, role_sizes(w.num_heads, w.num_kv_heads, w.intermediate_size, head_dim), hidden)
        if biases is not None:
            for p in adapter.projections:
                _set_bias(adapter, layer, p.path, p.path in biases[li])
    return model


def _set_bias(adapter, layer: nn.Module, path: str, bias: bool) -> None:
    """Give a (meta) projection a bias or take it away."""
    lin = adapter.part(layer, path)
    if (lin.bias is not None) != bias:
        adapter.set_part(layer, path, nn.Linear(lin.in_features, lin.out_features, bias=bias, device="meta",
                                                dtype=lin.weight.dtype))


#: Per-layer lists of booleans that an exported config may carry: which layers' o_proj / down_proj have a bias.
OUTPUT_BIAS_LISTS = {"o": "o_proj_bias_per_layer", "down": "down_proj_bias_per_layer"}


def apply_output_biases(model: nn.Module, lists: dict) -> nn.Module:
    """Give an empty model's o_proj / down_proj the biases that ``lists`` (:data:`OUTPUT_BIAS_LISTS`) name."""
    adapter = adapter_for_config(model.config)
    for li, layer in enumerate(adapter.layers(model)):
        for role, key in OUTPUT_BIAS_LISTS.items():
            if lists.get(key) is not None:
                _set_bias(adapter, layer, adapter.proj_for(role).path, bool(lists[key][li]))
    return model


def output_bias_lists(model: nn.Module) -> dict[str, list[bool]]:
    """The :data:`OUTPUT_BIAS_LISTS` of a model."""
    adapter = adapter_for_config(model.config)
    return {key: [adapter.part(layer, adapter.proj_for(role).path).bias is not None
                  for layer in adapter.layers(model)] for role, key in OUTPUT_BIAS_LISTS.items()}


def skeleton(config, widths: Sequence[LayerWidths] | None = None, dtype: torch.dtype = torch.float32,
             biases: Sequence[Sequence[str]] | None = None, residual_width: int | None = None) -> nn.Module:
    """An empty model of ``config`` whose layers have ``widths`` (the config's own widths when None) and, where
    given, the recorded biases (see :func:`resize_layers`) and SliceGPT's residual width (shortcut matrices,
    weightless norms: :func:`apply_residual_slicing`)."""
    model = empty_model(config, dtype)
    if widths is not None:
        resize_layers(model, widths, config.head_dim, biases)
    if residual_width is not None:
        apply_residual_slicing(model, residual_width)
    return model


def layer_biases(model: nn.Module) -> list[list[str]]:
    """Per decoder layer, the paths of the projections that carry a bias (what :func:`skeleton` rebuilds)."""
    adapter = adapter_for_config(model.config)
    return [sorted(p.path for p in adapter.projections if adapter.part(layer, p.path).bias is not None)
            for layer in adapter.layers(model)]


def finish(model: nn.Module, config, what: str, error: type[Exception] = ModelLoadError) -> nn.Module:
    """After ``load_state_dict(assign=True)``: tie the embeddings where the config says so, and refuse if any
    tensor is still missing (on ``meta``)."""
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if left:
        raise error(f"{what}: tensors missing: {left[:5]}")
    return model.eval()
