"""Uniform allocation: Adapt-Pruner's sub-steps with A = 0, every layer pruned equally (the ablation of the
adaptive part)."""

from __future__ import annotations

from pruner.methods.allocation import allocate_sparsity
from pruner.methods.base import IncrementalMethod, register


@register
class Uniform(IncrementalMethod):
    order = 1
    name = "uniform"
    title = "Uniform"
    summary = "uniform allocation (every layer pruned equally)"

    def allocate(self, sparsity, scores, fraction):
        c = self.config
        return allocate_sparsity(sparsity, None, c.step * fraction, 0.0, c.max_sparsity)
