"""What a setting will cost before anything runs: importance per sub-step, a Train round, an Adapt-Accel run.

A prior rate on the CPU (measured on the project's 2-core CPU with the default model, scaled by model size) until
the session has measured its own throughput. No GPU rate has been measured yet, so on a GPU a cost is unknown ("?")
until the session has measured it.
"""

from __future__ import annotations

import math

from pruner.config import BASELINES, PAPER_CALIBRATION
from pruner.methods import method_class
from pruner.training.accel import token_shares

from . import text
from .settings import StudioSettings
from .workspace import Workspace

#: The quick perplexity's throughput (a forward pass; its prior is the magnitude criterion's forward rate).
PERPLEXITY = "perplexity"

#: What ShortGPT's measurement is called here: the layer cosines alone (one forward pass, no unit scores).
LAYERS_ONLY = "layers"

# Taylor with the lean (checkpointed) backward, the default: 2,048 tokens in 22.7 s on the default model in fp32, a
# fresh studio session's first measurement (benchmarks/results/studio_timing_session.json, ≈ 90 tokens/s; 4,096 in
# 39 s in the README's scale table); a plain forward over 4,096 tokens 13.4 s (the explorer's cost
# benchmark, ≈ 300 tokens/s), the rate of the forward-only criteria and of the quick perplexity. Training (forward
# + backward + AdamW, no checkpointing) measured 250–295 tokens/s (benchmarks/results/accel_compare_cpu.json).
# FLAP's fluctuation and Wanda-sp are forward-only with input statistics like activation, and ShortGPT's layers-only
# pass is a plain forward like magnitude: their priors are those rates (assumed, not measured) until the session
# measures its own.
# No GPU rate has been measured (no GPU was lent to this project's sessions): NaN, shown as "?", until the session
# measures its own.
_CPU = {"taylor": 90.0, "magnitude": 300.0, "activation": 290.0}
_GPU = dict.fromkeys(_CPU, math.nan)
PRIOR_TOKENS_PER_S = {kind: {**r, "fluctuation": r["activation"], "wanda-sp": r["activation"],
                             LAYERS_ONLY: r["magnitude"]} for kind, r in (("cpu", _CPU), ("gpu", _GPU))}
PRIOR_TRAIN_TOKENS_PER_S = {"cpu": 250.0, "gpu": math.nan}
PRIOR_MODEL_PARAMS = 134_515_008


#: Quick perplexities of a Train round: before, after, and the quick evaluation's at the end.
TRAIN_PPL = 3


def accel_perplexities(stages: int) -> int:
    """Quick perplexities of an Adapt-Accel run: at the start, after every stage's pruning and training, and the
    quick evaluation's at the end."""
    return 1 + 2 * stages + 1


class Estimate(float):
    """Seconds that may be unknown (NaN): formats as "?" and stays an Estimate through + − × ÷."""

    def __format__(self, spec: str) -> str:
        return "?" if math.isnan(self) else format(float(self), spec)

    def _wrap(op):  # noqa: N805  (a helper of the class body)
        return lambda a, b: Estimate(op(float(a), float(b)))

    __add__ = _wrap(float.__add__)
    __radd__ = _wrap(lambda a, b: b + a)
    __sub__ = _wrap(float.__sub__)
    __mul__ = _wrap(float.__mul__)
    __rmul__ = _wrap(lambda a, b: b * a)
    __truediv__ = _wrap(float.__truediv__)
    del _wrap


