"""What the page's buttons and sliders do: each handler turns control values into settings, calls one session
method and returns the page updates. Long handlers are generators that stream progress."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr

import visualizations as viz
from pruner import PrunerError, load_model
from pruner.data import CALIBRATION_CHARS, CalibrationText

from . import text as page_text
from .inputs import BOUNDS, DELTA_STEP, InputProblem, check, custom_sparsity
from .pool import SessionPool
from .quality import EvaluationCancelled
from .session import StudioSession
from .settings import QUICK_PPL, UPLOADED, StudioSettings
from .text import READY
from .views import allocation_figure, compare_views, loss_figure, page_views, settings_label
from .workspace import SessionError

log = logging.getLogger("studio")

#: The checked controls (studio.inputs.BOUNDS) and their place among the schedule controls of settings_from.
CHECKED = {"target": 0, "amplitude": 1, "step": 2, "n_windows": 8, "window": 9}
METHOD = 4  # the method radio's place among them (the custom table follows it)


def settings_from(target, amplitude, step, criterion, method, custom, corpus, upload, n_windows, window, seed,
                  ppl_tokens, new_tokens) -> StudioSettings:
    """The schedule controls' values as :class:`StudioSettings` (percentages → fractions), validated by the
    library's configs; a value out of a control's range is refused in the page's words (:mod:`studio.inputs`)."""
    try:
        target, amplitude, step, n_windows, window = (check(n, v) for n, v in zip(
            CHECKED, (target, amplitude, step, n_windows, window), strict=True))
    except InputProblem as exc:
        raise SessionError(str(exc)) from exc
    text = None
    if corpus == UPLOADED:
        if not upload:
            raise SessionError("Choose a text file to upload, or pick a shipped corpus for calibration")
        try:  # only as much as calibration reads (a huge upload is not held whole)
            with open(upload, encoding="utf-8") as f:
                text = CalibrationText(f.read(CALIBRATION_CHARS), Path(upload).name)
        except (OSError, UnicodeDecodeError) as exc:
            raise SessionError(f"The uploaded file is not readable UTF-8 text ({exc})") from exc
        if not text.text.strip():
            raise SessionError(f"The uploaded file '{text.name}' holds no text")
    try:
        values = custom_sparsity(custom, method)
    except InputProblem as exc:
        raise SessionError(str(exc)) from exc
    seed = int(seed or 0)
    prune = dict(target=target / 100, amplitude=amplitude, step=step / 100, criterion=criterion, method=method,
                 custom=values, n_windows=int(n_windows), window=int(window), seed=seed)
    if corpus != UPLOADED:
        prune["calibration"] = corpus
    try:
        return StudioSettings.build(upload=text, prune=prune, train={"seed": seed},
                                    quick_ppl=replace(QUICK_PPL, max_tokens=int(ppl_tokens)),
                                    max_new_tokens=int(new_tokens))
    except PrunerError as exc:
        raise SessionError(str(exc)) from exc


def model_choices() -> list[tuple[str, str]]:
    """The model picker: the default model and the shipped real models (those not fetched yet say how)."""
    from pruner.io.shipped import SHIPPED, is_fetched

    out = [("default — SmolLM2-135M-Instruct (embedded)", "default")]
    for name, m in SHIPPED.items():
        out.append((f"{name} — {m.title}" if is_fetched(name) else
                    f"{name} — not fetched yet: run `adapt-pruner fetch {name}`", name))
    return out


def with_training(settings: StudioSettings, tokens, lr, distill, stages, accel_tokens) -> StudioSettings:
    """Add the training controls' values to the settings."""
    try:
        lr = float(lr)
    except (TypeError, ValueError) as exc:
        raise SessionError(f"The learning rate must be a number, got {lr!r}") from exc
    try:
        return StudioSettings.build(settings, train={"lr": lr, "distill_weight": float(distill)},
                                    train_tokens=int(tokens), stages=int(stages), accel_tokens=int(accel_tokens))
    except PrunerError as exc:
        raise SessionError(str(exc)) from exc


