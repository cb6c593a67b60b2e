"""The Explore tab of one session: sweeps of predicted perplexity over methods and settings, the per-layer
sensitivity beside the paper's layer importance, and the what-if of the schedule panel's settings — all from
:mod:`pruner.explore`, nothing cut.

    s.explore.estimate(settings, SweepRequest(["adaptive", "uniform"], [0.9, 0.8], [0, 0.05]))
    for message in s.explore.run(settings, request): print(message)      # points stream into s.explore.points
    s.explore.what_if(settings).describe()

Exploring never changes the model: the library masks it with hooks for one pass and removes them (the model is
bit-identical afterwards); the studio never makes the session's private copy for it, never cuts, never moves the
schedule's importance. The masks are installed on the working model, which may be the original every visitor
shares: that is safe because the page runs all model work one task at a time, server-wide (``HEAVY`` in
:mod:`studio.ui`), so no other forward pass meets the hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from pruner import Cancelled, PrunerError
from pruner.config import METHODS
from pruner.evaluation.perplexity import format_perplexity
from pruner.explore import (
    EvalSample,
    Explorer,
    SensitivityReport,
    SweepPoint,
    WhatIf,
    estimate_seconds,
    iter_sweep,
    sweep_grid,
)
from pruner.importance.measure import criterion_for
from pruner.importance.sensitivity import LEVELS, scan_forwards, scan_tokens
from pruner.methods import method_class

from . import text
from .inputs import BOUNDS, InputProblem, check
from .schedule import ScheduleControl
from .settings import StudioSettings, settings_label
from .workspace import SessionError, Workspace

#: The methods ticked at first: Adapt-Pruner and its own ablation (A = 0), a sweep of a minute or two on a CPU.
DEFAULT_METHODS = tuple(m for m in METHODS if method_class(m).incremental and not method_class(m).uses_custom)
#: A sweep estimated longer than this is refused before it starts (the page says how long it would take).
MAX_SECONDS = 600.0


@dataclass(frozen=True)
class SweepRequest:
    """What the Explore tab's controls ask for: methods, targets (fractions), amplitudes, Δ values (fractions;
    empty: the schedule panel's value) and whether to run the sensitivity scan."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    targets: tuple[float, ...] = (0.9, 0.8, 0.7)
    amplitudes: tuple[float, ...] = (0.0, 0.02, 0.05)
    steps: tuple[float, ...] = ()
    scan: bool = False

    @classmethod
    def parse(cls, methods, targets: str, amplitudes: str, steps: str, scan: bool) -> SweepRequest:
        """The tab's control values (targets and Δ in %) checked in the page's words: :class:`InputProblem`
        names the box and the value it cannot take."""
        unknown = [m for m in methods or () if m not in METHODS]
        if unknown:
            raise InputProblem(f"Unknown method(s) {', '.join(unknown)}: pick from the list")
        t = parse_values("target", targets)
        if not methods and not scan:
            raise InputProblem(text.EXPLORE_NOTHING)
        if methods and not t:
            raise InputProblem(text.EXPLORE_NO_TARGET)
        return cls(tuple(methods or ()), tuple(v / 100 for v in t), tuple(parse_values("amplitude", amplitudes)),
                   tuple(v / 100 for v in parse_values("step", steps)), bool(scan))


def parse_values(name: str, typed: str | None) -> list[float]:
    """``"90, 80, 70"`` → the values, each checked against the schedule control's range (:data:`BOUNDS`)."""
    out = []
    for part in (typed or "").replace(";", ",").split(","):
        part = part.strip().rstrip("%").strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise InputProblem(text.EXPLORE_NOT_A_NUMBER.format(label=BOUNDS[name].label, value=part)) from None
        out.append(check(name, v))
    return list(dict.fromkeys(out))


def point_label(settings: dict) -> str:
    """A point's settings in the page's words (what the method ignores left out): ``adaptive · target 80 % ·
    A 0.02 · Δ 5 %``."""
    tunes = method_class(settings["method"]).tunes
    out = [settings["method"], f"target {100 * settings['target']:g} %"]
    if "amplitude" in tunes:
        out.append(f"A {settings['amplitude']:g}")
    if "step" in tunes:
        out.append(f"Δ {100 * settings['step']:g} %")
    return " · ".join(out)


def curve_name(settings: dict, amplitude: bool = True) -> str:
    """The curve a point belongs to: its method and the settings other than the target (and A, unless
    ``amplitude`` is False: the lines of predicted perplexity against A)."""
    tunes = method_class(settings["method"]).tunes
    own = [f"A {settings['amplitude']:g}" if amplitude and "amplitude" in tunes else "",
           f"Δ {100 * settings['step']:g} %" if "step" in tunes else ""]
    return " · ".join([settings["method"], *[o for o in own if o]])


