"""SliceGPT's surgery: fold the norms, rotate the residual stream with PCA, slice it (``docs/methods.md``).

Ashkboos et al., *SliceGPT: Compress Large Language Models by Deleting Rows and Columns* (ICLR 2024,
arXiv 2401.15024), and its released code, microsoft/TransformerCompression (``rotate.py``,
``layernorm_fusion.py``). What happens, on copies of the model's parts (the model is untouched until the
:class:`ResidualPatch` is applied, so a step stays atomic and can be undone):

1. **Fold the norms** (:func:`fold_parts`): a tied LM head is untied; every RMSNorm scale is multiplied into the
   Linears that read it (q/k/v; gate/up; the head); the norms become :class:`OriginalWidthRMSNorm` — no weight,
   and the sum of squares divided by the *original* hidden width, so they stay right after slicing. Nothing else:
   the released code also subtracts the embedding mean, which is exact only in front of LayerNorm (it removes the
   mean LayerNorm would remove); an RMSNorm does not remove it, so doing it here would change the model.
2. **Rotate and slice, layer by layer** (:func:`build_slicing`): the PCA (:func:`pca`) of the layer-0 input rotates
   and slices the embedding and q/k/v's inputs; the PCA of the stream between attention and MLP rotates o_proj's
   outputs and gate/up's inputs; the PCA of the layer output rotates down_proj's outputs (the next layer's inputs,
   finally the head). The residual path carries the change of basis: ``attn_shortcut_Q = Q_inᵀ Q_mid`` and
   ``mlp_shortcut_Q = Q_midᵀ Q_out``, sliced like the stream. Every PCA sees the signals of the model sliced so
   far (the released code's ``rotate_and_slice_sequential``). The head is not sliced (its default
   ``do_slice_head=False``): the last layer writes the full width.

The decoder layers become :class:`ShortcutDecoderLayer` subclasses of their stock class; both the layer and the
norm are defined in the remote code that exported folders ship, so the library and a stranger's transformers run
the same code.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pruner.errors import AllocationError, UnsupportedArchitectureError
from pruner.model.adapters import Adapter, adapter_for
from pruner.model.depth import _layers_holder
from pruner.model.remote_code.modeling_adapt_pruned import (
    OriginalWidthRMSNorm,
    ShortcutDecoderLayer,
    apply_residual_slicing,
    shortcut_class,
)
from pruner.model.structure import sync_config

__all__ = ["DAMPING", "SLICE_MULTIPLE", "OriginalWidthRMSNorm", "ResidualPatch", "ShortcutDecoderLayer",
           "apply_residual_slicing", "build_folding", "build_slicing", "check_rotatable", "pca", "residual_width",
           "sliced_width"]

DAMPING = 0.01  # the released code's pca_calc: 1 % of the mean diagonal added to the diagonal
SLICE_MULTIPLE = 8  # run_slicegpt.py --round-interval: the kept width is rounded down to a multiple of 8
NORMS = ("input_layernorm", "post_attention_layernorm")  # the pre-norms of a sequential block


def sliced_width(hidden_size: int, slicing: float, multiple: int = SLICE_MULTIPLE) -> int:
    """The kept residual width for a slicing fraction: ``int((1 − s)·D)`` rounded down to ``multiple`` (at least
    ``multiple``), as run_slicegpt.py computes it."""
    d = int((1.0 - min(max(slicing, 0.0), 1.0)) * hidden_size + 1e-9)
    return max(multiple, d - d % multiple) if hidden_size >= multiple else hidden_size


def residual_width(model: nn.Module) -> int | None:
    """The width of a rotated model's residual stream (None: the model was not rotated by SliceGPT)."""
    adapter = adapter_for(model)
    if not any(isinstance(layer, ShortcutDecoderLayer) for layer in adapter.layers(model)):
        return None
    return model.get_input_embeddings().embedding_dim


def check_rotatable(model: nn.Module) -> Adapter:
    """The model's adapter, or the one-line reason SliceGPT cannot rotate this architecture."""
    adapter = adapter_for(model)
    if not adapter.rotatable:
        raise UnsupportedArchitectureError(
            f"SliceGPT is not supported for {adapter.family} models yet (it needs pre-norm RMSNorm blocks with "
            f"separate q/k/v and gate/up Linears: Llama, SmolLM, Mistral, Qwen2)")
    return adapter


# ---------------------------------------------------------------------- PCA