def fail(exc: Exception) -> str:
    """A readable message for the page (the traceback goes to the server log only)."""
    if isinstance(exc, PrunerError | ValueError | FileExistsError):
        msg = str(exc)
    else:
        log.exception("studio handler failed")
        msg = f"{type(exc).__name__}: {exc}"
    gr.Warning(msg)
    return f"⚠️ {msg}"


class SharedModel:
    """The startup model, loaded once and shared read-only by every session (each prunes its own copy). A load
    that failed is not retried for every visitor: its error is shown, and "Load model" picks another."""

    def __init__(self, source: str = "default", model=None, tokenizer=None, error: str | None = None):
        self.source, self.model, self.tokenizer, self.error = source, model, tokenizer, error
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self.error is not None:
                raise SessionError(f"The startup model '{self.source}' could not be loaded: {self.error}. "
                                   "Open “Model” and load another one.")
            if self.model is None:
                try:
                    self.model, self.tokenizer = load_model(self.source, progress=None)
                except PrunerError as exc:
                    self.error = str(exc)
                    raise
        return self.model, self.tokenizer


LOADING = "The model is still loading; try again in a moment"


def streamed(views_on_error: bool = True):
    """A generator handler of a session: a short message while the session is not there yet, and any error
    shown in the status box (with the page redrawn from the session's unchanged state)."""

    def deco(fn):
        @functools.wraps(fn)
        def handler(self, s, *args):
            if s is None:
                yield {self.page.status: LOADING}
                return
            try:
                yield from fn(self, s, *args)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                yield {self.page.status: fail(exc), **(self.views(s) if views_on_error else {})}

        return handler

    return deco


def immediate(fn):
    """A one-shot handler of a session, with the same guard and error display as :func:`streamed`."""

    @functools.wraps(fn)
    def handler(self, s, *args):
        try:
            if s is None:
                raise SessionError(LOADING)
            return fn(self, s, *args)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            return {self.page.status: fail(exc)}

    return handler


def _clamped(name: str, value: float, good: float) -> bool:
    """A value at an end of its slider, far from the last good one: the number box's own clamp of a typed value
    out of range (150 → 99, 0.5 → 30), sent as an input before the release carries what was typed; the arrow keys
    move a step at a time, and a drag to an end ends with a release."""
    b = BOUNDS[name]
    return value in (b.low, b.high) and abs(value - good) > 0.1 * (b.high - b.low)


