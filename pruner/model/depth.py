"""Depth surgery: removing whole decoder layers (ShortGPT) and keeping structure and config in sync.

The result is a standard model with fewer layers: the remaining layers keep their weights, their attention
modules are re-numbered (``layer_idx`` indexes the KV cache), ``config.num_hidden_layers`` is the new depth and a
per-layer ``config.layer_types`` is trimmed to the remaining layers. Like the width surgery in
:mod:`pruner.model.structure` it is built first and swapped in at the end (:func:`build_layer_removal` never touches the
model), and applying a :class:`DepthPatch` returns its inverse, so a removal can be undone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from pruner.errors import AllocationError
from pruner.model.adapters import Adapter, adapter_for
from pruner.model.structure import sync_config

#: Config fields with one entry per decoder layer that a change of depth must trim (those transformers knows of
#: for the supported architectures).
PER_LAYER_CONFIG = ("layer_types",)


@dataclass
class DepthPatch:
    """The decoder layers a model will have (in order) and the per-layer config entries that go with them."""

    layers: list[nn.Module]
    per_layer: dict[str, list]  # config field -> its entries for ``layers``

    def apply_to(self, model: nn.Module) -> DepthPatch:
        """Swap the layers in; returns the patch that restores the previous depth. Transactional: on any error
        the previous layers and config entries are put back before it propagates."""
        adapter = adapter_for(model)
        cfg = model.config
        inverse = DepthPatch(list(adapter.layers(model)), {k: list(getattr(cfg, k)) for k in self.per_layer})
        try:
            self._swap(model, adapter)
        except BaseException:
            inverse._swap(model, adapter)
            raise
        return inverse

    def _swap(self, model: nn.Module, adapter: Adapter) -> None:
        holder, name = _layers_holder(model, adapter)
        setattr(holder, name, nn.ModuleList(self.layers))
        for key, values in self.per_layer.items():
            setattr(model.config, key, list(values))
        sync_depth(model, adapter)


def _layers_holder(model: nn.Module, adapter: Adapter) -> tuple[nn.Module, str]:
    parent_path, _, name = adapter.layers_path.rpartition(".")
    holder = model
    for part in filter(None, parent_path.split(".")):
        holder = getattr(holder, part)
    return holder, name


def build_layer_removal(model: nn.Module, remove: Sequence[int], adapter: Adapter | None = None) -> DepthPatch:
    """The patch that removes the current decoder layers ``remove`` (at least one layer must stay)."""
    adapter = adapter or adapter_for(model)
    layers = list(adapter.layers(model))
    gone = set(remove)
    if not gone <= set(range(len(layers))):
        raise AllocationError(f"Cannot remove layers {sorted(gone - set(range(len(layers))))}: the model has "
                              f"{len(layers)} layers")
    if len(gone) >= len(layers):
        raise AllocationError("Depth pruning must keep at least one decoder layer")
    keep = [i for i in range(len(layers)) if i not in gone]
    cfg = model.config
    per_layer = {k: [list(getattr(cfg, k))[i] for i in keep] for k in PER_LAYER_CONFIG
                 if isinstance(getattr(cfg, k, None), (list, tuple)) and len(getattr(cfg, k)) == len(layers)}
    return DepthPatch([layers[i] for i in keep], per_layer)


def sync_depth(model: nn.Module, adapter: Adapter | None = None) -> int:
    """Re-number the layers' ``layer_idx`` (the KV-cache slot of each attention) and write the depth to the config;
    returns the depth."""
    adapter = adapter or adapter_for(model)
    layers = adapter.layers(model)
    for i, layer in enumerate(layers):
        for mod in (layer, adapter.attention(layer)):
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = i
    model.config.num_hidden_layers = len(layers)
    sync_config(model, adapter)  # the global widths are the widest *remaining* layer's
    return len(layers)