@torch.no_grad()
def pca(signals: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of a stream, in float64: ``H = Σ xᵀx`` over every token whose mask is 1 (padding contributes nothing),
    damped by 1 % of its mean diagonal, then ``eigh``. Returns the eigenvalues of the undamped ``H`` (descending)
    and the eigenvectors as columns in the same order."""
    h = None
    for i, x in enumerate(signals):
        x = x.detach().to("cpu" if x.device.type == "mps" else x.device, torch.float64)
        if masks is not None:
            x = x * masks[i].to(x.device, torch.float64).unsqueeze(-1)
        x = x.reshape(-1, x.shape[-1])
        h = x.T @ x if h is None else h + x.T @ x
    damp = DAMPING * h.diagonal().mean()
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    vals, vecs = _eigh(h)
    order = torch.argsort(vals, descending=True)
    return vals[order] - damp, vecs[:, order]


def _eigh(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh`` — on the CPU with one thread: a D×D float64 ``eigh`` gains little from threads and loses a lot
    when the cores are shared (576×576 on 2 busy cores: 13 s with 2 threads, 0.2 s with 1)."""
    if h.device.type != "cpu":
        return torch.linalg.eigh(h)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(h)
    finally:
        torch.set_num_threads(threads)


def kept_share(eigenvalues: torch.Tensor, width: int) -> float:
    """The share of a stream's variance (sum of eigenvalues) that its first ``width`` principal directions keep."""
    total = float(eigenvalues.clamp(min=0).sum())
    return float(eigenvalues[:width].clamp(min=0).sum()) / total if total > 0 else 1.0


# ---------------------------------------------------------------------- the parts and the patch


@dataclass
class ResidualPatch:
    """The embedding, decoder layers, final norm and head a model will have, and whether they are tied; applying it
    returns the patch that restores the previous ones (transactional, like a change of depth)."""

    embed: nn.Module
    layers: list[nn.Module]
    norm: nn.Module
    head: nn.Module
    tied: bool
    decision: dict = field(default_factory=dict)  # what the rotation measured (variance kept per layer)

    @classmethod
    def of(cls, model: nn.Module, adapter: Adapter) -> ResidualPatch:
        """The model's current parts (the objects themselves)."""
        return cls(model.get_input_embeddings(), list(adapter.layers(model)), _get(model, adapter.final_norm_path),
                   model.get_output_embeddings(), bool(getattr(model.config, "tie_word_embeddings", False)))

    def apply_to(self, model: nn.Module) -> ResidualPatch:
        adapter = adapter_for(model)
        inverse = ResidualPatch.of(model, adapter)
        try:
            self._swap(model, adapter)
        except BaseException:
            inverse._swap(model, adapter)
            raise
        return inverse

    def _swap(self, model: nn.Module, adapter: Adapter) -> None:
        model.set_input_embeddings(self.embed)
        holder, name = _layers_holder(model, adapter)
        setattr(holder, name, nn.ModuleList(self.layers))
        parent, _, attr = adapter.final_norm_path.rpartition(".")
        setattr(_get(model, parent), attr, self.norm)
        model.set_output_embeddings(self.head)
        model.config.tie_word_embeddings = self.tied
        sync_config(model, adapter)


def _get(obj, path: str):
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def _copied(model: nn.Module, adapter: Adapter) -> ResidualPatch:
    """Deep copies of the parts SliceGPT changes (separate copies: a tied head gets its own matrix)."""
    now = ResidualPatch.of(model, adapter)
    return ResidualPatch(copy.deepcopy(now.embed), [copy.deepcopy(layer) for layer in now.layers],
                         copy.deepcopy(now.norm), copy.deepcopy(now.head), False)


def _set_weight(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Give a Linear / Embedding a new weight (and bias), in its dtype, with matching feature counts."""
    old = module.weight
    module.weight = nn.Parameter(weight.to(old.dtype).contiguous(), requires_grad=old.requires_grad)
    if bias is not None:
        module.bias = nn.Parameter(bias.to(old.dtype).contiguous(), requires_grad=old.requires_grad)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]


def _readers(adapter: Adapter, layer: nn.Module, roles: Sequence[str]) -> list[nn.Linear]:
    """The Linears of a layer that read the residual stream through one norm (q/k/v, or gate/up)."""
    return [adapter.part(layer, p.path) for p in adapter.projections if p.rows and set(p.rows) & set(roles)]


def _writer(adapter: Adapter, layer: nn.Module, role: str) -> nn.Linear:
    return adapter.part(layer, adapter.proj_for(role).path)


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


@torch.no_grad()
def fold_parts(parts: ResidualPatch, adapter: Adapter, hidden_size: int) -> ResidualPatch:
    """Fold every RMSNorm scale of ``parts`` (copies) into the Linears after it; the norms become weightless
    :class:`OriginalWidthRMSNorm` of the original width. The function is unchanged (the head is already untied)."""
    for layer in parts.layers:
        for name, roles in zip(NORMS, (("q", "k", "v"), ("gate", "up")), strict=True):
            norm = getattr(layer, name)
            w = norm.weight.detach().to(torch.float64)
            for lin in _readers(adapter, layer, roles):
                _set_weight(lin, lin.weight.to(torch.float64) * w)
            setattr(layer, name, OriginalWidthRMSNorm(hidden_size, _eps(norm)))
    w = parts.norm.weight.detach().to(torch.float64)
    _set_weight(parts.head, parts.head.weight.to(torch.float64) * w)
    parts.norm = OriginalWidthRMSNorm(hidden_size, _eps(parts.norm))
    return parts


def build_folding(model: nn.Module) -> ResidualPatch:
    """The patch that unties the head and folds every norm (nothing is rotated or sliced; the model unchanged)."""
    adapter = check_rotatable(model)
    return fold_parts(_copied(model, adapter), adapter, model.config.hidden_size)


# ---------------------------------------------------------------------- calibration signals


@dataclass
class _Signals:
    """The layer-0 inputs of the calibration batches and, per layer and batch, the keyword arguments the decoder
    passes it (masks, rotary embeddings, positions)."""

    inputs: list[torch.Tensor]
    kwargs: list[list[dict]]  # [layer][batch]
    masks: list[torch.Tensor] | None


@torch.no_grad()
def _capture(model: nn.Module, adapter: Adapter, windows: torch.Tensor, batch_size: int,
             attention_mask: torch.Tensor | None) -> _Signals:
    layers = adapter.layers(model)
    kwargs: list[list[dict]] = [[] for _ in layers]
    inputs: list[torch.Tensor] = []

    def hook(li):
        def pre(_module, args, kw):
            if li == 0:
                inputs.append((args[0] if args else kw["hidden_states"]).detach())
            kw = {k: v for k, v in kw.items() if k != "hidden_states"}
            kwargs[li].append({**kw, "cache": None, "use_cache": False})
        return pre

    handles = [layer.register_forward_pre_hook(hook(li), with_kwargs=True) for li, layer in enumerate(layers)]
    decoder = _get(model, adapter.layers_path.rpartition(".")[0])  # the decoder alone: no logits are needed
    dev = next(model.parameters()).device
    masks = None if attention_mask is None else []
    try:
        for s in range(0, windows.shape[0], batch_size):
            ids = windows[s:s + batch_size].to(dev)
            mask = None if attention_mask is None else attention_mask[s:s + batch_size].to(dev)
            decoder(input_ids=ids, attention_mask=mask, use_cache=False)
            if masks is not None:
                masks.append(mask)
    finally:
        for h in handles:
            h.remove()
    return _Signals(inputs, kwargs, masks)


def _run(layer: nn.Module, xs: Sequence[torch.Tensor], kwargs: Sequence[dict],
         capture: nn.Module | None = None) -> list[torch.Tensor]:
    """The layer's outputs on every batch, or (with ``capture``) the inputs of that sub-module."""
    seen: list[torch.Tensor] = []
    handle = None if capture is None else capture.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    try:
        outs = []
        for x, kw in zip(xs, kwargs, strict=True):
            out = layer(x, **kw)
            outs.append(out[0] if isinstance(out, tuple) else out)
    finally:
        if handle is not None:
            handle.remove()
    return seen if capture is not None else outs


def _project(xs: Sequence[torch.Tensor], q: torch.Tensor, width: int) -> list[torch.Tensor]:
    """Signals in the rotated, sliced basis: ``x Q[:, :width]`` in their own dtype."""
    return [(x.to(q.device, torch.float64) @ q[:, :width]).to(x.device, x.dtype) for x in xs]


# ---------------------------------------------------------------------- rotate and slice


def _rotate_inputs(lins: Sequence[nn.Linear], q: torch.Tensor, width: int) -> None:
    """Linears that read the stream: ``W ← (W Q)[:, :width]``."""
    for lin in lins:
        _set_weight(lin, (lin.weight.to(q.device, torch.float64) @ q)[:, :width])


def _rotate_output(lin: nn.Linear, q: torch.Tensor, width: int) -> None:
    """A Linear that writes the stream: ``W ← (Qᵀ W)[:width]`` (and its bias)."""
    bias = None if lin.bias is None else (q.T @ lin.bias.to(q.device, torch.float64))[:width]
    _set_weight(lin, (q.T @ lin.weight.to(q.device, torch.float64))[:width], bias)


def _shortcut(layer: nn.Module, name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    setattr(layer, name, nn.Parameter(value.to(like.device, like.dtype).contiguous(), requires_grad=like.requires_grad))


@torch.no_grad()
def _rotate_layer(adapter: Adapter, layer: nn.Module, q_in: torch.Tensor, xs: list[torch.Tensor],
                  kwargs: list[dict], masks, width: int, out_width: int) -> tuple[torch.Tensor, list, dict]:
    """Rotate and slice one (folded) layer whose input stream is ``xs`` (already in the basis ``q_in``, sliced).
    Returns the output basis, the next layer's inputs in it (sliced to ``out_width``) and what was kept."""
    like = _writer(adapter, layer, "o").weight
    hidden = q_in.shape[0]
    layer.__class__ = shortcut_class(type(layer))
    _shortcut(layer, "attn_shortcut_Q", q_in.T[:width], like)
    _shortcut(layer, "mlp_shortcut_Q", torch.eye(hidden, dtype=torch.float64), like)
    _rotate_inputs(_readers(adapter, layer, ("q", "k", "v")), q_in, width)
    vals_mid, q_mid = pca(_run(layer, xs, kwargs, capture=layer.post_attention_layernorm), masks)
    _shortcut(layer, "attn_shortcut_Q", q_in.T[:width].to(q_mid.device) @ q_mid[:, :width], like)
    _rotate_output(_writer(adapter, layer, "o"), q_mid, width)
    _shortcut(layer, "mlp_shortcut_Q", q_mid.T[:width], like)
    _rotate_inputs(_readers(adapter, layer, ("gate", "up")), q_mid, width)
    outs = _run(layer, xs, kwargs)
    vals_out, q_out = pca(outs, masks)
    _shortcut(layer, "mlp_shortcut_Q", q_mid.T[:width].to(q_out.device) @ q_out[:, :out_width], like)
    _rotate_output(_writer(adapter, layer, "down"), q_out, out_width)
    kept = {"attention": kept_share(vals_mid, width), "output": kept_share(vals_out, out_width)}
    return q_out, _project(outs, q_out, out_width), kept


@torch.no_grad()
def build_slicing(model: nn.Module, width: int, windows: torch.Tensor, batch_size: int = 8,
                  attention_mask: torch.Tensor | None = None) -> ResidualPatch:
    """The patch that folds, rotates and slices ``model``'s residual stream to ``width`` (SliceGPT; see the module
    docstring), from the calibration ``windows`` ``[n, T]`` (``attention_mask``: 0 at padding, left out of every
    PCA). The model itself is only read. ``width`` equal to the hidden size rotates without slicing: the same
    function, up to rounding. The patch's ``decision`` holds the variance kept per layer."""
    adapter = check_rotatable(model)
    hidden = model.config.hidden_size
    if residual_width(model) is not None:
        raise AllocationError("This model's residual stream is already rotated and sliced (SliceGPT slices once)")
    if not 1 <= width <= hidden:
        raise AllocationError(f"The residual width must be in [1, {hidden}], got {width}")
    signals = _capture(model, adapter, windows, batch_size, attention_mask)
    parts = fold_parts(_copied(model, adapter), adapter, hidden)
    vals, q = pca(signals.inputs, signals.masks)
    emb = parts.embed
    _set_weight(emb, (emb.weight.to(q.device, torch.float64) @ q)[:, :width])
    xs = _project(signals.inputs, q, width)
    attention, output = [], []
    n = len(parts.layers)
    for li, layer in enumerate(parts.layers):
        out_width = hidden if li == n - 1 else width  # the head is not sliced: the last layer writes all of it
        q, xs, kept = _rotate_layer(adapter, layer, q, xs, signals.kwargs[li], signals.masks, width, out_width)
        attention.append(kept["attention"])
        output.append(kept["output"])
    _set_weight(parts.head, parts.head.weight.to(q.device, torch.float64) @ q)
    parts.decision = {"embedding_variance_kept": kept_share(vals, width), "variance_kept": output,
                      "attention_variance_kept": attention}
    return parts
