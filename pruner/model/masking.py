"""The model *as if* units or layers had been cut, without cutting: masks applied by hooks, weights untouched.

A :class:`LayerMask` says which of a layer's KV groups and MLP channels stay, what a removed input of o_proj /
down_proj is replaced by (zero; FLAP's compensation: its calibration mean, which is exactly what the compensating
bias adds back) and whether the whole block is skipped (depth pruning). :func:`masked` installs the hooks for the
duration of a ``with`` block and removes them on the way out, whatever happens inside, so the parameters, buffers
and hooks afterwards are the ones before.

Why this equals the cut model: a KV group's query heads only reach the output through their o_proj input
columns, and an MLP channel only through its down_proj column, so zeroing those inputs removes exactly their
contribution (a kept head never reads a removed one). Unit vectors that normalise a whole projection (OLMo-2's
q/k norms) are recomputed over the kept rows only, as the cut model computes them. A skipped block hands its
input on unchanged, as a model without that layer does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from pruner.model.adapters import GROUP_ROLES, Adapter, adapter_for
from pruner.model.structure import Geometry, geometry, group_rows, layer_widths_of


@dataclass
class LayerMask:
    """One layer as if cut: the units that stay (indices into the layer's units when the mask was made, ascending),
    the value every removed o_proj / down_proj input takes instead (``None``: zero), or the whole block skipped."""

    keep_groups: list[int] | None = None  # None: every group stays
    keep_channels: list[int] | None = None  # None: every channel stays
    o_fill: torch.Tensor | None = None  # per o_proj input feature; only the removed ones are read
    down_fill: torch.Tensor | None = None  # per down_proj input feature (MLP channel)
    skip: bool = False

    def then(self, inner: LayerMask) -> LayerMask:
        """This mask followed by ``inner`` (whose indices count the units this one keeps)."""
        if self.skip or inner.skip:
            return LayerMask(skip=True)
        return LayerMask(_chain(self.keep_groups, inner.keep_groups), _chain(self.keep_channels, inner.keep_channels),
                         self._fill("o", inner), self._fill("down", inner))

    def _fill(self, role: str, inner: LayerMask) -> torch.Tensor | None:
        mine, theirs = getattr(self, f"{role}_fill"), getattr(inner, f"{role}_fill")
        if theirs is None:
            return mine
        # inner's features are the ones this mask keeps: write its fills at their places in the outer numbering
        kept = self._kept_features(role, theirs.numel())
        out = torch.zeros(_outer_len(mine, kept), dtype=theirs.dtype)
        if mine is not None:
            out[: mine.numel()] = mine
        out[kept] = theirs  # a feature both keep: its fill is never read
        return out

    def _kept_features(self, role: str, n_inner: int) -> torch.Tensor:
        units = self.keep_groups if role == "o" else self.keep_channels
        if units is None:
            return torch.arange(n_inner)
        per_unit = n_inner // len(units)
        return torch.cat([torch.arange(u * per_unit, (u + 1) * per_unit) for u in units])


def _outer_len(mine: torch.Tensor | None, kept: torch.Tensor) -> int:
    return max(mine.numel() if mine is not None else 0, int(kept.max()) + 1 if kept.numel() else 0)


def _chain(outer: list[int] | None, inner: list[int] | None) -> list[int] | None:
    if inner is None:
        return outer
    return list(inner) if outer is None else [outer[i] for i in inner]


def compose(outer: dict[int, LayerMask], inner: dict[int, LayerMask], alive: Sequence[int]) -> dict[int, LayerMask]:
    """Masks ``outer`` followed by ``inner``, whose layer indices count the layers ``alive`` (indices in
    ``outer``'s numbering of the layers not skipped)."""
    out = dict(outer)
    for li, m in inner.items():
        at = alive[li]
        out[at] = out[at].then(m) if at in out else m
    return out


def _feature_mask(geo: Geometry, n: int, keep: list[int] | None, groups: bool) -> torch.Tensor | None:
    """A 0/1 vector over a layer's o_proj (``groups``) or down_proj input features; None when all stay."""
    if keep is None:
        return None
    idx = group_rows(geo, sorted(keep))[0] if groups else torch.tensor(sorted(keep), dtype=torch.long)
    m = torch.zeros(n)
    m[idx] = 1.0
    return m


def _input_hook(keep: torch.Tensor, fill: torch.Tensor | None):
    """A forward pre-hook that zeroes (or fills) the removed input features of a Linear. A ``fill`` shorter than
    the features is zero beyond its end."""
    cache: dict = {}
    if fill is not None:
        full = torch.zeros(keep.numel(), dtype=torch.float64)
        n = min(fill.numel(), keep.numel())
        full[:n] = fill.double()[:n]
        fill = full

    def hook(module, args):
        x = args[0]
        key = (x.device, x.dtype)
        if key not in cache:
            k = keep.to(x.device, x.dtype)
            f = None if fill is None else ((1 - keep.double()) * fill).to(x.device, x.dtype)
            cache[key] = (k, f)
        k, f = cache[key]
        y = x * k if f is None else x * k + f
        return (y, *args[1:])

    return hook


def _vector_hook(name: str, rows: torch.Tensor):
    """A forward hook that recomputes a norm over the kept rows only (a unit vector over a whole projection):
    ``out[..., rows] = norm_with(weight[rows])(x[..., rows])``, zero elsewhere."""
    busy = [False]

    def hook(module, args, output):
        if busy[0]:
            return None
        x = args[0]
        idx = rows.to(x.device)
        params = {name: getattr(module, name).index_select(0, idx)}
        busy[0] = True
        try:
            y = functional_call(module, params, (x.index_select(-1, idx),))
        finally:
            busy[0] = False
        out = torch.zeros_like(output)
        out[..., idx] = y
        return out

    return hook


def _skip_hook(module, args, kwargs, output):
    """A skipped block hands its input hidden states on (the rest of its output, if any, unchanged)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def _layer_hooks(adapter: Adapter, geo: Geometry, layer: nn.Module, mask: LayerMask) -> list:
    if mask.skip:
        return [layer.register_forward_hook(_skip_hook, with_kwargs=True)]
    w = layer_widths_of(layer, adapter, geo)
    handles = []
    o = adapter.part(layer, adapter.proj_for("o").path)
    down = adapter.part(layer, adapter.proj_for("down").path)
    for lin, keep, groups, fill in ((o, mask.keep_groups, True, mask.o_fill),
                                   (down, mask.keep_channels, False, mask.down_fill)):
        m = _feature_mask(geo, lin.in_features, keep, groups)
        if m is None and fill is None:
            continue
        handles.append(lin.register_forward_pre_hook(_input_hook(m if m is not None else torch.ones(lin.in_features),
                                                                 fill)))
    if adapter.unit_vectors and mask.keep_groups is not None and len(mask.keep_groups) < w.num_kv_heads:
        q_idx, kv_idx = group_rows(geo, sorted(mask.keep_groups))
        for v in adapter.unit_vectors:
            if v.role not in GROUP_ROLES:
                continue
            rows = q_idx if v.role in ("q", "o") else kv_idx
            owner = adapter.owner(layer, v.path)
            handles.append(owner.register_forward_hook(_vector_hook(v.path.rpartition(".")[2], rows)))
    return handles


@contextlib.contextmanager
def masked(model: nn.Module, masks: dict[int, LayerMask], adapter: Adapter | None = None) -> Iterator[None]:
    """Run the ``with`` block on ``model`` as if the layers in ``masks`` (by current index) were cut; every hook is
    removed on the way out (also on an error or a cancel), and no parameter or buffer is ever written."""
    adapter = adapter or adapter_for(model)
    geo = geometry(model, adapter)
    layers = adapter.layers(model)
    handles: list = []
    try:
        for li, mask in sorted(masks.items()):
            if not 0 <= li < len(layers):
                raise IndexError(f"layer {li}: the model has {len(layers)} layers")
            handles += _layer_hooks(adapter, geo, layers[li], mask)
        yield
    finally:
        for h in handles:
            h.remove()
