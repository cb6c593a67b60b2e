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

from pruner.errors import Cancelled, ConfigError, ResourceError
from pruner.importance.lean import causal_lm_loss, checkpointed
from pruner.importance.sensitivity import Sensitivity, measure_sensitivity
from pruner.importance.streamed import StreamedUnits
from pruner.model.adapters import GROUP_ROLES, Adapter, adapter_for, role_sizes
from pruner.model.structure import Geometry, LayerWidths, geometry, layer_widths_of
from pruner.runtime.memory import MemoryWatch, release_free_memory, tame_allocator, touch_weights


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
    memory: dict | None = None  # peak memory of the pass and what it is made of (see measure_importance)
    stats: list[dict] | None = field(default=None, repr=False)  # per layer, criterion-specific (fluctuation)
    sensitivity: Sensitivity | None = field(default=None, repr=False)  # per-layer loss increase, when asked


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
    geo: Geometry, adapter: Adapter, width: LayerWidths, e: dict[str, torch.Tensor], eb: dict[str, torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum element-wise scores of a layer's parts (by path: weights ``e``, biases ``eb``; unit vectors in ``e``)
    into KV-group and channel scores, through the adapter's logical view (a fused matrix's rows split by role)."""
    n_kv = width.num_kv_heads
    sizes = role_sizes(width.num_heads, n_kv, width.intermediate_size, geo.head_dim)
    w, b, u = adapter.role_scores(e, eb, sizes)  # a part a criterion does not score contributes nothing
    groups = sum(w[role].view(n_kv, -1).sum(1) for role in GROUP_ROLES if role in w)
    channels = sum(w[role] for role in ("gate", "up", "down") if role in w)
    for extra in (b, u):  # biases, then unit-vector entries, each on the rows they follow
        for role, t in extra.items():
            if role in GROUP_ROLES:
                groups = groups + t.view(n_kv, -1).sum(1)
            else:
                channels = channels + t
    return groups.double().cpu(), channels.double().cpu()


# ---------------------------------------------------------------------- criteria: one class each


def _weight(part) -> torch.Tensor:
    return part.weight if isinstance(part, nn.Module) else part


def _bias(part) -> torch.Tensor | None:
    return part.bias if isinstance(part, nn.Module) else None


class Criterion:
    """How the weights of one unit are scored: element-wise contributions of every part of a layer (a Linear's
    weight and bias, a unit vector), keyed by the part's path, which :func:`_unit_scores_from_elementwise` sums per
    KV group and per MLP channel."""

    name = ""
    needs_grad = False  # the criterion reads ∂L/∂W (a backward pass per batch)

    def attach(self, layers, adapter) -> list:
        """Register the forward hooks the criterion needs; returns their handles."""
        return []

    def elementwise(self, li: int, parts: dict) -> tuple[dict, dict]:
        raise NotImplementedError

    def layer_stats(self, li: int, parts: dict) -> dict | None:
        """Per-layer statistics a method needs beyond the unit scores (None: nothing)."""
        return None


class Taylor(Criterion):
    """First-order Taylor, element-wise: |W ⊙ ∂L/∂W| (the paper's)."""

    name, needs_grad = "taylor", True

    def elementwise(self, li, parts):
        # float32 products: bf16 sums over millions of elements would lose the ranking
        def score(t):
            return (t.float() * t.grad.float()).abs() if t is not None and t.grad is not None else None

        return ({k: score(_weight(p)) for k, p in parts.items()}, {k: score(_bias(p)) for k, p in parts.items()})


class Magnitude(Criterion):
    """|W| (L1)."""

    name = "magnitude"

    def elementwise(self, li, parts):
        return ({k: _weight(p).float().abs() for k, p in parts.items()},
                {k: _bias(p).float().abs() if _bias(p) is not None else None for k, p in parts.items()})


class Activation(Criterion):
    """Wanda-style |W_ij| · ‖X_j‖₂, X the input activations of the module each part belongs to (q/k/v see the
    same input; a unit vector's entry j scales input feature j of its norm)."""

    name = "activation"

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
            for path in adapter.parts(layer):
                handles.append(adapter.owner(layer, path).register_forward_pre_hook(hook((li, path))))
        return handles

    def elementwise(self, li, parts):
        e = {}
        for k, p in parts.items():
            norm = self.sq[(li, k)].sqrt()
            w = _weight(p).float().abs()
            e[k] = w * (norm[None, :] if w.ndim == 2 else norm)
        return e, {}


class _OutputInputs(Criterion):
    """Base of the criteria that read only the inputs of o_proj and down_proj (FLAP's metrics): one forward
    pre-hook per module, ``self._add((layer, role), x)`` for every input ``x [tokens, features]`` in float32."""

    ROLES = ("o", "down")

    def attach(self, layers, adapter) -> list:
        self.paths = {role: adapter.proj_for(role).path for role in self.ROLES}

        def hook(key):
            def fn(module, args):
                x = args[0].detach().float()
                self._add(key, x.reshape(-1, x.shape[-1]))

            return fn

        return [adapter.part(layer, self.paths[role]).register_forward_pre_hook(hook((li, role)))
                for li, layer in enumerate(layers) for role in self.ROLES]

    def _add(self, key, x) -> None:
        raise NotImplementedError


class WandaSP(_OutputInputs):
    """Structured Wanda as in FLAP's ``prune_wanda_sp``: |W_ij| · ‖X_j‖₂ over the input channels j of o_proj and
    down_proj only (a KV group sums its query heads' columns, a channel its down_proj column). The released code
    averages over the rows and uses the root-mean-square over samples: a constant factor, the same ranking."""

    name = "wanda-sp"

    def __init__(self):
        self.sq: dict[tuple[int, str], torch.Tensor] = {}

    def _add(self, key, x):
        self.sq[key] = self.sq.get(key, 0) + x.pow(2).sum(0)

    def elementwise(self, li, parts):
        return {self.paths[r]: parts[self.paths[r]].weight.float().abs() * self.sq[(li, r)].sqrt()[None, :]
                for r in self.ROLES}, {}


class Fluctuation(_OutputInputs):
    """FLAP's fluctuation metric WIFV: the sample variance over the calibration tokens of every input channel j of
    o_proj and down_proj times the squared norm of weight column j (``Var_t(X_j) · ‖W_{:,j}‖²``), summed per unit.
    Variances and means are merged batch by batch (Chan et al.'s pairwise update, float32-safe)."""

    name = "fluctuation"

    def __init__(self):
        self.n: dict[tuple[int, str], int] = {}
        self.mean: dict[tuple[int, str], torch.Tensor] = {}
        self.m2: dict[tuple[int, str], torch.Tensor] = {}

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

    def _var(self, li: int, role: str) -> torch.Tensor:
        return self.m2[(li, role)] / max(self.n[(li, role)] - 1, 1)

    def elementwise(self, li, parts):
        return {self.paths[r]: parts[self.paths[r]].weight.float().pow(2) * self._var(li, r)[None, :]
                for r in self.ROLES}, {}

    def layer_stats(self, li, parts):
        def metric(role):  # WIFV of every input channel, float64 on the CPU
            w = parts[self.paths[role]].weight.detach().double()
            return (self._var(li, role).double() * w.pow(2).sum(0)).cpu()

        return {"o_metric": metric("o"), "down_metric": metric("down"),
                "o_mean": self.mean[(li, "o")].double().cpu(), "down_mean": self.mean[(li, "down")].double().cpu()}


CRITERION_CLASSES: dict[str, type[Criterion]] = {c.name: c for c in (Taylor, Magnitude, Activation, Fluctuation,
                                                                   WandaSP)}
#: How units inside a layer can be scored (the choice list of ``--criterion``).
CRITERIA = tuple(CRITERION_CLASSES)


def criterion_for(name: str) -> Criterion:
    if name not in CRITERION_CLASSES:
        raise ConfigError(f"Unknown criterion '{name}': use one of {', '.join(CRITERIA)}")
    return CRITERION_CLASSES[name]()


# ---------------------------------------------------------------------- the measurement


class _LayerCosines:
    """Forward hooks summing cos(x_in, x_out) over the tokens of every decoder layer. A layer whose input and output
    live in different bases (SliceGPT's rotated layers, with a ``residual_path``) compares its output with the input
    carried along the residual path into the output's basis."""

    def __init__(self, layers):
        self.sum = torch.zeros(len(layers), dtype=torch.float64)
        self.handles = [layer.register_forward_hook(self._hook(li), with_kwargs=True) for li, layer in enumerate(layers)]

    def _hook(self, li):
        def hook(module, args, kwargs, output):
            x_in, x_out = _hidden_in(args, kwargs).detach(), _hidden_out(output).detach()
            carry = getattr(module, "residual_path", None)
            if carry is not None:
                x_in = carry(x_in)
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
    checkpoint: bool = True,
    sensitivity_levels: tuple[float, ...] | None = None,
) -> Importance:
    """Measure layer importance and unit importance on calibration windows ``[n, T]`` (``criterion=None``: the
    layer importance only, one forward pass, no unit scores). With ``sensitivity_levels`` the same windows also
    give the per-layer sensitivity table (:mod:`pruner.importance.sensitivity`: units masked lowest score first).

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
    per_layer = [[p for part in adapter.parts(layer).values()
                  for p in (part.parameters() if isinstance(part, nn.Module) else [part])] for layer in layers]
    prunable = [p for ps in per_layer for p in ps]
    # the last backward reduces each layer's scores as soon as its gradients are complete, and frees them
    streamed = StreamedUnits(per_layer, lambda li: _layer_units(model, adapter, crit, li)) if needs_grad else None
    tame_allocator()
    touch_weights(model)
    watch = MemoryWatch(next(model.parameters()).device)
    try:
        with _gradients_only_for(model, prunable if needs_grad else []), watch:
            try:
                with checkpointed(layers) if needs_grad and checkpoint else contextlib.nullcontext():
                    n_tok, loss = _forward_backward(model, windows, batch_size, needs_grad, should_stop, progress,
                                                    before_last=streamed.arm if streamed is not None else None)
            except (torch.OutOfMemoryError, MemoryError) as exc:
                raise ResourceError(out_of_memory("measuring importance", windows, batch_size, model)) from exc
            finally:
                if streamed is not None:
                    streamed.remove()
            units = (_unit_scores(model, adapter, crit, streamed.results if streamed is not None else None)
                     if crit is not None else (None, None, None))
    finally:
        for h in handles:
            h.remove()
    memory = _memory_report(model, watch, prunable if needs_grad else [], windows, batch_size)
    release_free_memory()
    table = None
    if sensitivity_levels is not None:
        if units[0] is None:
            raise ConfigError("The sensitivity table ranks units by their scores: it needs a unit criterion")
        table = measure_sensitivity(model, windows, units[0], units[1], sensitivity_levels, batch_size, should_stop)
        table.units = {"criterion": criterion}
    cos = (cosines.sum / max(n_tok, 1)).tolist()
    imp = [-c for c in cos]
    return Importance(layer_cos=cos, layer_importance=imp, layer_importance_norm=normalise_importance(imp),
                      group_scores=units[0], channel_scores=units[1], criterion=criterion, tokens=n_tok,
                      loss=loss, seconds=time.perf_counter() - t0, stats=units[2], memory=memory,
                      sensitivity=table)


@torch.no_grad()
def _layer_units(model, adapter, crit: Criterion, li: int) -> tuple:
    """One layer's KV-group scores, channel scores and the criterion's statistics."""
    geo = geometry(model, adapter)
    layer = adapter.layers(model)[li]
    parts = adapter.parts(layer)
    e, eb = crit.elementwise(li, parts)
    g, c = _unit_scores_from_elementwise(geo, adapter, layer_widths_of(layer, adapter, geo), e, eb)
    return g, c, crit.layer_stats(li, parts)


def _unit_scores(model, adapter, crit: Criterion, streamed: dict | None = None) -> tuple[list, list, list | None]:
    """Per layer: KV-group scores, channel scores and the criterion's statistics (None when it keeps none); a
    layer already reduced during the backward (``streamed``) is taken from there."""
    rows = [(streamed or {}).get(li) or _layer_units(model, adapter, crit, li)
            for li in range(len(adapter.layers(model)))]
    stats = [r[2] for r in rows]
    return [r[0] for r in rows], [r[1] for r in rows], (stats if any(st is not None for st in stats) else None)


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


def _forward_backward(model, windows, batch_size, use_grad, should_stop, progress,
                      before_last: Callable[[], None] | None = None) -> tuple[int, float | None]:
    """Run the calibration batches (with a backward of the mean loss when ``use_grad``; ``before_last`` is called
    before the last batch's backward); returns the tokens seen and the mean loss."""
    device = next(model.parameters()).device
    n_batches = (windows.shape[0] + batch_size - 1) // batch_size
    n_tok, loss_sum = 0, 0.0
    for bi in range(n_batches):
        if should_stop is not None and should_stop():
            raise Cancelled("importance measurement cancelled")
        batch = windows[bi * batch_size : (bi + 1) * batch_size].to(device)
        if use_grad:
            loss = causal_lm_loss(model, batch)  # lean: chunked over the vocabulary (see pruner.lean)
            if bi == n_batches - 1 and before_last is not None:
                before_last()
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
