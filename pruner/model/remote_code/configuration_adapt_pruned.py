"""Configs for decoder-only models whose layers have different widths (written by Adapt-Pruner Studio).

Each class is the stock transformers config plus three per-layer lists; the global ``num_attention_heads``,
``num_key_value_heads`` and ``intermediate_size`` hold the widest layer. Two optional per-layer lists of booleans,
``o_proj_bias_per_layer`` and ``down_proj_bias_per_layer``, say which layers' output projections carry a bias
(FLAP's bias compensation adds them; the stock configs cannot express an o_proj or down_proj bias alone).
``sliced_hidden_size`` is the width of the residual stream of a model sliced by SliceGPT (``hidden_size`` stays the
original width, by which its norms normalise). This file and ``modeling_adapt_pruned.py`` need only torch and transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

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
    if getattr(config, "head_dim", None) is None:
        raise ValueError("head_dim must be given explicitly (it cannot be derived from per-layer head counts)")
    sliced = getattr(config, "sliced_hidden_size", None)
    if sliced is not None and not 1 <= int(sliced) <= config.hidden_size:
        raise ValueError(f"sliced_hidden_size {sliced} is not in [1, hidden_size={config.hidden_size}]")
    for name in BIAS_FIELDS:
        values = getattr(config, name, None)
        if values is not None and len(values) != config.num_hidden_layers:
            raise ValueError(f"{name} has {len(values)} entries but num_hidden_layers is {config.num_hidden_layers}")


class LayerConfig:
    """One decoder layer's view of the model config: its own widths, everything else read from the model's config
    as it is now (a later change, e.g. of the attention implementation, reaches every layer). For attention that
    reads a width from its config at run time (Phi-3 slices its fused qkv output at ``num_attention_heads``)."""

    def __init__(self, base, **own):
        self.__dict__["_base"] = base
        self.__dict__["_own"] = dict(own)

    def __getattr__(self, name):
        state = self.__dict__
        if name.startswith("__") or "_own" not in state:
            raise AttributeError(name)
        return state["_own"][name] if name in state["_own"] else getattr(state["_base"], name)

    def __setattr__(self, name, value):
        if name in self._own:
            self._own[name] = value
        else:
            setattr(self._base, name, value)

    def __repr__(self):
        return f"LayerConfig({type(self._base).__name__}, {self._own})"


class _PerLayer:
    """validate_architecture of every per-layer config: head_dim is explicit, so hidden_size need not be a
    multiple of the (widest) head count; the lists are checked instead."""

    def validate_architecture(self):
        check_per_layer_widths(self)


def _per_layer(base, model_type: str, explicit_head_dim: bool = False):
    """The stock config class ``base`` plus the per-layer fields, as a strict dataclass named after it.
    ``explicit_head_dim``: the stock config derives head_dim from hidden_size / num_attention_heads (Phi-3,
    OLMo-2), so it becomes a field here."""
    fields = {"head_dim": int | None} if explicit_head_dim else {}
    fields.update({name: list[int] | None for name in PER_LAYER_FIELDS})
    fields.update({name: list[bool] | None for name in BIAS_FIELDS})
    fields["sliced_hidden_size"] = int | None
    name = f"AdaptPruned{base.__name__}"
    namespace = {"__module__": __name__, "__qualname__": name, "__annotations__": fields, "model_type": model_type,
                 **dict.fromkeys(fields)}
    return strict(type(name, (_PerLayer, base), namespace))


AdaptPrunedLlamaConfig = _per_layer(LlamaConfig, "adapt_pruned_llama")
AdaptPrunedQwen2Config = _per_layer(Qwen2Config, "adapt_pruned_qwen2")
AdaptPrunedMistralConfig = _per_layer(MistralConfig, "adapt_pruned_mistral")
AdaptPrunedQwen3Config = _per_layer(Qwen3Config, "adapt_pruned_qwen3")
AdaptPrunedGemma2Config = _per_layer(Gemma2Config, "adapt_pruned_gemma2")
AdaptPrunedGemma3TextConfig = _per_layer(Gemma3TextConfig, "adapt_pruned_gemma3_text")
AdaptPrunedPhi3Config = _per_layer(Phi3Config, "adapt_pruned_phi3", explicit_head_dim=True)
AdaptPrunedOlmo2Config = _per_layer(Olmo2Config, "adapt_pruned_olmo2", explicit_head_dim=True)
