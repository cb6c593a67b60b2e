"""A cut of the widths as a patch, and its undo at the cost of what the cut removed.

:func:`pruner.model.structure.build_cut` describes every replaced part as a :class:`PartCut`: the new part and
the indices of the old part's rows (output features, bias entries), input columns, or 1-D entries that it drops.
Applying the cut (:func:`pruner.model.structure.apply_patch`) returns a :class:`WidthUndo`: per part only the
dropped slices (:class:`Removed`) with their indices, and the old bias of a part cut along its columns (FLAP's
compensation changes it, or adds one where there was none). That is enough to rebuild every old part bit for bit
from the part the model holds now (:func:`restored`), so the undo history of a sub-step that removes 4 % of
the decoder holds about 4 % of the decoder's bytes, not copies of the old modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pruner.model.slicing import new_linear

Part = nn.Module | nn.Parameter  # an nn.Linear of a decoder layer, or a 1-D parameter (a unit vector)


def complement(keep: torch.Tensor, size: int) -> torch.Tensor:
    """The indices in ``range(size)`` that ``keep`` leaves out, ascending (int64, on the CPU)."""
    mask = torch.ones(size, dtype=torch.bool)
    mask[keep.cpu()] = False
    return mask.nonzero().flatten()


@dataclass
class PartCut:
    """One part's replacement: the new part, and which old slices it drops.

    ``axis`` 0: rows of a Linear's weight with their bias entries, or entries of a 1-D parameter; 1: input columns
    of a Linear's weight (its bias is the output's: kept whole, and saved whole by the undo). ``dropped``: the
    old part's indices along ``axis`` that the new part does not have, ascending.
    """

    new: Part
    axis: int
    dropped: torch.Tensor


@dataclass
class Removed:
    """What a cut took from one part: enough, with the part the model holds now, to rebuild the old one exactly."""

    axis: int
    dropped: torch.Tensor  # the old part's indices along axis, ascending (int64, CPU)
    weight: torch.Tensor  # the dropped rows / columns / entries
    bias: torch.Tensor | None  # axis 0: the dropped bias entries; axis 1: the old bias, whole
    had_bias: bool  # the old part had a bias (FLAP's compensation adds one to a part without)

    @property
    def nbytes(self) -> int:
        """Bytes held: the dropped slices, their indices and the saved bias."""
        held = [self.weight, self.dropped] + ([self.bias] if self.bias is not None else [])
        return sum(t.numel() * t.element_size() for t in held)


class WidthPatch(dict):
    """A cut of the widths: ``{layer index: {part path: PartCut}}`` (empty when nothing changes)."""


class WidthUndo(dict):
    """The undo of an applied :class:`WidthPatch`: ``{layer index: {part path: Removed}}``."""

    @property
    def nbytes(self) -> int:
        """Bytes this undo holds (what the cut removed, with its indices)."""
        return sum(r.nbytes for parts in self.values() for r in parts.values())


def _weight(part: Part) -> torch.Tensor:
    return part.weight.data if isinstance(part, nn.Module) else part.data


def removed_of(old: Part, cut: PartCut) -> Removed:
    """The slices of ``old`` that ``cut`` drops (copies: ``old`` may be freed afterwards)."""
    w = _weight(old)
    idx = cut.dropped.to(w.device)
    bias = old.bias if isinstance(old, nn.Module) else None
    if bias is None:
        saved = None
    else:
        saved = bias.data.index_select(0, idx) if cut.axis == 0 else bias.data.clone()
    return Removed(cut.axis, cut.dropped.cpu(), w.index_select(cut.axis, idx), saved, bias is not None)


def _merge(now: torch.Tensor, gone: torch.Tensor, axis: int, dropped: torch.Tensor) -> torch.Tensor:
    """The tensor whose slices ``dropped`` along ``axis`` are ``gone`` and whose others, in order, are ``now``."""
    size = now.shape[axis] + gone.shape[axis]
    shape = list(now.shape)
    shape[axis] = size
    out = torch.empty(shape, dtype=now.dtype, device=now.device)
    keep = complement(dropped, size).to(now.device)
    out.index_copy_(axis, keep, now)
    out.index_copy_(axis, dropped.to(now.device), gone.to(now.device, now.dtype))
    return out


def restored(now: Part, removed: Removed) -> Part:
    """The old part, rebuilt from the part the model holds now and what the cut removed (a new object)."""
    if not isinstance(now, nn.Module):
        return nn.Parameter(_merge(now.data, removed.weight, 0, removed.dropped), requires_grad=now.requires_grad)
    weight = _merge(now.weight.data, removed.weight, removed.axis, removed.dropped)
    if not removed.had_bias:
        bias = None
    elif removed.axis == 1:
        bias = removed.bias.to(now.weight.device)
    else:
        bias = _merge(now.bias.data, removed.bias, 0, removed.dropped)
    return new_linear(weight, bias, now)
