"""What a visitor sets in the studio: the library's own configs, plus the few settings that are the studio's.

The schedule and calibration are a :class:`pruner.PruneConfig`, training a :class:`pruner.training.train.TrainConfig`
and the quick perplexity a :class:`pruner.PerplexityConfig`: the studio holds them, it does not mirror them, so what
the page shows, what the preview plans and what a step runs are one object. ``STUDIO_DEFAULTS`` lists where the
studio's defaults deliberately differ from the library's, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from pruner.config import CRITERIA, PruneConfig
from pruner.data import CalibrationText
from pruner.evaluation.perplexity import PerplexityConfig
from pruner.methods import method_class
from pruner.training.train import TrainConfig

UPLOADED = "uploaded file"

_P, _T, _Q = PruneConfig, TrainConfig, PerplexityConfig

#: Where the studio deliberately departs from the library (and the command line), and why.
STUDIO_DEFAULTS = {
    "n_windows": (16, _P.n_windows, "half the calibration windows: a sub-step should take seconds, not half a "
                                    "minute, while someone watches on a 2-core CPU"),
    "lr": (1e-4, _T.lr, "rounds of a few thousand tokens; the paper's 2e-5 is tuned for millions and barely moves "
                        "a model in a demo-sized round"),
    "ppl_window": (256, _Q.window, "the quick perplexity after every step reads a 2,048-token sample in ~256-token "
                                   "windows; the benchmarks use 512-token windows over the whole split"),
    "ppl_tokens": (2048, _Q.max_tokens, "a sample, so that the number after every step comes in seconds"),
}


def _studio_prune() -> PruneConfig:
    return PruneConfig(n_windows=STUDIO_DEFAULTS["n_windows"][0])


def _studio_train() -> TrainConfig:
    return TrainConfig(lr=STUDIO_DEFAULTS["lr"][0])


QUICK_PPL = PerplexityConfig(window=STUDIO_DEFAULTS["ppl_window"][0], max_tokens=STUDIO_DEFAULTS["ppl_tokens"][0])


@dataclass(frozen=True)
class StudioSettings:
    """Everything the user sets in the studio: the library's configs and the studio's own few settings."""

    prune: PruneConfig = field(default_factory=_studio_prune)
    """Schedule and calibration, exactly as the pruner runs them (a baseline's own criterion included)."""
    train: TrainConfig = field(default_factory=_studio_train)
    """Recovery training (Train button and Adapt-Accel); its sequence length is capped at the model's context."""
    quick_ppl: PerplexityConfig = QUICK_PPL
    """The quick perplexity after every step, and the trajectory's yardstick."""
    upload: CalibrationText | None = None
    """An uploaded calibration text (it replaces ``prune.calibration``; the records name the file)."""
    criterion_choice: str = CRITERIA[0]
    """The criterion radio: what an allocation without a criterion of its own scores with."""
    max_new_tokens: int = 24
    train_tokens: int = 16_384  # tokens of one "Train" round
    stages: int = 5  # Adapt-Accel stages
    accel_tokens: int = 32_768  # Adapt-Accel training tokens over all stages

    @classmethod
    def build(cls, base: StudioSettings | None = None, *, upload: CalibrationText | None | str = "keep",
              prune: dict | None = None, train: dict | None = None, **own) -> StudioSettings:
        """New settings from ``base`` with some library fields changed (validated by the configs themselves).

        ``prune`` may carry ``criterion``: it becomes the radio's choice, and goes into the :class:`PruneConfig`
        only for a method without a criterion of its own (a baseline's own criterion is used otherwise)."""
        base = base or cls()
        p = dict(prune or {})
        choice = p.pop("criterion", own.pop("criterion_choice", base.criterion_choice))
        method = p.get("method", base.prune.method)
        p["criterion"] = None if method_class(method).criterion else choice
        new_prune = replace(base.prune, **p)
        new_train = replace(base.train, **train) if train else base.train
        up = base.upload if upload == "keep" else upload
        return replace(base, prune=new_prune, train=new_train, upload=up, criterion_choice=choice, **own)

    def with_method(self, method: str, **prune) -> StudioSettings:
        """The same settings with another method (and its own criterion where it has one)."""
        return StudioSettings.build(self, prune={"method": method, **prune})

    @property
    def calibration_label(self) -> str:
        """What calibrates: a shipped corpus or the uploaded file's name."""
        return f"{UPLOADED} '{self.upload.name}'" if self.upload is not None else self.prune.calibration

    def capped_train(self, max_len: int | None = None) -> TrainConfig:
        """The training config with its sequence length capped at the model's maximum."""
        if max_len and self.train.seq_len > int(max_len):
            return replace(self.train, seq_len=int(max_len))
        return self.train

    def public(self) -> dict:
        """The settings for a report (the uploaded text as its name, sha256 and size, not its contents)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("prune", "train", "quick_ppl",
                                                                                       "upload")}
        out.update(prune=self.prune.to_dict(), train=self.train.to_dict(), quick_perplexity=self.quick_ppl.to_dict(),
                   calibration_upload=self.upload.describe() if self.upload is not None else None)
        return out


def settings_label(s: StudioSettings) -> str:
    """The settings a plan is for, in one line (what the plot and its note are labelled with)."""
    p = s.prune
    m = method_class(p.method)
    own = [f"target {100 * p.target:g} %"]
    if m.incremental and not m.baseline:
        own += [f"A = {p.amplitude:g}", f"Δ = {100 * p.step:g} %"]
    crit = p.criterion or "its own score"
    return " · ".join([*own, p.method, crit, f"{s.calibration_label} {p.n_windows} × {p.window}, seed {p.seed}"])
