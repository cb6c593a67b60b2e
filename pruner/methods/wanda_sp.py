"""Wanda-sp, structured Wanda as in FLAP's code (``docs/methods.md``): a unit's |weights| × the norm of its input
activations, one ratio in every layer; one shot."""

from __future__ import annotations

from pruner.methods.base import register
from pruner.methods.llm_pruner import LLMPruner


@register
class WandaSP(LLMPruner):
    """LLM-Pruner's plan with the window over every layer and the structured-Wanda score."""

    order = 13
    name = "wanda-sp"
    title = "Wanda-sp"
    summary = "Wanda-sp (structured Wanda, as in FLAP's code): one ratio in every layer"
    criterion = "wanda-sp"
    published_calibration = (128, 128, "c4")  # lib/prune.py prune_wanda_sp: get_loaders("c4", nsamples=128)

    def layer_window(self, n_layers: int) -> tuple[int, int]:
        return 0, n_layers
