"""Per-layer widths, parameter counts and the physical removal of units (the surgery).

A *unit* is what the pruner removes as a whole:

* an attention **KV group**: key/value head ``h`` with its ``n_rep`` query heads ``[h*n_rep, (h+1)*n_rep)``
  (the blocked mapping that ``repeat_kv`` implies), i.e. rows of q/k/v (and their biases) and the matching
  input columns of o_proj;
* an **MLP channel**: a row of gate_proj and up_proj and the matching input column of down_proj.

Removing whole KV groups keeps ``num_key_value_groups`` (query heads per KV head) unchanged, so the attention
forward pass of transformers works unmodified: it reshapes with ``-1`` heads. The config fields are kept in sync
here (never in callers): uniform widths are written to the config; uneven widths are described per layer by
:func:`layer_widths`, which reads the tensors themselves, and are persisted by :mod:`pruner.io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .adapters import Adapter, adapter_for


@dataclass(frozen=True)
class LayerWidths:
    """The width of one decoder layer."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Geometry:
    """Fixed shape facts of a model (unchanged by pruning)."""

    hidden_size: int
    head_dim: int
    n_rep: int  # query heads per KV head
    attn_bias: bool  # q/k/v have biases (Qwen2)
    o_bias: bool
    mlp_bias: bool  # gate/up have biases
    down_bias: bool = False  # down_proj has a bias (mlp_bias, or FLAP's compensation)
    layer_other: int = 0  # parameters of a layer outside its seven projections (the two norms)

    @property
    def params_per_group(self) -> int:
        """Parameters of one KV group: q rows of n_rep heads, k and v rows of one head, o columns."""
        h, d, r = self.hidden_size, self.head_dim, self.n_rep
        n = (r * d + 2 * d) * h + r * d * h
        if self.attn_bias:
            n += r * d + 2 * d
        return n

    @property
    def params_per_channel(self) -> int:
        """Parameters of one MLP channel: a row of gate and up, a column of down."""
        return 3 * self.hidden_size + (2 if self.mlp_bias else 0)

    def layer_prunable_params(self, w: LayerWidths) -> int:
        """Parameters of a layer's prunable part (attention groups + MLP channels; o/down biases are fixed)."""
        fixed = (self.hidden_size if self.o_bias else 0) + (self.hidden_size if self.down_bias else 0)
        return w.num_kv_heads * self.params_per_group + w.intermediate_size * self.params_per_channel + fixed

    def layer_params(self, w: LayerWidths) -> int:
        """Every parameter of a decoder layer of these widths (its norms included)."""
        return self.layer_prunable_params(w) + self.layer_other


def geometry(model: nn.Module, adapter: Adapter | None = None) -> Geometry:
    adapter = adapter or adapter_for(model)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layer = adapter.layers(model)[0]
    lin = adapter.attn_linears(layer)
    mlp = adapter.mlp_linears(layer)
    n_heads = lin["q"].out_features // head_dim
    n_kv = lin["k"].out_features // head_dim
    projections = sum(p.numel() for m in (*lin.values(), *mlp.values()) for p in m.parameters())
    return Geometry(
        hidden_size=cfg.hidden_size,
        head_dim=head_dim,
        n_rep=n_heads // n_kv,
        attn_bias=lin["q"].bias is not None,
        o_bias=lin["o"].bias is not None,
        mlp_bias=mlp["gate"].bias is not None,
        down_bias=mlp["down"].bias is not None,
        layer_other=sum(p.numel() for p in layer.parameters()) - projections,
    )


def layer_widths(model: nn.Module, adapter: Adapter | None = None) -> list[LayerWidths]:
    """Read every decoder layer's widths from its weight shapes (the source of truth)."""
    adapter = adapter or adapter_for(model)
    geo = geometry(model, adapter)
    return [layer_widths_of(layer, adapter, geo) for layer in adapter.layers(model)]


