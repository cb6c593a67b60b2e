"""What a visitor sets in the studio, and the one place where the studio's defaults differ from the library's.

Every other default comes from :class:`pruner.PruneConfig` and :class:`pruner.training.train.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from pruner.config import CRITERIA, PruneConfig
from pruner.methods import method_class
from pruner.training.train import TrainConfig

UPLOADED = "uploaded file"

_P, _T = PruneConfig, TrainConfig

#: Where the studio deliberately departs from the library (and the command line), and why.
STUDIO_DEFAULTS = {
    "n_windows": (16, _P.n_windows, "half the calibration windows: a sub-step should take seconds, not half a "
                                    "minute, while someone watches on a 2-core CPU"),
    "lr": (1e-4, _T.lr, "rounds of a few thousand tokens; the paper's 2e-5 is tuned for millions and barely moves "
                        "a model in a demo-sized round"),
    "ppl_window": (256, 512, "the quick perplexity after every step reads a 2,048-token sample in ~256-token "
                             "windows; the benchmarks use 512-token windows over the whole split"),
}


@dataclass
class StudioSettings:
    """Everything the user sets in the studio: schedule, calibration, quick evaluation and training."""

    target: float = _P.target  # fraction of the original parameters
    amplitude: float = _P.amplitude
    step: float = _P.step
    criterion: str = CRITERIA[0]  # the radio's choice; a method with a criterion of its own uses that one
    method: str = _P.method
    attention: str = _P.attention
    custom: list[float] | None = None
    calibration: str = _P.calibration  # a corpus name or UPLOADED
    calibration_text: str | None = None  # the uploaded file's text
    calibration_name: str | None = None  # the uploaded file's name (the records say it, with the text's sha256)
    n_windows: int = STUDIO_DEFAULTS["n_windows"][0]
    window: int = _P.window
    seed: int = _P.seed
    batch_size: int = _P.batch_size
    ppl_dataset: str = "wikitext2"
    ppl_split: str = "test"
    ppl_window: int = STUDIO_DEFAULTS["ppl_window"][0]
    ppl_tokens: int = 2048
    max_new_tokens: int = 24
    # recovery training (Train button and Adapt-Accel)
    train_tokens: int = 16_384  # tokens of one "Train" round
    lr: float = STUDIO_DEFAULTS["lr"][0]  # peak learning rate (one WSD schedule per round / per Adapt-Accel run)
    distill: float = _T.distill_weight  # weight of the distillation loss from the original model
    train_seq_len: int = _T.seq_len
    train_batch: int = _T.batch_size
    train_data: str = _T.data  # shipped corpora; never the evaluation text (wikitext2 test)
    stages: int = 5  # Adapt-Accel stages
    accel_tokens: int = 32_768  # Adapt-Accel training tokens over all stages

    def train_config(self, max_len: int | None = None) -> TrainConfig:
        """The training part as a :class:`TrainConfig` (sequence length capped at the model's maximum)."""
        seq = int(self.train_seq_len) if not max_len else min(int(self.train_seq_len), int(max_len))
        return TrainConfig(lr=float(self.lr), distill_weight=float(self.distill), seq_len=seq,
                           batch_size=int(self.train_batch), data=self.train_data, seed=int(self.seed))

    def prune_config(self, base: PruneConfig | None = None) -> PruneConfig:
        """The schedule part as a :class:`PruneConfig` (other fields kept from ``base``)."""
        base = base or PruneConfig()
        return replace(
            base, target=self.target, amplitude=self.amplitude, step=self.step,
            criterion=None if method_class(self.method).criterion else self.criterion,
            method=self.method, attention=self.attention,
            custom=list(self.custom) if self.custom is not None else None,
            calibration="wiki" if self.calibration == UPLOADED else self.calibration,
            n_windows=int(self.n_windows), window=int(self.window), seed=int(self.seed),
            batch_size=int(self.batch_size),
        )

    def ppl_settings(self) -> str:
        """Human-readable settings of the quick perplexity."""
        where = self.ppl_dataset + (f" {self.ppl_split}" if self.ppl_dataset == "wikitext2" else "")
        return f"{where}, {self.ppl_window}-token windows, first {self.ppl_tokens:,} tokens, no BOS"

    def public(self) -> dict:
        """The settings for a report (without the uploaded text)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "calibration_text"}
