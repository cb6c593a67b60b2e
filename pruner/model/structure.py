"""Per-layer widths, parameter counts and the physical removal of units (the surgery).

A *unit* is what the pruner removes as a whole:

* an attention **KV group**: key/value head ``h`` with its ``n_rep`` query heads ``[h*n_rep, (h+1)*n_rep)``
  (the blocked mapping that ``repeat_kv`` implies), i.e. rows of q/k/v (and their biases) and the matching
  input columns of o_proj (and the entries of unit vectors that follow those rows, e.g. OLMo-2's q/k norms);
* an **MLP channel**: a row of gate_proj and up_proj and the matching input column of down_proj.

The adapter (:mod:`pruner.model.adapters`) says which physical Linear holds each logical projection: for fused ones
(Phi-3's qkv_proj and gate_up_proj) a unit's rows are slices of the fused matrix, found by offset.

Removing whole KV groups keeps ``num_key_value_groups`` (query heads per KV head) unchanged, so the attention
forward pass of transformers works unmodified: it reshapes with ``-1`` heads. The config fields are kept in sync
here (never in callers): uniform widths are written to the config; uneven widths are described per layer by
:func:`layer_widths`, which reads the tensors themselves, and are persisted by :mod:`pruner.io.models`.

Applying a cut returns its undo, which holds only what the cut removed (:mod:`pruner.model.undo`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from pruner.model.adapters import GROUP_ROLES, Adapter, adapter_for, role_sizes
from pruner.model.origin import ORIGIN_ATTR, LayerWidths, Origin
from pruner.model.slicing import compensated_cols, select_cols, select_entries, select_rows
from pruner.model.undo import PartCut, WidthPatch, WidthUndo, complement, removed_of, restored


@dataclass(frozen=True)
class Geometry:
    """Fixed shape facts of a model (unchanged by pruning), parameter counts per unit included.

    The counts come from the adapter's layout (:func:`geometry`), so fused projections and the unit vectors
    sliced with the units (OLMo-2's q/k norms) are counted exactly.
    """

    hidden_size: int
    head_dim: int
    n_rep: int  # query heads per KV head
    group_params: int  # parameters of one KV group
    channel_params: int  # parameters of one MLP channel
    fixed_layer_params: int = 0  # parameters inside the prunable modules that no unit owns (o / down biases)
    layer_other: int = 0  # parameters of a layer outside its prunable modules (its norms)
    o_bias: bool = False  # o_proj has a bias (Llama's attention_bias, or FLAP's compensation)
    down_bias: bool = False  # down_proj has a bias (mlp_bias, or FLAP's compensation)
    residual_width: int = 0  # width of the residual stream (the embedding's): hidden_size unless sliced (SliceGPT)
    vocab_size: int = 0
    tied_embeddings: bool = False  # the LM head is the embedding matrix
    rotatable: bool = False  # the adapter allows SliceGPT's rotation of the residual stream
    rotated: bool = False  # the layers carry SliceGPT's shortcut matrices (the stream is rotated, maybe sliced)

    @property
    def params_per_group(self) -> int:
        """Parameters of one KV group: q rows of n_rep heads, k and v rows of one head (with their biases and
        unit-vector entries), o columns."""
        return self.group_params

    @property
    def params_per_channel(self) -> int:
        """Parameters of one MLP channel: a row of gate and up (and their biases), a column of down."""
        return self.channel_params

    def layer_prunable_params(self, w: LayerWidths) -> int:
        """Parameters of a layer's prunable part (attention groups + MLP channels; o/down biases are fixed)."""
        return w.num_kv_heads * self.group_params + w.intermediate_size * self.channel_params + self.fixed_layer_params

    def layer_params(self, w: LayerWidths) -> int:
        """Every parameter of a decoder layer of these widths (its norms included)."""
        return self.layer_prunable_params(w) + self.layer_other

    def with_output_biases(self) -> Geometry:
        """The geometry once every o_proj and down_proj carries a bias (FLAP's compensation adds them)."""
        extra = (0 if self.o_bias else self.hidden_size) + (0 if self.down_bias else self.hidden_size)
        return replace(self, o_bias=True, down_bias=True, fixed_layer_params=self.fixed_layer_params + extra)


def _unit_params(adapter: Adapter, layer: nn.Module, per_unit: dict[str, int]) -> tuple[int, int, int]:
    """Parameters per KV group and per MLP channel (``per_unit``: rows / columns of each role one unit owns), and
    the parameters of the prunable modules that no unit owns."""
    group = channel = fixed = 0
    for p in adapter.projections:
        lin = adapter.part(layer, p.path)
        if p.cols:
            n = per_unit[p.cols] * lin.out_features
            fixed += lin.out_features if lin.bias is not None else 0
        else:
            n = sum(per_unit[r] for r in p.rows) * (lin.in_features + (1 if lin.bias is not None else 0))
        if p.roles[0] in GROUP_ROLES:
            group += n
        else:
            channel += n
    for v in adapter.unit_vectors:
        if v.role in GROUP_ROLES:
            group += per_unit[v.role]
        else:
            channel += per_unit[v.role]
    return group, channel, fixed


def geometry(model: nn.Module, adapter: Adapter | None = None) -> Geometry:
    adapter = adapter or adapter_for(model)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layer = adapter.layers(model)[0]
    n_heads, n_kv, _ = adapter.widths_of(layer, head_dim)
    r = n_heads // n_kv
    per_unit = {"q": r * head_dim, "k": head_dim, "v": head_dim, "o": r * head_dim, "gate": 1, "up": 1, "down": 1}
    group, channel, fixed = _unit_params(adapter, layer, per_unit)
    parts = adapter.parts(layer)
    owned = {id(t) for obj in parts.values() for t in (obj.parameters() if isinstance(obj, nn.Module) else [obj])}
    other = sum(t.numel() for t in layer.parameters() if id(t) not in owned)

    def has_bias(role: str) -> bool:
        return adapter.part(layer, adapter.proj_for(role).path).bias is not None

    from pruner.model.remote_code.modeling_adapt_pruned import ShortcutDecoderLayer  # the class exports ship

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    return Geometry(hidden_size=cfg.hidden_size, head_dim=head_dim, n_rep=r, group_params=group,
                    channel_params=channel, fixed_layer_params=fixed, layer_other=other, o_bias=has_bias("o"),
                    down_bias=has_bias("down"), residual_width=emb.embedding_dim, vocab_size=emb.num_embeddings,
                    tied_embeddings=head is not None and head.weight is emb.weight, rotatable=adapter.rotatable,
                    rotated=isinstance(layer, ShortcutDecoderLayer))


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


def _check_cut(li: int, cut: LayerCut, cur: LayerWidths) -> None:
    if not cut.keep_groups or not cut.keep_channels:
        raise ValueError(f"layer {li}: a cut must keep at least one KV group and one MLP channel")
    if max(cut.keep_groups) >= cur.num_kv_heads or max(cut.keep_channels) >= cur.intermediate_size:
        raise IndexError(f"layer {li}: unit index out of range")
    if len(set(cut.keep_groups)) != len(cut.keep_groups) or len(set(cut.keep_channels)) != len(cut.keep_channels):
        raise ValueError(f"layer {li}: duplicate unit indices")


def _layer_patch(adapter: Adapter, layer: nn.Module, geo: Geometry, cur: LayerWidths, cut: LayerCut) -> dict:
    """The new parts of one layer: every Linear (or unit vector) one of whose logical projections loses units."""
    changed = set()
    if len(cut.keep_groups) != cur.num_kv_heads:
        changed |= set(GROUP_ROLES)
    if len(cut.keep_channels) != cur.intermediate_size:
        changed |= {"gate", "up", "down"}
    means = {"o": cut.o_mean, "down": cut.down_mean}  # FLAP: these inputs' removed means go into the bias
    for role, mean in means.items():
        if mean is not None and adapter.part(layer, adapter.proj_for(role).path).bias is None:
            changed.add(role)  # a bias for every layer, zero where nothing is removed
    if not changed:
        return {}
    q_idx, kv_idx = group_rows(geo, sorted(cut.keep_groups))
    c_idx = torch.tensor(sorted(cut.keep_channels), dtype=torch.long)
    keep = {"q": q_idx, "k": kv_idx, "v": kv_idx, "o": q_idx, "gate": c_idx, "up": c_idx, "down": c_idx}
    sizes = role_sizes(cur.num_heads, cur.num_kv_heads, cur.intermediate_size, geo.head_dim)
    new = {}
    for p in adapter.projections:
        if not changed & set(p.roles):
            continue
        lin = adapter.part(layer, p.path)
        if p.cols:
            idx, size = keep[p.cols], lin.in_features
            part = (compensated_cols(lin, idx, means[p.cols]) if means.get(p.cols) is not None
                    else select_cols(lin, idx))
        else:
            idx, size = adapter.row_index(p, keep, sizes), lin.out_features
            part = select_rows(lin, idx)
        new[p.path] = PartCut(part, 1 if p.cols else 0, complement(idx, size))
    for v in adapter.unit_vectors:
        if v.role in changed:
            vec = adapter.part(layer, v.path)
            new[v.path] = PartCut(select_entries(vec, keep[v.role]), 0, complement(keep[v.role], vec.numel()))
    return new


def build_cut(model: nn.Module, cuts: dict[int, LayerCut], adapter: Adapter | None = None,
              lazy: bool = False) -> WidthPatch | PendingCut:
    """Compute the replacement parts for a set of layer cuts without touching the model.

    Returns a *patch* for :func:`apply_patch` (``{layer: {part path: PartCut}}``: the new Linear or parameter and
    the old indices it drops, :mod:`pruner.model.undo`). Building everything first and swapping afterwards makes
    a step atomic: an error (bad indices, out of memory) while building leaves the model untouched.

    ``lazy``: every cut is checked now, but each layer's new parts are built only when :func:`apply_patch` comes to
    that layer, and its old parts are freed as soon as they are swapped out (a :class:`PendingCut`). The surgery
    then holds one layer's new parts beside the weights, not every cut layer's: on the default model in bf16, 0.2 GB
    less at the step's peak. Still atomic: an error on the way rebuilds the layers already cut from what they lost.
    """
    adapter = adapter or adapter_for(model)
    geo = geometry(model, adapter)
    layers = adapter.layers(model)
    for li, cut in cuts.items():
        _check_cut(li, cut, layer_widths_of(layers[li], adapter, geo))
    if lazy:
        return PendingCut(dict(cuts), geo)
    patch = WidthPatch()
    for li, cut in cuts.items():
        layer = layers[li]
        new = _layer_patch(adapter, layer, geo, layer_widths_of(layer, adapter, geo), cut)
        if new:
            patch[li] = new
    return patch


@dataclass
class PendingCut:
    """Checked layer cuts whose new parts :func:`apply_patch` builds one layer at a time (``build_cut(lazy=True)``)."""

    cuts: dict[int, LayerCut]
    geo: Geometry


def _apply_pending(model: nn.Module, pending: PendingCut, adapter: Adapter) -> WidthUndo:
    """Cut layer after layer: build its new parts, keep the slices they drop, swap them in (the old parts go with
    their last reference). On any error every layer already cut is rebuilt from what it lost, a layer at a time,
    and the error propagates: the model is as it was."""
    layers = adapter.layers(model)
    undo = WidthUndo()
    try:
        for li, cut in pending.cuts.items():
            layer = layers[li]
            new = _layer_patch(adapter, layer, pending.geo, layer_widths_of(layer, adapter, pending.geo), cut)
            if not new:
                continue
            removed = {path: removed_of(adapter.part(layer, path), c) for path, c in new.items()}
            old = {}
            try:
                for path, c in new.items():
                    old[path] = adapter.part(layer, path)
                    adapter.set_part(layer, path, c.new)
            except BaseException:
                _swap_back(model, {li: old}, adapter)  # this layer's parts swapped so far
                raise
            undo[li] = removed
            del new, old  # this layer's old parts, freed before the next layer's new ones are built
        sync_config(model, adapter)
    except BaseException:
        for li in reversed(list(undo)):
            for path, r in undo[li].items():
                adapter.set_part(layers[li], path, restored(adapter.part(layers[li], path), r))
        sync_config(model, adapter)
        raise
    return undo


def apply_patch(model: nn.Module, patch: dict, adapter: Adapter | None = None) -> dict:
    """Swap in the parts of a patch; returns its inverse, usable to undo.

    * a :class:`~pruner.model.undo.WidthPatch` (:func:`build_cut`) returns a :class:`~pruner.model.undo.WidthUndo`:
      only the removed slices with their indices, so the inverse costs what the cut removed;
    * a :class:`PendingCut` (``build_cut(lazy=True)``) returns the same, built and swapped a layer at a time;
    * a ``WidthUndo`` puts the old parts back, rebuilt exactly, and returns the ``WidthPatch`` that redoes the cut;
    * a plain ``{layer: {path: part}}`` returns the old parts (``{}`` only syncs the config with the shapes);
    * a change of depth (:class:`pruner.model.depth.DepthPatch`) applies itself.

    Transactional: if any swap (or the config sync, or saving what was removed) fails, every part already
    swapped is put back before the error propagates, so the model is never left part-cut.
    """
    if callable(getattr(patch, "apply_to", None)):  # a change of depth (pruner.depth.DepthPatch)
        origin_of(model)
        return patch.apply_to(model)
    adapter = adapter or adapter_for(model)
    origin_of(model)  # record the unpruned widths before the first cut
    if isinstance(patch, PendingCut):
        return _apply_pending(model, patch, adapter)
    layers = adapter.layers(model)
    if isinstance(patch, WidthUndo):  # rebuild every old part first: an error here changes nothing
        parts = {li: {path: restored(adapter.part(layers[li], path), r) for path, r in inv.items()}
                 for li, inv in patch.items()}
    else:
        parts = {li: {path: c.new if isinstance(c, PartCut) else c for path, c in new.items()}
                 for li, new in patch.items()}
    inverse: dict = {}
    try:
        for li, new in parts.items():
            layer, inv = layers[li], {}
            inverse[li] = inv
            for path, part in new.items():
                old = adapter.part(layer, path)
                adapter.set_part(layer, path, part)
                inv[path] = old
        sync_config(model, adapter)
        if isinstance(patch, WidthPatch):
            return WidthUndo({li: {path: removed_of(old, patch[li][path]) for path, old in inv.items()}
                              for li, inv in inverse.items()})
    except BaseException:
        _swap_back(model, inverse, adapter)
        raise
    if isinstance(patch, WidthUndo):  # the parts it replaced are the cut ones: the redo holds them
        return WidthPatch({li: {path: PartCut(old, patch[li][path].axis, patch[li][path].dropped)
                                for path, old in inv.items()} for li, inv in inverse.items()})
    return inverse


def _swap_back(model: nn.Module, inverse: dict, adapter: Adapter) -> None:
    """Put back the old parts of a partly applied patch (the inverse holds exactly the swapped ones)."""
    layers = adapter.layers(model)
    for li, inv in inverse.items():
        for path, part in inv.items():
            adapter.set_part(layers[li], path, part)
    sync_config(model, adapter)


def layer_widths_of(layer: nn.Module, adapter: Adapter, geo: Geometry) -> LayerWidths:
    return LayerWidths(*adapter.widths_of(layer, geo.head_dim))


def _layer_view(adapter: Adapter, cfg, w: LayerWidths):
    """The config a layer's attention reads: the model's, or — for attention that reads widths from its config at
    run time (``adapter.layer_config``) and a layer whose widths differ — a view with the layer's own widths."""
    own = {"num_attention_heads": w.num_heads, "num_key_value_heads": w.num_kv_heads,
           "intermediate_size": w.intermediate_size}
    own = {k: own[k] for k in adapter.layer_config}
    if all(getattr(cfg, k) == v for k, v in own.items()):
        return cfg
    from pruner.model.remote_code.configuration_adapt_pruned import (
        LayerConfig,  # the same class the export ships
    )

    return LayerConfig(cfg, **own)


def sync_config(model: nn.Module, adapter: Adapter | None = None) -> list[LayerWidths]:
    """Bring the config and module attributes in line with the weight shapes.

    ``head_dim`` is written explicitly (it must not be re-derived from a changed head count). The global
    fields hold the widths when all layers agree, else the largest width (per-layer widths live in the tensors
    and in the saved ``pruned_widths.json``). Every attention keeps ``num_key_value_groups = n_rep``.
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
        for name, val in (("num_heads", w.num_heads), ("num_key_value_heads", w.num_kv_heads),
                          ("num_key_value_groups", geo.n_rep)):
            if hasattr(attn, name):
                setattr(attn, name, val)
        if adapter.layer_config:
            attn.config = _layer_view(adapter, cfg, w)
    return widths


def standard_head_counts(hidden_size: int, head_dim: int, n_rep: int) -> tuple[int, int]:
    """Global ``(num_attention_heads, num_key_value_heads)`` that a stock config accepts (hidden_size a multiple of
    the head count) and that keep ``n_rep`` query heads per KV head. For a config whose widest layer's head count
    is refused; the per-layer widths (tensors, ``pruned_widths.json`` or the per-layer lists) are the truth."""
    heads = hidden_size // head_dim  # the unpruned head count of a standard config
    if heads < n_rep or heads % n_rep or hidden_size % heads:  # head_dim independent of hidden / heads (Gemma)
        heads = next((h for h in range(n_rep, hidden_size + 1, n_rep) if hidden_size % h == 0), heads)
    return heads, max(1, heads // n_rep)


def is_uniform(widths: Sequence[LayerWidths]) -> bool:
    return len(set(widths)) <= 1
