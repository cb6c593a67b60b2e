"""What the Explore tab's controls and the schedule panel's "What-if perplexity" button do: each handler turns
control values into a :class:`~studio.explore.SweepRequest` and settings, calls the session's
:class:`~studio.explore.Exploration` and returns page updates. Nothing here changes the model."""

from __future__ import annotations

import gradio as gr

import visualizations as viz
from visualizations.explore import level_label

from . import text
from .explore import SweepRequest, point_label
from .handlers import fail, settings_from, streamed
from .inputs import InputProblem
from .views import page_views, settings_label
from .workspace import SessionError


def explore_views(page, s) -> dict:
    """The Explore tab from the session's exploration: curves, Pareto view, table, the points to pick, the
    sensitivity figure and the captions."""
    e = s.explore
    pts, label = e.plot_points(), e.ppl_label()
    base = e.baseline["perplexity"] if e.baseline and e.points else None
    choices = e.choices()
    out = {page.exp_curves: viz.sweep_curves(pts, label, base), page.exp_pareto: viz.sweep_pareto(pts, label),
           page.exp_by_a: viz.sweep_amplitude(pts, label),
           page.exp_table: e.table(), page.exp_caption: e.caption(),
           page.exp_pick: gr.update(choices=choices, value=choices[0][1] if choices else None)}
    return {**out, **sensitivity_views(page, s)}


def sensitivity_views(page, s) -> dict:
    r = s.explore.report
    if r is None:
        return {page.exp_sens: viz.sensitivity_figure(None), page.exp_sens_note: text.SCAN_NONE}
    t = r.table
    rho = "; ".join(f"{level_label(float(k))}: {'—' if v is None else f'{v:+.2f}'}"
                    for k, v in r.correlation.items())
    note = text.SCAN_CAPTION.format(model=s.explore.report_on[1], criterion=t.units.get("criterion", "—"),
                                    corpus=s.settings.calibration_label, tokens=t.tokens, base=t.base_loss,
                                    seconds=t.seconds, rho=rho)
    if s.explore.report_on[0] != s.work.version:
        note += "  \n" + text.EXPLORE_STALE.format(model=s.explore.model_words())
    return {page.exp_sens: viz.sensitivity_figure(t.increase, t.levels, r.layer_importance, r.correlation),
            page.exp_sens_note: note}


class ExploreHandlers:
    """The Explore tab's handlers and the What-if button of one page (``page`` holds the components)."""

    def __init__(self, page):
        self.page = page

    def _request(self, s, methods, targets, amplitudes, steps, scan, tokens, window, controls):
        """The tab's request and the schedule panel's settings; the evaluation sample set from the tab."""
        request = SweepRequest.parse(methods, targets, amplitudes, steps, scan)
        settings = settings_from(*controls)
        s.explore.set_sample(int(tokens), int(window))
        return request, settings

    def estimate(self, s, methods, targets, amplitudes, steps, scan, tokens, window, *controls):
        """The estimate line before anything runs (a bad value explained next to its box instead)."""
        p = self.page
        if s is None or s.work.closed:
            return gr.skip()
        try:
            request, settings = self._request(s, methods, targets, amplitudes, steps, scan, tokens, window, controls)
        except InputProblem as exc:
            return {p.exp_note: f"⚠️ {exc}", p.exp_estimate: ""}
        except SessionError as exc:  # the schedule panel explains its own bad values; say where to look
            return {p.exp_note: f"⚠️ {exc}", p.exp_estimate: ""}
        try:
            _, _, words = s.explore.estimate(settings, request)
        except SessionError as exc:
            return {p.exp_note: f"⚠️ {exc}", p.exp_estimate: ""}
        except Exception as exc:  # noqa: BLE001 - said in the page's words, the traceback in the log
            return {p.exp_note: fail(exc), p.exp_estimate: ""}
        return {p.exp_note: "", p.exp_estimate: words}

    @streamed(views_on_error=False)
    def run(self, s, methods, targets, amplitudes, steps, scan, tokens, window, *controls):
        """The sweep, streamed point by point; refused up front (next to the button) when too large."""
        p = self.page
        try:
            request, settings = self._request(s, methods, targets, amplitudes, steps, scan, tokens, window, controls)
        except (InputProblem, SessionError) as exc:
            yield {p.exp_note: f"⚠️ {exc}"}
            return
        shown = 0
        try:
            for message in s.explore.run(settings, request):
                fresh = len(s.explore.points) != shown or message.startswith(("Sweep done", "Sweep cancelled"))
                shown = len(s.explore.points)
                yield {p.status: message, p.exp_note: "", **(explore_views(p, s) if fresh else {})}
        except SessionError as exc:
            yield {p.exp_note: f"⚠️ {exc}", p.status: f"⚠️ {exc}"}
            return
        # the schedule panel may now hold the importance the sweep measured: its figures and plan are redrawn
        yield {p.status: message, **page_views(p, s, settings), **explore_views(p, s)}

    def show(self, s):
        """The tab drawn from the session (when it is opened: the model may have changed since the sweep)."""
        if s is None or s.work.closed:
            return gr.skip()
        return explore_views(self.page, s)

    def pick_row(self, s, evt: gr.SelectData):
        """A click on a row of the table picks that point (one with a result) for "use these settings"."""
        if s is None or s.work.closed or evt is None or evt.index is None:
            return gr.skip()
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        if not 0 <= int(row) < len(s.explore.points) or s.explore.points[int(row)].perplexity is None:
            return gr.skip()
        return gr.update(value=int(row))

    def use(self, s, index):
        """"Use these settings": the point's target (%), A, Δ (%) and method into the schedule panel's controls
        (the chain after this redraws the preview for them)."""
        p = self.page
        if s is None or s.work.closed:
            return gr.skip()
        try:
            v = s.explore.point_settings(index)
        except SessionError as exc:
            return {p.exp_note: f"⚠️ {exc}"}
        return {p.target: gr.update(value=v["target"]), p.amplitude: gr.update(value=v["amplitude"]),
                p.step: gr.update(value=v["step"]), p.method: gr.update(value=v["method"]),
                p.exp_note: text.EXPLORE_USED.format(label=point_label(s.explore.points[int(index)].settings))}

    @streamed(views_on_error=False)
    def what_if(self, s, *controls):
        """The predicted perplexity of the plan the schedule panel shows (its settings and eval sample named)."""
        p = self.page
        try:
            settings = settings_from(*controls)
        except SessionError as exc:
            yield {p.whatif_md: f"⚠️ {exc}"}
            return
        label = settings_label(settings)
        yield {p.whatif_md: text.WHATIF_RUNNING.format(label=label)}
        try:
            w, base = s.explore.what_if(settings)
        except Exception as exc:  # noqa: BLE001 - said in the page's words, the traceback in the log
            yield {p.whatif_md: fail(exc)}
            return
        if s.work.closed:  # the tab closed while it computed: nothing left to draw
            return
        yield page_views(p, s, settings)  # the what-if's words, and the plan, whose importance it may have measured
