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
            labels.append(f"step {rec.index + 1}")
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

    def _quick_eval(self, prompt: str) -> Evaluation:
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
            self.trajectory, self.baseline = [], []
            self._trajectory_settings = self.settings.ppl_settings()
        if not self.trajectory:
            self.trajectory.append(TrajectoryPoint(0, self.pruner.origin.params["total"], ref_ppl["perplexity"]))
        self.trajectory = [p for p in self.trajectory if p.step != ev.step or ev.step == 0]
        if ev.step > 0:
            self.trajectory.append(TrajectoryPoint(ev.step, params, ppl["perplexity"]))
        self.trajectory.sort(key=lambda p: p.step)
        self.last_eval = ev
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
            yield Progress("Uniform baseline: pruning a copy of the original with A = 0 …")
            for rec in pruner.iter_run(should_stop=self._stop.is_set):
                ppl = self._ppl(model)
                points.append(TrajectoryPoint(rec.index + 1, rec.params_total, ppl["perplexity"]))
                self.baseline = list(points)
                yield Progress(f"Uniform baseline step {rec.index + 1}: {rec.params_total / 1e6:.2f} M parameters, "
                               f"perplexity {ppl['perplexity']:.2f}", rec)
            msg = "cancelled" if pruner.record.stopped else "done"
            yield Progress(f"Uniform baseline {msg}: {len(points) - 1} step(s).", done=True)
            del model, pruner
        except (AllocationError, ValueError, Cancelled) as exc:
            raise SessionError(f"Uniform baseline stopped: {exc}") from exc
        finally:
            self._end()

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

    def zero_shot(self, tasks: list[str], limit: int, with_original: bool = True, batch_size: int = 8, seed: int = 0):
        """Zero-shot accuracy of the working model (and the original) on ``limit`` examples per task; returns the
        table of :func:`pruner.evaluation.results_table` (acc or acc_norm named per row)."""
        from .evaluation import evaluate, results_table

        if not tasks:
            raise SessionError("Pick at least one task")
        self._begin()
        try:
            runs = [(f"pruned ({self.steps_taken} steps)", evaluate(self.model, self.tokenizer, list(tasks), limit,
                                                                     batch_size, seed, should_stop=self._stop.is_set))]
            if with_original:
                runs.append(("original", evaluate(self.original, self.tokenizer, list(tasks), limit, batch_size,
                                                  seed, should_stop=self._stop.is_set)))
            return results_table(runs)
        except Cancelled as exc:
            raise SessionError("Zero-shot evaluation cancelled") from exc
        finally:
            self._end()

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
