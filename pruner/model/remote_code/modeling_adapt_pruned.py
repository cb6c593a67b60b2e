"""Decoder-only models whose layers have different widths (written by Adapt-Pruner Studio): Llama, Qwen2,
Mistral, Qwen3, Gemma-2, Gemma-3 (text), Phi-3 and OLMo-2.

The stock transformers classes do everything; the only change is that, after the stock constructor, every
layer's projections are rebuilt with that layer's widths from the config (``LAYOUTS`` says where each family
keeps them: Phi-3 fuses q/k/v and gate/up, OLMo-2 normalises the whole q and k projections). Attention already
reshapes with ``-1`` heads and the KV cache grows per layer, so no forward pass is overridden; the one attention
that reads its width from the config at run time (Phi-3) gets a per-layer view of it. Where the config lists
``o_proj_bias_per_layer`` / ``down_proj_bias_per_layer`` (FLAP's bias compensation), the output projections get a
bias accordingly. Needs only torch and transformers.

A model sliced by SliceGPT (``sliced_hidden_size`` in the config) carries its residual stream at that width: the
embedding and every Linear reading or writing the residual are narrower (the last layer writes the full width the
unsliced head reads), every layer adds its residual through two shortcut matrices (``attn_shortcut_Q``,
``mlp_shortcut_Q``), and the layers' norms carry no weight (folded into the Linears after them) and normalise by
the original hidden width (:class:`OriginalWidthRMSNorm`, :func:`apply_residual_slicing`).
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


class OriginalWidthRMSNorm(nn.Module):
    """RMSNorm without a weight that divides the sum of squares by the *original* hidden width (SliceGPT: a
    sliced stream keeps nearly all of the energy of the full one, so the normaliser stays the original one)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width = int(width)
        self.variance_epsilon = float(eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.width + self.variance_epsilon)
        return x.to(dtype)

    def extra_repr(self) -> str:
        return f"width={self.width}, eps={self.variance_epsilon}"


class ShortcutDecoderLayer:
    """Mixin for a pre-norm decoder layer (Llama, Mistral, Qwen2): the residual goes through the shortcut matrices
    (``x @ attn_shortcut_Q + attn(norm(x))``, then the same with ``mlp_shortcut_Q``)."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                position_embeddings=None, **kwargs):
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        residual = hidden_states
        hidden_states, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states),
                                          attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                                          use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        hidden_states = torch.matmul(residual, self.attn_shortcut_Q) + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return torch.matmul(residual, self.mlp_shortcut_Q) + hidden_states

    def residual_path(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The layer's input carried along the residual path into its output's basis (what the layer adds to)."""
        return torch.matmul(torch.matmul(hidden_states, self.attn_shortcut_Q), self.mlp_shortcut_Q)


_SHORTCUT_CLASSES: dict = {}


def shortcut_class(cls: type) -> type:
    """The stock decoder-layer class ``cls`` with the shortcut forward (one class per stock class)."""
    if issubclass(cls, ShortcutDecoderLayer):
        return cls
    if cls not in _SHORTCUT_CLASSES:
        _SHORTCUT_CLASSES[cls] = type(f"Sliced{cls.__name__}", (ShortcutDecoderLayer, cls),
                                      {"__module__": __name__})
    return _SHORTCUT_CLASSES[cls]


def _resized(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    if (like.in_features, like.out_features) == (in_features, out_features):
        return like
    return _linear(like, in_features, out_features)


def apply_residual_slicing(model: nn.Module, width: int, layout=SPLIT) -> None:
    """Give a model (a *ForCausalLM or its decoder) the shapes of a SliceGPT model whose residual stream is ``width``
    wide: the embedding, the Linears that read (``layout["rows"]``) or write (``layout["cols"]``) the residual, the
    shortcut matrices and the weightless norms; the last layer writes the full width (the head is not sliced).
    The weights are left as they come (they are loaded afterwards)."""
    decoder = model.model if hasattr(model, "lm_head") else model
    full = decoder.config.hidden_size
    emb = decoder.embed_tokens
    if emb.embedding_dim != width:
        decoder.embed_tokens = nn.Embedding(emb.num_embeddings, width, emb.padding_idx, device=emb.weight.device,
                                            dtype=emb.weight.dtype)
    n = len(decoder.layers)
    for i, layer in enumerate(decoder.layers):
        out = full if i == n - 1 else width
        for path in layout["rows"]:
            lin = _get(layer, path)
            _set(layer, path, _resized(lin, width, lin.out_features))
        for path, role in layout["cols"].items():
            lin = _get(layer, path)
            _set(layer, path, _resized(lin, lin.in_features, width if role == "o" else out))
        for name in ("input_layernorm", "post_attention_layernorm"):
            norm = getattr(layer, name)
            eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
            setattr(layer, name, OriginalWidthRMSNorm(full, eps))
        like = layer.self_attn.o_proj.weight
        for name, shape in (("attn_shortcut_Q", (width, width)), ("mlp_shortcut_Q", (width, out))):
            old = getattr(layer, name, None)
            if old is None or tuple(old.shape) != shape:
                setattr(layer, name, nn.Parameter(torch.eye(*shape, device=like.device, dtype=like.dtype)))
        layer.__class__ = shortcut_class(type(layer))
    if not isinstance(decoder.norm, OriginalWidthRMSNorm):  # folded into the head
        decoder.norm = OriginalWidthRMSNorm(full, getattr(decoder.norm, "variance_epsilon", 1e-6))


class _PerLayerWidths:
    """Mixin: after the stock constructor, rebuild every layer's projections with that layer's widths."""

    family = "Llama"

    def __init__(self, config):
        super().__init__(config)
        # a *ForCausalLM holds the decoder as .model; a *Model is the decoder itself
        apply_layer_widths(self.model if hasattr(self, "lm_head") else self, config, LAYOUTS[self.family])
        if getattr(config, "sliced_hidden_size", None):
            apply_residual_slicing(self, config.sliced_hidden_size, LAYOUTS[self.family])
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
