"""Layer importance and unit importance, measured together in one pass over the calibration tokens.

* **Layer importance** (docs/method.md): for decoder layer l, ``I_l = -mean_t cos(x_in, x_out)`` over all tokens,
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

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import adapter_for
from .config import CRITERIA
from .errors import Cancelled, ConfigError, ResourceError
from .lean import causal_lm_loss, checkpointed
from .memory import MemoryWatch, tame_allocator, touch_weights
from .structure import Geometry, geometry, layer_widths_of


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
    memory: dict | None = None  # peak memory of the pass and what it is made of (see measure_importance)


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


# ---------------------------------------------------------------------- criteria: one class each


class Criterion:
    """How the weights of one unit are scored: element-wise contributions of every projection (and bias), which
    :func:`_unit_scores_from_elementwise` sums per KV group and per MLP channel."""

    name = ""
    needs_grad = False  # the criterion reads ∂L/∂W (a backward pass per batch)

    def attach(self, layers, adapter) -> list:
        """Register the forward hooks the criterion needs; returns their handles."""
        return []

    def elementwise(self, li: int, mods: dict[str, nn.Linear]) -> tuple[dict, dict]:
        raise NotImplementedError


class Taylor(Criterion):
    """First-order Taylor, element-wise: |W ⊙ ∂L/∂W| (the paper's)."""

    name, needs_grad = "taylor", True

    def elementwise(self, li, mods):
        # float32 products: bf16 sums over millions of elements would lose the ranking
        e = {k: (m.weight.float() * m.weight.grad.float()).abs() for k, m in mods.items()}
        eb = {k: (m.bias.float() * m.bias.grad.float()).abs() if m.bias is not None and m.bias.grad is not None
              else None for k, m in mods.items()}
        return e, eb


class Magnitude(Criterion):
    """|W| (L1)."""

    name = "magnitude"

    def elementwise(self, li, mods):
        return ({k: m.weight.float().abs() for k, m in mods.items()},
                {k: m.bias.float().abs() if m.bias is not None else None for k, m in mods.items()})


class Activation(Criterion):
    """Wanda-style |W_ij| · ‖X_j‖₂, X the input activations of each module (q/k/v share q's input, up shares
    gate's)."""

    name = "activation"
    SOURCE = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}

    def __init__(self):
        self.sq: dict[tuple[int, str], torch.Tensor] = {}

    def attach(self, layers, adapter) -> list:
        def hook(key):
            def fn(module, args):
                x = args[0].detach().float()
                self.sq[key] = self.sq.get(key, 0) + x.pow(2).reshape(-1, x.shape[-1]).sum(0)

            return fn

        handles = []
        for li, layer in enumerate(layers):
            a, m = adapter.attn_linears(layer), adapter.mlp_linears(layer)
            for role, mod in (("q", a["q"]), ("o", a["o"]), ("gate", m["gate"]), ("down", m["down"])):
                handles.append(mod.register_forward_pre_hook(hook((li, role))))
        return handles

    def elementwise(self, li, mods):
        norm = {k: self.sq[(li, k)].sqrt() for k in ("q", "o", "gate", "down")}
        return {k: m.weight.float().abs() * norm[self.SOURCE[k]][None, :] for k, m in mods.items()}, {}


CRITERION_CLASSES: dict[str, type[Criterion]] = {c.name: c for c in (Taylor, Magnitude, Activation)}
assert tuple(CRITERION_CLASSES) == CRITERIA


def criterion_for(name: str) -> Criterion:
    if name not in CRITERION_CLASSES:
        raise ConfigError(f"Unknown criterion '{name}': use one of {', '.join(CRITERIA)}")
    return CRITERION_CLASSES[name]()


# ---------------------------------------------------------------------- the measurement


class _LayerCosines:
    """Forward hooks summing cos(x_in, x_out) over the tokens of every decoder layer."""

    def __init__(self, layers):
        self.sum = torch.zeros(len(layers), dtype=torch.float64)
        self.handles = [layer.register_forward_hook(self._hook(li), with_kwargs=True) for li, layer in enumerate(layers)]

    def _hook(self, li):
        def hook(module, args, kwargs, output):
            x_in, x_out = _hidden_in(args, kwargs).detach(), _hidden_out(output).detach()
            c = nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            self.sum[li] += c.double().sum().cpu()

        return hook


