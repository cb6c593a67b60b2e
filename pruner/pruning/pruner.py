"""The pruning loop: measure → plan → cut, in small sub-steps, until a parameter target is met.

Typical use (script or notebook)::

    from pruner import load_model, Pruner, PruneConfig
    model, tok = load_model("default")
    pruner = Pruner(model, tok, PruneConfig(target=0.8, method="adaptive", criterion="taylor"))
    plan = pruner.preview()            # the planned sub-steps to the target, nothing cut
    record = pruner.run()              # or: for step in pruner.iter_run(): ...
    pruner.undo()                      # back one sub-step (bounded history)

Every sub-step re-measures importance on a fresh calibration sample (``docs/method.md``), asks the
:class:`~pruner.pruning.planner.Planner` for the next sub-step — allocation, widths, the units to keep, shortened at the
end so the total lands on the target — and removes the other units physically. A sub-step is atomic: the
replacement modules are built first and swapped in at the end, so an error or a cancel leaves the model as it
was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import torch
from torch import nn

from pruner.config import PruneConfig
from pruner.data import CalibrationText, calibration_windows
from pruner.errors import AllocationError, Cancelled, ConfigError
from pruner.importance.measure import Importance, measure_importance
from pruner.model.adapters import adapter_for
from pruner.model.depth import build_layer_removal
from pruner.model.rotation import build_slicing
from pruner.model.structure import (
    LayerCut,
    Origin,
    apply_patch,
    build_cut,
    count_parameters,
    geometry,
    layer_widths,
    origin_of,
)
from pruner.model.undo import WidthUndo
from pruner.pruning.planner import PlannedStep, Planner, Schedule, UnitScores, target_params
from pruner.pruning.records import PruneRecord, StepRecord
from pruner.runtime.memory import peak_memory, release_free_memory

__all__ = ["PruneConfig", "PruneRecord", "Pruner", "StepRecord", "prune_to_target"]


class Pruner:
    """A pruning session over one model: sub-steps, run to target, preview, bounded undo, and the record."""

    def __init__(self, model: nn.Module, tokenizer, config: PruneConfig | None = None, keep_history: int = 3,
                 calibration_text: str | CalibrationText | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Pruner needs a model (torch.nn.Module), got {type(model).__name__}")
        adapter_for(model)  # an unsupported architecture is named first
        if tokenizer is None or not callable(tokenizer):
            raise ConfigError(f"Pruner needs the model's tokenizer (load_model returns both: model, tokenizer = "
                              f"load_model(...)), got {type(tokenizer).__name__}")
        if config is not None and not isinstance(config, PruneConfig):
            raise ConfigError(f"Pruner's config must be a PruneConfig, got {type(config).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or PruneConfig()
        self._set_calibration(calibration_text)
        self.adapter = adapter_for(model)
        self.geo = geometry(model, self.adapter)
        self.origin = origin_of(model)
        self.keep_history = keep_history
        # per sub-step: its undo (what it removed, pruner.model.undo; or a change of depth's inverse), the sparsity,
        # origin and held measurement before it, and its record
        self._history: list[tuple[object, list[float], Origin, StepRecord, tuple | None]] = []
        self._refresh()
        self.sparsity = self.planner.actual_sparsity(self.widths())
        # the last measurement and the scores of the units that survived its sub-step: reused by the next
        # sub-steps when config.remeasure is False, and by preview(measure=False) as an estimate
        self._last: tuple[Importance, UnitScores] | None = None
        self.record = self._new_record()

    # ------------------------------------------------------------------ setup
    def _planner(self, config: PruneConfig) -> Planner:
        return Planner(self.geo, self.origin.widths, self.fixed_params, config, self.origin.params["total"])

    def planner_for(self, config: PruneConfig | None = None) -> Planner:
        """The planner of ``config`` (default: the session's) over this model, e.g. to ask its method something."""
        return self.planner if config is None else self._planner(config)

    def _refresh(self) -> None:
        """Re-read the shape facts after a change of the model (new biases, fewer layers) and re-plan with them."""
        self.geo = geometry(self.model, self.adapter)
        # embeddings, lm_head and the final norm: outside the decoder layers, untouched by pruning
        self.fixed_params = self.params_total() - sum(self.geo.layer_params(w) for w in self.widths())
        self.planner = self._planner(self.config)

    def configure(self, config: PruneConfig, calibration_text: str | CalibrationText | None = None) -> None:
        """Replace the settings for the next sub-steps (validated first; nothing changes on error)."""
        self.planner = self._planner(config)
        self._set_calibration(calibration_text)
        if config.criterion != self.config.criterion or not config.remeasure:
            self._last = None  # scores of another criterion, or a held measurement of other settings
        self.config = config
        self.record.config = self.config_record()

    def _set_calibration(self, text: str | CalibrationText | None) -> None:
        """A text of the user's own (it overrides ``config.calibration``), kept with what the records say of it."""
        src = CalibrationText(text) if isinstance(text, str) else text
        old = getattr(self, "calibration_source", None)
        if src is None or old is None or src != old:
            self._calibration_facts = src.describe(self.tokenizer) if src is not None else None
        self.calibration_source = src
        self.calibration_text = src.text if src is not None else None

    def config_record(self) -> dict:
        """The settings as the records write them: a text of the user's own appears as what it is (file name,
        sha256, characters and tokens read), not as the corpus it replaces."""
        out = self.config.to_dict()
        if self._calibration_facts is not None:
            out["calibration"] = dict(self._calibration_facts)
        return out

    def _new_record(self) -> PruneRecord:
        return PruneRecord(
            config=self.config_record(),
            model_type=self.adapter.model_type,
            original_params=dict(self.origin.params),
            original_widths=[w.to_dict() for w in self.origin.widths],
            start_params=count_parameters(self.model, self.adapter),
            device=str(self.device),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def widths(self):
        return layer_widths(self.model, self.adapter)

    def params_total(self) -> int:
        return count_parameters(self.model, self.adapter)["total"]

    def target_params(self) -> int:
        """The target as a parameter count; raises AllocationError for a target the model cannot be pruned to."""
        return self.planner.check_target(self.widths())

    # ------------------------------------------------------------------ measure and plan
    def calibration(self, step_index: int) -> torch.Tensor:
        c = self.config
        return calibration_windows(self.tokenizer, c.calibration, c.n_windows, c.window, seed=c.seed + step_index,
                                   text=self.calibration_text)

    def measure(self, step_index: int | None = None, should_stop: Callable[[], bool] | None = None) -> Importance:
        """Measure layer and unit importance on the calibration sample of a step (no change to the model); a depth
        method (ShortGPT) measures the layers only."""
        idx = len(self.record.steps) if step_index is None else step_index
        windows = self.calibration(idx)
        method = self.planner.method
        return measure_importance(self.model, windows, method.measured_criterion, self.config.batch_size,
                                  should_stop, checkpoint=self.config.checkpoint,
                                  sensitivity_levels=method.sensitivity_levels)

    @property
    def _held(self) -> tuple[Importance, UnitScores] | None:
        return None if self.config.remeasure else self._last

    @property
    def last_measurement(self) -> Importance | None:
        """The importance measured for the last sub-step (None before the first)."""
        return self._last[0] if self._last else None

    def _scores(self, importance: Importance | None, measure: bool = True) -> UnitScores:
        if importance is not None:
            return UnitScores.of(importance)
        if self._held is not None:
            return self._held[1]
        if not measure:
            if self._last is None:
                raise AllocationError("Measure importance first: nothing has been measured on this model yet")
            return self._last[1]
        return UnitScores.of(self.measure())

    def plan(self, importance: Importance, fraction: float = 1.0) -> PlannedStep:
        """The sub-step that uses ``fraction`` of the per-step budget (no change to the model)."""
        return self.planner.plan(self.sparsity, self.widths(), UnitScores.of(importance), fraction,
                                 len(self.record.steps))

    def preview(self, importance: Importance | None = None, config: PruneConfig | None = None,
                measure: bool = True) -> Schedule:
        """The planned sub-steps from the current model to the target (nothing is cut).

        The first planned step is exactly what :meth:`step` does with the same ``importance``; later ones reuse
        its scores for the surviving units and are marked ``estimate`` (the run re-measures before every
        sub-step unless ``config.remeasure`` is False). Without ``importance`` it is measured now — or, with
        ``measure=False``, the last sub-step's measurement is reused and every step is an estimate. ``config``
        previews other settings without applying them.
        """
        planner = self.planner if config is None else self._planner(config)
        widths = self.widths()
        target = planner.check_target(widths)
        stale = importance is None and not measure and self._held is None
        scores = self._scores(importance, measure)
        out = planner.schedule(self.sparsity, widths, scores, target, len(self.record.steps))
        if stale:
            for st in out.steps:
                st.estimate = True
        return out

    # ------------------------------------------------------------------ one sub-step
    def step(self, fraction: float | None = None, importance: Importance | None = None,
             should_stop: Callable[[], bool] | None = None) -> StepRecord:
        """One sub-step: measure (unless given), plan, cut. ``fraction=None`` shortens the step so the run's
        target is not overshot. Atomic: on any error the model is unchanged."""
        t0 = time.perf_counter()
        index = len(self.record.steps)
        measured = importance is None and self._held is None
        if measured:
            importance = self.measure(index, should_stop)
        scores = self._scores(importance)
        shown = importance if importance is not None else self._held[0]
        t1 = time.perf_counter()
        widths_now = self.widths()
        if fraction is None:
            planned = self.planner.next_step(self.sparsity, widths_now, scores, self.target_params(), index)
        else:
            planned = self.planner.plan(self.sparsity, widths_now, scores, fraction, index)
        if planned.widths == widths_now and not planned.changes_structure:
            raise AllocationError(
                "This step would remove nothing: every layer is at its floor, its s_max or already at its "
                "allocation. " + " ".join(planned.allocation.notes()))
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled before the cut")
        patch, new_origin, held = self._build(planned, scores, widths_now)  # may fail: nothing changed yet
        old_origin, old = self.origin.copy(), (list(self.sparsity), self._last)
        inverse = apply_patch(self.model, patch, self.adapter)  # all or nothing
        try:  # the bookkeeping up to the written record: on any error the cut is undone
            self._set_origin(new_origin)
            self.sparsity = planned.sparsity
            self._last = (shown, held)
            self._refresh()
            t2 = time.perf_counter()
            if measured:
                sec, tokens = t1 - t0, shown.tokens
            elif importance is not None:
                sec, tokens = importance.seconds, importance.tokens
            else:  # the held measurement again: nothing measured in this sub-step
                sec, tokens = 0.0, 0
            rec = self._step_record(index, planned, shown, sec, tokens, t2 - t1)
            rec.removed_original_layers = [old_origin.kept_layers[li] for li in planned.remove_layers]
            self.record.steps.append(rec)
        except BaseException:
            apply_patch(self.model, inverse, self.adapter)
            self.sparsity, self._last = old
            self._set_origin(old_origin)
            self._refresh()
            raise
        self._history.append((inverse, old[0], old_origin, rec, old[1]))
        if len(self._history) > self.keep_history:
            self._history.pop(0)
        del patch, inverse
        release_free_memory()  # the replaced weights' heap pages, back to the system
        self._finish_record()
        return rec

    def _build(self, planned: PlannedStep, scores: UnitScores, widths_now) -> tuple[object, Origin, UnitScores]:
        """The patch that realises a planned step (nothing is changed yet), the origin after it, and the scores
        of what survives (for the next sub-steps when the measurement is held)."""
        if planned.remove_layers:
            patch = build_layer_removal(self.model, planned.remove_layers, self.adapter)
            return patch, self.origin.without_layers(planned.remove_layers), scores.without_layers(planned.remove_layers)
        if planned.slice_width is not None:  # SliceGPT: the residual stream rotated on this step's calibration
            patch = build_slicing(self.model, planned.slice_width, self.calibration(planned.index),
                                  self.config.batch_size)
            planned.decision.update(patch.decision)
            return patch, self.origin.copy(), scores
        changed = [li for li, (w, now) in enumerate(zip(planned.widths, widths_now, strict=True)) if w != now]
        if planned.compensate:  # FLAP: every layer gets its o_proj / down_proj bias, compensated where cut
            stats = scores.stats
            cuts = {li: LayerCut(planned.keep_groups[li], planned.keep_channels[li], stats[li]["o_mean"],
                                 stats[li]["down_mean"]) for li in range(len(widths_now))}
        else:
            cuts = {li: LayerCut(planned.keep_groups[li], planned.keep_channels[li]) for li in changed}
        patch = build_cut(self.model, cuts, self.adapter, lazy=True)  # built a layer at a time as it is applied
        origin = self.origin.copy()
        for li in changed:
            origin.kept_groups[li] = [origin.kept_groups[li][i] for i in planned.keep_groups[li]]
            origin.kept_channels[li] = [origin.kept_channels[li][i] for i in planned.keep_channels[li]]
        return patch, origin, scores.restricted(planned.keep_groups, planned.keep_channels, self.geo)

    def _set_origin(self, origin: Origin) -> None:
        """Update the model's origin in place (``origin_of(model)`` and ``self.origin`` are one object)."""
        self.origin.__dict__.update(origin.copy().__dict__)

    def _step_record(self, index: int, planned: PlannedStep, imp: Importance, sec_imp: float, tokens: int,
                     sec_cut: float) -> StepRecord:
        params = count_parameters(self.model, self.adapter)
        new_widths = self.widths()
        return StepRecord(
            index=index,
            fraction=planned.fraction,
            layer_cos=imp.layer_cos,
            layer_importance=imp.layer_importance,
            layer_importance_norm=imp.layer_importance_norm,
            calibration_loss=imp.loss,
            allocated_sparsity=planned.sparsity,
            actual_sparsity=self.planner.actual_sparsity(new_widths),
            constraints=planned.notes(),
            floored_layers=planned.floored,
            widths=[w.to_dict() for w in new_widths],
            params_total=params["total"],
            params_decoder=params["decoder_layers"],
            fraction_of_original=params["total"] / self.origin.params["total"],
            seconds_importance=sec_imp,
            seconds_surgery=sec_cut,
            calibration_tokens=tokens,
            importance_memory=imp.memory if tokens else None,
            method=planned.method,
            decision=planned.decision,
            removed_layers=list(planned.remove_layers),
        )

    def history_bytes(self) -> int:
        """Bytes the undo history holds: the rows, columns and entries its sub-steps removed (with their indices
        and the biases FLAP changed), and the decoder layers a change of depth removed."""
        present = {id(layer) for layer in self.adapter.layers(self.model)}
        total = 0
        for inverse, *_ in self._history:
            if isinstance(inverse, WidthUndo):
                total += inverse.nbytes
            else:  # a change of depth: its inverse lists every old layer, of which only the removed ones are extra
                total += sum(p.numel() * p.element_size() for layer in inverse.layers if id(layer) not in present
                             for p in layer.parameters())
        return total

    def undo(self) -> StepRecord | None:
        """Restore the model to before the last sub-step (up to ``keep_history`` steps back)."""
        if not self._history:
            return None
        inverse, old_sparsity, old_origin, rec, last = self._history.pop()
        apply_patch(self.model, inverse, self.adapter)
        self.sparsity, self._last = old_sparsity, last
        self._set_origin(old_origin)
        self._refresh()
        if self.record.steps and self.record.steps[-1] is rec:
            self.record.steps.pop()
        self._finish_record()
        return rec

    # ------------------------------------------------------------------ changes made elsewhere
    def adopt(self, steps: Sequence[StepRecord] = (), sparsity: Sequence[float] | None = None) -> list[StepRecord]:
        """Take over what changed the model outside this pruner (training, Adapt-Accel's stages): append their step
        records (renumbered after this record's), set the layers' sparsity, and drop the undo history (undoing a
        step would also undo the training). Returns the appended records."""
        added = [replace(rec, index=len(self.record.steps) + k) for k, rec in enumerate(steps)]
        self.record.steps.extend(added)
        if sparsity is not None:
            if len(sparsity) != len(self.sparsity):
                raise AllocationError(f"One sparsity per layer is needed ({len(self.sparsity)}), got {len(sparsity)}")
            self.sparsity = [float(v) for v in sparsity]
        self._history.clear()
        self._finish_record()
        return added

    def truncate(self, n_steps: int) -> None:
        """Forget the step records after the first ``n_steps`` (their model changes were undone elsewhere, e.g. by
        a cancelled Adapt-Accel stage); the undo history goes with them."""
        del self.record.steps[max(int(n_steps), 0):]
        self._history.clear()
        self._finish_record()

    def reached(self, config: PruneConfig | None = None) -> bool:
        """True when the model is at the target of ``config`` (default: the configured one), within the planner's
        tolerance."""
        target = (config or self.config).target
        return self.planner.reached(self.widths(), target_params(target, self.origin.params["total"]))

    # ------------------------------------------------------------------ run to the target
    def iter_run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[StepRecord]:
        """Sub-steps until the target is met, yielding each step's record as it completes.

        A cancel (``should_stop`` returning True) ends the run after the last completed step, with
        ``record.stopped == "cancelled"``; completed steps are kept.
        """
        target = self.target_params()  # validates before touching anything
        t0 = time.perf_counter()
        self.record.stopped = ""
        slack = self.planner.tolerance
        try:
            for _ in range(self.config.max_steps):
                if self.reached():
                    break
                if should_stop is not None and should_stop():
                    raise Cancelled("cancelled")
                # the coarsest notch the method moves by (a KV group; one slice of the residual stream for SliceGPT)
                slack = max(self.planner.tolerance, self.planner.method.resolution(self.widths()))
                yield self.step(None, should_stop=should_stop)
            self.record.stopped = self._missed(target, slack)
        except Cancelled:
            self.record.stopped = "cancelled"
        finally:
            self.record.seconds_total += time.perf_counter() - t0
            self._finish_record()

    def _missed(self, target: int, slack: int) -> str:
        """Why a run that ended without a cancel is not at its target ("" when it is): ``max_steps`` ran out
        first, or a sub-step cut below the target by more than ``slack`` (the tolerance or the method's coarsest
        notch before the last step, whichever is larger; a method of discrete fractions, ShortGPT's whole layers,
        lands where its layers allow)."""
        now, total0 = self.params_total(), self.origin.params["total"]
        if not self.reached():
            return (f"max_steps: {self.config.max_steps} sub-steps ran out at {now / total0:.1%} of the original, "
                    f"before the target ({target / total0:.1%}); raise max_steps or the per-step budget")
        if now < target - slack and self.planner.method.fractions(self.widths()) is None:
            return (f"missed: the last sub-step cut to {now / total0:.1%} of the original, below the target "
                    f"({target / total0:.1%}) by more than the tolerance; a smaller amplitude or per-step budget "
                    "lands closer")
        return ""

    def run(self, should_stop: Callable[[], bool] | None = None,
            progress: Callable[[StepRecord], None] | None = None) -> PruneRecord:
        """Prune to the target; returns the record. ``progress`` is called after every sub-step."""
        for rec in self.iter_run(should_stop):
            if progress is not None:
                progress(rec)
        return self.record

    def _finish_record(self) -> None:
        self.record.final_params = count_parameters(self.model, self.adapter)
        self.record.final_widths = [w.to_dict() for w in self.widths()]
        # the importance pass resets the peak counter for its own measurement: keep the run's maximum
        now, self.record.peak_memory_kind = peak_memory(self.device)
        self.record.peak_memory_bytes = max(now, self.record.peak_memory_bytes or 0)


def prune_to_target(model: nn.Module, tokenizer, config: PruneConfig | None = None, **kwargs) -> PruneRecord:
    """Convenience wrapper: ``Pruner(model, tokenizer, config).run(**kwargs)``."""
    return Pruner(model, tokenizer, config).run(**kwargs)
