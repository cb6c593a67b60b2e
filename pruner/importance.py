"""Layer importance and unit importance, measured together in one pass over the calibration tokens.

* **Layer importance** (METHOD.md): for decoder layer l, ``I_l = -mean_t cos(x_in, x_out)`` over all tokens,
  with x_in / x_out the hidden states entering and leaving the block (after both residual adds). Normalised
  ``Ĩ = (I - mean I) / max|I - mean I|`` (in [-1, 1], mean 0).
* **Unit importance** of KV groups and MLP channels, by criterion:

  - ``taylor`` (paper default): first-order, element-wise ``Σ |W ⊙ ∂L/∂W|`` over all weights (and biases) of
    the unit, summed over the coupled modules; L is the causal-LM loss on the calibration batch.
  - ``magnitude``: ``Σ |W|`` over the unit's weights (L1).
  - ``activation`` (Wanda-style): ``Σ |W_ij| · ||X_j||₂`` with X the input activations of each module.

The forward hooks that collect layer cosines (and activation norms) ride on the same forward pass whose loss
is back-propagated for Taylor scores, so measuring everything costs one forward+backward. Gradients are only
requested for the prunable projections (not embeddings, norms or lm_head), which also saves time and memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import adapter_for
from .structure import Geometry, geometry, layer_widths_of

CRITERIA = ("taylor", "magnitude", "activation")


class Cancelled(RuntimeError):
    """Raised when a caller's ``should_stop`` returned True; nothing was changed."""


@dataclass
class Importance:
    """Everything measured on one calibration sample."""

    layer_cos: list[float]
    layer_importance: list[float]
    layer_importance_norm: list[float]
    group_scores: list[torch.Tensor] = field(repr=False)  # per layer: [num_kv_heads]
    channel_scores: list[torch.Tensor] = field(repr=False)  # per layer: [intermediate_size]
    criterion: str = "taylor"
    tokens: int = 0
    loss: float | None = None
    seconds: float = 0.0


def normalise_importance(values: list[float]) -> list[float]:
    """``(I - mean) / max|I - mean|``; all zeros when every layer is equally important."""
    t = torch.tensor(values, dtype=torch.float64)
    c = t - t.mean()
    m = c.abs().max()
    if m <= 0:
        return [0.0] * len(values)
    return (c / m).tolist()


