"""One interactive pruning session (the state behind one browser tab of the studio), usable from a notebook too.

A :class:`StudioSession` holds the working model and its tokenizer, the untouched original (for side-by-side
generation and the reference point of the trajectory), the :class:`~pruner.prune.Pruner`, the measured
importance of the current model, the trajectory (parameters, quick perplexity) and an optional uniform-baseline
trajectory. Every method is an ordinary library call; the UI only wires buttons to them::

    s = StudioSession.load("default")
    s.configure(StudioSettings(target=0.8, n_windows=16))
    s.measure()                        # importance of the current model (cached until the model changes)
    s.preview()                        # the whole planned schedule, nothing cut
    s.step(); s.quick_eval("The capital of France is")
    for update in s.run_to_target(): print(update.record.params_total)

Steps are atomic (the Pruner builds the new modules before swapping them in), so a cancel or an error leaves
the model as it was; :meth:`undo` goes back one step (bounded history), :meth:`reset` to the original.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .adapters import adapter_for
from .allocation import AllocationError, allocate_sparsity, plan_widths
from .data import CORPORA
from .importance import Cancelled, Importance
from .io import describe, load_model, save_pruned
from .perplexity import format_perplexity, perplexity
from .prune import PruneConfig, Pruner, StepRecord
from .structure import LayerWidths, count_parameters, geometry, layer_widths

UPLOADED = "uploaded file"
# Measured on the 2-core CPU of the project machine with the default model (fp32): Taylor (forward+backward)
# 32 × 128 tokens ≈ 16 s; forward-only criteria about twice as fast. Scaled by model size until this session has
# measured its own throughput.
PRIOR_TOKENS_PER_S = {"cpu": {"taylor": 256.0, "magnitude": 500.0, "activation": 480.0},
                      "gpu": {"taylor": 20000.0, "magnitude": 50000.0, "activation": 50000.0}}
PRIOR_MODEL_PARAMS = 134_515_008
# Training (forward + backward + AdamW, 4 × 256 tokens per step, fp32): about the Taylor rate on the same CPU.
PRIOR_TRAIN_TOKENS_PER_S = {"cpu": 250.0, "gpu": 30000.0}


class SessionError(RuntimeError):
    """A request the session cannot carry out, with a message meant for the user."""


@dataclass
class StudioSettings:
    """Everything the user sets in the studio: schedule, calibration and quick evaluation."""

    target: float = 0.8  # fraction of the original parameters
    amplitude: float = 0.02
    step: float = 0.02
    criterion: str = "taylor"
    method: str = "adaptive"
    custom: list[float] | None = None
    calibration: str = "wiki"  # a corpus name or UPLOADED
    calibration_text: str | None = None  # the uploaded file's text
    n_windows: int = 16
    window: int = 128
    seed: int = 0
    batch_size: int = 8
    ppl_dataset: str = "wikitext2"
    ppl_split: str = "test"
    ppl_window: int = 256
    ppl_tokens: int = 2048
    max_new_tokens: int = 24
    # recovery training (Train button and Adapt-Accel)
    train_tokens: int = 16_384  # tokens of one "Train" round
    lr: float = 1e-4  # peak learning rate (one WSD schedule per round / per Adapt-Accel run)
    distill: float = 0.0  # weight of the distillation loss from the original model (0 = LM loss only)
    train_seq_len: int = 256
    train_batch: int = 4
    train_data: str = "wiki,c4,stories"  # shipped corpora; never the evaluation text (wikitext2 test)
    stages: int = 5  # Adapt-Accel stages
    accel_tokens: int = 32_768  # Adapt-Accel training tokens over all stages

    def train_config(self, max_len: int | None = None):
        """The training part as a :class:`pruner.train.TrainConfig`."""
        from .train import TrainConfig

        seq = int(self.train_seq_len) if not max_len else min(int(self.train_seq_len), int(max_len))
        return TrainConfig(lr=float(self.lr), distill_weight=float(self.distill), seq_len=seq,
                           batch_size=int(self.train_batch), data=self.train_data, seed=int(self.seed))

    def prune_config(self, base: PruneConfig | None = None) -> PruneConfig:
        """The schedule part as a :class:`PruneConfig` (other fields kept from ``base``)."""
        base = base or PruneConfig()
        return replace(
            base, target=self.target, amplitude=self.amplitude, step=self.step, criterion=self.criterion,
            method=self.method, custom=list(self.custom) if self.custom is not None else None,
            calibration="wiki" if self.calibration == UPLOADED else self.calibration,
            n_windows=int(self.n_windows), window=int(self.window), seed=int(self.seed),
            batch_size=int(self.batch_size),
        )

    def ppl_settings(self) -> str:
        """Human-readable settings of the quick perplexity."""
        where = self.ppl_dataset + (f" {self.ppl_split}" if self.ppl_dataset == "wikitext2" else "")
        return f"{where}, {self.ppl_window}-token windows, first {self.ppl_tokens:,} tokens, no BOS"


@dataclass
class Preview:
    """A planned schedule: the sparsities after every future step if importance stayed as measured now."""

    allocated: list[list[float]]  # [step][layer] s_l
    attention: list[list[float]]  # [step][layer] share of KV groups removed (of the original)
    mlp: list[list[float]]  # [step][layer] share of MLP channels removed
    params: list[int]  # total parameters after each planned step
    reached: bool  # the plan meets the target
    notes: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """A quick evaluation of the working model."""

    step: int
    params: int
    fraction_of_original: float
    perplexity: dict
    tokens_per_s: float
    prompt: str
    generation: str
    original_generation: str
    original_perplexity: dict

    def summary(self) -> str:
        return (f"{self.params / 1e6:.2f} M parameters ({self.fraction_of_original:.1%} of the original) · "
                f"perplexity {format_perplexity(self.perplexity)} · {self.tokens_per_s:.1f} tokens/s (greedy "
                f"generation) · original: perplexity {self.original_perplexity['perplexity']:.2f}")


@dataclass
class TrajectoryPoint:
    step: int
    params: int
    perplexity: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Progress:
    """What :meth:`StudioSession.run_to_target` and :meth:`run_uniform_baseline` yield after each sub-step."""

    message: str
    record: StepRecord | None = None
    evaluation: Evaluation | None = None
    done: bool = False
    kind: str = ""  # "train_step": only the loss curve changed (a light update for the UI)


@dataclass
class RecoveryPoint:
    """Quick perplexity before and after one round of recovery training (a Train round or an Adapt-Accel stage,
    whose "before" is right after the stage's pruning)."""

    label: str
    params: int
    perplexity_before: float
    perplexity_after: float
    tokens: int
    stage: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainLog:
    """Every optimiser step's loss in this session (Train rounds and Adapt-Accel stages), for the loss curve."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # index of the first step of every round / stage
    labels: list[str] = field(default_factory=list)

    def truncate(self, n: int, rounds: int) -> None:
        del self.losses[n:], self.lrs[n:], self.starts[rounds:], self.labels[rounds:]


def _importance_key(cfg: PruneConfig, text: str | None, steps: int) -> tuple:
    return (steps, cfg.criterion, cfg.calibration, cfg.n_windows, cfg.window, cfg.seed, cfg.batch_size,
            hash(text) if text else None)


class StudioSession:
    """The state of one studio session; see the module docstring."""

    def __init__(self, model: nn.Module, tokenizer, original: nn.Module | None = None, name: str = "model",
                 settings: StudioSettings | None = None, keep_history: int = 3):
        adapter_for(model)  # fail early on an unsupported architecture
        self.name = name
        self.tokenizer = tokenizer
        # the pristine model: never pruned, may be shared read-only between sessions
        self.original = original if original is not None else copy.deepcopy(model)
        self.original.eval()
        self.model = model.eval()
        self.settings = settings or StudioSettings()
        self.keep_history = keep_history
        self._flag_lock = threading.Lock()
        self._busy = False
        self._surgery = threading.Lock()  # held while the model's structure changes (short)
        self._stop = threading.Event()
        self._tokens_per_s: dict[str, float] = {}
        self._original_eval: dict[tuple, object] = {}
        self._new_pruner()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, source: str = "default", device=None, settings: StudioSettings | None = None) -> StudioSession:
        """Load a model (see :func:`pruner.load_model`) and start a session on it."""
        model, tok = load_model(source, device=device, progress=None)
        return cls(model, tok, name=str(source), settings=settings)

    @classmethod
    def from_shared(cls, original: nn.Module, tokenizer, name: str = "model",
                    settings: StudioSettings | None = None) -> StudioSession:
        """A session whose working model is a copy of ``original``; the original itself is shared, unchanged."""
        return cls(copy.deepcopy(original), tokenizer, original=original, name=name, settings=settings)

    def _new_pruner(self) -> None:
        self.pruner = Pruner(self.model, self.tokenizer, self.settings.prune_config(), keep_history=self.keep_history,
                             calibration_text=self._calibration_text(self.settings))
        self.importance: Importance | None = None
        self._importance_key: tuple | None = None
        self.shown_importance: Importance | None = None  # the latest measurement, kept for display
        self.shown_step = 0  # ... which was taken before this step (1-based)
        self.trajectory: list[TrajectoryPoint] = []
        self.baseline: list[TrajectoryPoint] = []
        self._trajectory_settings = self.settings.ppl_settings()
        self.last_eval: Evaluation | None = None
        self.geo = geometry(self.model)
        self.recovery: list[RecoveryPoint] = []  # Train rounds and Adapt-Accel stages
        self.accel_start: TrajectoryPoint | None = None  # where the last Adapt-Accel run started
        self.train_log = TrainLog()
        self.column_tags: dict[int, str] = {}  # step index -> "stage k" for steps taken by Adapt-Accel
        self.accel_report: dict | None = None
        self.baseline_model: nn.Module | None = None  # the uniform baseline's pruned copy (for zero-shot)
        self._packed = None  # training data, tokenized once per session

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def steps_taken(self) -> int:
        return len(self.pruner.record.steps)

    def summary(self) -> dict:
        """Architecture summary of the working model (see :func:`pruner.describe`) plus the original size."""
        d = describe(self.model)
        d["name"] = self.name
        d["original_params"] = self.pruner.origin.params["total"]
        return d

    def summary_markdown(self) -> str:
        d = self.summary()
        kv, heads, ch = d["num_kv_heads"], d["num_heads"], d["intermediate_size"]

        def span(v):
            return f"{min(v)}–{max(v)}" if min(v) != max(v) else f"{v[0]}"

        p, p0 = d["params"]["total"], d["original_params"]
        return (f"**{d['name']}** ({d['model_type']}) on **{d['device']}** ({d['dtype']})  \n"
                f"{d['layers']} layers · hidden {d['hidden_size']} · heads {span(heads)} · KV heads {span(kv)} · "
                f"MLP {span(ch)} channels  \n"
                f"**{p:,} parameters** ({p / 1e6:.2f} M, {p / p0:.1%} of the original {p0 / 1e6:.2f} M) · "
                f"{self.steps_taken} step(s) taken")

    def original_widths(self) -> list[LayerWidths]:
        return list(self.pruner.origin.widths)

    def current_widths(self) -> list[LayerWidths]:
        return layer_widths(self.model)

    # ------------------------------------------------------------------ settings and cost
    @staticmethod
    def _calibration_text(settings: StudioSettings) -> str | None:
        if settings.calibration == UPLOADED:
            if not settings.calibration_text or not settings.calibration_text.strip():
                raise SessionError("Choose a text file to upload, or pick a shipped corpus for calibration")
            return settings.calibration_text
        if settings.calibration not in CORPORA:
            raise SessionError(f"Unknown calibration corpus '{settings.calibration}'")
        return None

    def configure(self, settings: StudioSettings) -> None:
        """Apply new settings to the next steps (validated; the model is not touched)."""
        cfg = settings.prune_config(self.pruner.config)
        text = self._calibration_text(settings)
        if not 0 < settings.target < 1:
            raise SessionError(f"The target must be a fraction of the original size in (0, 1), got {settings.target}")
        if settings.method == "custom" and (settings.custom is None or len(settings.custom) != len(self.pruner.sparsity)):
            raise SessionError(f"A custom schedule needs one final sparsity per layer ({len(self.pruner.sparsity)} values)")
        try:
            self.pruner.configure(cfg, text)
        except ValueError as exc:
            raise SessionError(str(exc)) from exc
        self.settings = settings

    def calibration_tokens(self, settings: StudioSettings | None = None) -> int:
        s = settings or self.settings
        return int(s.n_windows) * int(s.window)

    def estimate_seconds(self, settings: StudioSettings | None = None) -> tuple[float, str]:
        """Estimated seconds of one importance measurement (the bulk of a sub-step), and where the rate comes from."""
        s = settings or self.settings
        rate = self._tokens_per_s.get(s.criterion)
        if rate is not None:
            source = f"measured in this session: {rate:.0f} tokens/s"
        else:
            kind = "gpu" if self.device.type == "cuda" else "cpu"
            params = self.pruner.origin.params["total"]
            rate = PRIOR_TOKENS_PER_S[kind][s.criterion] * PRIOR_MODEL_PARAMS / max(params, 1)
            source = f"prior for {kind.upper()} scaled to this model: {rate:.0f} tokens/s"
        return self.calibration_tokens(s) / rate, source

    def train_seconds(self, tokens: int) -> tuple[float, str]:
        """Estimated seconds to train on ``tokens`` tokens, and where the rate comes from."""
        rate = self._tokens_per_s.get("train")
        if rate is not None:
            source = f"measured in this session: {rate:.0f} tokens/s"
        else:
            kind = "gpu" if self.device.type == "cuda" else "cpu"
            rate = PRIOR_TRAIN_TOKENS_PER_S[kind] * PRIOR_MODEL_PARAMS / max(self.pruner.origin.params["total"], 1)
            source = f"prior for {kind.upper()} scaled to this model: {rate:.0f} tokens/s"
        return tokens / rate, source

    def train_cost_markdown(self, settings: StudioSettings | None = None) -> str:
        """What a Train round and an Adapt-Accel run will cost with these settings (before pressing anything)."""
        from .accel import token_shares

        s = settings or self.settings
        try:
            cfg = s.train_config(getattr(self.model.config, "max_position_embeddings", None))
            per = cfg.tokens_per_step()
            n_train = cfg.steps_for(int(s.train_tokens))
            shares = token_shares(int(s.stages))
        except (ValueError, TypeError) as exc:
            return f"⚠️ {exc}"
        sec, source = self.train_seconds(n_train * per)
        n_accel = sum(cfg.steps_for(round(x * int(s.accel_tokens))) for x in shares)
        accel_train, _ = self.train_seconds(n_accel * per)
        out = (f"**Train**: {n_train} optimiser steps of {cfg.batch_size} × {cfg.seq_len} tokens ≈ **{sec:.0f} s** "
               f"({source}).  \n")
        total0 = self.pruner.origin.params["total"]
        now = count_parameters(self.model)["total"]
        to_remove = now - s.target * total0
        if to_remove <= 0:
            return out + "**Adapt-Accel**: the model is already at or below the target; lower the target."
        prunable0 = sum(self.geo.layer_prunable_params(w) for w in self.pruner.origin.widths)
        n_sub = int(to_remove / prunable0 / max(s.step, 1e-6)) + int(s.stages)
        imp, _ = self.estimate_seconds(s)
        return out + (f"**Adapt-Accel**: {int(s.stages)} stages, about {n_sub} pruning sub-steps (≈ {n_sub * imp:.0f} s) "
                      f"and {n_accel} optimiser steps (≈ {accel_train:.0f} s), plus a quick perplexity after every "
                      f"prune and train: ≈ **{(n_sub * imp + accel_train) / 60:.1f} min** in all.")

    def cost_markdown(self, settings: StudioSettings | None = None) -> str:
        s = settings or self.settings
        sec, source = self.estimate_seconds(s)
        paper = 512 * 64
        return (f"**{self.calibration_tokens(s):,} calibration tokens per sub-step** ({s.n_windows} × {s.window}; "
                f"the paper uses {paper:,}) · importance ≈ **{sec:.0f} s** per sub-step with {s.criterion} "
                f"({source}), plus the quick evaluation")

    # ------------------------------------------------------------------ importance and preview
    def cancel(self) -> None:
        """Ask the running measurement / step / run to stop at the next safe point (the model stays intact)."""
        self._stop.set()

    def _begin(self) -> None:
        # A flag, not a thread-owned lock: a UI generator may be resumed in different worker threads.
        with self._flag_lock:
            if self._busy:
                raise SessionError("This session is busy with another task; wait for it or press Cancel")
            self._busy = True
        self._stop.clear()

    def _end(self) -> None:
        with self._flag_lock:
            self._busy = False

    @property
    def busy(self) -> bool:
        """True while a measurement, step, run, evaluation or export is in progress."""
        return self._busy

    def _current_importance_key(self) -> tuple:
        return _importance_key(self.pruner.config, self.pruner.calibration_text, self.steps_taken)

    def has_current_importance(self) -> bool:
        return self.importance is not None and self._importance_key == self._current_importance_key()

    def measure(self, settings: StudioSettings | None = None) -> Importance:
        """Importance of the current model on the next step's calibration sample (cached until something changes)."""
        if settings is not None:
            self.configure(settings)
        self._begin()
        try:
            return self._measure()
        finally:
            self._end()

    def _measure(self) -> Importance:
        if self.has_current_importance():
            return self.importance
        try:
            imp = self.pruner.measure(should_stop=self._stop.is_set)
        except Cancelled as exc:
            raise SessionError("Cancelled: importance was not measured, the model is unchanged") from exc
        self.importance, self._importance_key = imp, self._current_importance_key()
        self.shown_importance, self.shown_step = imp, self.steps_taken + 1
        if imp.seconds > 0:
            self._tokens_per_s[imp.criterion] = imp.tokens / imp.seconds
        return imp

    def importance_columns(self, normalised: bool = False) -> tuple[list[str], list[list[float]]]:
        """Layer importance per measurement, for the layers × steps heatmap: the importance each step used, then
        the pending measurement of the current model (if any)."""
        key = "layer_importance_norm" if normalised else "layer_importance"
        labels, cols = [], []
        for rec in self.pruner.record.steps:
            tag = self.column_tags.get(rec.index)
            labels.append(f"step {rec.index + 1}" + (f" · {tag}" if tag else ""))
            cols.append(getattr(rec, key))
        if self.has_current_importance():
            labels.append(f"step {self.steps_taken + 1} (next)")
            cols.append(getattr(self.importance, key))
        return labels, cols

    def sparsity_history(self) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
        """Per taken step: (allocated s_l, attention removed, MLP removed), each [step][layer]."""
        orig = self.pruner.origin.widths
        alloc, attn, mlp = [], [], []
        for rec in self.pruner.record.steps:
            alloc.append(list(rec.allocated_sparsity))
            attn.append([1 - w["num_kv_heads"] / o.num_kv_heads for w, o in zip(rec.widths, orig, strict=True)])
            mlp.append([1 - w["intermediate_size"] / o.intermediate_size for w, o in zip(rec.widths, orig, strict=True)])
        return alloc, attn, mlp

    def _params_of(self, widths: list[LayerWidths], now: list[LayerWidths]) -> int:
        counts = count_parameters(self.model)
        fixed = counts["decoder_layers"] - sum(self.geo.layer_prunable_params(w) for w in now)
        return counts["other"] + fixed + sum(self.geo.layer_prunable_params(w) for w in widths)

    def preview(self, settings: StudioSettings | None = None, max_steps: int = 200) -> Preview:
        """Plan every remaining step with the importance measured now (the real run re-measures before each
        step, so later columns are an estimate). Does not change the model or the session's settings."""
        s = settings or self.settings
        cfg = s.prune_config(self.pruner.config)
        if not self._surgery.acquire(timeout=2.0):
            raise SessionError("The model is being cut; the preview updates when the step finishes")
        try:
            imp = self.importance.layer_importance_norm if self.has_current_importance() else None
            notes = []
            if cfg.method == "adaptive" and imp is None:
                if self.shown_importance is None:
                    raise SessionError("Measure importance first: the adaptive allocation needs it")
                imp = self.shown_importance.layer_importance_norm
                notes.append(f"preview with the importance measured before step {self.shown_step}")
            if cfg.method == "custom" and (cfg.custom is None or len(cfg.custom) != len(self.pruner.sparsity)):
                raise SessionError("Fill the custom table: one final sparsity per layer")
            now = self.current_widths()
            orig = self.pruner.origin.widths
            total0 = self.pruner.origin.params["total"]
            target = int(round(s.target * total0))
            tol = max(1, int(0.001 * total0))
            if self._params_of(now, now) <= target + tol:
                raise SessionError(f"The model is already at or below the target ({s.target:.0%} of the original);"
                                   " lower the target to prune further")
            sp, widths = list(self.pruner.sparsity), now
            out = Preview([], [], [], [], False, notes)

            def plan(frac):
                a = allocate_sparsity(sp, imp, cfg.step * frac, cfg.amplitude * frac, cfg.method,
                                      cfg.max_sparsity, cfg.custom)
                w, floored = plan_widths(self.geo, orig, widths, a.sparsity, cfg.min_channels, cfg.multiple)
                return a, w, floored, self._params_of(w, now)

            for _ in range(max_steps):
                if self._params_of(widths, now) <= target + tol:
                    out.reached = True
                    break
                a, w, floored, p = plan(1.0)
                if p < target:  # the last step is shortened so it lands on the target
                    lo, hi = 0.0, 1.0
                    for _ in range(30):
                        mid = (lo + hi) / 2
                        lo, hi = (mid, hi) if plan(mid)[3] > target else (lo, mid)
                    a, w, floored, p = plan(hi)
                if w == widths:
                    out.notes.append("the plan stalls: every layer is at its floor or s_max before the target")
                    break
                sp, widths = a.sparsity, w
                out.allocated.append(list(sp))
                out.attention.append([1 - x.num_kv_heads / o.num_kv_heads for x, o in zip(w, orig, strict=True)])
                out.mlp.append([1 - x.intermediate_size / o.intermediate_size for x, o in zip(w, orig, strict=True)])
                out.params.append(p)
                for n in a.notes() + ([f"layers {floored}: at the floor"] if floored else []):
                    if n not in out.notes:
                        out.notes.append(n)
            return out
        except AllocationError as exc:
            raise SessionError(str(exc)) from exc
        finally:
            self._surgery.release()

    def final_sparsity_plan(self, settings: StudioSettings | None = None) -> list[float]:
        """Per-layer final sparsity of the adaptive plan (a starting point for a custom schedule); uniform when
        importance has not been measured."""
        s = replace(settings or self.settings, method="adaptive" if self.importance is not None else "uniform")
        p = self.preview(s)
        return p.allocated[-1] if p.allocated else list(self.pruner.sparsity)

    def budget_for_steps(self, n_steps: int, target: float | None = None) -> float:
        """The per-step budget Δ that reaches ``target`` (fraction of the original parameters) in about
        ``n_steps`` steps: the prunable share still to remove, spread evenly (clipping can add a step or two)."""
        if n_steps < 1:
            raise SessionError("The number of steps must be at least 1")
        target = self.settings.target if target is None else target
        total0 = self.pruner.origin.params["total"]
        now = self.current_widths()
        prunable0 = sum(self.geo.layer_prunable_params(w) for w in self.pruner.origin.widths)
        to_remove = self._params_of(now, now) - target * total0
        if to_remove <= 0:
            raise SessionError("The model is already at or below this target")
        return min(0.5, max(0.001, to_remove / prunable0 / n_steps))

    # ------------------------------------------------------------------ pruning
    def step(self, settings: StudioSettings | None = None) -> StepRecord:
        """One sub-step (re-using the importance measured for the current model when it is still valid)."""
        if settings is not None:
            self.configure(settings)
        self._begin()
        try:
            total0 = self.pruner.origin.params["total"]
            if count_parameters(self.model)["total"] <= self.pruner.config.target * total0 + max(1, int(0.001 * total0)):
                raise SessionError(f"The model is already at or below the target ({self.pruner.config.target:.0%} of "
                                   "the original); lower the target to prune further")
            return self._step()
        finally:
            self._end()

    def _step(self) -> StepRecord:
        imp = self._measure()
        try:
            with self._surgery:
                rec = self.pruner.step(None, importance=imp, should_stop=self._stop.is_set)
        except Cancelled as exc:
            raise SessionError("Cancelled: the model is unchanged") from exc
        except (AllocationError, ValueError) as exc:
            raise SessionError(str(exc)) from exc
        self.importance, self._importance_key = None, None
        return rec

    def run_to_target(self, settings: StudioSettings | None = None, prompt: str | None = None,
                      evaluate_every: int = 1) -> Iterator[Progress]:
        """Sub-steps until the target, yielding a :class:`Progress` before and after each one; ``cancel()`` stops
        after the current measurement or step (completed steps are kept). With ``prompt``, a quick evaluation
        follows every ``evaluate_every``-th step and the last one."""
        if settings is not None:
            self.configure(settings)
        self._begin()
        try:
            try:
                target = self.pruner.target_params()
            except (AllocationError, ValueError) as exc:
                raise SessionError(str(exc)) from exc
            tol = max(1, int(0.001 * self.pruner.origin.params["total"]))
            for k in range(self.pruner.config.max_steps):
                now = count_parameters(self.model)["total"]
                if now <= target + tol:
                    break
                sec, _ = self.estimate_seconds()
                yield Progress(f"Step {self.steps_taken + 1}: measuring importance on {self.calibration_tokens():,} "
                               f"tokens (≈ {sec:.0f} s) …")
                try:
                    rec = self._step()
                except SessionError:
                    if self._stop.is_set():
                        yield Progress(f"Cancelled after {k} step(s) of this run; the model is intact.", done=True)
                        return
                    raise
                ev = None
                last = count_parameters(self.model)["total"] <= target + tol
                if prompt is not None and ((k + 1) % max(evaluate_every, 1) == 0 or last):
                    yield Progress(f"Step {rec.index + 1} done; quick evaluation …", rec)
                    ev = self._quick_eval(prompt)
                yield Progress(f"Step {rec.index + 1} done: {rec.params_total / 1e6:.2f} M parameters "
                               f"({rec.fraction_of_original:.1%})", rec, ev)
                if self._stop.is_set():
                    yield Progress(f"Cancelled after step {rec.index + 1}; the model is intact.", rec, ev, done=True)
                    return
            yield Progress(f"Target reached: {count_parameters(self.model)['total'] / 1e6:.2f} M parameters.",
                           done=True)
        finally:
            self._end()

    def undo(self) -> StepRecord:
        """Undo the last step (up to ``keep_history`` steps back)."""
        self._begin()
        try:
            with self._surgery:
                rec = self.pruner.undo()
            if rec is None:
                raise SessionError("Nothing to undo (the history keeps the last "
                                   f"{self.keep_history} steps)")
            self.importance, self._importance_key = None, None
            self.trajectory = [p for p in self.trajectory if p.step <= self.steps_taken]
            self.last_eval = None
            return rec
        finally:
            self._end()

    def reset(self) -> None:
        """Back to the original model (a fresh copy); the trajectory and baseline are cleared."""
        self._begin()
        try:
            with self._surgery:
                self.model = copy.deepcopy(self.original).eval()
                self._new_pruner()
        finally:
            self._end()

    # ------------------------------------------------------------------ evaluation
    def quick_eval(self, prompt: str, settings: StudioSettings | None = None) -> Evaluation:
        """Parameters, quick perplexity (settings in the result), tokens/s and greedy generations, side by side."""
        if settings is not None:
            self.settings = settings
        self._begin()
        try:
            return self._quick_eval(prompt)
        finally:
            self._end()

    def _ppl(self, model: nn.Module) -> dict:
        s = self.settings
        return perplexity(model, self.tokenizer, s.ppl_dataset, s.ppl_split, window=s.ppl_window,
                          max_tokens=s.ppl_tokens, should_stop=self._stop.is_set)

    @torch.no_grad()
    def _generate(self, model: nn.Module, prompt: str) -> tuple[str, float]:
        enc = self.tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
        t0 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=self.settings.max_new_tokens, do_sample=False,
                             pad_token_id=self.tokenizer.pad_token_id)
        dt = time.perf_counter() - t0
        new = out[0, enc["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True), new.numel() / max(dt, 1e-9)

    def _original_reference(self, prompt: str) -> tuple[dict, str]:
        s = self.settings
        key = (s.ppl_dataset, s.ppl_split, s.ppl_window, s.ppl_tokens, prompt, s.max_new_tokens)
        if key not in self._original_eval:
            self._original_eval[key] = (self._ppl(self.original), self._generate(self.original, prompt)[0])
        return self._original_eval[key]

    def _quick_eval(self, prompt: str, track: bool = True) -> Evaluation:
        """``track=False``: do not add the result to the pruning trajectory (after training, whose effect the
        recovery points show)."""
        if not prompt or not prompt.strip():
            raise SessionError("Type a prompt for the side-by-side generation")
        try:
            ref_ppl, ref_gen = self._original_reference(prompt)
            ppl = self._ppl(self.model)
        except Cancelled as exc:
            raise SessionError("Cancelled during the evaluation; the model is unchanged") from exc
        gen, tps = self._generate(self.model, prompt)
        params = count_parameters(self.model)["total"]
        ev = Evaluation(self.steps_taken, params, params / self.pruner.origin.params["total"], ppl, tps, prompt, gen,
                        ref_gen, ref_ppl)
        if self._trajectory_settings != self.settings.ppl_settings():  # a new yardstick: start over
            self.trajectory, self.baseline, self.recovery, self.accel_start = [], [], [], None
            self._trajectory_settings = self.settings.ppl_settings()
        self.last_eval = ev
        if not track:
            return ev
        if not self.trajectory:
            self.trajectory.append(TrajectoryPoint(0, self.pruner.origin.params["total"], ref_ppl["perplexity"]))
        self.trajectory = [p for p in self.trajectory if p.step != ev.step or ev.step == 0]
        if ev.step > 0:
            self.trajectory.append(TrajectoryPoint(ev.step, params, ppl["perplexity"]))
        self.trajectory.sort(key=lambda p: p.step)
        return ev

    def trajectory_label(self) -> str:
        return f"quick perplexity: {self.settings.ppl_settings()}"

    def run_uniform_baseline(self, settings: StudioSettings | None = None) -> Iterator[Progress]:
        """Prune a copy of the original with the uniform allocation (A = 0) to the same target, with the same
        quick perplexity after every sub-step; the result overlays the trajectory. The working model is untouched."""
        s = settings or self.settings
        self._begin()
        try:
            model = copy.deepcopy(self.original).eval()
            cfg = replace(s.prune_config(self.pruner.config), method="uniform", custom=None)
            pruner = Pruner(model, self.tokenizer, cfg, keep_history=0, calibration_text=self._calibration_text(s))
            self.settings = s
            ref = self._ppl(self.original)
            if self._trajectory_settings != s.ppl_settings():
                self.trajectory, self._trajectory_settings = [], s.ppl_settings()
            points = [TrajectoryPoint(0, pruner.origin.params["total"], ref["perplexity"])]
            self.baseline = list(points)
            self.baseline_model = None
            yield Progress("Uniform baseline: pruning a copy of the original with A = 0 …")
            for rec in pruner.iter_run(should_stop=self._stop.is_set):
                ppl = self._ppl(model)
                points.append(TrajectoryPoint(rec.index + 1, rec.params_total, ppl["perplexity"]))
                self.baseline = list(points)
                yield Progress(f"Uniform baseline step {rec.index + 1}: {rec.params_total / 1e6:.2f} M parameters, "
                               f"perplexity {ppl['perplexity']:.2f}", rec)
            msg = "cancelled" if pruner.record.stopped else "done"
            if not pruner.record.stopped:  # kept for the zero-shot comparison (dense vs pruned vs uniform)
                self.baseline_model = model.eval()
            yield Progress(f"Uniform baseline {msg}: {len(points) - 1} step(s).", done=True)
            del model, pruner
        except (AllocationError, ValueError, Cancelled) as exc:
            raise SessionError(f"Uniform baseline stopped: {exc}") from exc
        finally:
            self._end()

    # ------------------------------------------------------------------ recovery training and Adapt-Accel
    MAX_TRAIN_TOKENS = 50_000_000

    def _check_tokens(self, tokens: int, what: str) -> int:
        try:
            tokens = int(tokens)
        except (TypeError, ValueError) as exc:
            raise SessionError(f"The {what} must be a whole number of tokens, got {tokens!r}") from exc
        if tokens <= 0:
            raise SessionError(f"The {what} must be a positive number of tokens, got {tokens:,}")
        if tokens > self.MAX_TRAIN_TOKENS:
            raise SessionError(f"The {what} ({tokens:,} tokens) is more than this studio runs in one go "
                               f"({self.MAX_TRAIN_TOKENS:,}); use `python -m pruner accel` for long runs")
        return tokens

    def _train_setup(self, s: StudioSettings):
        """TrainConfig, the (cached) training data and the teacher for distillation."""
        from .train import DataError, PackedData

        cfg = s.train_config(getattr(self.model.config, "max_position_embeddings", None))
        if not 0 < cfg.lr <= 0.1:
            raise SessionError(f"The learning rate must lie in (0, 0.1], got {cfg.lr}")
        if not 0 <= cfg.distill_weight <= 1:
            raise SessionError(f"The distillation weight must lie in [0, 1], got {cfg.distill_weight}")
        key = (cfg.data, cfg.seq_len, cfg.seed, cfg.exclude)
        if self._packed is None or self._packed[0] != key:
            try:
                self._packed = (key, PackedData(self.tokenizer, cfg.data, cfg.seq_len, cfg.seed, cfg.exclude))
            except DataError as exc:
                raise SessionError(str(exc)) from exc
        teacher = self.original if cfg.distill_weight > 0 else None
        return cfg, self._packed[1], teacher

    def _adopt_model(self, sparsity: list[float] | None = None) -> None:
        """After training or Adapt-Accel changed the model outside ``self.pruner``: a fresh Pruner on it (the
        undo history is cleared, since undoing a step would also undo the training) that keeps the record."""
        record = self.pruner.record
        self.pruner = Pruner(self.model, self.tokenizer, self.pruner.config, keep_history=self.keep_history,
                             calibration_text=self.pruner.calibration_text)
        self.pruner.record = record
        if sparsity is not None:
            self.pruner.sparsity = list(sparsity)
        self.importance, self._importance_key = None, None
        self.pruner._finish_record()

    def _log_train_step(self, ev: dict) -> None:
        self.train_log.losses.append(float(ev["loss"]))
        self.train_log.lrs.append(float(ev["lr"]))

    def train(self, tokens: int | None = None, settings: StudioSettings | None = None,
              prompt: str | None = None) -> Iterator[Progress]:
        """Recovery training of the working model on ``tokens`` tokens of the shipped corpora (AdamW, one WSD
        schedule over this round, gradient clipping, optional distillation from the original model), yielding a
        light :class:`Progress` (``kind="train_step"``) per optimiser step and a quick evaluation at the end.

        ``cancel()`` stops after the current optimiser step and keeps the completed steps. An error restores the
        weights from before the round. The undo history is cleared (undoing a step would undo the training).
        """
        from .train import iter_train

        s = settings or self.settings
        self._begin()
        try:
            tokens = self._check_tokens(s.train_tokens if tokens is None else tokens, "training budget")
            self.settings = s
            cfg, data, teacher = self._train_setup(s)
            yield Progress(f"Training: measuring the perplexity before ({s.ppl_settings()}) …")
            before = self._ppl(self.model)["perplexity"]
            snap = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            n0, r0 = len(self.train_log.losses), len(self.train_log.starts)
            label = f"train {sum(1 for p in self.recovery if p.stage is None) + 1}"
            self.train_log.starts.append(n0)
            self.train_log.labels.append(label)
            done = None
            try:
                for ev in iter_train(self.model, self.tokenizer, tokens, cfg, data=data, teacher=teacher,
                                     should_stop=self._stop.is_set):
                    if ev["event"] == "train_step":
                        self._log_train_step(ev)
                        yield Progress(f"Training step {ev['step']}/{ev['steps']}: loss {ev['loss']:.3f}, "
                                       f"lr {ev['lr']:.2e}, {ev['tokens_per_s']:.0f} tokens/s, "
                                       f"ETA {ev['eta_s']:.0f} s", kind="train_step")
                    else:
                        done = ev
            except BaseException:
                self.model.load_state_dict(snap)
                self.train_log.truncate(n0, r0)
                raise
            finally:
                self.model.eval()
            if done["steps"] == 0:
                self.train_log.truncate(n0, r0)
                yield Progress("Training cancelled before its first step; the model is unchanged.", done=True)
                return
            self._adopt_model(self.pruner.sparsity)
            if done["tokens_per_s"] > 0:
                self._tokens_per_s["train"] = done["tokens_per_s"]
            self._stop.clear()  # a cancel ended the training; the short evaluation after it still runs
            yield Progress(f"Trained {done['steps']} step(s) on {done['tokens']:,} tokens "
                           f"({done['tokens_per_s']:.0f} tokens/s); measuring the perplexity after …")
            after = self._ppl(self.model)["perplexity"]
            params = count_parameters(self.model)["total"]
            self.recovery.append(RecoveryPoint(label, params, before, after, done["tokens"]))
            ev = self._quick_eval(prompt, track=False) if prompt else None
            how = "cancelled after" if done["cancelled"] else "done:"
            yield Progress(f"Training {how} {done['steps']} step(s), {done['tokens']:,} tokens, "
                           f"{done['tokens_per_s']:.0f} tokens/s; perplexity {before:.2f} → {after:.2f} "
                           f"({s.ppl_settings()}).", evaluation=ev, done=True)
        except Cancelled as exc:
            raise SessionError("Cancelled during the evaluation; the model keeps its training") from exc
        finally:
            self._end()

    def run_accel(self, settings: StudioSettings | None = None, prompt: str | None = None) -> Iterator[Progress]:
        """Adapt-Accel from the working model to ``settings.target``: ``settings.stages`` stages, each pruning its
        equal share of parameters (adaptive sub-steps with the schedule settings) and then training on its share
        of ``settings.accel_tokens`` (linear growth). Streams every sub-step (``record``), every optimiser step
        (``kind="train_step"``) and every stage's perplexity after pruning and after training.

        ``cancel()`` ends the run at the last completed stage (the model is restored to it); an error does the
        same before it propagates as a :class:`SessionError`.
        """
        from .accel import AccelConfig, iter_accel

        s = settings or self.settings
        if settings is not None:
            self.configure(settings)
        self._begin()
        try:
            tokens = self._check_tokens(s.accel_tokens, "Adapt-Accel token budget")
            if not 1 <= int(s.stages) <= 50:
                raise SessionError(f"Adapt-Accel needs 1 to 50 stages, got {s.stages}")
            if s.method == "custom":
                raise SessionError("Adapt-Accel allocates adaptively (or uniformly); switch the allocation from custom")
            tcfg, data, teacher = self._train_setup(s)
            cfg = AccelConfig(target=s.target, stages=int(s.stages), tokens=tokens, prune=self.pruner.config,
                              train=tcfg, eval_dataset=s.ppl_dataset, eval_split=s.ppl_split, eval_window=s.ppl_window,
                              eval_max_tokens=s.ppl_tokens)
            text = self._calibration_text(s)
            mark = self._accel_mark()  # the end of the last completed stage (rolled back to on cancel or error)
            pruned_ppl: dict[int, float] = {}
            finished = False
            events = iter_accel(self.model, self.tokenizer, cfg, teacher=teacher, data=data,
                                should_stop=self._stop.is_set, calibration_text=text)
            try:
                for ev in events:
                    kind = ev["event"]
                    if kind == "start":
                        p0 = ev["params"]["total"]
                        ppl0 = ev["initial"]["perplexity"]["perplexity"]
                        self.accel_start = TrajectoryPoint(self.steps_taken, p0, ppl0)
                        plan = ", ".join(f"{st['target_params'] / 1e6:.1f} M" for st in ev["plan"])
                        yield Progress(f"Adapt-Accel: {len(ev['plan'])} stages ({plan}), {tokens:,} training tokens; "
                                       f"perplexity now {ppl0:.2f}")
                    elif kind == "prune_step":
                        rec = StepRecord(**{**ev["record"], "index": len(self.pruner.record.steps)})
                        self.pruner.record.steps.append(rec)
                        self.column_tags[rec.index] = f"stage {ev['stage']}"
                        yield Progress(f"Stage {ev['stage']}: sub-step cut to {rec.params_total / 1e6:.2f} M parameters "
                                       f"({rec.fraction_of_original:.1%})", rec)
                    elif kind == "pruned":
                        self.pruner.sparsity = list(ev["sparsity"])
                        pruned_ppl[ev["stage"]] = ev["perplexity"]["perplexity"]
                        self.train_log.starts.append(len(self.train_log.losses))
                        self.train_log.labels.append(f"stage {ev['stage']}")
                        yield Progress(f"Stage {ev['stage']} pruned to {ev['params'] / 1e6:.2f} M parameters: "
                                       f"perplexity {ev['perplexity']['perplexity']:.2f}; training …")
                    elif kind == "train_step":
                        self._log_train_step(ev)
                        yield Progress(f"Stage {ev['stage']} training step {ev['step']}/{ev['steps']}: loss "
                                       f"{ev['loss']:.3f}, {ev['tokens_per_s']:.0f} tokens/s, ETA {ev['eta_s']:.0f} s",
                                       kind="train_step")
                    elif kind == "trained":
                        k = ev["stage"]
                        if ev["tokens_per_s"] > 0:
                            self._tokens_per_s["train"] = ev["tokens_per_s"]
                        params = count_parameters(self.model)["total"]
                        self.recovery.append(RecoveryPoint(f"stage {k}", params, pruned_ppl[k],
                                                           ev["perplexity"]["perplexity"], ev["tokens"], stage=k))
                        mark = self._accel_mark()
                        yield Progress(f"Stage {k} trained on {ev['tokens']:,} tokens ({ev['tokens_per_s']:.0f} "
                                       f"tokens/s): perplexity {pruned_ppl[k]:.2f} → {ev['perplexity']['perplexity']:.2f}",
                                       self.pruner.record.steps[-1] if self.pruner.record.steps else None)
                    elif kind == "cancelled":
                        self._accel_rollback(*mark)
                        yield Progress(f"Adapt-Accel cancelled: {ev['message']}.", done=True)
                        return
                    elif kind == "done":
                        self.accel_report = ev["report"]
                        finished = True
            except BaseException as exc:
                events.close()  # iter_accel puts the model back at the end of the last completed stage
                self._accel_rollback(*mark)
                if isinstance(exc, (ValueError, AllocationError)):
                    raise SessionError(f"Adapt-Accel stopped: {exc}") from exc
                raise
            if finished:
                self._adopt_model(self.pruner.sparsity)
                ev = self._quick_eval(prompt, track=False) if prompt else None
                last = self.recovery[-1] if self.recovery else None
                yield Progress(f"Adapt-Accel done: {count_parameters(self.model)['total'] / 1e6:.2f} M parameters"
                               + (f", perplexity {last.perplexity_after:.2f}" if last else "") + ".",
                               evaluation=ev, done=True)
        finally:
            self._end()

    def _accel_mark(self) -> tuple[int, int, int, int, list[float]]:
        """What the session holds now, for :meth:`_accel_rollback`: record steps, losses, training rounds,
        recovery points and the sparsity."""
        return (len(self.pruner.record.steps), len(self.train_log.losses), len(self.train_log.starts),
                len(self.recovery), list(self.pruner.sparsity))

    def _accel_rollback(self, n_rec: int, n_loss: int, n_round: int, n_recovery: int, sparsity: list[float]) -> None:
        """Forget what an unfinished Adapt-Accel stage added (its model changes were undone by iter_accel)."""
        for rec in self.pruner.record.steps[n_rec:]:
            self.column_tags.pop(rec.index, None)
        del self.pruner.record.steps[n_rec:]
        del self.recovery[n_recovery:]
        self.train_log.truncate(n_loss, n_round)
        self._adopt_model(sparsity)

    # ------------------------------------------------------------------ zero-shot evaluation (pruner.evaluation)
    @staticmethod
    def zero_shot_available() -> bool:
        """True when the evaluation suite (``pruner.evaluation``) is installed and importable."""
        try:
            from . import evaluation  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    def zero_shot_tasks() -> list[str]:
        if not StudioSession.zero_shot_available():
            return []
        from .evaluation import TASKS

        return list(TASKS)

    def iter_zero_shot(self, tasks: list[str], limit: int | None, with_original: bool = True, with_baseline: bool = True,
                       batch_size: int = 8, seed: int = 0) -> Iterator[tuple[str, object]]:
        """Zero-shot accuracy of the working model, then (optionally) the original and the uniform baseline's
        pruned copy (when :meth:`run_uniform_baseline` has reached its target), on the same ``limit`` examples
        per task (None: every example). Yields ``(message, table)`` after each model, the table (:func:`pruner.evaluation.results_table`,
        acc or acc_norm named per row) holding every model so far; ``cancel()`` stops between batches."""
        from .evaluation import EvalError, evaluate, results_table

        if not tasks:
            raise SessionError("Pick at least one task")
        self._begin()
        try:
            models = [(f"pruned ({self.steps_taken} steps)", self.model)]
            if with_original:
                models.insert(0, ("original", self.original))
            if with_baseline and self.baseline_model is not None:
                models.append(("uniform baseline", self.baseline_model))
            runs = []
            for label, model in models:
                yield f"Zero-shot: evaluating the {label} model on {', '.join(tasks)} …", (
                    results_table(runs) if runs else None)
                runs.append((label, evaluate(model, self.tokenizer, list(tasks), limit, batch_size, seed,
                                             should_stop=self._stop.is_set)))
            yield f"Zero-shot: {len(runs)} model(s) evaluated.", results_table(runs)
        except Cancelled as exc:
            raise SessionError("Zero-shot evaluation cancelled") from exc
        except EvalError as exc:
            raise SessionError(str(exc)) from exc
        finally:
            self._end()

    def zero_shot(self, tasks: list[str], limit: int, with_original: bool = True, batch_size: int = 8, seed: int = 0,
                  with_baseline: bool = True):
        """The final table of :meth:`iter_zero_shot`."""
        out = None
        for _, table in self.iter_zero_shot(tasks, limit, with_original, with_baseline, batch_size, seed):
            out = table
        return out

    # ------------------------------------------------------------------ export
    def report(self) -> dict:
        """The run's report: pruning record, settings, trajectory, baseline and the last evaluation."""
        s = asdict(self.settings)
        s.pop("calibration_text", None)
        return {
            "model": self.name,
            "settings": s,
            "quick_perplexity_settings": self.settings.ppl_settings(),
            "record": self.pruner.record.to_dict(),
            "trajectory": [p.to_dict() for p in self.trajectory],
            "uniform_baseline": [p.to_dict() for p in self.baseline],
            "recovery_training": [p.to_dict() for p in self.recovery],
            "training_losses": asdict(self.train_log),
            "adapt_accel": self.accel_report,
            "last_evaluation": asdict(self.last_eval) if self.last_eval else None,
        }

    def export_report(self, out_dir: str | Path | None = None) -> Path:
        """Write the report JSON and return its path."""
        out = Path(out_dir or tempfile.mkdtemp(prefix="adapt-pruner-"))
        out.mkdir(parents=True, exist_ok=True)
        path = out / "adapt_pruner_report.json"
        path.write_text(json.dumps(self.report(), indent=1, default=str))
        return path

    def export_zip(self, out_dir: str | Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
        """Save the pruned model with :func:`pruner.save_pruned` and zip the folder; returns the zip's path."""
        self._begin()
        try:
            out = Path(out_dir or tempfile.mkdtemp(prefix="adapt-pruner-"))
            folder = out / "pruned-model"
            save_pruned(self.model, self.tokenizer, folder, record=self.pruner.record, overwrite=True)
            (folder / "studio_report.json").write_text(json.dumps(self.report(), indent=1, default=str))
            zpath = out / "pruned-model.zip"
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted(folder.rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(out))
            shutil.rmtree(folder, ignore_errors=True)
            return zpath
        finally:
            self._end()
