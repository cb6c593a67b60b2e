"""A lean backward pass for the importance measurement: the same loss and the same gradients, in a fraction of
the memory.

* **Checkpointed decoder layers**: only each layer's input is kept for the backward pass; the layer is run again
  when its gradients are needed (one extra forward, no change in the numbers). Hooks on the layer itself fire
  once (the recomputation calls the layer's own forward, not the module), so layer cosines are counted once.
* **Chunked loss over the vocabulary**: the LM head and the cross-entropy run on a few hundred tokens at a time,
  each chunk recomputed in the backward pass, so the full ``tokens × vocabulary`` logits (0.6 GB for 1,024 tokens
  of a 152k vocabulary in float32), their log-softmax and their gradient are never held at once.

The loss equals the model's own causal-LM loss (mean next-token cross-entropy, logits in float32, final-logit
soft-capping where the config has it).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CHUNK_LOGITS = 4_000_000  # logits (in float32 elements) per loss chunk: 16 MB


@contextlib.contextmanager
def instance_forwards(modules, make):
    """Give each module an instance ``forward`` of ``make(index, module)`` for the ``with`` block; each one's own
    (an accelerate dispatch wrapper, say) is put back afterwards, whatever happens inside."""
    saved = []
    try:
        for i, module in enumerate(modules):
            forward = make(i, module)  # made before anything is replaced: a failing make leaves this one alone
            saved.append((module, "forward" in vars(module), vars(module).get("forward")))
            module.forward = forward
        yield
    finally:
        for module, had_own, forward in reversed(saved):  # a module listed twice gets its own back last
            if had_own:
                module.forward = forward
            else:
                del module.forward


def checkpointed(layers: nn.ModuleList):
    """Run every decoder layer under activation checkpointing (restored afterwards)."""
    return instance_forwards(layers, lambda _i, layer: functools.partial(checkpoint, layer.forward,
                                                                         use_reentrant=False))


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output logits for final hidden states, in float32 (with final-logit soft-capping)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@contextlib.contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, the model's LM head keeps what it is handed (appended to the list yielded) and computes
    its logits for the first position only: the caller computes the rest a few hundred tokens at a time
    (:func:`nll_sum`, soft-capping included), so ``batch × window × vocabulary`` logits and their log-softmax
    (0.8 GB for 4 × 512 tokens of a 49k vocabulary, 2.5 GB for Qwen's 152k, in float32) are never held. Whatever
    the model does before its head (a rotation, a final norm) stays the model's own."""
    seen: list[torch.Tensor] = []

    def hook(module, args):
        seen.append(args[0])
        return (args[0][..., :1, :], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def nll_sum(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, rows: int | None = None) -> float:
    """The summed next-token loss (in float64) of final hidden states ``[N, H]`` against ``targets`` ``[N]``, the
    logits made ``rows`` tokens at a time (default: :data:`CHUNK_LOGITS` logits a chunk)."""
    if rows is None:
        rows = max(1, CHUNK_LOGITS // model.get_output_embeddings().weight.shape[0])
    total = 0.0
    for s in range(0, targets.numel(), rows):
        logits = lm_logits(model, hidden[s : s + rows])
        total += F.cross_entropy(logits, targets[s : s + rows].to(logits.device),
                                 reduction="none").double().sum().item()
    return total


def _ce_sum(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(lm_logits(model, hidden), targets, reduction="sum")


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``input_ids`` ``[B, T]``, computed in vocabulary chunks."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = input_ids[:, 1:].reshape(-1).to(h.device)
    vocab = model.get_output_embeddings().weight.shape[0]
    step = max(1, CHUNK_LOGITS // vocab)
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, y.numel(), step):
        total = total + checkpoint(_ce_sum, model, h[s : s + step], y[s : s + step], use_reentrant=False)
    return total / y.numel()