class Costs:
    """Rates measured in this session (per criterion, and for training), and estimates made from them."""

    def __init__(self, work: Workspace):
        self.work = work
        self.tokens_per_s: dict[str, float] = {}

    def observe(self, what: str, tokens: int, seconds: float) -> None:
        if seconds > 0 and tokens > 0:
            self.tokens_per_s[what] = tokens / seconds

    def _rate(self, what: str, prior: float) -> tuple[float, str]:
        rate = self.tokens_per_s.get(what)
        if rate is not None:
            return rate, f"measured in this session: {rate:.0f} tokens/s"
        if math.isnan(prior):
            return prior, "unknown until this session has measured it (no GPU rate measured yet)"
        rate = prior * PRIOR_MODEL_PARAMS / max(self.work.original_total, 1)
        return rate, f"first guess: a prior for CPU scaled to this model, {rate:.0f} tokens/s"

    def _kind(self) -> str:
        return "gpu" if self.work.device.type == "cuda" else "cpu"

    @staticmethod
    def calibration_tokens(s: StudioSettings) -> int:
        return int(s.prune.n_windows) * int(s.prune.window)

    @staticmethod
    def criterion_of(s: StudioSettings) -> str:
        """What a step with these settings measures: the chosen criterion, a baseline's own one, or
        :data:`LAYERS_ONLY` (ShortGPT)."""
        if method_class(s.prune.method).layers_only:
            return LAYERS_ONLY
        return s.prune.criterion

    def importance_seconds(self, s: StudioSettings) -> tuple[float, str]:
        """Estimated seconds of one importance measurement (the bulk of a sub-step), and where the rate comes from."""
        what = self.criterion_of(s)
        priors = PRIOR_TOKENS_PER_S[self._kind()]
        rate, source = self._rate(what, priors[what])  # every criterion has a prior (a test checks it)
        return Estimate(self.calibration_tokens(s) / rate), source

    def train_seconds(self, tokens: int) -> tuple[float, str]:
        rate, source = self._rate("train", PRIOR_TRAIN_TOKENS_PER_S[self._kind()])
        return Estimate(tokens / rate), source

    def ppl_seconds(self, s: StudioSettings) -> tuple[float, str]:
        """Estimated seconds of one quick perplexity of the working model, and where the rate comes from."""
        rate, source = self._rate(PERPLEXITY, PRIOR_TOKENS_PER_S[self._kind()]["magnitude"])
        return Estimate(int(s.quick_ppl.max_tokens or 0) / rate), source

    def prune_markdown(self, s: StudioSettings) -> str:
        sec, source = self.importance_seconds(s)
        paper = PAPER_CALIBRATION[0] * PAPER_CALIBRATION[1]
        out = (f"**{self.calibration_tokens(s):,} calibration tokens per sub-step** ({s.prune.n_windows} × {s.prune.window}; "
               f"the paper uses {paper:,}) · importance ≈ **{sec:.0f} s** per sub-step with {self.criterion_of(s)} "
               f"({source}), plus the quick evaluation")
        return out + ("  \n" + text.baseline_note(s.prune.method) if s.prune.method in BASELINES else "")

    def train_markdown(self, s: StudioSettings) -> str:
        """What a Train round and an Adapt-Accel run will cost with these settings."""
        work = self.work
        try:
            cfg = s.capped_train(getattr(work.model.config, "max_position_embeddings", None))
            per = cfg.tokens_per_step()
            n_train = cfg.steps_for(int(s.train_tokens))
            shares = token_shares(int(s.stages))
        except (ValueError, TypeError) as exc:
            return f"⚠️ {exc}"
        sec, source = self.train_seconds(n_train * per)
        ppl, ppl_source = self.ppl_seconds(s)
        imp, _ = self.importance_seconds(s)  # afterwards, for the heatmaps of the changed model
        n_accel = sum(cfg.steps_for(round(x * int(s.accel_tokens))) for x in shares)
        accel_train, _ = self.train_seconds(n_accel * per)
        out = (f"**Train**: {n_train} optimiser steps of {cfg.batch_size} × {cfg.seq_len} tokens ≈ {sec:.0f} s "
               f"({source}) + {TRAIN_PPL} quick perplexities (before, after, and the evaluation's) ≈ {TRAIN_PPL} × "
               f"{ppl:.0f} s ({ppl_source}) + an importance measurement for the heatmaps ≈ {imp:.0f} s: "
               f"≈ **{sec + TRAIN_PPL * ppl + imp:.0f} s** in all.  \n")
        to_remove = work.params() - s.prune.target * work.original_total
        if to_remove <= 0:
            return out + "**Adapt-Accel**: the model is already at or below the target; lower the target."
        geo = work.pruner.geo
        prunable0 = sum(geo.layer_prunable_params(w) for w in work.pruner.origin.widths)
        n_sub = int(to_remove / prunable0 / max(s.prune.step, 1e-6)) + int(s.stages)
        n_ppl = accel_perplexities(int(s.stages))
        total = (n_sub + 1) * imp + accel_train + n_ppl * ppl
        return out + (f"**Adapt-Accel**: {int(s.stages)} stages, about {n_sub} pruning sub-steps (≈ {n_sub * imp:.0f} s) "
                      f"and {n_accel} optimiser steps (≈ {accel_train:.0f} s), {n_ppl} quick perplexities (at the "
                      f"start, after every prune and train, and the evaluation's; ≈ {n_ppl * ppl:.0f} s) and an "
                      f"importance measurement for the heatmaps: ≈ **{total / 60:.1f} min** in all.")

    def compare_seconds(self, s: StudioSettings, methods) -> tuple[float, list[tuple[str, int, float]], str]:
        """Estimated seconds of a comparison of ``methods`` to the target of ``s``: per method its sub-steps (a
        one-shot baseline: one), each an importance measurement and a quick perplexity, plus two generations.
        Returns the total, (method, sub-steps, seconds) per method, and where the rates come from."""
        work = self.work
        geo = work.pruner.geo
        prunable0 = sum(geo.layer_prunable_params(w) for w in work.pruner.origin.widths)
        share = max(0.0, (1 - s.prune.target) * work.original_total) / max(prunable0, 1)
        ppl, source = self.ppl_seconds(s)
        rows = []
        for m in methods:
            ms = s.with_method(m)
            n = max(1, round(share / max(ms.prune.step, 1e-6))) if method_class(m).incremental else 1
            imp, _ = self.importance_seconds(ms)
            rows.append((m, n, n * (imp + ppl)))
        return sum((r[2] for r in rows), Estimate(0.0)), rows, source

    def compare_markdown(self, s: StudioSettings, methods) -> str:
        """What the Compare tab's run will cost, before it runs."""
        methods = list(methods or [])
        if not methods:
            return text.COMPARE_PICK
        total, rows, source = self.compare_seconds(s, methods)
        per = ", ".join(f"{m} {n} step(s) ≈ {sec:.0f} s" for m, n, sec in rows)
        return text.COMPARE_COST.format(n=len(methods), minutes=total / 60, per=per, source=source,
                                        target=100 * s.prune.target)
