"""Per-architecture adapters: where the prunable parts of a decoder layer live (SliceGPT-style).

The pruning algorithm never touches architecture names. It works on the *logical* projections of a decoder layer:

* ``q``, ``k``, ``v``: output rows, ``head_dim`` per head (q: ``n_rep`` heads per KV group, k/v: one head);
* ``o``: input columns, ``head_dim`` per query head;
* ``gate``, ``up``: one output row per MLP channel; ``down``: one input column per channel.

An adapter says where they live:

* :class:`Proj` — a physical ``nn.Linear`` and the logical projections it holds. Most architectures keep one per
  projection; Phi-3 fuses q, k and v into ``qkv_proj`` (consecutive row blocks) and gate and up into
  ``gate_up_proj``, so a unit's rows are slices of the fused matrix;
* :class:`UnitVector` — a 1-D parameter whose entries follow the rows of one logical projection and are sliced with
  the units (OLMo-2's ``q_norm`` / ``k_norm`` normalise the whole q / k projection). Per-head norms shared by all
  heads (Qwen3, Gemma-3: ``head_dim`` entries) are not units: removing a head leaves them as they are;
* ``layer_config`` — config fields the attention reads at run time (Phi-3 slices its fused output with
  ``config.num_attention_heads``): each layer then gets a view of the config with its own widths.

Surgery, unit scores, parameter counts, save/load and the exports all go through these descriptions; a new
architecture with the same building blocks only needs another entry in ``ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pruner.errors import UnsupportedArchitectureError

GROUP_ROLES = ("q", "k", "v", "o")  # logical projections that a KV group owns rows / columns of
CHANNEL_ROLES = ("gate", "up", "down")  # ... that an MLP channel owns a row / column of


@dataclass(frozen=True)
class Proj:
    """A physical ``nn.Linear`` of a decoder layer (``path`` from the layer) and the logical projections it holds:
    ``rows`` stacked along its output features in this order, or ``cols``, the one along its input features."""

    path: str
    rows: tuple[str, ...] = ()
    cols: str = ""

    @property
    def roles(self) -> tuple[str, ...]:
        return self.rows or (self.cols,)


@dataclass(frozen=True)
class UnitVector:
    """A 1-D parameter (``path`` from the layer) whose entry j belongs to row j of the logical projection ``role``."""

    path: str
    role: str


SPLIT = (Proj("self_attn.q_proj", ("q",)), Proj("self_attn.k_proj", ("k",)), Proj("self_attn.v_proj", ("v",)),
         Proj("self_attn.o_proj", cols="o"),
         Proj("mlp.gate_proj", ("gate",)), Proj("mlp.up_proj", ("up",)), Proj("mlp.down_proj", cols="down"))
FUSED = (Proj("self_attn.qkv_proj", ("q", "k", "v")), Proj("self_attn.o_proj", cols="o"),
         Proj("mlp.gate_up_proj", ("gate", "up")), Proj("mlp.down_proj", cols="down"))
PROJECTION_NORMS = (UnitVector("self_attn.q_norm.weight", "q"), UnitVector("self_attn.k_norm.weight", "k"))


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def role_sizes(num_heads: int, num_kv_heads: int, intermediate_size: int, head_dim: int) -> dict[str, int]:
    """The length of every logical projection's unit axis (rows of q/k/v/gate/up, columns of o/down)."""
    return {"q": num_heads * head_dim, "k": num_kv_heads * head_dim, "v": num_kv_heads * head_dim,
            "o": num_heads * head_dim, "gate": intermediate_size, "up": intermediate_size, "down": intermediate_size}


