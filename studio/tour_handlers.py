"""The Learn tab's handlers: Back / Next through the tour (:mod:`studio.tour`) and its one action per step."""

from __future__ import annotations

import gradio as gr

import visualizations as viz

from . import text, tour
from .handlers import LOADING, fail, settings_from
from .views import page_views

#: Each step's picture before its action has run (the figure's own empty state, titled as the step's picture).
_EMPTY = (lambda: viz.importance_bars([]), lambda: viz.amplitude_effect([], [], [], 0.0, tour.LARGE_AMPLITUDE),
          lambda: viz.layer_units(0, [], [], 1), lambda: viz.score_per_parameter(0, [], 0.0))


class TourHandlers:
    """The tour's handlers for one page (``page`` holds its components, see :mod:`studio.ui`)."""

    def __init__(self, page):
        self.page = page

    def outputs(self) -> list:
        p = self.page
        return [p.tour_k, p.tour_pos, p.tour_text, p.tour_btn, p.tour_layer, p.tour_fig, p.tour_note, p.tour_back,
                p.tour_next]

    def go(self, s, k, delta: int = 0) -> dict:
        """Show step ``k + delta`` (clamped to the tour): its text, its button, its picture before the action."""
        p = self.page
        k = min(max(int(k or 0) + delta, 0), len(tour.STEPS) - 1)
        step = tour.STEPS[k]
        layers = tour.layer_choices(s) if s is not None and not s.work.closed else []
        if k == len(tour.STEPS) - 1 and s is not None and not s.work.closed:
            fig, note = tour.trajectory(s)  # a read: the trajectory so far
        else:
            fig, note = (_EMPTY[k]() if k < len(_EMPTY) else None), text.TOUR_PRESS.format(action=step.action)
        return {p.tour_k: k, p.tour_pos: tour.position(k), p.tour_text: step.explain,
                p.tour_btn: gr.update(value=step.action),
                p.tour_layer: gr.update(visible=k == 2, choices=layers,
                                        value=layers[len(layers) // 2] if layers else None),
                p.tour_fig: fig, p.tour_note: note,
                p.tour_back: gr.update(interactive=k > 0), p.tour_next: gr.update(interactive=k < len(tour.STEPS) - 1)}

    def back(self, s, k):
        return self.go(s, k, -1)

    def next(self, s, k):
        return self.go(s, k, +1)

    def act(self, s, k, layer, prompt, *controls):
        """The action of step ``k``: streamed to the tour's note and the status line; the Studio tab's figures are
        redrawn after it (step 1 measures, step 5 prunes)."""
        p = self.page
        if s is None:
            yield {p.tour_note: f"⚠️ {LOADING}"}
            return
        k = int(k or 0)
        try:
            settings = settings_from(*controls)
            if k == 0:
                yield {p.status: "Tour step 1: measuring layer importance …", p.tour_note: "Measuring …"}
                fig, note = tour.measure_importance(s, settings)
                yield {p.tour_fig: fig, p.tour_note: note, p.status: "Tour step 1: measured.",
                       **page_views(p, s, settings)}
            elif k == 1:
                yield {p.tour_note: "Planning twice (nothing is cut) …"}
                fig, note = tour.amplitude_effect(s, settings)
                yield {p.tour_fig: fig, p.tour_note: note}
            elif k == 2:
                fig, note = tour.units_of_layer(s, int(layer if layer is not None else 0))
                yield {p.tour_fig: fig, p.tour_note: note}
            elif k == 3:
                yield {p.tour_note: "Planning the next step …"}
                fig, note = tour.score_policy(s, settings)
                yield {p.tour_fig: fig, p.tour_note: note}
            else:
                msg = ""
                for msg in tour.prune_and_evaluate(s, settings, prompt):
                    yield {p.status: msg, p.tour_note: msg}
                fig, note = tour.trajectory(s)
                yield {p.tour_fig: fig, p.tour_note: f"{msg}  \n{note}", **page_views(p, s, settings)}
        except tour.TourPrerequisite as exc:
            yield {p.tour_note: str(exc)}
        except Exception as exc:  # noqa: BLE001 - shown to the user
            msg = fail(exc)
            yield {p.tour_note: msg, p.status: msg, **(page_views(p, s) if k == len(tour.STEPS) - 1 else {})}
