"""Llama / Qwen2 / Mistral whose decoder layers have different widths (written by Adapt-Pruner Studio).

The stock transformers classes do everything; the only change is that, after the stock constructor, every
layer's q/k/v/o and gate/up/down projections are rebuilt with that layer's widths from the config (and, where the
config lists them, with a bias on o_proj / down_proj). Attention
already reshapes with ``-1`` heads and the KV cache grows per layer, so no forward pass is overridden.
Needs only torch and transformers.
"""

from torch import nn
from transformers import (
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    MistralModel,
    Qwen2ForCausalLM,
    Qwen2Model,
)

from .configuration_adapt_pruned import (
    AdaptPrunedLlamaConfig,
    AdaptPrunedMistralConfig,
    AdaptPrunedQwen2Config,
)


def _linear(like: nn.Linear, in_features: int, out_features: int, bias=None) -> nn.Linear:
    bias = like.bias is not None if bias is None else bool(bias)
    return nn.Linear(in_features, out_features, bias=bias, device=like.weight.device, dtype=like.weight.dtype)


def apply_layer_widths(decoder: nn.Module, config) -> None:
    """Give every decoder layer of ``decoder`` (a LlamaModel-like module) the widths listed in ``config``."""
    hidden, d = config.hidden_size, config.head_dim
    widths = zip(config.num_attention_heads_per_layer, config.num_key_value_heads_per_layer,
                 config.intermediate_size_per_layer, strict=True)
    n = len(decoder.layers)
    o_bias = getattr(config, "o_proj_bias_per_layer", None) or [None] * n
    down_bias = getattr(config, "down_proj_bias_per_layer", None) or [None] * n
    for i, (layer, (heads, kv_heads, ffn)) in enumerate(zip(decoder.layers, widths, strict=True)):
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = _linear(attn.q_proj, hidden, heads * d)
        attn.k_proj = _linear(attn.k_proj, hidden, kv_heads * d)
        attn.v_proj = _linear(attn.v_proj, hidden, kv_heads * d)
        attn.o_proj = _linear(attn.o_proj, heads * d, hidden, o_bias[i])
        attn.num_key_value_groups = heads // kv_heads
        mlp.gate_proj = _linear(mlp.gate_proj, hidden, ffn)
        mlp.up_proj = _linear(mlp.up_proj, hidden, ffn)
        mlp.down_proj = _linear(mlp.down_proj, ffn, hidden, down_bias[i])
        mlp.intermediate_size = ffn


class _PerLayerWidths:
    """Mixin: after the stock constructor, rebuild every layer's projections with that layer's widths."""

    def __init__(self, config):
        super().__init__(config)
        # a *ForCausalLM holds the decoder as .model; a *Model is the decoder itself
        apply_layer_widths(self.model if hasattr(self, "lm_head") else self, config)
        self.post_init()


class AdaptPrunedLlamaModel(_PerLayerWidths, LlamaModel):
    config_class = AdaptPrunedLlamaConfig


class AdaptPrunedLlamaForCausalLM(_PerLayerWidths, LlamaForCausalLM):
    config_class = AdaptPrunedLlamaConfig


class AdaptPrunedQwen2Model(_PerLayerWidths, Qwen2Model):
    config_class = AdaptPrunedQwen2Config


class AdaptPrunedQwen2ForCausalLM(_PerLayerWidths, Qwen2ForCausalLM):
    config_class = AdaptPrunedQwen2Config


class AdaptPrunedMistralModel(_PerLayerWidths, MistralModel):
    config_class = AdaptPrunedMistralConfig


class AdaptPrunedMistralForCausalLM(_PerLayerWidths, MistralForCausalLM):
    config_class = AdaptPrunedMistralConfig