@dataclass(frozen=True)
class Adapter:
    """Where things live in a causal LM of one architecture family."""

    model_type: str
    family: str = ""  # the name users know (error messages, docs)
    layers_path: str = "model.layers"
    attn_name: str = "self_attn"
    mlp_name: str = "mlp"
    projections: tuple[Proj, ...] = SPLIT
    unit_vectors: tuple[UnitVector, ...] = ()
    layer_config: tuple[str, ...] = ()  # config fields the attention reads at run time
    rotatable: bool = False  # SliceGPT can rotate and slice its residual stream (pre-norm RMSNorm, sequential blocks)
    final_norm_path: str = "model.norm"  # the norm before the LM head, from the model

    # ------------------------------------------------------------------ finding things
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers_path)

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_name)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_name)

    def part(self, layer: nn.Module, path: str):
        """The ``nn.Linear`` or parameter at ``path`` inside a decoder layer."""
        return _get(layer, path)

    def set_part(self, layer: nn.Module, path: str, value) -> None:
        parent, _, name = path.rpartition(".")
        setattr(_get(layer, parent) if parent else layer, name, value)

    def parts(self, layer: nn.Module) -> dict[str, nn.Module | nn.Parameter]:
        """Every prunable part of a layer by path: the projections' Linears, then the unit vectors."""
        out = {p.path: self.part(layer, p.path) for p in self.projections}
        out.update({u.path: self.part(layer, u.path) for u in self.unit_vectors})
        return out

    def owner(self, layer: nn.Module, path: str) -> nn.Module:
        """The module whose input a part multiplies (the Linear itself; a unit vector's norm module)."""
        obj = self.part(layer, path)
        return obj if isinstance(obj, nn.Module) else _get(layer, path.rpartition(".")[0])

    def proj_for(self, role: str) -> Proj:
        return next(p for p in self.projections if role in p.roles)

    # ------------------------------------------------------------------ widths of a layer, from its shapes
    def widths_of(self, layer: nn.Module, head_dim: int) -> tuple[int, int, int]:
        """``(num_heads, num_kv_heads, intermediate_size)`` of a layer, read from its weight shapes."""
        heads = self.part(layer, self.proj_for("o").path).in_features // head_dim
        qkv_rows = sum(self.part(layer, p.path).out_features for p in self.projections if set(p.rows) & {"q", "k", "v"})
        kv_heads = (qkv_rows // head_dim - heads) // 2
        return heads, kv_heads, self.part(layer, self.proj_for("down").path).in_features

    # ------------------------------------------------------------------ logical views of physical tensors
    def split_rows(self, proj: Proj, t: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
        """A tensor along a projection's output rows (weight rows, bias, per-row scores) cut into its roles."""
        return dict(zip(proj.rows, torch.split(t, [sizes[r] for r in proj.rows]), strict=True))

    def row_index(self, proj: Proj, keep: dict[str, torch.Tensor], sizes: dict[str, int]) -> torch.Tensor:
        """Rows of a (possibly fused) projection that keep the rows ``keep[role]`` of each of its roles."""
        out, offset = [], 0
        for role in proj.rows:
            out.append(keep[role] + offset)
            offset += sizes[role]
        return torch.cat(out)

    def role_scores(self, e: dict, eb: dict, sizes: dict[str, int]) -> tuple[dict, dict, dict]:
        """Element-wise scores of the physical parts (``e`` weights, ``eb`` biases, by path) as per-row scores of
        the logical projections: ``(weights, biases, unit_vectors)``, each ``{role: 1-D tensor}`` along the unit
        axis. Output biases of o/down are not a unit's and are left out."""
        w, b, u = {}, {}, {}
        for p in self.projections:
            if p.path not in e:  # a criterion that scores only some parts (FLAP's metrics: o and down)
                continue
            if p.cols:
                w[p.cols] = e[p.path].sum(0)
                continue
            w.update(self.split_rows(p, e[p.path].sum(1), sizes))
            if eb.get(p.path) is not None:
                b.update(self.split_rows(p, eb[p.path], sizes))
        for v in self.unit_vectors:
            if e.get(v.path) is not None:
                u[v.role] = e[v.path]
        return w, b, u

    # ------------------------------------------------------------------ shapes for a rebuilt skeleton
    def resize(self, layer: nn.Module, sizes: dict[str, int], hidden: int) -> None:
        """Give a (meta) layer's parts the shapes of ``sizes`` (see :func:`role_sizes`); weights come later."""
        for p in self.projections:
            old = self.part(layer, p.path)
            out_f, in_f = (sum(sizes[r] for r in p.rows), hidden) if p.rows else (hidden, sizes[p.cols])
            self.set_part(layer, p.path, nn.Linear(in_f, out_f, bias=old.bias is not None, device="meta",
                                                   dtype=old.weight.dtype))
        for v in self.unit_vectors:
            old = self.part(layer, v.path)
            self.set_part(layer, v.path, nn.Parameter(torch.empty(sizes[v.role], device="meta", dtype=old.dtype)))

    def layout(self) -> dict:
        """The layout as plain data (what the exported remote code hard-codes per family; a test compares them)."""
        return {"rows": {p.path: p.rows for p in self.projections if p.rows},
                "cols": {p.path: p.cols for p in self.projections if p.cols},
                "vectors": {v.path: v.role for v in self.unit_vectors}, "layer_config": self.layer_config}


ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter("llama", "Llama, Llama-3, SmolLM", rotatable=True),
    "mistral": Adapter("mistral", "Mistral", rotatable=True),
    "qwen2": Adapter("qwen2", "Qwen2, Qwen2.5", rotatable=True),
    "qwen3": Adapter("qwen3", "Qwen3"),  # per-head q_norm/k_norm (head_dim entries, shared): not units
    "gemma2": Adapter("gemma2", "Gemma-2"),
    "gemma3_text": Adapter("gemma3_text", "Gemma-3 text"),
    "phi3": Adapter("phi3", "Phi-3", projections=FUSED, layer_config=("num_attention_heads", "num_key_value_heads")),
    "olmo2": Adapter("olmo2", "OLMo-2", unit_vectors=PROJECTION_NORMS),
}

SUPPORTED = ", ".join(ADAPTERS)  # llama, mistral, qwen2 first (the original three), then the newer ones


def adapter_for_config(config) -> Adapter:
    """Return the adapter for a transformers config, or raise a clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        families = ", ".join(a.family for a in ADAPTERS.values())
        hint = " For multimodal Gemma-3, load its text model (Gemma3ForCausalLM, gemma3_text)." if model_type == "gemma3" else ""
        raise UnsupportedArchitectureError(
            f"Architecture '{model_type}' is not supported. Supported model types: {SUPPORTED} ({families}).{hint}"
        )
    return ADAPTERS[model_type]


def adapter_for(model: nn.Module) -> Adapter:
    """Return the adapter for a loaded model (checks the config and the module layout)."""
    adapter = adapter_for_config(model.config)
    try:
        layers = adapter.layers(model)
        adapter.parts(layers[0])
    except (AttributeError, IndexError) as exc:
        raise UnsupportedArchitectureError(
            f"Model of type '{adapter.model_type}' does not have the expected module layout ({exc})."
        ) from exc
    return adapter