class Handlers:
    """The handlers of one page; ``page`` holds its components (see :mod:`studio.ui`)."""

    def __init__(self, page, shared: SharedModel, pool: SessionPool):
        self.page, self.shared, self.pool = page, shared, pool

    def views(self, s, settings=None) -> dict:
        return page_views(self.page, s, settings)

    # ------------------------------------------------------------------ sessions
    def start_session(self, request: gr.Request):
        """A new browser session on the shared startup model (its own copy comes with its first change)."""
        p = self.page
        try:
            model, tok = self.shared.get()
            s = StudioSession.from_shared(model, tok, name=self.shared.source)
            self.pool.add(request.session_hash, s)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            return {p.status: fail(exc)}
        return {p.state: s, p.status: READY, **self.views(s), **compare_views(p, s)}

    def close_session(self, request: gr.Request):
        """The tab closed (Gradio's unload): free the session's models now instead of in an hour."""
        self.pool.release(request.session_hash)

    def load(self, source, request: gr.Request):
        p = self.page
        try:
            self.pool.release(request.session_hash)  # the tab's previous session and its models go first
            self.pool.claim(None)  # a model loaded for this tab alone counts against the limit
            model, tok = load_model(source.strip() or "default", progress=None)
            s = StudioSession.from_shared(model, tok, name=source.strip() or "default")
            s.work.own_original = True
            self.pool.add(request.session_hash, s)
        except Exception as exc:  # noqa: BLE001
            return {p.status: fail(exc)}
        # the picker again: a model fetched since the page was built is named as fetched now
        return {p.state: s, p.status: f"Loaded **{source}**.", **self.views(s), **compare_views(p, s),
                p.source: gr.update(choices=model_choices())}

    # ------------------------------------------------------------------ the schedule panel (light updates)
    def edited(self, s, *controls, notes: tuple[str, ...] = ()):
        """A schedule control changed: a value out of range is explained next to the controls and replaced by its
        last good one, and the plot is marked as being recomputed for exactly the settings now on screen (an older
        preview still running is superseded, see :class:`studio.panel.SchedulePanel`)."""
        p = self.page
        if s is None or s.work.closed:
            return gr.skip()
        values, out, problems = list(controls), {}, list(notes)
        for name, i in CHECKED.items():
            try:
                values[i] = check(name, values[i], s.panel.good[name])
                s.panel.good[name] = values[i]
            except InputProblem as exc:
                problems.append(str(exc))
                values[i] = s.panel.good[name]
                out[getattr(p, name)] = gr.update(value=values[i])
        try:
            settings = settings_from(*values)
        except SessionError as exc:
            problems.append(str(exc))
            return {**out, p.input_note: "  \n".join(f"⚠️ {m}" for m in problems)}
        s.panel.want(settings)
        note = {p.input_note: "  \n".join(f"⚠️ {m}" for m in problems)}
        if not s.panel.stale:  # a bad value put back: the plot already shows the plan for these settings
            return {**out, **note}
        return {**out, **note, p.alloc_md: page_text.PLAN_COMPUTING.format(label=settings_label(settings)),
                p.alloc_fig: gr.update(elem_classes=["stale"])}

    def nudged(self, s, *controls):
        """A control moved without a release: a slider stepped by the arrow keys, dragged, or a keystroke in its
        number box. Values that all pass are handled as an edit (the plan follows at once); a value that does not
        pass yet (a half-typed "3" on the way to "39") is left alone, for the release or the box's blur to
        explain — correcting it here would rewrite what the user is still typing."""
        if s is None or s.work.closed:
            return gr.skip()
        for name, i in CHECKED.items():
            try:
                v = check(name, controls[i], s.panel.good[name])
            except InputProblem:
                return gr.skip()
            if _clamped(name, v, s.panel.good[name]):
                return gr.skip()
        return self.edited(s, *controls)

    def preview(self, s, *controls):
        """The plan for the settings on screen, drawn only while no newer preview started meanwhile."""
        p = self.page
        if s is None or s.work.closed:
            return gr.skip()
        try:
            settings = settings_from(*controls)
        except SessionError:
            return gr.skip()  # edited() has explained it next to the controls
        # the values on screen when this preview was sent: the newest (previews start in the order sent, while
        # the edits run outside the queue and may arrive late, with older values)
        s.panel.want(settings)
        try:
            fig, note, n_planned = allocation_figure(s, settings)
            cost = s.costs.prune_markdown(settings)
        except Exception as exc:  # noqa: BLE001
            if s.work.closed:  # the tab closed while its preview was computing
                return gr.skip()
            return {p.alloc_md: fail(exc), p.alloc_fig: gr.update(elem_classes=[])}
        if not s.panel.current(settings):
            return gr.skip()
        s.panel.drawn(settings)
        out = {p.alloc_fig: gr.update(value=fig, elem_classes=[]), p.alloc_md: note, p.cost: cost}
        if n_planned:
            s.panel.good["n_steps"] = n_planned
            out[p.n_steps] = gr.update(value=n_planned)
        return out

    def steps_to_budget(self, s, n_steps, *controls):
        """"…or number of steps": Δ so that about ``n_steps`` steps reach the target, within Δ's range (the plan
        then says how many steps that Δ takes, and the steps box follows it)."""
        p = self.page
        if s is None or s.work.closed:
            return gr.skip()
        try:
            n = check("n_steps", n_steps, s.panel.good["n_steps"])
        except InputProblem as exc:
            return {**self.edited(s, *controls, notes=(str(exc),)), p.n_steps: gr.update(value=s.panel.good["n_steps"])}
        values = list(controls)
        try:
            target = check("target", values[CHECKED["target"]])
            want = 100 * s.schedule.budget_for_steps(int(n), target / 100)
        except (InputProblem, SessionError) as exc:
            return self.edited(s, *controls, notes=(str(exc),))
        low, high = BOUNDS["step"].low, BOUNDS["step"].high
        delta = min(high, max(low, round(want / DELTA_STEP) * DELTA_STEP))  # on the slider's grid
        notes = () if low <= want <= high else (page_text.STEPS_CLAMPED.format(n=n, want=want, low=low, high=high,
                                                                                delta=delta),)
        values[CHECKED["step"]] = delta
        return {**self.edited(s, *values, notes=notes), p.step: gr.update(value=delta)}

    def compare_cost(self, s, methods, *controls):
        """The Compare tab's estimate for the methods ticked and the settings on screen."""
        if s is None or s.work.closed:
            return gr.skip()
        try:
            return {self.page.cmp_cost: s.costs.compare_markdown(settings_from(*controls), methods)}
        except SessionError:
            return gr.skip()  # the schedule panel explains a bad value next to its control

    def train_cost(self, s, *values):
        if s is None or s.work.closed:
            return gr.skip()
        try:
            settings = settings_from(*values[5:])
        except SessionError:
            return gr.skip()  # the schedule panel explains a bad value next to its control
        try:
            return {self.page.train_cost: s.costs.train_markdown(with_training(settings, *values[:5]))}
        except Exception as exc:  # noqa: BLE001
            return {self.page.train_cost: fail(exc)}

    def custom_table(self, s, *controls):
        """Per-layer final sparsity (%) for a custom schedule, pre-filled with the last column of the adaptive plan
        to the target on screen (not the session's last applied one)."""
        import pandas as pd

        if s is None:
            return gr.update()
        try:
            values = list(controls)
            values[METHOD], values[METHOD + 1] = "adaptive", None  # the adaptive plan, without the table it fills
            vals = s.schedule.final_sparsity_plan(settings_from(*values))
        except SessionError as exc:
            fail(exc)
            return gr.update()
        return pd.DataFrame({"layer": list(range(len(vals))), "final sparsity %": [round(100 * v, 1) for v in vals]})

    def cancel(self, s):
        if s is not None:
            s.cancel()
        return {self.page.status: page_text.CANCELLING}

    # ------------------------------------------------------------------ model work
    @streamed(views_on_error=False)
    def measure(self, s, *controls):
        p = self.page
        settings = settings_from(*controls)
        s.configure(settings)
        sec, _ = s.costs.importance_seconds(s.settings)
        yield {p.status: f"Measuring importance on {s.costs.calibration_tokens(s.settings):,} tokens (≈ {sec:.0f} s) …"}
        imp = s.schedule.measure()
        yield {p.status: f"Measured in {imp.seconds:.1f} s on {imp.tokens:,} tokens"
                         + (f" (calibration loss {imp.loss:.3f})." if imp.loss is not None else "."),
               **self.views(s, settings)}

    def _plan_on_screen(self, s, settings: StudioSettings) -> Iterator[dict]:
        """Before a cut: the plot drawn for exactly these settings, if it shows another plan (a preview still
        computing, or superseded), so that what is cut is the plan on screen."""
        if s.panel.shown != settings:
            yield {self.page.status: "Drawing the plan for the settings on screen before cutting …",
                   **self.views(s, settings)}

    @streamed()
    def step(self, s, prompt, *controls):
        p = self.page
        settings = settings_from(*controls)
        s.configure(settings)
        yield from self._plan_on_screen(s, settings)
        if not s.schedule.has_current_importance():
            sec, _ = s.costs.importance_seconds(s.settings)
            yield {p.status: f"Step {s.steps_taken + 1}: measuring importance (≈ {sec:.0f} s) …"}
        rec = s.schedule.step()
        yield {p.status: f"Step {rec.index + 1} cut: {rec.params_total / 1e6:.2f} M parameters; evaluating …",
               **self.views(s, settings)}
        try:
            s.quality.quick_eval(prompt)
        except EvaluationCancelled:
            yield {p.status: f"Cancelled during step {rec.index + 1}'s evaluation: step {rec.index + 1} is kept "
                             f"({rec.params_total / 1e6:.2f} M parameters); measuring its perplexity for the "
                             "trajectory (no generation) …"}
            s.quality.quick_eval(prompt, with_generation=False)
        yield {p.status: f"Step {rec.index + 1} done: {rec.params_total / 1e6:.2f} M parameters "
                         f"({rec.fraction_of_original:.1%} of the original).", **self.views(s, settings)}

    @streamed()
    def run(self, s, prompt, every, *controls):
        settings = settings_from(*controls)
        s.configure(settings)
        yield from self._plan_on_screen(s, settings)
        for u in s.schedule.run_to_target(settings, prompt=prompt, evaluate_every=int(every)):
            yield {self.page.status: u.message, **(self.views(s, settings) if u.record is not None or u.done else {})}

    def _stream(self, s, updates, settings: StudioSettings, every: float = 0.5):
        """Page updates for a stream of progress: the loss curve alone for training steps (at most one update per
        ``every`` seconds), everything otherwise."""
        p, last = self.page, 0.0
        for u in updates:
            if u.kind == "train_step":
                now = time.monotonic()
                if now - last >= every:
                    last = now
                    yield {p.status: u.message, p.loss_fig: loss_figure(s)}
            else:
                yield {p.status: u.message, **self.views(s, settings)}

    @streamed()
    def train(self, s, prompt, *values):
        settings = with_training(settings_from(*values[5:]), *values[:5])
        yield from self._stream(s, s.training.train(settings=settings, prompt=prompt), settings)

    @streamed()
    def accel(self, s, prompt, *values):
        settings = with_training(settings_from(*values[5:]), *values[:5])
        yield from self._stream(s, s.training.run_accel(settings, prompt=prompt), settings)

    @immediate
    def undo(self, s):
        rec = s.undo()
        return {self.page.status: f"Undid step {rec.index + 1}.", **self.views(s)}

    @immediate
    def reset(self, s):
        s.reset()
        return {self.page.status: "Back to the original model.", **self.views(s)}

    @streamed(views_on_error=False)
    def evaluate(self, s, prompt, *controls):
        yield {self.page.status: "Evaluating …"}
        s.quality.quick_eval(prompt, settings_from(*controls))
        yield {self.page.status: "Evaluated.", **self.views(s)}

    @streamed(views_on_error=False)
    def baseline(self, s, *controls):
        settings = settings_from(*controls)
        for u in s.quality.run_uniform_baseline(settings):
            yield {self.page.status: u.message, **self.views(s, settings)}

    @immediate
    def export(self, s, dtype):
        p = self.page
        path = s.export_zip(dtype=dtype)
        return {p.zip_file: str(path), p.report_file: str(s.export_report(path.parent)),
                p.status: f"Saved the pruned model ({path.stat().st_size / 1e6:.1f} MB zip, {dtype} weights) and the "
                          "report."}

    @streamed(views_on_error=False)
    def zero_shot(self, s, tasks, limit, full, with_original, with_baseline):
        p = self.page
        limit = None if full else int(limit)
        yield {p.status: f"Zero-shot evaluation on {', '.join(tasks)} ({'all' if limit is None else limit} examples each) …"}
        table = None
        for msg, table in s.quality.iter_zero_shot(tasks, limit, with_original=with_original,
                                                   with_baseline=with_baseline):
            yield {p.status: msg, **({p.zs_table: table.round(3), p.zs_fig: viz.accuracy_bars(table.to_dict("records"))}
                                     if table is not None else {})}
        yield {p.status: "Zero-shot evaluation done." if table is not None else "Nothing evaluated."}

    @streamed(views_on_error=False)
    def compare(self, s, methods, zs_tasks, zs_limit, prompt, *controls):
        """Every chosen method on its own copy of the original, streamed; the downloads as each method finishes."""
        p = self.page
        settings = settings_from(*controls)
        n_files = 0
        for u in s.compare.run(methods, settings, prompt=prompt, zero_shot_tasks=zs_tasks or (),
                               zero_shot_limit=int(zs_limit)):
            files = len(s.compare.downloads())
            yield {p.status: u.message, **compare_views(p, s, with_files=files != n_files or u.done)}
            n_files = files
