"""Adapt-Pruner's layer-wise adaptive allocation (arXiv 2502.03460; ``docs/method.md``): before every sub-step
``s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)``, so important layers lose less."""

from __future__ import annotations

from pruner.errors import AllocationError
from pruner.methods.allocation import allocate_sparsity
from pruner.methods.base import IncrementalMethod, register


@register
class Adaptive(IncrementalMethod):
    order = 0
    name = "adaptive"
    title = "Adapt-Pruner"
    summary = "Adapt-Pruner layer-wise adaptive allocation (arXiv 2502.03460)"
    tunes = ("amplitude", "step", "attention")

    def allocate(self, sparsity, scores, fraction):
        c = self.config
        if c.amplitude > 0 and scores.layer_importance_norm is None:
            raise AllocationError("Measure importance first: the adaptive allocation needs the layer importance")
        return allocate_sparsity(sparsity, scores.layer_importance_norm, c.step * fraction, c.amplitude * fraction,
                                 c.max_sparsity)
