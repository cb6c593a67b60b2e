"""Compare pruning methods in one session: each prunes its own copy of the *original* model to the session's target
with the same calibration settings, one after the other, and is measured the same way (the quick perplexity after
every sub-step, greedy tokens/s, optionally a zero-shot average), saved as a zip and freed::

    for update in s.compare.run(["adaptive", "flap", "shortgpt"]): print(update.message)
    s.compare.results[1].widths          # per original layer (None: removed), s.compare.table()

The working model is never touched, and a comparison holds at most one extra model at a time, claimed from the
visitor pool for the whole run like a private copy (:meth:`Workspace.extra_model`; a full studio refuses it before
anything runs). ``cancel()`` stops the method in progress (it is
dropped: a model short of the target compares with nothing) and keeps the finished ones; an error in one method is
recorded for that method and the next one runs.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
import traceback
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pruner import Cancelled, PrunerError, layer_widths
from pruner.config import METHODS
from pruner.model.structure import origin_of
from pruner.pruning.pruner import Pruner

from . import export
from .events import Progress
from .history import record_copy
from .layers import LayerMap
from .pool import release_memory
from .quality import Quality, TrajectoryPoint
from .settings import StudioSettings
from .workspace import SessionError, Workspace

log = logging.getLogger("studio")

#: The methods a comparison runs unless told otherwise: Adapt-Pruner, its own ablation (A = 0) and one baseline of
#: another kind, a few minutes on a CPU (the others are a tick away; custom needs a per-layer table).
DEFAULT_METHODS = ("adaptive", "uniform", "shortgpt")


@dataclass
class MethodResult:
    """One method of a comparison (or the original model, as the reference row)."""

    method: str
    status: str = "running"  # running, done, failed, cancelled; "reference" for the original model
    message: str = ""
    params: int | None = None
    fraction: float | None = None
    layers: int | None = None
    steps: int = 0
    trajectory: list[TrajectoryPoint] = field(default_factory=list)
    widths: list[dict | None] = field(default_factory=list)  # per original layer; None: the layer was removed
    perplexity: dict | None = None  # the quick perplexity of the final model (settings inside)
    tokens_per_s: float | None = None
    zero_shot: dict | None = None  # the average of pruner.evaluation (value, metric, stderr, tasks)
    seconds: float | None = None  # pruning only (measure and cut), without the evaluation
    zip_path: str | None = None
    config: dict = field(default_factory=dict)


class Comparison:
    """The methods compared in one session, and their downloads."""

    def __init__(self, work: Workspace, quality: Quality):
        self.work, self.quality = work, quality
        self.results: list[MethodResult] = []
        self.reference: MethodResult | None = None
        self.layers: LayerMap | None = None  # the original model's layers (full depth)
        self.settings: StudioSettings | None = None  # what the last comparison ran with
        self.zero_shot_settings: tuple[list[str], int] | None = None
        self.out_dir: Path | None = None
        self.model_refs: list[weakref.ref] = []  # every copy the last comparison made (they must not outlive it)

    def clear(self) -> None:
        """Forget the results and delete their downloads."""
        if self.out_dir is not None:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        self.results, self.reference, self.out_dir, self.model_refs = [], None, None, []

    close = clear

    def _stop(self) -> bool:
        return self.work.cancelled or self.work.closed is not None

    def config_for(self, s: StudioSettings, method: str):
        """The :class:`PruneConfig` of ``method`` with the session's schedule and calibration settings (a baseline
        puts in its own criterion)."""
        try:
            return s.with_method(method).prune
        except PrunerError as exc:
            raise SessionError(str(exc)) from exc

    # ------------------------------------------------------------------ the run
    def run(self, methods=DEFAULT_METHODS, settings: StudioSettings | None = None, prompt: str = "The",
            zero_shot_tasks=(), zero_shot_limit: int = 20) -> Iterator[Progress]:
        """Prune a copy of the original with every method in ``methods`` to ``settings.target``, in turn, streaming
        a :class:`Progress` per sub-step (``kind="compare"``). ``zero_shot_tasks``: also the zero-shot average on
        ``zero_shot_limit`` seeded examples per task (none: skipped)."""
        work = self.work
        s = settings or work.settings
        methods = list(dict.fromkeys(methods or []))
        if not methods:
            raise SessionError("Pick at least one method to compare")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise SessionError(f"Unknown method(s) {', '.join(unknown)}: use {', '.join(METHODS)}")
        if not prompt or not prompt.strip():
            raise SessionError("Type a prompt: tokens/s is measured on its greedy continuation")
        tasks = list(zero_shot_tasks or [])
        with work.task(), work.extra_model():  # one copy at a time for the whole run; the pool may refuse it
            self.clear()
            self.settings, self.zero_shot_settings = s, (tasks, int(zero_shot_limit)) if tasks else None
            self.out_dir = Path(tempfile.mkdtemp(prefix="adapt-pruner-compare-"))
            self.layers = LayerMap.of(origin_of(work.original))
            yield Progress("Comparison: measuring the original model …", kind="compare")
            try:
                self.reference = self._measure(work.original, MethodResult("original", "reference"), s, prompt)
            except Cancelled as exc:
                raise SessionError("Comparison cancelled while measuring the original model") from exc
            self.reference.params = work.original_total
            self.reference.fraction, self.reference.layers = 1.0, self.layers.n_layers
            for i, m in enumerate(methods):
                if self._stop():
                    break
                yield from self._run_method(m, s, prompt, f"{i + 1}/{len(methods)}")
            done = [r.method for r in self.results if r.status == "done"]
            failed = [r.method for r in self.results if r.status == "failed"]
            msg = (f"Comparison {'cancelled' if self._stop() else 'done'}: {len(done)} method(s) pruned to "
                   f"{s.prune.target:.0%}" + (f" ({', '.join(done)})" if done else "")
                   + (f"; failed: {', '.join(failed)} (see the table)" if failed else "") + ".")
            yield Progress(msg, kind="compare", done=True)

    def _run_method(self, method: str, s: StudioSettings, prompt: str, which: str) -> Iterator[Progress]:
        """One method on its own copy; the copy is freed before this returns, whatever happened."""
        res = MethodResult(method)
        self.results.append(res)
        yield Progress(f"Comparison {which}: {method} — pruning a copy of the original …", kind="compare")
        try:
            yield from self._prune(method, s, prompt, res, which)
        except Cancelled as exc:
            res.status, res.message = "cancelled", "cancelled before reaching the target"
            traceback.clear_frames(exc.__traceback__)
        except Exception as exc:  # noqa: BLE001 - reported for this method; the next one runs
            if not isinstance(exc, PrunerError):
                log.exception("comparison: %s failed", method)
            res.status, res.message = "failed", str(exc) if isinstance(exc, PrunerError) else f"{type(exc).__name__}: {exc}"
            traceback.clear_frames(exc.__traceback__)  # a logged traceback must not keep the copy alive
        finally:
            release_memory()  # the copy is gone: hand its memory back now, before the next method copies
        if res.status == "cancelled":
            yield Progress(f"Comparison cancelled during {method}; {method} is dropped, finished methods are kept.",
                           kind="compare")
        elif res.status == "failed":
            yield Progress(f"Comparison {which}: {method} failed: {res.message}", kind="compare")

    def _prune(self, method: str, s: StudioSettings, prompt: str, res: MethodResult, which: str) -> Iterator[Progress]:
        work = self.work
        cfg = self.config_for(s, method)
        res.config = cfg.to_dict()
        model = copy.deepcopy(work.original).eval()
        self.model_refs.append(weakref.ref(model))
        p = Pruner(model, work.tokenizer, cfg, keep_history=0, calibration_text=s.upload)
        p.record.source = work.name
        res.trajectory = [TrajectoryPoint(0, p.origin.params["total"], self.reference.perplexity["perplexity"])]
        ppl = None
        for rec in p.iter_run(should_stop=self._stop):
            ppl = self.quality.ppl(model, s)
            res.trajectory.append(TrajectoryPoint(rec.index + 1, rec.params_total, ppl["perplexity"]))
            res.steps = rec.index + 1
            yield Progress(f"Comparison {which}: {method} step {rec.index + 1}: {rec.params_total / 1e6:.2f} M "
                           f"parameters ({rec.fraction_of_original:.1%}), perplexity {ppl['perplexity']:.2f}",
                           rec, kind="compare")
        if p.record.stopped or ppl is None:
            raise Cancelled(p.record.stopped or "nothing pruned")
        res.seconds = p.record.seconds_total
        res.params = p.record.final_params["total"]
        res.fraction = res.params / p.origin.params["total"]
        res.layers = len(p.record.final_widths)
        res.widths = LayerMap.of(p.origin, p.record.steps, p.record.original_widths).full_widths(layer_widths(model))
        yield Progress(f"Comparison {which}: {method} at {res.fraction:.1%}; measuring speed"
                       + (" and zero-shot accuracy …" if self.zero_shot_settings else " …"), kind="compare")
        self._measure(model, res, s, prompt, ppl)
        name = f"{method}-{export.target_name(s.prune.target)}"
        res.zip_path = str(export.zip_model(model, work.tokenizer, self.out_dir, name, p.record,
                                            {"comparison": self.report_of(res), "settings": s.public()}))
        res.status = "done"
        record_copy(work, s, p.record, res.widths, res.perplexity, f"comparison: {method}")
        yield Progress(f"Comparison {which}: {method} done.", kind="compare")

    def _measure(self, model, res: MethodResult, s: StudioSettings, prompt: str, ppl: dict | None = None):
        """Quick perplexity (unless given), greedy tokens/s and the zero-shot average of ``model`` into ``res``."""
        res.perplexity = ppl if ppl is not None else self.quality.ppl(model, s)
        # the faster of two greedy runs: the first call of a model pays one-off costs (allocation, kernel choice)
        res.tokens_per_s = max(self.quality.generate(model, prompt, s)[1] for _ in range(2))
        if self.zero_shot_settings:
            from pruner.evaluation import EvalError, evaluate

            tasks, limit = self.zero_shot_settings
            t0 = time.perf_counter()
            try:
                out = evaluate(model, self.work.tokenizer, tasks, limit, batch_size=8, seed=0,
                               should_stop=self._stop)
            except EvalError as exc:
                raise SessionError(str(exc)) from exc
            res.zero_shot = {**out["average"], "seconds": time.perf_counter() - t0}
        return res

    # ------------------------------------------------------------------ what the page shows
    def finished(self) -> list[MethodResult]:
        return [r for r in self.results if r.status == "done"]

    def trajectories(self) -> dict[str, tuple[list[int], list[float]]]:
        """Per method (finished or running): the parameters and quick perplexity after every sub-step."""
        return {r.method: ([p.params for p in r.trajectory], [p.perplexity for p in r.trajectory])
                for r in self.results if r.trajectory and r.status in ("done", "running")}

    def widths(self) -> dict[str, list[dict | None]]:
        """Per finished method: its widths per original layer (None: removed)."""
        return {r.method: r.widths for r in self.finished()}

    def downloads(self) -> list[str]:
        return [r.zip_path for r in self.finished() if r.zip_path]

    def report_of(self, r: MethodResult) -> dict:
        return {"method": r.method, "status": r.status, "message": r.message, "params": r.params,
                "fraction_of_original": r.fraction, "layers": r.layers, "sub_steps": r.steps,
                "trajectory": [p.to_dict() for p in r.trajectory], "widths": r.widths, "perplexity": r.perplexity,
                "tokens_per_s": r.tokens_per_s, "zero_shot_average": r.zero_shot, "prune_seconds": r.seconds,
                "config": r.config}

    def table(self):
        """One row per model (the original first): parameters, share, layers, quick perplexity, zero-shot average,
        tokens/s, pruning seconds and status (a failed method's error)."""
        import pandas as pd

        rows = []
        for r in ([self.reference] if self.reference else []) + self.results:
            zs = r.zero_shot or {}
            rows.append({
                "method": r.method, "parameters": r.params, "% of original": _round(r.fraction, 100, 2),
                "layers": r.layers, "sub-steps": r.steps if r.status != "reference" else None,
                "quick perplexity": _round((r.perplexity or {}).get("perplexity"), 1, 2),
                "zero-shot avg": _round(zs.get("value"), 1, 3), "± se": _round(zs.get("stderr"), 1, 3),
                "tokens/s": _round(r.tokens_per_s, 1, 1), "prune s": _round(r.seconds, 1, 1),
                "status": r.status + (f": {r.message}" if r.message else ""),
            })
        return pd.DataFrame(rows, columns=["method", "parameters", "% of original", "layers", "sub-steps",
                                           "quick perplexity", "zero-shot avg", "± se", "tokens/s", "prune s",
                                           "status"])


def _round(v, scale: float, digits: int):
    return None if v is None else round(v * scale, digits)
