"""Configs for decoder-only models whose layers have different widths (written by Adapt-Pruner Studio).

Each class is the stock transformers config plus three per-layer lists; the global ``num_attention_heads``,
``num_key_value_heads`` and ``intermediate_size`` hold the widest layer. Two optional per-layer lists of booleans,
``o_proj_bias_per_layer`` and ``down_proj_bias_per_layer``, say which layers' output projections carry a bias
(FLAP's bias compensation adds them; the stock configs cannot express an o_proj or down_proj bias alone). This
file and ``modeling_adapt_pruned.py`` need only torch and transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, MistralConfig, Qwen2Config

PER_LAYER_FIELDS = ("num_attention_heads_per_layer", "num_key_value_heads_per_layer", "intermediate_size_per_layer")
BIAS_FIELDS = ("o_proj_bias_per_layer", "down_proj_bias_per_layer")


def check_per_layer_widths(config) -> None:
    """Raise a clear ValueError when the per-layer lists do not describe ``num_hidden_layers`` valid layers."""
    lists = {name: getattr(config, name, None) for name in PER_LAYER_FIELDS}
    if any(v is None for v in lists.values()):
        raise ValueError(f"{type(config).__name__} needs all of {', '.join(PER_LAYER_FIELDS)}")
    for name, values in lists.items():
        if len(values) != config.num_hidden_layers:
            raise ValueError(f"{name} has {len(values)} entries but num_hidden_layers is {config.num_hidden_layers}")
        if any(int(v) < 1 for v in values):
            raise ValueError(f"{name} has a width below 1: {values}")
    heads, kv_heads = lists["num_attention_heads_per_layer"], lists["num_key_value_heads_per_layer"]
    for i, (h, kv) in enumerate(zip(heads, kv_heads, strict=True)):
        if h % kv:
            raise ValueError(f"layer {i}: {h} query heads is not a multiple of {kv} key/value heads")
    if config.head_dim is None:
        raise ValueError("head_dim must be given explicitly (it cannot be derived from per-layer head counts)")
    for name in BIAS_FIELDS:
        values = getattr(config, name, None)
        if values is not None and len(values) != config.num_hidden_layers:
            raise ValueError(f"{name} has {len(values)} entries but num_hidden_layers is {config.num_hidden_layers}")


@strict
class AdaptPrunedLlamaConfig(LlamaConfig):
    model_type = "adapt_pruned_llama"
    num_attention_heads_per_layer: list[int] | None = None
    num_key_value_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    o_proj_bias_per_layer: list[bool] | None = None
    down_proj_bias_per_layer: list[bool] | None = None

    def validate_architecture(self):
        # head_dim is explicit, so hidden_size need not be a multiple of the (widest) head count
        check_per_layer_widths(self)


@strict
class AdaptPrunedQwen2Config(Qwen2Config):
    model_type = "adapt_pruned_qwen2"
    num_attention_heads_per_layer: list[int] | None = None
    num_key_value_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    o_proj_bias_per_layer: list[bool] | None = None
    down_proj_bias_per_layer: list[bool] | None = None

    def validate_architecture(self):
        check_per_layer_widths(self)


@strict
class AdaptPrunedMistralConfig(MistralConfig):
    model_type = "adapt_pruned_mistral"
    num_attention_heads_per_layer: list[int] | None = None
    num_key_value_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    o_proj_bias_per_layer: list[bool] | None = None
    down_proj_bias_per_layer: list[bool] | None = None

    def validate_architecture(self):
        check_per_layer_widths(self)