def _hidden_in(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hidden_out(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _unit_scores_from_elementwise(
    geo: Geometry, n_kv: int, e: dict[str, torch.Tensor], eb: dict[str, torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum element-wise scores of q/k/v/o/gate/up/down (and biases) into KV-group and channel scores."""
    d, r = geo.head_dim, geo.n_rep
    q = e["q"].sum(1).view(n_kv, r * d).sum(1)
    k = e["k"].sum(1).view(n_kv, d).sum(1)
    v = e["v"].sum(1).view(n_kv, d).sum(1)
    o = e["o"].sum(0).view(n_kv, r * d).sum(1)
    groups = q + k + v + o
    for name, width in (("q", r * d), ("k", d), ("v", d)):
        if eb.get(name) is not None:
            groups = groups + eb[name].view(n_kv, width).sum(1)
    channels = e["gate"].sum(1) + e["up"].sum(1) + e["down"].sum(0)
    for name in ("gate", "up"):
        if eb.get(name) is not None:
            channels = channels + eb[name]
    return groups.double().cpu(), channels.double().cpu()


def measure_importance(
    model: nn.Module,
    windows: torch.Tensor,
    criterion: str = "taylor",
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Importance:
    """Measure layer importance and unit importance on calibration windows ``[n, T]``.

    Leaves weights, ``requires_grad`` flags and ``.grad`` exactly as they were (grads are freed afterwards).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown criterion '{criterion}': use one of {', '.join(CRITERIA)}")
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError("Calibration windows must be a non-empty [n_windows, window_length ≥ 2] tensor")
    adapter = adapter_for(model)
    geo = geometry(model, adapter)
    layers = adapter.layers(model)
    device = next(model.parameters()).device
    t0 = time.perf_counter()

    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    n_tok = 0
    act_sq: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def layer_hook(li):
        def hook(module, args, kwargs, output):
            x_in = _hidden_in(args, kwargs).detach()
            x_out = _hidden_out(output).detach()
            c = nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            cos_sum[li] += c.double().sum().cpu()

        return hook

    def act_hook(key):
        def hook(module, args):
            x = args[0].detach().float()
            s = x.pow(2).reshape(-1, x.shape[-1]).sum(0)
            act_sq[key] = act_sq.get(key, 0) + s

        return hook

    for li, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(layer_hook(li), with_kwargs=True))
        if criterion == "activation":
            a, m = adapter.attn_linears(layer), adapter.mlp_linears(layer)
            for role, mod in (("q", a["q"]), ("o", a["o"]), ("gate", m["gate"]), ("down", m["down"])):
                handles.append(mod.register_forward_pre_hook(act_hook((li, role))))

    prunable = []
    for layer in layers:
        for mod in (*adapter.attn_linears(layer).values(), *adapter.mlp_linears(layer).values()):
            prunable.extend(p for p in mod.parameters())
    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    saved_grads = {id(p): p.grad for p in model.parameters()}
    was_training = model.training
    use_grad = criterion == "taylor"
    loss_sum = 0.0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        if use_grad:
            for p in prunable:
                p.requires_grad_(True)
        n_batches = (windows.shape[0] + batch_size - 1) // batch_size
        for bi in range(n_batches):
            if should_stop is not None and should_stop():
                raise Cancelled("importance measurement cancelled")
            batch = windows[bi * batch_size : (bi + 1) * batch_size].to(device)
            with torch.set_grad_enabled(use_grad):
                out = model(input_ids=batch, labels=batch if use_grad else None, use_cache=False)
                if use_grad:
                    # weight each batch by its share of the tokens, so the sum is the mean loss
                    (out.loss * batch.shape[0] / windows.shape[0]).backward()
                    loss_sum += out.loss.item() * batch.shape[0]
            n_tok += batch.numel()
            del out
            if progress is not None:
                progress(bi + 1, n_batches)

        group_scores, channel_scores = [], []
        with torch.no_grad():
            for li, layer in enumerate(layers):
                a, m = adapter.attn_linears(layer), adapter.mlp_linears(layer)
                mods = {**a, **m}
                w = layer_widths_of(layer, adapter, geo)
                if criterion == "taylor":
                    # float32 products: bf16 sums over millions of elements would lose the ranking
                    e = {k: (mod.weight.float() * mod.weight.grad.float()).abs() for k, mod in mods.items()}
                    eb = {k: (mod.bias.float() * mod.bias.grad.float()).abs()
                          if mod.bias is not None and mod.bias.grad is not None else None for k, mod in mods.items()}
                elif criterion == "magnitude":
                    e = {k: mod.weight.float().abs() for k, mod in mods.items()}
                    eb = {k: mod.bias.float().abs() if mod.bias is not None else None for k, mod in mods.items()}
                else:
                    norm = {k: act_sq[(li, k)].sqrt() for k in ("q", "o", "gate", "down")}
                    src = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}
                    e = {k: mod.weight.float().abs() * norm[src[k]][None, :] for k, mod in mods.items()}
                    eb = {}
                g, c = _unit_scores_from_elementwise(geo, w.num_kv_heads, e, eb)
                group_scores.append(g)
                channel_scores.append(c)
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(saved_flags[id(p)])
            p.grad = saved_grads[id(p)]
        model.train(was_training)

    cos = (cos_sum / max(n_tok, 1)).tolist()
    imp = [-c for c in cos]
    return Importance(
        layer_cos=cos,
        layer_importance=imp,
        layer_importance_norm=normalise_importance(imp),
        group_scores=group_scores,
        channel_scores=channel_scores,
        criterion=criterion,
        tokens=n_tok,
        loss=loss_sum / windows.shape[0] if use_grad else None,
        seconds=time.perf_counter() - t0,
    )


def layer_importance(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Raw layer importance ``-mean cos(x_in, x_out)`` per decoder layer (forward only, no gradients)."""
    return measure_importance(model, windows, criterion="magnitude", batch_size=batch_size).layer_importance

