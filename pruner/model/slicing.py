"""Slicing one Linear (or 1-D parameter) down to the rows, columns or entries that stay: the primitives of the
surgery in :mod:`pruner.model.structure`. Each returns a *new* module or parameter; the old one is untouched, so a cut can
be built completely before anything is swapped in."""

from __future__ import annotations

import torch
from torch import nn


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """A Linear holding ``weight`` and ``bias`` (made contiguous), with ``like``'s ``requires_grad`` flags."""
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.contiguous(), requires_grad=like.weight.requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias.contiguous(),
                                requires_grad=(like.bias if like.bias is not None else like.weight).requires_grad)
    return lin


def select_rows(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """A new Linear keeping output features ``idx`` (rows of the weight, entries of the bias)."""
    idx = idx.to(lin.weight.device)
    w = lin.weight.data.index_select(0, idx)
    b = lin.bias.data.index_select(0, idx) if lin.bias is not None else None
    return new_linear(w, b, lin)


def select_cols(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """A new Linear keeping input features ``idx`` (columns of the weight; the bias is unchanged)."""
    idx = idx.to(lin.weight.device)
    w = lin.weight.data.index_select(1, idx)
    b = lin.bias.data.clone() if lin.bias is not None else None
    return new_linear(w, b, lin)


def select_entries(param: nn.Parameter, idx: torch.Tensor) -> nn.Parameter:
    """A new 1-D parameter keeping entries ``idx`` (a unit vector, e.g. OLMo-2's q_norm over the whole projection)."""
    return nn.Parameter(param.data.index_select(0, idx.to(param.device)).contiguous(), requires_grad=param.requires_grad)


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
    return new_linear(w.index_select(1, idx.to(w.device)), bias, lin)
