"""LLM-Pruner, block-wise (Ma et al., NeurIPS 2023; ``docs/methods.md``): first-order Taylor scores of KV groups
and MLP channels, one ratio for every layer inside a window, the layers outside left whole; one shot."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pruner.errors import ConfigError
from pruner.methods.allocation import allocate_window, plan_widths
from pruner.methods.base import Method, register
from pruner.model.structure import Geometry, LayerWidths

#: The block-wise window of the released script for 32-layer LLaMA-7B (scripts/llama_prune.sh:
#: ``--block_*_layer_start 4 --block_*_layer_end 30``), scaled to the model's depth by default.
LLM_PRUNER_WINDOW = (4, 30, 32)


def llm_pruner_window(n_layers: int, block_layers: Sequence[int] | None = None) -> tuple[int, int]:
    """The layers ``[start, end)`` LLM-Pruner prunes: ``block_layers`` as given, or the released script's window
    (layers 4..29 of 32-layer LLaMA: the first 4 and the last 2 stay whole) scaled to ``n_layers``."""
    if block_layers is not None:
        start, end = int(block_layers[0]), int(block_layers[1])
        if not 0 <= start < end <= n_layers:
            raise ConfigError(f"block_layers [{start}, {end}) does not fit a model with {n_layers} layers")
        return start, end
    s0, e0, n0 = LLM_PRUNER_WINDOW
    start = math.floor(s0 * n_layers / n0 + 0.5)
    end = n_layers - math.floor((n0 - e0) * n_layers / n0 + 0.5)
    return (start, end) if start < end else (0, n_layers)


def plan_window_widths(geo: Geometry, original: Sequence[LayerWidths], current: Sequence[LayerWidths],
                       sparsity: Sequence[float], window: tuple[int, int], min_channels: int = 1,
                       multiple: int = 1) -> tuple[list[LayerWidths], list[int]]:
    """Widths for a uniform ratio inside ``window`` (attention and MLP share it, as in LLM-Pruner and Wanda-sp);
    the layers outside keep their current widths exactly. Returns ``(widths, floored_layers)``."""
    a, b = window
    inner, floored = plan_widths(geo, original[a:b], current[a:b], sparsity[a:b], min_channels, multiple)
    return [*current[:a], *inner, *current[b:]], [a + i for i in floored]


@register
class LLMPruner(Method):
    """One ratio ``f·s_max`` for every layer of the window, attention and MLP sharing it (proportional)."""

    order = 10
    name = "llm-pruner"
    title = "LLM-Pruner"
    summary = ("LLM-Pruner block-wise (Ma et al., NeurIPS 2023): one Taylor-ranked ratio inside a window of "
               "layers")
    criterion = "taylor"
    # hf_prune.py: get_examples('bookcorpus', ..., num_examples=10, seq_len=64)
    published_calibration = (10, 64, "bookcorpus")

    def __init__(self, config, geo, original, fixed_params):
        super().__init__(config, geo, original, fixed_params)
        self.window = self.layer_window(len(self.original))

    def layer_window(self, n_layers: int) -> tuple[int, int]:
        return llm_pruner_window(n_layers, self.config.block_layers)

    def smallest_reachable(self, widths):
        c, (a, b) = self.config, self.window
        sp = [c.max_sparsity if a <= li < b else 0.0 for li in range(len(widths))]
        plan, _ = plan_window_widths(self.geo, self.original, widths, sp, self.window, c.min_channels, c.multiple)
        return self.params_of(plan), f"s_max={c.max_sparsity} and {self.floor_text} inside layers [{a}, {b})"

    def plan(self, sparsity, widths, scores, fraction=1.0, index=0, units=True):
        c, (a, b) = self.config, self.window
        ratio = fraction * c.max_sparsity
        alloc = allocate_window(sparsity, self.window, ratio, c.max_sparsity)
        new, floored = plan_window_widths(self.geo, self.original, widths, alloc.sparsity, self.window,
                                          c.min_channels, c.multiple)
        decision = {"ratio": ratio, "window": [a, b],
                    "untouched_layers": [li for li in range(len(sparsity)) if not a <= li < b]}
        return self._step(index, fraction, alloc, new, floored, scores, units, decision)
