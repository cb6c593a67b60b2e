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

from .adapters import adapter_for_config, role_sizes
from .errors import ModelLoadError
from .structure import LayerWidths


def empty_model(config, dtype: torch.dtype = torch.float32, model_cls=None) -> nn.Module:
    """A model of ``config`` (``AutoModelForCausalLM`` in ``dtype``, or ``model_cls`` as its constructor makes it)
    with parameters on ``meta`` and real buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        if model_cls is not None:
            return model_cls(config)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def resize_layers(model: nn.Module, widths: Sequence[LayerWidths], head_dim: int) -> nn.Module:
    """Give every decoder layer of an empty model the shapes of its widths (its parts stay on ``meta``)."""
    adapter = adapter_for_config(model.config)
    hidden = model.config.hidden_size
    for layer, w in zip(adapter.layers(model), widths, strict=True):
        adapter.resize(layer, role_sizes(w.num_heads, w.num_kv_heads, w.intermediate_size, head_dim), hidden)
    return model


def skeleton(config, widths: Sequence[LayerWidths] | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An empty model of ``config`` whose layers have ``widths`` (the config's own widths when None)."""
    model = empty_model(config, dtype)
    if widths is not None:
        resize_layers(model, widths, config.head_dim)
    return model


def finish(model: nn.Module, config, what: str, error: type[Exception] = ModelLoadError) -> nn.Module:
    """After ``load_state_dict(assign=True)``: tie the embeddings where the config says so, and refuse if any
    tensor is still missing (on ``meta``)."""
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if left:
        raise error(f"{what}: tensors missing: {left[:5]}")
    return model.eval()
