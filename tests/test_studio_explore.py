"""The studio's Explore tab without a browser (tiny model): requests in the page's words, a streamed sweep that
never changes the model and keeps its points on a cancel, the refusal of a sweep too large, the what-if of the
plan on screen, "use these settings" into the schedule panel, the sensitivity scan, and the figures."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

import visualizations as viz
from studio.explore import SweepRequest, parse_values, point_label
from studio.explore_page import ExploreHandlers
from studio.handlers import Handlers, settings_from
from studio.inputs import InputProblem
from studio.session import StudioSession
from studio.views import page_views
from studio.workspace import SessionError
from tests.test_session import same_state, state, tiny_model, tiny_settings, tiny_tokenizer
from tests.test_studio_panel import NAMES, controls

EXP = ("exp_note", "exp_estimate", "exp_curves", "exp_pareto", "exp_by_a", "exp_table", "exp_caption", "exp_pick",
       "exp_sens", "exp_sens_note", "whatif_md", "method")
SMALL = SweepRequest(("adaptive", "flap"), (0.9, 0.8), (0.0, 0.05))


def shared_session(**kw) -> StudioSession:
    """A session on a shared original (as every visitor of the studio starts), a short evaluation sample."""
    s = StudioSession.from_shared(tiny_model(), tiny_tokenizer(), name="tiny", settings=tiny_settings(**kw))
    s.explore.set_sample(256, 128)
    return s


def page():
    return SimpleNamespace(**{n: n for n in (*NAMES, *EXP)})


def tab_values(methods=("adaptive", "flap"), targets="90, 80", amps="0, 0.05", steps="", scan=False):
    return [list(methods), targets, amps, steps, scan, 256, 128]


@pytest.mark.parametrize("name, typed, words", [
    ("target", "90, 0.8", r"looks like a fraction: .* \(type 80 for 80 %\)"),
    ("target", "90, abc", "Every target size must be a number; “abc” is not"),
    ("target", "150", "can only shrink"),
    ("amplitude", "0, 0.5", "amplitude A must lie between 0 and 0.1; 0.5 is outside"),
    ("step", "0.1", "budget per step Δ must lie between 0.5 % and 10 %")])
def test_a_bad_value_in_a_sweep_box_is_explained_in_the_pages_words(name, typed, words):
    with pytest.raises(InputProblem, match=words):
        parse_values(name, typed)
    assert parse_values("target", "90 %, 80;70, 80") == [90, 80, 70]  # % signs, semicolons, duplicates
    with pytest.raises(InputProblem, match="Tick at least one method"):
        SweepRequest.parse([], "90", "0", "", False)
    with pytest.raises(InputProblem, match="at least one target"):
        SweepRequest.parse(["adaptive"], " ", "0", "", False)
    r = SweepRequest.parse(["uniform"], "90, 75", "", "2.5", True)
    assert r.targets == (0.9, 0.75) and r.amplitudes == () and r.steps == (0.025,) and r.scan


def test_a_sweep_streams_its_points_reuses_the_panels_importance_and_never_changes_the_model():
    s = shared_session()
    imp = s.schedule.measure()
    before = state(s.model)
    sec, n, words = s.explore.estimate(s.settings, SMALL)
    assert n == 6 and sec > 0  # adaptive × 2 targets × 2 amplitudes; FLAP ignores A: one point per target
    assert "6 point(s)" in words and "measuring importance (fluctuation)" in words and "(taylor)" not in words
    assert "wikitext2 valid, 128-token windows, first 256 tokens" in words
    seen = []
    for message in s.explore.run(s.settings, SMALL):
        seen.append((message, len(s.explore.points)))
    assert [k for m, k in seen if m.startswith("Sweep ") and "/" in m] == [1, 2, 3, 4, 5, 6]  # one message per point
    assert seen[-1][0].startswith("Sweep done: 6 point(s)")
    assert all(p.perplexity > 1 and 0.75 < p.fraction < 0.95 for p in s.explore.points)
    labels = [point_label(p.settings) for p in s.explore.points]
    assert labels == ["adaptive · target 90 % · A 0 · Δ 5 %", "adaptive · target 90 % · A 0.05 · Δ 5 %",
                      "adaptive · target 80 % · A 0 · Δ 5 %", "adaptive · target 80 % · A 0.05 · Δ 5 %",
                      "flap · target 90 %", "flap · target 80 %"]
    # exploring: no private copy of the shared model, no step, the same importance, every tensor equal
    assert not s.work.private and s.steps_taken == 0 and s.schedule.current_importance() is imp
    assert same_state(before, state(s.model)) and same_state(before, state(s.original))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in s.model.modules())
    table = s.explore.table()
    assert list(table["method"]) == [p.settings["method"] for p in s.explore.points]
    assert set(table.loc[table["method"] == "flap", "A"]) == {"—"}  # a setting FLAP ignores is a dash
    assert "6 of 6 point(s)" in s.explore.caption() and "wikitext2 valid, 128-token windows" in s.explore.caption()


def test_a_scan_the_sweep_makes_anyway_is_counted_once_in_the_estimate():
    s = shared_session()
    sens = SweepRequest(("sensitivity",), (0.8,), (0.0,))
    plain = SweepRequest(("adaptive",), (0.8,), (0.0,))
    a = s.explore.estimate(s.settings, sens)[0]  # the sensitivity point measures the table: the scan is in it
    b = s.explore.estimate(s.settings, SweepRequest(("sensitivity",), (0.8,), (0.0,), scan=True))[0]
    c = s.explore.estimate(s.settings, SweepRequest(("adaptive",), (0.8,), (0.0,), scan=True))[0]
    d = s.explore.estimate(s.settings, plain)[0]
    assert b < 1.3 * a  # not twice
    assert c - d > 0.5 * (a - d) > 0  # a scan the sweep does not make is counted


def test_cancel_keeps_the_finished_points_and_a_sweep_too_large_is_refused_before_it_starts():
    s = shared_session()
    messages = []
    for message in s.explore.run(s.settings, SMALL):
        messages.append(message)
        if len(s.explore.points) == 2:
            s.cancel()  # Cancel pressed after the second point
    assert messages[-1].startswith("Sweep cancelled: 2 of 6 point(s) finished and kept")
    assert len(s.explore.points) == 2 and s.explore.stopped == "cancelled"
    assert "Cancelled: 2 of 6 point(s) finished; they are kept" in s.explore.caption()
    kept = list(s.explore.points)
    s.explore.max_seconds = 1e-6
    _, _, words = s.explore.estimate(s.settings, SMALL)
    assert "more than this page runs at once" in words
    with pytest.raises(SessionError, match=r"A sweep estimated at \d+ s is more than this page runs"):
        next(s.explore.run(s.settings, SMALL))
    assert s.explore.points == kept and not s.busy  # nothing ran, the session is free again


def test_the_what_if_is_the_plan_on_screen_and_is_labelled_with_its_sample():
    s = shared_session()
    s.schedule.measure()
    settings = tiny_settings(target=0.75, amplitude=0.02)
    w, base = s.explore.what_if(settings)
    planned = s.schedule.preview(settings)
    assert w.params == planned.params[-1] and w.steps == len(planned.params)
    assert (w.perplexity["dataset"], w.perplexity["split"], w.perplexity["window"]) == ("wikitext2", "valid", 128)
    assert base["perplexity"] != w.ppl and not s.work.private
    h = ExploreHandlers(page())
    out = list(h.what_if(s, *controls(s, target=75, amplitude=0.02)))
    assert out[0]["whatif_md"].startswith("⏳ Predicting")
    md = out[-1]["whatif_md"]
    assert "What-if for target 75 % · A = 0.02" in md and "wikitext2 valid, 128-token windows" in md
    assert md.count("128-token windows") == 2  # the prediction and the model now, each with its sample
    assert "re-measures between sub-steps" in md  # what the number is not
    assert page_views(page(), s)["whatif_md"] == md  # redrawing the page keeps it while the model is the same
    s.schedule.step()
    stale = page_views(page(), s)["whatif_md"]  # the model changed: the prediction is marked, not shown as current
    assert "What-if for target 75 % · A = 0.02" in stale and "before its last change" in stale
    s.undo()
    assert "before its last change" in page_views(page(), s)["whatif_md"]  # an undone step is a change too


def test_the_tab_handlers_estimate_sweep_and_send_a_point_to_the_schedule_panel():
    s, p = shared_session(), page()
    h, main = ExploreHandlers(p), Handlers(p, shared=None, pool=None)
    out = h.estimate(s, *tab_values(targets="90, 0.8"), *controls(s))
    assert "looks like a fraction" in out["exp_note"] and out["exp_estimate"] == ""
    out = h.estimate(s, *tab_values(), *controls(s))
    assert out["exp_note"] == "" and out["exp_estimate"].startswith("**Estimate**: 6 point(s)")
    assert "includes measuring importance (taylor), importance (fluctuation) first" in out["exp_estimate"]
    updates = list(h.run(s, *tab_values(), *controls(s)))
    last = updates[-1]
    assert last["status"].startswith("Sweep done")
    assert "Plan for **target 85 %" in last["alloc_md"]  # the panel's plan, from the importance the sweep measured
    names = [t.name for t in last["exp_curves"].data]
    assert names[:3] == ["adaptive · A 0 · Δ 5 %", "adaptive · A 0.05 · Δ 5 %", "flap"]
    assert names[3].startswith("the model now: ") and len(names) == 4  # the dense model's line
    assert "wikitext2 valid" in last["exp_curves"].layout.title.text
    assert last["exp_pareto"].data[-1].name == "Pareto front"
    amp = last["exp_by_a"].data  # A at each fixed target: adaptive only (FLAP ignores A)
    assert [t.name for t in amp] == ["adaptive · Δ 5 % · target 90 %", "adaptive · Δ 5 % · target 80 %"]
    assert all(list(t.x) == [0, 0.05] for t in amp)
    choices = last["exp_pick"]["choices"]
    assert len(choices) == 6
    flap = next(i for label, i in choices if "flap · target 80 %" in label)
    assert h.pick_row(s, SimpleNamespace(index=[flap, 2]))["value"] == flap  # a click on the row picks it
    assert h.pick_row(s, SimpleNamespace(index=[99, 0])) == gr.skip()
    out = h.use(s, flap)
    assert (out["target"]["value"], out["method"]["value"]) == (80, "flap")
    assert out["amplitude"]["value"] == s.settings.prune.amplitude and out["step"]["value"] == 5
    adaptive = next(i for label, i in choices if "adaptive · target 80 % · A 0.05" in label)
    out = h.use(s, adaptive)
    assert (out["target"]["value"], out["amplitude"]["value"], out["method"]["value"]) == (80, 0.05, "adaptive")
    # the chain after it: the panel's edit and preview, with the controls now holding the point's values
    values = controls(s, target=out["target"]["value"], amplitude=out["amplitude"]["value"],
                      step=out["step"]["value"], method=out["method"]["value"])
    main.edited(s, *values)
    drawn = main.preview(s, *values)
    assert "Plan for **target 80 % · A = 0.05 · Δ = 5 %" in drawn["alloc_md"]
    assert s.panel.good["target"] == 80 and settings_from(*values).prune.amplitude == 0.05
    assert "Pick a sweep point" in h.use(s, None)["exp_note"]


def test_the_sensitivity_scan_beside_the_layer_importance_and_a_stale_sweep_is_said():
    s, p = shared_session(), page()
    h = ExploreHandlers(p)
    list(h.run(s, *tab_values(methods=(), scan=True), *controls(s)))
    r = s.explore.report
    assert r is not None and len(r.table.increase) == 3 and r.table.levels == [0.25, 0.5, 0.75, 1.0]
    out = h.show(s)
    fig = out["exp_sens"]
    heat, bars = fig.data
    assert [list(row) for row in heat.z] == r.table.increase and list(heat.x)[-1] == "whole block"
    assert list(bars.x) == pytest.approx([1 + v for v in r.layer_importance])
    assert "Spearman ρ" in fig.layout.title.text and "Spearman ρ" in out["exp_sens_note"]
    assert "units ranked by taylor" in out["exp_sens_note"]
    out = h.estimate(s, *tab_values(methods=(), scan=True), *controls(s))
    assert "the sensitivity scan (3 layers × 4 levels)" in out["exp_estimate"]
    assert "measured already" in out["exp_estimate"]  # the table is held: the estimate knows
    list(h.run(s, *tab_values(methods=("uniform",), targets="90"), *controls(s)))
    s.schedule.step(tiny_settings())  # the model changes after the sweep
    assert "The model has changed since this sweep" in s.explore.caption()
    assert "The model has changed since this sweep" in h.show(s)["exp_sens_note"]


def test_the_pareto_front_and_the_sweep_figures():
    pts = [dict(method="a", params=100, perplexity=10.0), dict(method="a", params=80, perplexity=12.0),
           dict(method="b", params=80, perplexity=11.0), dict(method="b", params=90, perplexity=13.0),
           dict(method="b", params=70, perplexity=None), dict(method="c", params=60, perplexity=20.0)]
    assert viz.pareto_front(pts) == [5, 2, 0]  # smallest first; (80, 12) and (90, 13) are beaten by (80, 11)
    fig = viz.sweep_pareto(pts, "predicted perplexity: somewhere")
    front = fig.data[-1]
    assert list(front.x) == [60e-6, 80e-6, 100e-6] and list(front.y) == [20.0, 11.0, 10.0]
    assert [t.name for t in fig.data] == ["a", "b", "c", "Pareto front"]
    curves = viz.sweep_curves([{**p, "curve": p["method"] + " x"} for p in pts], baseline=9.0)
    assert [t.name for t in curves.data] == ["a x", "b x", "c x", "the model now: 9.00"]
    assert list(curves.data[0].x) == [80e-6, 100e-6]  # sorted by size; the point without a result left out
    assert curves.layout.yaxis.type == "log" and list(curves.data[-1].y) == [9.0, 9.0]  # the model now, a line
    # nothing placed in log units by mistake: no annotation or shape at 10**9 stretching the axis
    assert not curves.layout.annotations and not curves.layout.shapes
    assert "Run a sweep" in viz.sweep_curves([]).layout.annotations[0].text
    assert "Sweep two or more amplitudes" in viz.sweep_amplitude(pts).layout.annotations[0].text  # no A anywhere
    assert "Tick “sensitivity scan”" in viz.sensitivity_figure(None).layout.annotations[0].text
