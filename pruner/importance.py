"""Layer importance and unit importance, measured together in one pass over the calibration tokens.

* **Layer importance** (docs/method.md): for decoder layer l, ``I_l = -mean_t cos(x_in, x_out)`` over all tokens,
  with x_in / x_out the hidden states entering and leaving the block (after both residual adds). Normalised
  ``Ĩ = (I - mean I) / max|I - mean I|`` (in [-1, 1], mean 0).
* **Unit importance** of KV groups and MLP channels, by criterion:

  - ``taylor`` (paper default): first-order, element-wise ``Σ |W ⊙ ∂L/∂W|`` over all weights (and biases) of
    the unit, summed over the coupled modules; L is the causal-LM loss on the calibration batch.
  - ``magnitude``: ``Σ |W|`` over the unit's weights (L1).
  - ``activation`` (Wanda-style): ``Σ |W_ij| · ||X_j||₂`` with X the input activations of each module.
  - ``fluctuation`` (FLAP's WIFV): ``Var_t(X_j) · ||W_{:,j}||²`` for the input channels j of o_proj and
    down_proj only, summed per unit; the per-channel metrics and input means are kept for FLAP's planner and
    its bias compensation (``Importance.stats``).
  - ``wanda-sp`` (structured Wanda, as in FLAP's code): ``Σ_i |W_ij| · ||X_j||₂`` over the input channels j of
    o_proj and down_proj only, summed per unit.

``criterion=None`` measures the layer cosines only (one forward pass; ShortGPT needs nothing else).

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
from .structure import Geometry, geometry, layer_widths_of


@dataclass
class Importance:
    """Everything measured on one calibration sample."""

    layer_cos: list[float]
    layer_importance: list[float]
    layer_importance_norm: list[float]
    group_scores: list[torch.Tensor] | None = field(repr=False)  # per layer: [num_kv_heads]; None: layers only
    channel_scores: list[torch.Tensor] | None = field(repr=False)  # per layer: [intermediate_size]
    criterion: str | None = "taylor"
    tokens: int = 0
    loss: float | None = None
    seconds: float = 0.0
    stats: list[dict] | None = field(default=None, repr=False)  # per layer, criterion-specific (fluctuation)


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
    dim = {"q": (1, r * d), "k": (1, d), "v": (1, d), "o": (0, r * d)}  # (axis summed away, width per group)
    groups = sum(e[k].sum(a).view(n_kv, w).sum(1).double() for k, (a, w) in dim.items() if k in e)
    for name in ("q", "k", "v"):
        if eb.get(name) is not None:
            groups = groups + eb[name].view(n_kv, dim[name][1]).sum(1).double()
    axis = {"gate": 1, "up": 1, "down": 0}
    channels = sum(e[k].sum(a).double() for k, a in axis.items() if k in e)
    for name in ("gate", "up"):
        if eb.get(name) is not None:
            channels = channels + eb[name].double()
    return groups.cpu(), channels.cpu()


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
        """Element-wise contributions per projection (a missing projection contributes nothing) and per bias."""
        raise NotImplementedError

    def layer_stats(self, li: int, mods: dict[str, nn.Linear]) -> dict | None:
        """Per-layer statistics a method needs beyond the unit scores (None: nothing)."""
        return None


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
    ROLES = ("q", "o", "gate", "down")  # the projections whose inputs are recorded

    def __init__(self):
        self.sq: dict[tuple[int, str], torch.Tensor] = {}

    def attach(self, layers, adapter) -> list:
        return _input_hooks(layers, adapter, self.ROLES, self._add)

    def _add(self, key, x):
        self.sq[key] = self.sq.get(key, 0) + x.pow(2).sum(0)

    def elementwise(self, li, mods):
        norm = {k: self.sq[(li, k)].sqrt() for k in ("q", "o", "gate", "down")}
        return {k: m.weight.float().abs() * norm[self.SOURCE[k]][None, :] for k, m in mods.items()}, {}


class WandaSP(Activation):
    """Structured Wanda as in FLAP's ``prune_wanda_sp``: |W_ij| · ‖X_j‖₂ over the input channels j of o_proj and
    down_proj only (a KV group sums its query heads' columns, a channel its down_proj column). The released code
    averages over the rows and uses the root-mean-square over samples: a constant factor, the same ranking."""

    name = "wanda-sp"
    ROLES = ("o", "down")

    def elementwise(self, li, mods):
        return {k: mods[k].weight.float().abs() * self.sq[(li, k)].sqrt()[None, :] for k in self.ROLES}, {}


class Fluctuation(Criterion):
    """FLAP's fluctuation metric WIFV: the sample variance over the calibration tokens of every input channel j of
    o_proj and down_proj times the squared norm of weight column j (``Var_t(X_j) · ‖W_{:,j}‖²``), summed per unit.
    Variances and means are merged batch by batch (Chan et al.'s pairwise update, float32-safe)."""

    name = "fluctuation"
    ROLES = ("o", "down")

    def __init__(self):
        self.n: dict[tuple[int, str], int] = {}
        self.mean: dict[tuple[int, str], torch.Tensor] = {}
        self.m2: dict[tuple[int, str], torch.Tensor] = {}

    def attach(self, layers, adapter) -> list:
        return _input_hooks(layers, adapter, self.ROLES, self._add)

    def _add(self, key, x):
        nb, mb = x.shape[0], x.mean(0)
        m2b = (x - mb).pow(2).sum(0)
        if key not in self.n:
            self.n[key], self.mean[key], self.m2[key] = nb, mb, m2b
            return
        n, delta = self.n[key], mb - self.mean[key]
        tot = n + nb
        self.mean[key] = self.mean[key] + delta * (nb / tot)
        self.m2[key] = self.m2[key] + m2b + delta.pow(2) * (n * nb / tot)
        self.n[key] = tot

    def metric(self, li: int, role: str, weight: torch.Tensor) -> torch.Tensor:
        """WIFV of every input channel of one module: ``Var_t(X_j) · ‖W_{:,j}‖²`` (float64, on the CPU)."""
        var = self.m2[(li, role)].double() / max(self.n[(li, role)] - 1, 1)
        return (var * weight.double().pow(2).sum(0)).cpu()

    def elementwise(self, li, mods):
        return {k: mods[k].weight.float().pow(2) * (self.m2[(li, k)] / max(self.n[(li, k)] - 1, 1))[None, :]
                for k in self.ROLES}, {}

    def layer_stats(self, li, mods):
        return {"o_metric": self.metric(li, "o", mods["o"].weight),
                "down_metric": self.metric(li, "down", mods["down"].weight),
                "o_mean": self.mean[(li, "o")].double().cpu(), "down_mean": self.mean[(li, "down")].double().cpu()}


def _input_hooks(layers, adapter, roles, add) -> list:
    """Forward pre-hooks that hand ``add((layer, role), x)`` every input ``x [tokens, features]`` (float32) of the
    given projections."""
    def hook(key):
        def fn(module, args):
            x = args[0].detach().float()
            add(key, x.reshape(-1, x.shape[-1]))

        return fn

    handles = []
    for li, layer in enumerate(layers):
        mods = {**adapter.attn_linears(layer), **adapter.mlp_linears(layer)}
        handles += [mods[r].register_forward_pre_hook(hook((li, r))) for r in roles]
    return handles


CRITERION_CLASSES: dict[str, type[Criterion]] = {c.name: c for c in (Taylor, Magnitude, Activation, Fluctuation,
                                                                   WandaSP)}
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
    criterion: str | None = "taylor",
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Importance:
    """Measure layer importance and unit importance on calibration windows ``[n, T]`` (``criterion=None``: the
    layer importance only, one forward pass, no unit scores).

    Leaves weights, ``requires_grad`` flags and ``.grad`` exactly as they were (grads are freed afterwards).
    """
    crit = criterion_for(criterion) if criterion is not None else None
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ConfigError("Calibration windows must be a non-empty [n_windows, window_length ≥ 2] tensor")
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    t0 = time.perf_counter()
    cosines = _LayerCosines(layers)
    handles = cosines.handles + (crit.attach(layers, adapter) if crit is not None else [])
    needs_grad = crit is not None and crit.needs_grad
    prunable = [p for layer in layers
                for mod in (*adapter.attn_linears(layer).values(), *adapter.mlp_linears(layer).values())
                for p in mod.parameters()]
    try:
        with _gradients_only_for(model, prunable if needs_grad else []):
            try:
                n_tok, loss = _forward_backward(model, windows, batch_size, needs_grad, should_stop, progress)
            except (torch.OutOfMemoryError, MemoryError) as exc:
                raise ResourceError(out_of_memory("measuring importance", windows, batch_size, model)) from exc
            units = _unit_scores(model, adapter, crit) if crit is not None else (None, None, None)
    finally:
        for h in handles:
            h.remove()
    cos = (cosines.sum / max(n_tok, 1)).tolist()
    imp = [-c for c in cos]
    return Importance(layer_cos=cos, layer_importance=imp, layer_importance_norm=normalise_importance(imp),
                      group_scores=units[0], channel_scores=units[1], criterion=criterion, tokens=n_tok,
                      loss=loss, seconds=time.perf_counter() - t0, stats=units[2])


@torch.no_grad()
def _unit_scores(model, adapter, crit: Criterion) -> tuple[list, list, list | None]:
    """Per layer: KV-group scores, channel scores and the criterion's statistics (None when it keeps none)."""
    geo = geometry(model, adapter)
    groups, channels, stats = [], [], []
    for li, layer in enumerate(adapter.layers(model)):
        mods = {**adapter.attn_linears(layer), **adapter.mlp_linears(layer)}
        e, eb = crit.elementwise(li, mods)
        g, c = _unit_scores_from_elementwise(geo, layer_widths_of(layer, adapter, geo).num_kv_heads, e, eb)
        groups.append(g)
        channels.append(c)
        stats.append(crit.layer_stats(li, mods))
    return groups, channels, (stats if any(st is not None for st in stats) else None)


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
    return n_tok, (loss_sum / windows.shape[0] if use_grad else None)
