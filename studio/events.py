"""What the studio's long tasks stream to the page."""

from __future__ import annotations

from dataclasses import dataclass

from pruner.pruning.pruner import StepRecord


@dataclass
class Progress:
    """One update of a long task (run to target, uniform baseline, Train, Adapt-Accel)."""

    message: str
    record: StepRecord | None = None  # a sub-step that just finished (a new heatmap column)
    evaluation: object | None = None  # a quick evaluation that just finished
    done: bool = False
    kind: str = ""  # "train_step": only the loss curve changed (a light update for the page)
