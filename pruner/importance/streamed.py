"""Unit scores reduced during the last backward pass, layer by layer, so the scored gradients are never all held.

A gradient criterion (Taylor: ``|W ⊙ ∂L/∂W|``) needs each weight's gradient summed over every calibration batch,
so the batches before the last accumulate as usual. During the last batch's backward, the moment every scored
parameter of a layer has received its final gradient (``register_post_accumulate_grad_hook``), the layer's
element-wise scores are summed into its KV-group and channel scores and its gradients are freed. With one batch
(calibration windows ≤ the batch size) the pass then holds about one layer's gradients instead of the whole
model's: the weights' float32 gradients were the largest part of an importance pass (0.42 GB on the default
model, 1.4 GB on Qwen2.5-0.5B). The scores are the same numbers (the same products of the same final gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


class StreamedUnits:
    """Armed for the last backward: ``reduce(li)`` (the layer's unit scores from its parts' ``.grad``) runs as soon
    as layer ``li``'s scored parameters all have their gradients, which are then freed. ``results[li]`` holds what
    it returned; a layer whose hooks never all fired is left to the caller (its gradients stay)."""

    def __init__(self, params: Sequence[Sequence[nn.Parameter]], reduce: Callable[[int], object]):
        self.params = [list(ps) for ps in params]
        self.reduce = reduce
        self.results: dict[int, object] = {}
        self._handles: list = []
        self._left: dict[int, set[int]] = {}

    def arm(self) -> None:
        for li, ps in enumerate(self.params):
            scored = [p for p in ps if p.requires_grad]
            if not scored:
                continue
            self._left[li] = {id(p) for p in scored}
            for p in scored:
                self._handles.append(p.register_post_accumulate_grad_hook(self._fired(li, id(p))))

    def _fired(self, li: int, pid: int):
        def hook(_param):
            left = self._left[li]
            left.discard(pid)
            if not left and li not in self.results:
                self.results[li] = self.reduce(li)
                for p in self.params[li]:
                    p.grad = None

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