def count_parameters(model: nn.Module, adapter: Adapter | None = None) -> dict[str, int]:
    """Total parameters (tied weights counted once), decoder-layer parameters and the rest (embeddings etc.)."""
    adapter = adapter or adapter_for(model)
    total = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied tensors
    decoder = sum(p.numel() for p in adapter.layers(model).parameters())
    return {"total": total, "decoder_layers": decoder, "other": total - decoder}


@dataclass
class Origin:
    """What the model looked like before any pruning, and which original units each layer still has.

    Every list has one entry per *current* layer: its original widths, and the original indices of its kept units;
    ``kept_layers`` gives each current layer's original index (layers removed by depth pruning are missing) and
    ``n_layers`` the original depth.
    """

    widths: list[LayerWidths]
    params: dict
    kept_groups: list[list[int]]
    kept_channels: list[list[int]]
    kept_layers: list[int] | None = None  # None: no layer removed
    n_layers: int | None = None

    def __post_init__(self) -> None:
        if self.kept_layers is None:
            self.kept_layers = list(range(len(self.widths)))
        if self.n_layers is None:
            self.n_layers = len(self.widths)

    @property
    def removed_layers(self) -> list[int]:
        """Original indices of the layers that depth pruning removed."""
        return sorted(set(range(self.n_layers)) - set(self.kept_layers))

    def copy(self) -> Origin:
        return Origin(list(self.widths), dict(self.params), [list(g) for g in self.kept_groups],
                      [list(c) for c in self.kept_channels], list(self.kept_layers), self.n_layers)

    def without_layers(self, remove: Sequence[int]) -> Origin:
        """The origin after removing the current layers ``remove``."""
        keep = [i for i in range(len(self.widths)) if i not in set(remove)]
        return Origin([self.widths[i] for i in keep], dict(self.params), [list(self.kept_groups[i]) for i in keep],
                      [list(self.kept_channels[i]) for i in keep], [self.kept_layers[i] for i in keep], self.n_layers)

    def to_dict(self) -> dict:
        return {
            "widths": [w.to_dict() for w in self.widths],
            "params": self.params,
            "kept_groups": self.kept_groups,
            "kept_channels": self.kept_channels,
            "kept_layers": self.kept_layers,
            "n_layers": self.n_layers,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Origin:
        return cls([LayerWidths(**w) for w in d["widths"]], d["params"], d["kept_groups"], d["kept_channels"],
                   d.get("kept_layers"), d.get("n_layers"))


ORIGIN_ATTR = "_adapt_pruner_origin"


def origin_of(model: nn.Module) -> Origin:
    """The model's :class:`Origin`; an unpruned model becomes its own origin."""
    o = getattr(model, ORIGIN_ATTR, None)
    if o is None:
        widths = layer_widths(model)
        o = Origin(
            widths=widths,
            params=count_parameters(model),
            kept_groups=[list(range(w.num_kv_heads)) for w in widths],
            kept_channels=[list(range(w.intermediate_size)) for w in widths],
        )
        setattr(model, ORIGIN_ATTR, o)
    return o


def group_rows(geo: Geometry, groups: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of q (and o columns) and of k/v for the given KV groups, in the blocked GQA mapping."""
    d, r = geo.head_dim, geo.n_rep
    q_idx = torch.cat([torch.arange(g * r * d, (g + 1) * r * d) for g in groups]) if groups else torch.empty(0, dtype=torch.long)
    kv_idx = torch.cat([torch.arange(g * d, (g + 1) * d) for g in groups]) if groups else torch.empty(0, dtype=torch.long)
    return q_idx, kv_idx


def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.contiguous(), requires_grad=like.weight.requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias.contiguous(), requires_grad=(like.bias if like.bias is not None else like.weight).requires_grad)
    return lin


def select_rows(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """A new Linear keeping output features ``idx`` (rows of the weight, entries of the bias)."""
    idx = idx.to(lin.weight.device)
    w = lin.weight.data.index_select(0, idx)
    b = lin.bias.data.index_select(0, idx) if lin.bias is not None else None
    return _new_linear(w, b, lin)


def select_cols(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """A new Linear keeping input features ``idx`` (columns of the weight; the bias is unchanged)."""
    idx = idx.to(lin.weight.device)
    w = lin.weight.data.index_select(1, idx)
    b = lin.bias.data.clone() if lin.bias is not None else None
    return _new_linear(w, b, lin)


def compensated_cols(lin: nn.Linear, idx: torch.Tensor, mean: torch.Tensor) -> nn.Linear:
    """Like :func:`select_cols`, with FLAP's bias compensation: the dropped inputs' mean contribution goes into the
    bias, ``b' = b + W[:, dropped] · mean[dropped]`` (a zero bias is created when there is none), so on the mean
    input the output is unchanged. ``mean``: the mean of every current input feature over the calibration tokens."""
    w = lin.weight.data
    if mean.numel() != w.shape[1]:
        raise ValueError(f"compensation needs one mean per input feature ({w.shape[1]}), got {mean.numel()}")
    dropped = torch.ones(w.shape[1], dtype=torch.bool)
    dropped[idx.cpu()] = False
    shift = w.detach().cpu().double()[:, dropped] @ mean.detach().cpu().double()[dropped]  # float64: exact enough
    bias = (lin.bias.data if lin.bias is not None else torch.zeros_like(w[:, 0])) + shift.to(w.device, w.dtype)
    return _new_linear(w.index_select(1, idx.to(w.device)), bias, lin)


@dataclass
class LayerCut:
    """Which units of one layer to keep (indices into the layer's *current* units, ascending).

    ``o_mean`` / ``down_mean``: the mean of every current input of o_proj / down_proj; when given, the cut
    compensates the removed inputs with a bias (:func:`compensated_cols`), even when it removes nothing there.
    """

    keep_groups: list[int]
    keep_channels: list[int]
    o_mean: torch.Tensor | None = None
    down_mean: torch.Tensor | None = None


def build_cut(model: nn.Module, cuts: dict[int, LayerCut], adapter: Adapter | None = None) -> dict:
    """Compute the replacement modules for a set of layer cuts without touching the model.

    Returns an opaque *patch* for :func:`apply_patch`. Building everything first and swapping afterwards makes
    a step atomic: an error (bad indices, out of memory) while building leaves the model untouched.
    """
    adapter = adapter or adapter_for(model)
    geo = geometry(model, adapter)
    layers = adapter.layers(model)
    patch = {}
    for li, cut in cuts.items():
        layer = layers[li]
        cur = layer_widths_of(layer, adapter, geo)
        if not cut.keep_groups or not cut.keep_channels:
            raise ValueError(f"layer {li}: a cut must keep at least one KV group and one MLP channel")
        if max(cut.keep_groups) >= cur.num_kv_heads or max(cut.keep_channels) >= cur.intermediate_size:
            raise IndexError(f"layer {li}: unit index out of range")
        if len(set(cut.keep_groups)) != len(cut.keep_groups) or len(set(cut.keep_channels)) != len(cut.keep_channels):
            raise ValueError(f"layer {li}: duplicate unit indices")
        new = {}
        a, m = adapter.attn_linears(layer), adapter.mlp_linears(layer)
        cut_groups = len(cut.keep_groups) != cur.num_kv_heads
        if cut_groups or (cut.o_mean is not None and a["o"].bias is None):
            q_idx, kv_idx = group_rows(geo, sorted(cut.keep_groups))
            new["attn"] = {"q": select_rows(a["q"], q_idx), "k": select_rows(a["k"], kv_idx),
                           "v": select_rows(a["v"], kv_idx)} if cut_groups else {}
            new["attn"]["o"] = (compensated_cols(a["o"], q_idx, cut.o_mean) if cut.o_mean is not None
                                else select_cols(a["o"], q_idx))
        cut_channels = len(cut.keep_channels) != cur.intermediate_size
        if cut_channels or (cut.down_mean is not None and m["down"].bias is None):
            c_idx = torch.tensor(sorted(cut.keep_channels), dtype=torch.long)
            new["mlp"] = {"gate": select_rows(m["gate"], c_idx), "up": select_rows(m["up"], c_idx)} if cut_channels else {}
            new["mlp"]["down"] = (compensated_cols(m["down"], c_idx, cut.down_mean) if cut.down_mean is not None
                                  else select_cols(m["down"], c_idx))
        if new:
            patch[li] = new
    return patch


def apply_patch(model: nn.Module, patch: dict, adapter: Adapter | None = None) -> dict:
    """Swap in the modules of a patch; returns the inverse patch (the old modules), usable to undo.

    Transactional: if any swap (or the config sync after them) fails, every module already swapped is put back
    before the error propagates, so the model is never left part-cut. A change of depth
    (:class:`pruner.depth.DepthPatch`) applies itself, just as transactionally.
    """
    if callable(getattr(patch, "apply_to", None)):
        origin_of(model)
        return patch.apply_to(model)
    adapter = adapter or adapter_for(model)
    origin_of(model)  # record the unpruned widths before the first cut
    layers = adapter.layers(model)
    inverse: dict = {}
    try:
        for li, new in patch.items():
            layer, inv = layers[li], {}
            inverse[li] = inv
            for part, current, setter in (("attn", adapter.attn_linears, adapter.set_attn_linear),
                                          ("mlp", adapter.mlp_linears, adapter.set_mlp_linear)):
                if part in new:
                    old, inv[part] = current(layer), {}
                    for role, mod in new[part].items():
                        setter(layer, role, mod)
                        inv[part][role] = old[role]
        sync_config(model, adapter)
    except BaseException:
        _swap_back(model, inverse, adapter)
        raise
    return inverse


def _swap_back(model: nn.Module, inverse: dict, adapter: Adapter) -> None:
    """Put back the old modules of a partly applied patch (the inverse holds exactly the swapped ones)."""
    layers = adapter.layers(model)
    for li, inv in inverse.items():
        for role, mod in inv.get("attn", {}).items():
            adapter.set_attn_linear(layers[li], role, mod)
        for role, mod in inv.get("mlp", {}).items():
            adapter.set_mlp_linear(layers[li], role, mod)
    sync_config(model, adapter)


def layer_widths_of(layer: nn.Module, adapter: Adapter, geo: Geometry) -> LayerWidths:
    lin = adapter.attn_linears(layer)
    return LayerWidths(
        lin["q"].out_features // geo.head_dim,
        lin["k"].out_features // geo.head_dim,
        adapter.mlp_linears(layer)["gate"].out_features,
    )


def sync_config(model: nn.Module, adapter: Adapter | None = None) -> list[LayerWidths]:
    """Bring the config and module attributes in line with the weight shapes.

    ``head_dim`` is written explicitly (it must not be re-derived from a changed head count). The global
    fields hold the widths when all layers agree, else the largest width (per-layer widths live in the tensors
    and in the saved ``pruned_widths.json``).
    """
    adapter = adapter or adapter_for(model)
    geo = geometry(model, adapter)
    widths = layer_widths(model, adapter)
    cfg = model.config
    cfg.head_dim = geo.head_dim
    cfg.num_attention_heads = max(w.num_heads for w in widths)
    cfg.num_key_value_heads = max(w.num_kv_heads for w in widths)
    cfg.intermediate_size = max(w.intermediate_size for w in widths)
    for layer, w in zip(adapter.layers(model), widths, strict=True):
        mlp = adapter.mlp(layer)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = w.intermediate_size
        attn = adapter.attention(layer)
        for name, val in (("num_heads", w.num_heads), ("num_key_value_heads", w.num_kv_heads)):
            if hasattr(attn, name):
                setattr(attn, name, val)
    return widths


def is_uniform(widths: Sequence[LayerWidths]) -> bool:
    return len(set(widths)) <= 1
