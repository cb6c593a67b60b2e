"""The settings of a pruning run and the choice lists behind them: the one home of every pruning default.

The command line (:mod:`pruner.cli.prune`), Adapt-Accel and the studio read their defaults and choices from
here; where the studio deliberately differs it says so in ``studio/settings.py``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path

from pruner.data import CORPORA
from pruner.errors import ConfigError
from pruner.importance.measure import CRITERIA
from pruner.methods import REGISTRY, method_class

#: Every method, by name (one class each in :mod:`pruner.methods`; ``docs/methods.md``).
METHODS = tuple(REGISTRY)
#: The methods that move in Δ-sized sub-steps with the rule ``s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)``.
INCREMENTAL_METHODS = tuple(m for m, cls in REGISTRY.items() if cls.incremental)
#: The one-shot baselines (their own criterion and split; one planned step to the target).
BASELINES = tuple(m for m, cls in REGISTRY.items() if cls.baseline)
#: How a layer's parameter budget is split between KV groups and MLP channels (see :mod:`pruner.pruning.planner`).
ATTENTION_POLICIES = ("score", "proportional")
#: The paper's calibration per sub-step (512 windows × 64 tokens); the CPU-sized default is 32 × 128.
PAPER_CALIBRATION = (512, 64)
#: The calibration each baseline's released code uses (windows, tokens, corpus); the library's default stays
#: 32 × 128 tokens of ``wiki`` for every method, so that comparisons differ in the method only.
PUBLISHED_CALIBRATION = {m: cls.published_calibration for m, cls in REGISTRY.items() if cls.published_calibration}


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
    """``adaptive`` (the rule), ``uniform`` (A = 0), ``custom`` (``custom`` final sparsities), or a baseline:
    ``llm-pruner``, ``flap``, ``shortgpt``, ``wanda-sp`` (one shot each; ``docs/methods.md``)."""
    criterion: str | None = None
    """Unit score: ``taylor`` (first-order, the paper's), ``magnitude`` (L1), ``activation`` (Wanda-style),
    ``fluctuation`` (FLAP's WIFV) or ``wanda-sp``. None (the default): the method's own criterion where it has one
    (llm-pruner: taylor, flap: fluctuation, wanda-sp: wanda-sp), else ``taylor``; the field then holds what runs.
    Another criterion for a method with its own is refused. shortgpt scores whole layers only."""
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
    block_layers: list[int] | None = None
    """``llm-pruner``: the window ``[start, end)`` of layer indices it prunes (the others stay whole). None:
    the released script's 4..30 of 32 LLaMA layers scaled to the model's depth
    (:data:`pruner.methods.llm_pruner.LLM_PRUNER_WINDOW`)."""
    bias_compensation: bool = True
    """``flap``: add the removed inputs' mean contribution as a bias of o_proj / down_proj (the paper's)."""
    remeasure: bool = True
    """Re-measure importance before every sub-step (the method). False: measure once and keep the scores of the
    surviving units for the following sub-steps (faster; the schedule preview is then exact)."""
    checkpoint: bool = True
    """The lean backward of a gradient criterion (checkpointed layers; :mod:`pruner.importance.lean`): the same scores in
    about 2× the weights' memory instead of 7× (default model, 32 × 128 tokens), for about 1.4× the time. False:
    faster where memory is plentiful."""

    def __post_init__(self) -> None:
        # types first: a string or a bool that happens to convert would fail later with a raw TypeError
        for name in ("target", "amplitude", "step", "max_sparsity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ConfigError(f"{name} must be a number, got {v!r} ({type(v).__name__})")
        for name in ("min_channels", "multiple", "n_windows", "window", "batch_size", "seed", "max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ConfigError(f"{name} must be a whole number, got {v!r} ({type(v).__name__})")
            setattr(self, name, int(v))
        for name in ("remeasure", "checkpoint", "bias_compensation"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("method", "attention", "calibration"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not 0 <= self.seed < 2**62:
            raise ConfigError(f"The seed must be a whole number from 0 to 2**62 - 1 (each sub-step draws with seed + "
                              f"its index), got {self.seed}")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be ≥ 1, got {self.max_steps}")
        t = _finite("The target", self.target)
        if t <= 0:
            raise ConfigError(f"The target must be > 0 (a fraction of the original size or a parameter count), got {t}")
        if 1 <= t < 2:
            raise ConfigError(f"The target {t} is ≥ 100 % of the model's size; use a fraction < 1 or a count")
        method = method_class(self.method)
        if self.criterion is None:
            self.criterion = method.criterion or "taylor"  # the record then says what runs
        elif method.criterion is not None and self.criterion != method.criterion:
            raise ConfigError(f"{self.method} scores units with its own criterion '{method.criterion}' "
                              f"(docs/methods.md), not '{self.criterion}': leave the criterion unset")
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
            if path.exists() and not path.is_file():
                raise ConfigError(f"The calibration text '{self.calibration}' is "
                                  f"{'a folder' if path.is_dir() else 'not a regular file (a pipe or device)'}; "
                                  "name a text file")
            if not path.is_file():
                raise ConfigError(f"No such calibration text file: '{self.calibration}' (or use one of "
                                  f"{', '.join(CORPORA)})" if ("/" in self.calibration or path.suffix) else
                                  f"Unknown calibration corpus '{self.calibration}': use one of {', '.join(CORPORA)} "
                                  "or a path to a text file")
        if self.n_windows < 1 or self.window < 2 or self.batch_size < 1:
            raise ConfigError("Calibration needs ≥ 1 window of ≥ 2 tokens and a batch size ≥ 1")
        method.check_config(self)
        if self.block_layers is not None:
            w = list(self.block_layers)
            if len(w) != 2 or any(isinstance(v, bool) or int(v) != v for v in w) or not 0 <= w[0] < w[1]:
                raise ConfigError(f"block_layers must be [start, end) with 0 ≤ start < end, got {self.block_layers}")
            self.block_layers = [int(w[0]), int(w[1])]

    def to_dict(self) -> dict:
        return asdict(self)
