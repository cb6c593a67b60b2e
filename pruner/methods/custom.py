"""A custom schedule: the user's final sparsity per layer, reached in Δ-sized sub-steps (every layer covers the
same share of its remaining gap)."""

from __future__ import annotations

import math

from pruner.errors import ConfigError
from pruner.methods.allocation import allocate_toward
from pruner.methods.base import IncrementalMethod, register


@register
class Custom(IncrementalMethod):
    order = 2
    name = "custom"
    title = "Custom"
    summary = "custom per-layer sparsities"
    uses_custom = True

    @classmethod
    def check_config(cls, config) -> None:
        if not config.custom:
            raise ConfigError("method 'custom' needs the final sparsity of every layer (the studio's custom table, "
                              "--custom on the command line, custom=[...] in the library)")
        for v in config.custom:
            try:
                x = float(v)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"A custom sparsity must be a number, got {v!r}") from exc
            if not math.isfinite(x) or not 0 <= x < 1:
                raise ConfigError(f"Custom sparsities must lie in [0, 1), got {v!r}")

    def check_model(self) -> None:
        super().check_model()
        n, got = len(self.original), len(self.config.custom or ())
        if got != n:
            raise ConfigError(f"A custom schedule needs one final sparsity per layer ({n} values, got {got})")

    def allocate(self, sparsity, scores, fraction):
        c = self.config
        return allocate_toward(sparsity, [float(v) for v in c.custom], c.step * fraction, c.max_sparsity)