@contextlib.contextmanager
def _gradients_only_for(model: nn.Module, params: list[nn.Parameter]):
    """Eval mode, gradients requested only for ``params``; ``requires_grad``, ``.grad`` and the training flag
    are put back afterwards (the measurement's gradients are freed)."""
    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    saved_grads = {id(p): p.grad for p in model.parameters()}
    was_training = model.training
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(saved_flags[id(p)])
            p.grad = saved_grads[id(p)]
        model.train(was_training)


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
    crit = criterion_for(criterion)
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ConfigError("Calibration windows must be a non-empty [n_windows, window_length ≥ 2] tensor")
    adapter = adapter_for(model)
    geo = geometry(model, adapter)
    layers = adapter.layers(model)
    t0 = time.perf_counter()
    cosines = _LayerCosines(layers)
    handles = cosines.handles + crit.attach(layers, adapter)
    prunable = [p for layer in layers
                for mod in (*adapter.attn_linears(layer).values(), *adapter.mlp_linears(layer).values())
                for p in mod.parameters()]
    tame_allocator()
    touch_weights(model)
    watch = MemoryWatch(next(model.parameters()).device)
    try:
        with _gradients_only_for(model, prunable if crit.needs_grad else []), watch:
            try:
                with checkpointed(layers) if crit.needs_grad else contextlib.nullcontext():
                    n_tok, loss = _forward_backward(model, windows, batch_size, crit.needs_grad, should_stop,
                                                    progress)
            except (torch.OutOfMemoryError, MemoryError) as exc:
                raise ResourceError(out_of_memory("measuring importance", windows, batch_size, model)) from exc
            group_scores, channel_scores = [], []
            with torch.no_grad():
                for li, layer in enumerate(layers):
                    mods = {**adapter.attn_linears(layer), **adapter.mlp_linears(layer)}
                    e, eb = crit.elementwise(li, mods)
                    g, c = _unit_scores_from_elementwise(geo, layer_widths_of(layer, adapter, geo).num_kv_heads, e, eb)
                    group_scores.append(g)
                    channel_scores.append(c)
    finally:
        for h in handles:
            h.remove()
    cos = (cosines.sum / max(n_tok, 1)).tolist()
    imp = [-c for c in cos]
    return Importance(layer_cos=cos, layer_importance=imp, layer_importance_norm=normalise_importance(imp),
                      group_scores=group_scores, channel_scores=channel_scores, criterion=criterion, tokens=n_tok,
                      loss=loss, seconds=time.perf_counter() - t0,
                      memory=_memory_report(model, watch, prunable if crit.needs_grad else [], windows, batch_size))


def _memory_report(model: nn.Module, watch: MemoryWatch, scored: list, windows: torch.Tensor, batch: int) -> dict:
    """The pass's peak against the weights: ``ratio_to_weights`` = (weights + what the pass added on top of the
    loaded model at its peak) / weights — the issue's "in all" (weights, gradients of the scored matrices, one
    batch of activations, the runtime's own scratch)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"kind": watch.kind, "weights_bytes": weights,
           "scored_gradient_bytes": sum(p.numel() * p.element_size() for p in scored),
           "batch_tokens": min(batch, windows.shape[0]) * windows.shape[1],
           "before_bytes": watch.before, "peak_bytes": watch.peak}
    if watch.peak is not None and watch.before is not None:
        out["pass_extra_bytes"] = max(0, watch.peak - watch.before)
        out["ratio_to_weights"] = (weights + out["pass_extra_bytes"]) / weights
    return out


def out_of_memory(what: str, windows: torch.Tensor, batch_size: int, model: nn.Module) -> str:
    """The one-line message for running out of memory: where it happened, with what, and what to reduce."""
    p = next(model.parameters())
    dtype = str(p.dtype).replace("torch.", "")
    lower = "bfloat16 (--dtype bfloat16)" if p.dtype == torch.float32 else "a smaller model"
    return (f"Out of memory while {what} ({windows.shape[0]} windows × {windows.shape[1]} tokens in batches of "
            f"{batch_size}, {dtype} on {p.device}); the model is unchanged. Reduce the batch size (--batch-size), "
            f"the number or length of windows (--n-windows, --window), use {lower}, or a device with more memory")


def _forward_backward(model, windows, batch_size, use_grad, should_stop, progress) -> tuple[int, float | None]:
    """Run the calibration batches (with a backward of the mean loss when ``use_grad``); returns the tokens seen
    and the mean loss."""
    device = next(model.parameters()).device
    n_batches = (windows.shape[0] + batch_size - 1) // batch_size
    n_tok, loss_sum = 0, 0.0
    for bi in range(n_batches):
        if should_stop is not None and should_stop():
            raise Cancelled("importance measurement cancelled")
        batch = windows[bi * batch_size : (bi + 1) * batch_size].to(device)
        if use_grad:
            loss = causal_lm_loss(model, batch)  # lean: chunked over the vocabulary (see pruner.lean)
            # weight each batch by its share of the windows, so the sum is the mean loss
            (loss * batch.shape[0] / windows.shape[0]).backward()
            loss_sum += loss.item() * batch.shape[0]
            del loss
        else:
            with torch.no_grad():
                model(input_ids=batch, use_cache=False)
        n_tok += batch.numel()
        if progress is not None:
            progress(bi + 1, n_batches)
    return n_tok, (loss_sum / windows.shape[0] if use_grad else None)
