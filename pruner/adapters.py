"""Per-architecture adapters: where the prunable modules of a decoder layer live.

The pruning algorithm never touches architecture names; it asks an adapter for the decoder layers and, inside a
layer, for the attention projections (q/k/v/o) and the gated MLP (gate/up/down). Llama, Mistral and Qwen2 share
the same module layout in transformers (Qwen2 adds q/k/v biases, which the surgery handles generically), so one
adapter class serves all three; a new architecture only needs another entry in ``ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Adapter:
    """Where things live in a causal LM of one architecture family."""

    model_type: str
    layers_path: str = "model.layers"
    attn_name: str = "self_attn"
    mlp_name: str = "mlp"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"

    def layers(self, model: nn.Module) -> nn.ModuleList:
        obj = model
        for part in self.layers_path.split("."):
            obj = getattr(obj, part)
        return obj

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_name)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_name)

    def attn_linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        attn = self.attention(layer)
        return {"q": getattr(attn, self.q), "k": getattr(attn, self.k), "v": getattr(attn, self.v), "o": getattr(attn, self.o)}

    def mlp_linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        mlp = self.mlp(layer)
        return {"gate": getattr(mlp, self.gate), "up": getattr(mlp, self.up), "down": getattr(mlp, self.down)}

    def set_attn_linear(self, layer: nn.Module, role: str, module: nn.Linear) -> None:
        setattr(self.attention(layer), getattr(self, role), module)

    def set_mlp_linear(self, layer: nn.Module, role: str, module: nn.Linear) -> None:
        setattr(self.mlp(layer), getattr(self, role), module)


ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter("llama"),
    "mistral": Adapter("mistral"),
    "qwen2": Adapter("qwen2"),
}

SUPPORTED = ", ".join(sorted(ADAPTERS))


def adapter_for_config(config) -> Adapter:
    """Return the adapter for a transformers config, or raise a clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"Architecture '{model_type}' is not supported. Supported model types: {SUPPORTED} "
            "(LLaMA family: Llama, Llama-3, SmolLM, Mistral, Qwen2)."
        )
    return ADAPTERS[model_type]


def adapter_for(model: nn.Module) -> Adapter:
    """Return the adapter for a loaded model (checks the config and the module layout)."""
    adapter = adapter_for_config(model.config)
    try:
        layers = adapter.layers(model)
        adapter.attn_linears(layers[0])
        adapter.mlp_linears(layers[0])
    except (AttributeError, IndexError) as exc:
        raise UnsupportedArchitectureError(
            f"Model of type '{adapter.model_type}' does not have the expected module layout ({exc})."
        ) from exc
    return adapter
