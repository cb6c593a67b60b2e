"""Decoder-only models whose layers have different widths (written by Adapt-Pruner Studio): Llama, Qwen2,
Mistral, Qwen3, Gemma-2, Gemma-3 (text), Phi-3 and OLMo-2.

The stock transformers classes do everything; the only change is that, after the stock constructor, every
layer's projections are rebuilt with that layer's widths from the config (``LAYOUTS`` says where each family
keeps them: Phi-3 fuses q/k/v and gate/up, OLMo-2 normalises the whole q and k projections). Attention already
reshapes with ``-1`` heads and the KV cache grows per layer, so no forward pass is overridden; the one attention
that reads its width from the config at run time (Phi-3) gets a per-layer view of it. Where the config lists
``o_proj_bias_per_layer`` / ``down_proj_bias_per_layer`` (FLAP's bias compensation), the output projections get a
bias accordingly. Needs only torch and transformers.
"""

import torch
from torch import nn
from transformers import (
    Gemma2ForCausalLM,
    Gemma2Model,
    Gemma3ForCausalLM,
    Gemma3TextModel,
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    MistralModel,
    Olmo2ForCausalLM,
    Olmo2Model,
    Phi3ForCausalLM,
    Phi3Model,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from . import configuration_adapt_pruned as cfgs
from .configuration_adapt_pruned import LayerConfig

# Where a layer keeps its logical projections: "rows" (stacked along the output features, in order) and "cols"
# (along the input features) of each Linear, 1-D "vectors" sliced like a projection's rows, and the config fields
# the attention reads at run time ("layer_config").
SPLIT = {"rows": {"self_attn.q_proj": ("q",), "self_attn.k_proj": ("k",), "self_attn.v_proj": ("v",),
                  "mlp.gate_proj": ("gate",), "mlp.up_proj": ("up",)},
         "cols": {"self_attn.o_proj": "o", "mlp.down_proj": "down"}, "vectors": {}, "layer_config": ()}
FUSED = {"rows": {"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")},
         "cols": {"self_attn.o_proj": "o", "mlp.down_proj": "down"}, "vectors": {},
         "layer_config": ("num_attention_heads", "num_key_value_heads")}
PROJECTION_NORMS = {**SPLIT, "vectors": {"self_attn.q_norm.weight": "q", "self_attn.k_norm.weight": "k"}}
LAYOUTS = {"Llama": SPLIT, "Qwen2": SPLIT, "Mistral": SPLIT, "Qwen3": SPLIT, "Gemma2": SPLIT, "Gemma3Text": SPLIT,
           "Phi3": FUSED, "Olmo2": PROJECTION_NORMS}


def _get(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, path, value):
    parent, _, name = path.rpartition(".")
    setattr(_get(obj, parent) if parent else obj, name, value)


def _linear(like: nn.Linear, in_features: int, out_features: int, bias=None) -> nn.Linear:
    bias = like.bias is not None if bias is None else bool(bias)
    return nn.Linear(in_features, out_features, bias=bias, device=like.weight.device, dtype=like.weight.dtype)


def apply_layer_widths(decoder: nn.Module, config, layout=SPLIT) -> None:
    """Give every decoder layer of ``decoder`` (a LlamaModel-like module) the widths listed in ``config``."""
    hidden, d = config.hidden_size, config.head_dim
    widths = zip(config.num_attention_heads_per_layer, config.num_key_value_heads_per_layer,
                 config.intermediate_size_per_layer, strict=True)
    n = len(decoder.layers)
    biases = {"o": getattr(config, "o_proj_bias_per_layer", None) or [None] * n,
              "down": getattr(config, "down_proj_bias_per_layer", None) or [None] * n}
    for i, (layer, (heads, kv_heads, ffn)) in enumerate(zip(decoder.layers, widths, strict=True)):
        size = {"q": heads * d, "k": kv_heads * d, "v": kv_heads * d, "o": heads * d, "gate": ffn, "up": ffn,
                "down": ffn}
        for path, roles in layout["rows"].items():
            _set(layer, path, _linear(_get(layer, path), hidden, sum(size[r] for r in roles)))
        for path, role in layout["cols"].items():
            _set(layer, path, _linear(_get(layer, path), size[role], hidden, biases[role][i]))
        for path, role in layout["vectors"].items():
            old = _get(layer, path)
            _set(layer, path, nn.Parameter(torch.ones(size[role], device=old.device, dtype=old.dtype)))
        attn, mlp = layer.self_attn, layer.mlp
        attn.num_key_value_groups = heads // kv_heads
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = kv_heads
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = ffn
        if layout["layer_config"]:
            own = {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": ffn}
            attn.config = LayerConfig(config, **{k: own[k] for k in layout["layer_config"]})


class _PerLayerWidths:
    """Mixin: after the stock constructor, rebuild every layer's projections with that layer's widths."""

    family = "Llama"

    def __init__(self, config):
        super().__init__(config)
        # a *ForCausalLM holds the decoder as .model; a *Model is the decoder itself
        apply_layer_widths(self.model if hasattr(self, "lm_head") else self, config, LAYOUTS[self.family])
        self.post_init()


def _classes(family: str, model_cls, causal_cls):
    config_class = getattr(cfgs, f"AdaptPruned{family}Config")
    body = {"config_class": config_class, "family": family, "__module__": __name__}
    model = type(f"AdaptPruned{family}Model", (_PerLayerWidths, model_cls), dict(body))
    causal = type(f"AdaptPruned{family}ForCausalLM", (_PerLayerWidths, causal_cls), dict(body))
    return model, causal


AdaptPrunedLlamaModel, AdaptPrunedLlamaForCausalLM = _classes("Llama", LlamaModel, LlamaForCausalLM)
AdaptPrunedQwen2Model, AdaptPrunedQwen2ForCausalLM = _classes("Qwen2", Qwen2Model, Qwen2ForCausalLM)
AdaptPrunedMistralModel, AdaptPrunedMistralForCausalLM = _classes("Mistral", MistralModel, MistralForCausalLM)
AdaptPrunedQwen3Model, AdaptPrunedQwen3ForCausalLM = _classes("Qwen3", Qwen3Model, Qwen3ForCausalLM)
AdaptPrunedGemma2Model, AdaptPrunedGemma2ForCausalLM = _classes("Gemma2", Gemma2Model, Gemma2ForCausalLM)
AdaptPrunedGemma3TextModel, AdaptPrunedGemma3TextForCausalLM = _classes("Gemma3Text", Gemma3TextModel,
                                                                        Gemma3ForCausalLM)
AdaptPrunedPhi3Model, AdaptPrunedPhi3ForCausalLM = _classes("Phi3", Phi3Model, Phi3ForCausalLM)
AdaptPrunedOlmo2Model, AdaptPrunedOlmo2ForCausalLM = _classes("Olmo2", Olmo2Model, Olmo2ForCausalLM)
