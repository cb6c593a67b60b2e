"""The settings of a pruning run and the choice lists behind them: the one home of every pruning default.

The command line (:mod:`pruner.commands.prune`), Adapt-Accel and the studio read their defaults and choices from
here; where the studio deliberately differs it says so in ``studio/settings.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import CORPORA
from .errors import ConfigError

#: How per-layer sparsity is allocated: the adaptive rule, its A = 0 special case, or the user's final values.
METHODS = ("adaptive", "uniform", "custom")
#: How units inside a layer are scored (see :mod:`pruner.importance`).
CRITERIA = ("taylor", "magnitude", "activation")
#: How a layer's parameter budget is split between KV groups and MLP channels (see :mod:`pruner.planner`).
ATTENTION_POLICIES = ("score", "proportional")
#: The paper's calibration per sub-step (512 windows × 64 tokens); the CPU-sized default is 32 × 128.
PAPER_CALIBRATION = (512, 64)


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return v


@dataclass
class PruneConfig:
    """Settings of a pruning run (validated on creation; :func:`dataclasses.replace` validates again).

    Defaults follow ``docs/method.md`` except the calibration size, which is CPU-sized.
    """

    target: float = 0.8
    """Fraction of the original total parameters to keep (0 < t < 1), or a parameter count (≥ 2)."""
    method: str = "adaptive"
    """Allocation: ``adaptive`` (the rule), ``uniform`` (A = 0) or ``custom`` (``custom`` final sparsities)."""
    criterion: str = "taylor"
    """Unit score: ``taylor`` (first-order, the paper's), ``magnitude`` (L1) or ``activation`` (Wanda-style)."""
    amplitude: float = 0.02
    """A in ``s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)``: how far importance moves sparsity between layers."""
    step: float = 0.02
    """Δ: mean sparsity added per sub-step (a fraction of each layer's prunable parameters)."""
    max_sparsity: float = 0.99
    """s_max: no layer loses more than this share of its prunable parameters."""
    min_channels: int = 1
    """Floor of MLP channels per layer (a layer also keeps at least one KV group)."""
    multiple: int = 1
    """Round MLP widths down to a multiple of this (8 or 64 suit GPU kernels)."""
    custom: list[float] | None = None
    """Final per-layer sparsities for ``method="custom"``."""
    attention: str = "score"
    """``score``: a layer's units of lowest score per parameter go first, KV groups and MLP channels ranked
    together; ``proportional``: attention and MLP share s_l as in the reference code. On the default model at
    80 %: WikiText-2 test perplexity 48.9 (score) vs 91.3 (proportional), 512-token windows (README)."""
    calibration: str = "wiki"
    """Calibration corpus (see :data:`pruner.data.CORPORA`) or a text file."""
    n_windows: int = 32
    """Calibration windows per sub-step (the paper: 512)."""
    window: int = 128
    """Tokens per calibration window (the paper: 64)."""
    batch_size: int = 8
    """Windows per forward/backward pass of the importance measurement (scores do not depend on it)."""
    seed: int = 0
    """Seed of the calibration sample; sub-step k draws with ``seed + k``."""
    max_steps: int = 500
    """Safety limit on sub-steps in one run."""
    remeasure: bool = True
    """Re-measure importance before every sub-step (the method). False: measure once and keep the scores of the
    surviving units for the following sub-steps (faster; the schedule preview is then exact)."""

    def __post_init__(self) -> None:
        t = _finite("The target", self.target)
        if t <= 0:
            raise ConfigError(f"The target must be > 0 (a fraction of the original size or a parameter count), got {t}")
        if 1 <= t < 2:
            raise ConfigError(f"The target {t} is ≥ 100 % of the model's size; use a fraction < 1 or a count")
        if self.method not in METHODS:
            raise ConfigError(f"Unknown method '{self.method}': use one of {', '.join(METHODS)}")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"Unknown criterion '{self.criterion}': use one of {', '.join(CRITERIA)}")
        if self.attention not in ATTENTION_POLICIES:
            raise ConfigError(f"Unknown attention policy '{self.attention}': use one of {', '.join(ATTENTION_POLICIES)}")
        if not 0 < _finite("The per-step budget", self.step) <= 0.5:
            raise ConfigError(f"The per-step budget must lie in (0, 0.5], got {self.step}")
        if _finite("The amplitude A", self.amplitude) < 0:
            raise ConfigError(f"The amplitude A must be ≥ 0, got {self.amplitude}")
        if not 0 < _finite("s_max", self.max_sparsity) < 1:
            raise ConfigError(f"s_max must lie in (0, 1), got {self.max_sparsity}")
        if self.min_channels < 1 or self.multiple < 1:
            raise ConfigError("min_channels and multiple must be ≥ 1")
        if self.calibration not in CORPORA:
            path = Path(self.calibration).expanduser()
            if not path.is_file():
                raise ConfigError(f"No such calibration text file: '{self.calibration}' (or use one of "
                                  f"{', '.join(CORPORA)})" if ("/" in self.calibration or path.suffix) else
                                  f"Unknown calibration corpus '{self.calibration}': use one of {', '.join(CORPORA)} "
                                  "or a path to a text file")
        if self.n_windows < 1 or self.window < 2 or self.batch_size < 1:
            raise ConfigError("Calibration needs ≥ 1 window of ≥ 2 tokens and a batch size ≥ 1")
        if self.method == "custom":
            if not self.custom:
                raise ConfigError("method 'custom' needs the final sparsity of every layer (custom=[...])")
            vals = [_finite("A custom sparsity", v) for v in self.custom]
            if any(not 0 <= v < 1 for v in vals):
                raise ConfigError("Custom sparsities must lie in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)
