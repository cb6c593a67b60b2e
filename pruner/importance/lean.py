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
            saved.append((module, "forward" in vars(module), vars(module).get("forward")))
            module.forward = make(i, module)
        yield
    finally:
        for module, had_own, forward in saved:
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
