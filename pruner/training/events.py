"""What :func:`pruner.training.accel.iter_accel` reports, as typed events (the CLI, the studio and the benchmarks
consume them with ``isinstance``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pruner.pruning.pruner import StepRecord
from pruner.training.train import TrainStep


@dataclass
class AccelStart:
    """The run begins: the stage plan, the model's size, the training data, the starting perplexity."""

    plan: list[dict]
    params: dict
    original_params: int
    data: dict
    schedule: dict
    initial: dict | None
    resumed_after_stage: int | None
    processes: int
    device: str
    requested_tokens: int | None = None  # the budget asked for (the plan's total is in whole optimiser steps)


@dataclass
class PruneStep:
    """One pruning sub-step of a stage finished (main process only): a heatmap column."""

    stage: int
    record: StepRecord


@dataclass
class StagePruned:
    """A stage's pruning reached its parameter target."""

    stage: int
    params: int
    fraction: float
    widths: list[dict]
    sparsity: list[float]
    perplexity: dict | None
    steps: list[StepRecord]


@dataclass
class StageTrained:
    """A stage's training finished."""

    stage: int
    losses: list[float]
    lrs: list[float]
    tokens: int
    tokens_per_s: float
    perplexity: dict | None


@dataclass
class CheckpointSaved:
    stage: int
    path: str


@dataclass
class AccelCancelled:
    """The run stopped; the model is back at the end of stage ``stage`` (0: the start)."""

    stage: int
    message: str


@dataclass
class AccelDone:
    report: dict


AccelEvent = AccelStart | PruneStep | StagePruned | TrainStep | StageTrained | CheckpointSaved | AccelCancelled | AccelDone


def event_dict(ev) -> dict:
    """An event as a JSON-friendly dict with its ``event`` name (for logs)."""
    names = {AccelStart: "start", PruneStep: "prune_step", StagePruned: "pruned", TrainStep: "train_step",
             StageTrained: "trained", CheckpointSaved: "checkpoint", AccelCancelled: "cancelled", AccelDone: "done"}
    return {"event": names[type(ev)], **asdict(ev)}
