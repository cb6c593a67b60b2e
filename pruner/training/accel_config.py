"""The settings of an Adapt-Accel run, its stage plan (parameter targets and token shares) and the state a
resumed run needs (docs/method.md, section 7)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from pruner.config import INCREMENTAL_METHODS, PruneConfig
from pruner.errors import AllocationError, ConfigError
from pruner.evaluation.perplexity import PerplexityConfig
from pruner.training.train import TrainConfig, TrainState

STATE_FILE = "state.json"
FORMAT = "adapt-accel/1"
TOKEN_SCHEDULES = ("linear", "constant")
MODES = ("incremental", "oneshot")


@dataclass
class AccelConfig:
    """An Adapt-Accel run. ``prune`` holds the pruner's own settings (its ``target`` is set per stage)."""

    target: float = 0.7  # fraction of the original parameters (or a count > 1)
    stages: int = 6
    tokens: int = 200_000  # total training tokens over all stages
    token_schedule: str = "linear"  # linear: 2k/(N(N+1)) | constant: 1/N
    mode: str = "incremental"  # incremental | oneshot
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: PerplexityConfig = field(default_factory=lambda: PerplexityConfig(max_tokens=16_384))
    """The perplexity measured before, between and after the stages (intermediate ones read ``max_tokens``)."""
    final_eval_max_tokens: int | None = None  # the last evaluation (None: same as eval_max_tokens)
    eval_initial: bool = True
    keep_checkpoints: int = 1  # completed-stage checkpoints kept on disk (older ones are deleted)

    def __post_init__(self) -> None:
        if self.token_schedule not in TOKEN_SCHEDULES:
            raise ConfigError(f"Unknown token schedule '{self.token_schedule}': use one of {', '.join(TOKEN_SCHEDULES)}")
        if self.mode not in MODES:
            raise ConfigError(f"Unknown mode '{self.mode}': use one of {', '.join(MODES)}")
        if not 1 <= int(self.stages) <= 1000:
            raise ConfigError(f"Adapt-Accel needs 1 to 1000 stages, got {self.stages}")
        try:
            tokens = int(self.tokens)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"The training budget must be a whole number of tokens, got {self.tokens!r}") from exc
        if tokens < 1:
            raise ConfigError(f"Adapt-Accel trains between its pruning stages, so it needs a positive token budget "
                              f"(got {tokens:,}); to prune without training use `adapt-pruner prune`")
        PruneConfig(target=self.target)  # the target is checked exactly as prune checks it
        if self.prune.method not in INCREMENTAL_METHODS:
            raise ConfigError(f"Adapt-Accel prunes with the incremental rule ({', '.join(INCREMENTAL_METHODS)}); "
                              f"'{self.prune.method}' is a one-shot baseline: prune with it, then train")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AccelConfig:
        d = dict(d)
        d["prune"] = PruneConfig(**d["prune"])
        t = dict(d["train"])
        t["betas"] = tuple(t["betas"])
        d["train"] = TrainConfig(**t)
        old = {k: d.pop(f"eval_{k}") for k in ("dataset", "split", "window", "max_tokens") if f"eval_{k}" in d}
        d["eval"] = PerplexityConfig(**{**old, **d.get("eval", {})})  # checkpoints written before had eval_* keys
        return cls(**d)


def token_shares(stages: int, schedule: str = "linear") -> list[float]:
    """Share of the training tokens per stage: ``2k/(N(N+1))`` (linear) or ``1/N`` (constant)."""
    if stages < 1:
        raise ConfigError(f"Need at least one stage, got {stages}")
    if schedule == "linear":
        return [2 * k / (stages * (stages + 1)) for k in range(1, stages + 1)]
    if schedule == "constant":
        return [1 / stages] * stages
    raise ConfigError(f"Unknown token schedule '{schedule}': use linear or constant")


def stage_plan(cfg: AccelConfig, start_params: int, original_params: int, world_size: int = 1) -> list[dict]:
    """Per stage: parameter target, token share, optimiser steps. One-shot mode is one prune then one train."""
    t = cfg.target
    target = int(round(t * original_params)) if t < 1 else int(t)
    if not 0 < target < start_params:
        raise AllocationError(f"The target ({target:,} parameters) must lie below the model's size ({start_params:,})")
    if cfg.mode == "oneshot":
        targets, shares = [target], [1.0]
    elif cfg.mode == "incremental":
        n = cfg.stages
        targets = [int(round(start_params - (start_params - target) * k / n)) for k in range(1, n + 1)]
        shares = token_shares(n, cfg.token_schedule)
    else:
        raise ConfigError(f"Unknown mode '{cfg.mode}': use incremental or oneshot")
    tps = cfg.train.tokens_per_step(world_size)
    if round(min(shares) * cfg.tokens / tps) < 1:  # steps_for would raise such a stage to one whole step
        need = math.ceil(0.5 * tps / min(shares))
        raise ConfigError(f"A training budget of {cfg.tokens:,} tokens gives a stage less than one optimiser step "
                          f"({tps:,} tokens: sequence length × batch size × gradient accumulation × processes); "
                          f"ask for at least {need:,} tokens, fewer stages or smaller steps")
    steps = [cfg.train.steps_for(round(s * cfg.tokens), world_size) for s in shares]
    return [{"stage": k + 1, "target_params": p, "target_fraction": p / original_params, "token_share": s,
             "steps": n, "tokens": n * cfg.train.tokens_per_step(world_size)}
            for k, (p, s, n) in enumerate(zip(targets, shares, steps, strict=True))]


@dataclass
class AccelState:
    """Everything a resumed run needs besides the model (which lives in the checkpoint's folder)."""

    completed_stages: int = 0
    train: TrainState = field(default_factory=TrainState)
    sparsity: list[float] | None = None  # the pruner's allocated sparsity after the last stage
    stages: list[dict] = field(default_factory=list)  # per-stage records (prune, train, evaluations)
    initial: dict | None = None  # evaluation of the starting model
    python_rng: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AccelState:
        d = dict(d)
        d["train"] = TrainState(**d["train"])
        return cls(**d)