class Exploration:
    """Sweeps, the sensitivity scan and what-ifs of one session (see the module docstring)."""

    max_seconds = MAX_SECONDS

    def __init__(self, work: Workspace, schedule: ScheduleControl):
        self.work, self.schedule = work, schedule
        self.sample = EvalSample()
        self._explorer: Explorer | None = None
        self._key: tuple | None = None
        self.points: list[SweepPoint] = []
        self.grid_size = 0
        self.stopped = ""  # "", "cancelled"
        self.swept_on: tuple[int, str] | None = None  # the model version a sweep ran on, and the model in words
        self.baseline: dict | None = None  # the model as it is on the sample (when the sweep ran)
        self.report: SensitivityReport | None = None
        self.report_on: tuple[int, str] | None = None
        self.notes: list[str] = []  # what the explorer adds about the sample (beyond what a prediction is)
        self.whatif: tuple[WhatIf, object, StudioSettings, int] | None = None  # the last one, and the model version

    def close(self) -> None:
        """Let go of the explorer (it holds the session's pruner and model)."""
        self._explorer = self._key = None

    # ------------------------------------------------------------------ the explorer of the model now
    def set_sample(self, max_tokens: int, window: int) -> None:
        self.sample = replace(self.sample, max_tokens=int(max_tokens), window=int(window))

    def explorer(self) -> Explorer:
        """The explorer of the working model with its calibration settings and the evaluation sample (a new one
        when any of them changed), holding the importance the schedule panel measured, so that a plan it makes
        is the plan on screen."""
        w, p = self.work, self.work.pruner
        c = p.config
        key = (id(p), w.version, c.calibration, c.n_windows, c.window, c.seed, c.batch_size, p.calibration_source,
               self.sample)
        if key != self._key:
            self._explorer, self._key = Explorer(p, self.sample), key
        imp = self.schedule.current_importance()
        if imp is not None:
            levels = tuple(imp.sensitivity.levels) if imp.sensitivity is not None else None
            if not self._explorer.has_measurement(imp.criterion, levels):
                self._explorer.remember(imp, levels)
        return self._explorer

    def _share(self, ex: Explorer) -> None:
        """The schedule panel's plan needs the importance its method measures: when the explorer has just that one
        (same model, calibration sample and criterion), the panel uses it instead of asking to measure again. A
        session closed meanwhile (its tab gone, its models freed) has no panel left to share with."""
        if self.work.closed is not None:
            return
        m = self.work.pruner.planner.method
        want = (m.measured_criterion, m.sensitivity_levels)
        if self.schedule.has_current_importance() or not ex.has_measurement(*want):
            return
        imp = ex.measurement()
        got = (imp.criterion, tuple(imp.sensitivity.levels) if imp.sensitivity is not None else None)
        if got == want:
            self.schedule.adopt(imp)

    def model_words(self) -> str:
        w = self.work
        return f"{w.params():,} parameters, {w.steps_taken} step(s) taken"

    # ------------------------------------------------------------------ the grid and its cost
    def grid(self, settings: StudioSettings, request: SweepRequest) -> list:
        """The sweep's configurations: the schedule panel's settings (calibration, criterion, Δ …) with each
        combination of the request's methods, targets, amplitudes and Δ values."""
        if not request.methods:
            return []
        rule = next(m for m in METHODS if method_class(m).incremental and not method_class(m).uses_custom)
        try:
            base = settings.with_method(rule).prune  # a method scored by the criterion radio: every method's share
            return sweep_grid(base, list(request.methods), list(request.targets), list(request.amplitudes) or None,
                              list(request.steps) or None)
        except PrunerError as exc:
            raise SessionError(str(exc)) from exc

    def _missing(self, ex: Explorer, grid: list, scan: bool) -> list[tuple[str | None, tuple | None]]:
        """The measurements the sweep (and the scan) would have to make first."""
        p, need = self.work.pruner, {}
        for cfg in grid:
            m = p.planner_for(cfg).method
            need[(m.measured_criterion, m.sensitivity_levels)] = None
        if scan:
            need[(p.config.criterion, LEVELS)] = None
        return [k for k in need if not ex.has_measurement(*k)]

    def _seconds(self, ex: Explorer, grid: list, scan: bool) -> float:
        """The sweep's estimate (:func:`pruner.explore.estimate_seconds`) and the scan's forward passes."""
        total = estimate_seconds(ex, grid) if grid else 0.0
        c, p = self.work.pruner.config, self.work.pruner
        counted = set()  # what the sweep's estimate already includes (a sensitivity point measures the table)
        for cfg in grid:
            m = p.planner_for(cfg).method
            counted.add((m.measured_criterion, m.sensitivity_levels))
        if scan and (c.criterion, LEVELS) not in counted and not ex.has_measurement(c.criterion, LEVELS):
            b = ex.baseline()
            per_token = b["seconds"] / max(b["tokens_scored"], 1)
            total += scan_forwards(p.model, LEVELS) * scan_tokens(c.n_windows, c.window) * per_token
            if (c.criterion is not None and not ex.has_measurement(c.criterion)
                    and all(crit != c.criterion for crit, _ in counted)):
                total += (3 if criterion_for(c.criterion).needs_grad else 1) * c.n_windows * c.window * per_token
        return total

    def estimate(self, settings: StudioSettings, request: SweepRequest) -> tuple[float, int, str]:
        """Seconds, number of points and the estimate in words (which measurements it includes). Runs one plain
        forward pass over the evaluation sample the first time (what every estimate is scaled from)."""
        self.work.configure(settings)  # the calibration the measurements would use (the model is not touched)
        with self.work.task():
            ex = self.explorer()
            grid = self.grid(settings, request)
            sec = self._seconds(ex, grid, request.scan)
            missing = self._missing(ex, grid, request.scan)
        return sec, len(grid), self._estimate_words(sec, len(grid), request.scan, missing)

    def _estimate_words(self, sec: float, n: int, scan: bool, missing) -> str:
        what = [f"{n} point(s)"] if n else []
        if scan:
            what.append(f"the sensitivity scan ({len(self.work.widths())} layers × {len(LEVELS)} levels)")
        measures = [("the sensitivity table" if levels else f"importance ({crit or 'layers only'})")
                    for crit, levels in missing]
        head = text.EXPLORE_ESTIMATE.format(what=" and ".join(what), seconds=sec, minutes=sec / 60,
                                            sample=self.sample_words())
        head += (text.EXPLORE_MEASURES.format(what=", ".join(measures)) if measures else text.EXPLORE_MEASURED)
        if sec > self.max_seconds:
            head += "  \n" + text.EXPLORE_TOO_LARGE.format(seconds=sec, limit=self.max_seconds / 60)
        return head

    def sample_words(self) -> str:
        s = self.sample
        return f"{s.dataset} {s.split}, {s.window}-token windows, first {s.max_tokens:,} tokens"

    # ------------------------------------------------------------------ running
    def run(self, settings: StudioSettings, request: SweepRequest) -> Iterator[str]:
        """The sweep, point by point (each one appended to :attr:`points` before its message), then the scan if
        asked. Refused before anything runs when the estimate exceeds :attr:`max_seconds`; Cancel keeps the
        finished points."""
        work = self.work
        work.configure(settings)
        with work.task():
            ex = self.explorer()
            grid = self.grid(settings, request)
            sec = self._seconds(ex, grid, request.scan)
            if sec > self.max_seconds:
                raise SessionError(text.EXPLORE_TOO_LARGE.format(seconds=sec, limit=self.max_seconds / 60))
            on = (work.version, self.model_words())
            if grid:
                self.points, self.grid_size, self.stopped, self.swept_on = [], len(grid), "", on
                self.baseline = ex.baseline()
                self.notes = ex.notes(settings.prune)[1:]
            missing = self._missing(ex, grid, request.scan)
            yield text.EXPLORE_STARTED.format(n=len(grid), seconds=sec) + (
                text.EXPLORE_MEASURING if missing else "")
            try:
                for point in iter_sweep(ex, grid, work.should_stop):
                    self.points.append(point)
                    yield text.EXPLORE_POINT.format(k=len(self.points), n=len(grid), label=point_label(point.settings),
                                                    result=self.result_words(point))
                if request.scan:
                    c = work.pruner.config
                    yield text.SCAN_STARTED.format(layers=len(work.widths()), levels=len(LEVELS),
                                                   tokens=scan_tokens(c.n_windows, c.window))
                    self.report = ex.sensitivity(should_stop=work.should_stop)
                    self.report_on = on
            except Cancelled:
                self._share(ex)
                if not grid:
                    yield text.SCAN_CANCELLED
                    return
                self.stopped = "cancelled"
                yield text.EXPLORE_CANCELLED.format(k=len(self.points), n=len(grid))
                return
            self._share(ex)
            yield text.EXPLORE_DONE.format(k=len(self.points), scan=" and the sensitivity scan" if request.scan else "")

    @staticmethod
    def result_words(point: SweepPoint) -> str:
        if point.perplexity is None:
            return f"no result ({point.error})"
        return f"predicted perplexity {point.perplexity:.2f} at {point.fraction:.1%} of the parameters"

    def what_if(self, settings: StudioSettings) -> tuple[WhatIf, dict]:
        """The predicted perplexity of the plan the schedule panel shows for ``settings``, and the model's own on
        the same sample."""
        work = self.work
        work.configure(settings)
        with work.task():
            ex = self.explorer()
            try:
                w = ex.what_if(config=settings.prune, should_stop=work.should_stop)
                base = ex.baseline(work.should_stop)
                self._share(ex)
            except Cancelled as exc:
                raise SessionError(text.WHATIF_CANCELLED) from exc
            except PrunerError as exc:
                raise SessionError(str(exc)) from exc
        self.whatif = (w, base, settings, work.version)
        return w, base

    def whatif_markdown(self) -> str:
        """The last what-if in words, or — once the model has changed since (a step, a run, an undo, training, a
        reset) — what it was and that it no longer holds."""
        if self.whatif is None:
            return text.WHATIF_NONE
        w, base, settings, version = self.whatif
        words = dict(label=settings_label(settings), ppl=format_perplexity(w.perplexity), fraction=w.fraction,
                     steps=w.steps, base=format_perplexity(base), note=w.note)
        return (text.WHATIF_RESULT if version == self.work.version else text.WHATIF_STALE).format(**words)

    # ------------------------------------------------------------------ what the tab shows
    def plot_points(self) -> list[dict]:
        def amplitude(s: dict):
            return s["amplitude"] if "amplitude" in method_class(s["method"]).tunes else None

        return [{"method": p.settings["method"], "params": p.params, "perplexity": p.perplexity,
                 "target": p.settings["target"], "amplitude": amplitude(p.settings), "label": point_label(p.settings),
                 "curve": curve_name(p.settings), "family": curve_name(p.settings, amplitude=False)}
                for p in self.points]

    def choices(self) -> list[tuple[str, int]]:
        """The points a visitor can send to the schedule panel (those with a result)."""
        return [(f"{i + 1}. {point_label(p.settings)} → {p.perplexity:.2f}", i)
                for i, p in enumerate(self.points) if p.perplexity is not None]

    def point_settings(self, index) -> dict:
        """A point's settings as the schedule panel shows them (target and Δ in %)."""
        if index is None or not 0 <= int(index) < len(self.points):
            raise SessionError(text.EXPLORE_PICK)
        s = self.points[int(index)].settings
        return {"target": round(100 * s["target"], 2), "amplitude": s["amplitude"], "step": round(100 * s["step"], 2),
                "method": s["method"]}

    def table(self):
        """One row per point: its settings (— where the method ignores one), size and predicted perplexity."""
        import pandas as pd

        rows = []
        for i, p in enumerate(self.points):
            s, tunes = p.settings, method_class(p.settings["method"]).tunes
            rows.append({"#": i + 1, "method": s["method"], "target %": round(100 * s["target"], 2),
                         "A": s["amplitude"] if "amplitude" in tunes else "—",
                         "Δ %": round(100 * s["step"], 2) if "step" in tunes else "—",
                         "parameters": p.params if p.params is not None else "—",
                         "% of original": round(100 * p.fraction, 2) if p.fraction is not None else "—",
                         "predicted perplexity": round(p.perplexity, 3) if p.perplexity is not None else "—",
                         "plan": p.error or p.plan})
        cols = ["#", "method", "target %", "A", "Δ %", "parameters", "% of original", "predicted perplexity", "plan"]
        return pd.DataFrame(rows, columns=cols)

    def ppl_label(self) -> str:
        """What every predicted perplexity of the tab is measured on."""
        return text.PREDICTED_ON.format(sample=self.sample_words())

    def caption(self) -> str:
        if not self.points:
            return text.EXPLORE_NO_RESULTS
        version, words = self.swept_on
        out = text.EXPLORE_CAPTION.format(k=len(self.points), n=self.grid_size, model=words,
                                          sample=self.sample_words(),
                                          baseline=format_perplexity(self.baseline) if self.baseline else "—")
        out += "".join(f"  \nℹ️ {n}" for n in self.notes)
        if self.stopped:
            out += "  \n" + text.EXPLORE_KEPT.format(k=len(self.points), n=self.grid_size)
        if version != self.work.version:
            out += "  \n" + text.EXPLORE_STALE.format(model=self.model_words())
        return out
