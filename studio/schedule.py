"""The schedule of a session: importance of the current model (measured once per model and setting), the
preview of the planned sub-steps, prune one step, run to the target.

The preview is :meth:`pruner.Pruner.preview` — the same planner that cuts — so the first planned column is the
step that "Prune one step" will take with the importance on screen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pruner import AllocationError, Cancelled, PrunerError
from pruner.importance.measure import Importance
from pruner.pruning.planner import Schedule
from pruner.pruning.pruner import StepRecord

from .costs import LAYERS_ONLY, Costs
from .events import Progress
from .history import record_steps
from .layers import LayerMap
from .quality import EvaluationCancelled
from .settings import StudioSettings
from .text import RUN_CANCELLED
from .workspace import SessionError, Workspace


@dataclass
class Preview:
    """A planned schedule, per planned step: the allocation, the share of KV groups and of MLP channels removed
    (of the original) in every layer, and the total parameters."""

    allocated: list[list[float]]  # [step][layer] s_l
    attention: list[list[float]]
    mlp: list[list[float]]
    params: list[int]
    reached: bool  # the plan meets the target
    exact_first: bool  # the first planned step is exactly the next real step
    notes: list[str] = field(default_factory=list)
    widths: list[list[dict]] = field(default_factory=list)  # [step][remaining layer] LayerWidths as dicts

    @classmethod
    def of(cls, plan: Schedule, layers: LayerMap) -> Preview:
        """The plan's steps, one row per original layer (a layer removed by depth pruning shows as fully removed,
        allocation 1)."""
        out = cls([], [], [], [], plan.reached, bool(plan.steps) and not plan.steps[0].estimate, list(plan.notes))
        kept = layers.now
        for st in plan.steps:
            if st.remove_layers:
                kept = layers.after_removal(kept, st.remove_layers)
            out.allocated.append(layers.spread(list(st.sparsity), kept, 1.0))
            attn, mlp = layers.removed_share(st.widths, kept)
            out.attention.append(attn)
            out.mlp.append(mlp)
            out.params.append(st.params)
            out.widths.append([w.to_dict() for w in st.widths])
        return out


class ScheduleControl:
    """Importance cache, preview, steps and runs of one session."""

    def __init__(self, work: Workspace, costs: Costs, quality):
        self.work, self.costs, self.quality = work, costs, quality
        self.importance: Importance | None = None
        self._key: tuple | None = None
        self.tags: dict[int, str] = {}  # step index -> "stage k" for steps taken by Adapt-Accel
        self._plan: tuple[tuple, Preview] | None = None  # the last plan and what it was made from
        work.on_change(self._changed)

    def _changed(self, change: str) -> None:
        if change in ("reset", "load"):
            self.tags.clear()
        n = self.work.steps_taken
        self.tags = {i: t for i, t in self.tags.items() if i < n}

    # ------------------------------------------------------------------ importance
    def _current_key(self) -> tuple:
        c, text = self.work.pruner.config, self.work.pruner.calibration_source
        return (self.work.version, c.criterion, c.calibration, c.n_windows, c.window, c.seed, c.batch_size, text)

    def has_current_importance(self) -> bool:
        return self.importance is not None and self._key == self._current_key()

    def current_importance(self) -> Importance | None:
        return self.importance if self.has_current_importance() else None

    def shown_importance(self) -> tuple[Importance | None, int]:
        """The latest measurement to display, and the (1-based) step it was taken before."""
        if self.has_current_importance():
            return self.importance, self.work.steps_taken + 1
        last = self.work.pruner.last_measurement
        return (last, self.work.steps_taken) if last is not None else (None, 0)

    def measure(self, settings: StudioSettings | None = None) -> Importance:
        """Importance of the current model on the next step's calibration sample (cached until something changes)."""
        if settings is not None:
            self.work.configure(settings)
        with self.work.task():
            return self._measure()

    def adopt(self, imp: Importance) -> bool:
        """Take an importance measured elsewhere on the current model, on the next step's calibration sample with
        the current settings (the explorer's, :mod:`studio.explore`), unless one is held already; True if taken."""
        if self.has_current_importance():
            return False
        self.importance, self._key = imp, self._current_key()
        return True

    def _measure(self) -> Importance:
        if self.has_current_importance():
            return self.importance
        try:
            imp = self.work.pruner.measure(should_stop=self.work.should_stop)
        except Cancelled as exc:
            raise SessionError("Cancelled: importance was not measured, the model is unchanged") from exc
        self.importance, self._key = imp, self._current_key()
        self.costs.observe(imp.criterion or LAYERS_ONLY, imp.tokens, imp.seconds)
        return imp

    def measure_changed(self) -> Importance | None:
        """Inside the caller's task, after training or Adapt-Accel changed the model: measure its importance so
        that the heatmaps show the units of the model as it is now (the next step reuses it). None when a cancel
        stopped the measurement (the heatmap then asks for a measurement)."""
        try:
            return self._measure()
        except SessionError:
            if self.work.cancelled:
                return None
            raise

    def importance_columns(self, normalised: bool = False) -> tuple[list[str], list[list[float]]]:
        """Layer importance per measurement, for the layers × steps heatmap: the importance each step used, then
        the pending measurement of the current model (if any)."""
        key = "layer_importance_norm" if normalised else "layer_importance"
        layers = self.layer_map()
        labels, cols = [], []
        for k, rec in enumerate(self.work.pruner.record.steps):
            tag = self.tags.get(rec.index)
            labels.append(f"step {rec.index + 1}" + (f" · {tag}" if tag else ""))
            cols.append(self._spread(layers, getattr(rec, key), layers.kept[k]))
        if self.has_current_importance():
            labels.append(f"step {self.work.steps_taken + 1} (next)")
            cols.append(self._spread(layers, getattr(self.importance, key), layers.now))
        return labels, cols

    @staticmethod
    def _spread(layers: LayerMap, values: list[float], kept: list[int]) -> list[float | None]:
        """One value per original layer (None: the layer was gone when this was measured); a record whose
        layers cannot be matched (it predates the map) is shown as it is."""
        return layers.spread(values, kept) if len(values) == len(kept) else list(values)

    def layer_map(self) -> LayerMap:
        """The original layers and which of them every step of the record had (depth pruning removes some)."""
        rec = self.work.pruner.record
        return LayerMap.of(self.work.pruner.origin, rec.steps, rec.original_widths)

    def sparsity_history(self) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
        """Per taken step: (allocated s_l, attention removed, MLP removed), each [step][original layer]; a layer
        removed by depth pruning counts as fully removed (allocation 1)."""
        layers = self.layer_map()
        alloc, attn, mlp = [], [], []
        for k, rec in enumerate(self.work.pruner.record.steps):
            kept = layers.kept[k + 1]
            alloc.append(layers.spread(list(rec.allocated_sparsity), kept, 1.0))
            a, m = layers.removed_share(rec.widths, kept)
            attn.append(a)
            mlp.append(m)
        return alloc, attn, mlp

    # ------------------------------------------------------------------ preview
    def preview(self, settings: StudioSettings | None = None) -> Preview:
        """Every remaining step, planned by the pruner's planner with the importance measured now (or, after a
        step, the last measurement's scores of the surviving units: an estimate). Changes nothing."""
        work = self.work
        s = settings or work.settings
        cfg = s.prune
        key = (work.version, id(self.current_importance()), id(work.pruner.last_measurement), cfg)
        if self._plan is not None and self._plan[0] == key:  # the same model, scores and settings: the same plan
            return self._plan[1]
        if not work.surgery.acquire(timeout=2.0):
            raise SessionError("The model is being cut; the preview updates when the step finishes")
        try:
            imp = self.current_importance()
            if imp is None and work.pruner.last_measurement is None:
                raise SessionError("Measure importance first: the plan needs the layer and unit scores")
            if work.pruner.reached(cfg):
                raise SessionError(f"The model is already at or below the target ({s.prune.target:.0%} of the original);"
                                   " lower the target to prune further")
            plan = work.pruner.preview(imp, cfg, measure=False)
        except AllocationError as exc:
            raise SessionError(str(exc)) from exc
        except PrunerError as exc:
            raise SessionError(str(exc)) from exc
        finally:
            work.surgery.release()
        out = Preview.of(plan, self.layer_map())
        if imp is None:
            out.notes.insert(0, f"an estimate from the importance measured before step {work.steps_taken}")
        self._plan = (key, out)
        return out

    def final_sparsity_plan(self, settings: StudioSettings | None = None) -> list[float]:
        """Per-layer final sparsity of the adaptive plan (a starting point for a custom schedule)."""
        s = (settings or self.work.settings).with_method("adaptive", custom=None)
        p = self.preview(s)
        return p.allocated[-1] if p.allocated else list(self.work.pruner.sparsity)

    def budget_for_steps(self, n_steps: int, target: float | None = None) -> float:
        """The per-step budget Δ that reaches ``target`` (fraction of the original parameters) in about
        ``n_steps`` steps: the prunable share still to remove, spread evenly (clipping can add a step or two)."""
        if n_steps < 1:
            raise SessionError("The number of steps must be at least 1")
        work = self.work
        target = work.settings.prune.target if target is None else target
        prunable0 = sum(work.pruner.geo.layer_prunable_params(w) for w in work.pruner.origin.widths)
        to_remove = work.params() - target * work.original_total
        if to_remove <= 0:
            raise SessionError("The model is already at or below this target")
        return min(0.5, max(0.001, to_remove / prunable0 / n_steps))

    # ------------------------------------------------------------------ pruning
    def step(self, settings: StudioSettings | None = None) -> StepRecord:
        """One sub-step (re-using the importance measured for the current model when it is still valid)."""
        if settings is not None:
            self.work.configure(settings)
        with self.work.task():
            if self.work.pruner.reached():
                raise SessionError(f"The model is already at or below the target ({self.work.pruner.config.target:.0%}"
                                   " of the original); lower the target to prune further")
            rec = self._step()
            record_steps(self.work, self.work.settings, [rec], "one step")  # its quick perplexity joins it later
            return rec

    def _step(self) -> StepRecord:
        imp = self._measure()
        try:
            return self.work.step(imp, self.work.should_stop)
        except Cancelled as exc:
            raise SessionError("Cancelled: the model is unchanged") from exc
        except PrunerError as exc:
            raise SessionError(str(exc)) from exc

    def run_to_target(self, settings: StudioSettings | None = None, prompt: str | None = None,
                      evaluate_every: int = 1) -> Iterator[Progress]:
        """Sub-steps until the target, yielding a :class:`Progress` before and after each one; ``cancel()`` stops
        after the current measurement or step (completed steps are kept). With ``prompt``, a quick evaluation
        follows every ``evaluate_every``-th step and the last one."""
        work = self.work
        if settings is not None:
            work.configure(settings)
        with work.task():
            try:
                work.pruner.target_params()
            except PrunerError as exc:
                raise SessionError(str(exc)) from exc
            start, recorded = work.steps_taken, False
            try:
                for u in self._run_steps(start, prompt, evaluate_every):
                    if u.done:  # recorded before the last word, so that the page's history has it with that word
                        record_steps(work, work.settings, work.pruner.record.steps[start:], "run to target")
                        recorded = True
                    yield u
            finally:  # one experiment for the steps this run kept, whatever ended it
                if not recorded:
                    record_steps(work, work.settings, work.pruner.record.steps[start:], "run to target")

    def _run_steps(self, start: int, prompt: str | None, evaluate_every: int) -> Iterator[Progress]:
        work = self.work
        for k in range(work.pruner.config.max_steps):
            if work.pruner.reached():
                break
            sec, _ = self.costs.importance_seconds(work.settings)
            yield Progress(f"Step {work.steps_taken + 1}: measuring importance on "
                           f"{self.costs.calibration_tokens(work.settings):,} tokens (≈ {sec:.0f} s) …")
            try:
                rec = self._step()
            except SessionError:
                if work.cancelled:
                    when = f"while measuring and cutting step {work.steps_taken + 1} (it was not cut)"
                    yield Progress(self.kept_message(when, start), done=True)
                    return
                raise
            ev, stopped = None, False
            last = work.pruner.reached()
            if prompt is not None and ((k + 1) % max(evaluate_every, 1) == 0 or last):
                yield Progress(f"Step {rec.index + 1} done; quick evaluation …", rec)
                ev, stopped = yield from self._evaluate_kept(prompt, rec)
            yield Progress(f"Step {rec.index + 1} done: {rec.params_total / 1e6:.2f} M parameters "
                           f"({rec.fraction_of_original:.1%})", rec, ev)
            if work.cancelled or stopped:
                when = f"after step {rec.index + 1}" + (" during its quick evaluation" if stopped else "")
                yield Progress(self.kept_message(when, start), rec, ev, done=True)
                return
        yield Progress(f"Target reached: {work.params() / 1e6:.2f} M parameters.", done=True)

    def _evaluate_kept(self, prompt: str, rec: StepRecord):
        """The quick evaluation after a step of a run. A cancel during it keeps the step (it is cut) and still
        measures its perplexity, without the generation, so that the trajectory has every kept step. Returns the
        evaluation and whether Cancel came during it."""
        try:
            return self.quality.evaluate_now(prompt), False
        except EvaluationCancelled:
            self.work.clear_cancel()
            yield Progress(f"Cancelled during step {rec.index + 1}'s quick evaluation: step {rec.index + 1} is kept; "
                           "measuring its perplexity for the trajectory (no generation) …", rec)
            return self.quality.evaluate_now(prompt, with_generation=False), True

    def kept_message(self, when: str, start: int) -> str:
        """After a cancel: exactly which steps this run kept, and the model's size now."""
        work = self.work
        kept = work.steps_taken - start
        which = "" if kept == 0 else (f" (step {start + 1})" if kept == 1 else f" (steps {start + 1}–{work.steps_taken})")
        return RUN_CANCELLED.format(when=when, kept=kept, which=which, params=work.params() / 1e6,
                                    fraction=work.params() / work.original_total, total=work.steps_taken)
