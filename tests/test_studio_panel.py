"""The schedule panel without a browser: typed values in the page's words, one source of truth for the plan, Δ and
"number of steps" as one control (tiny model)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

import studio.handlers as handlers_module
from studio.handlers import CHECKED, Handlers, settings_from
from studio.inputs import BOUNDS, InputProblem, check
from studio.views import settings_label
from tests.test_session import tiny_session

NAMES = ("target", "amplitude", "step", "n_steps", "n_windows", "window", "input_note", "alloc_md", "alloc_fig",
         "cost", "status", "summary", "layer_fig", "unit_fig", "arch_fig", "traj_fig", "metrics", "gen_orig",
         "gen_pruned", "loss_fig", "train_cost", "whatif_md")


def handlers() -> Handlers:
    """Handlers on a page whose components are their own names (the dicts they return are readable)."""
    return Handlers(SimpleNamespace(**{n: n for n in NAMES}), shared=None, pool=None)


def page_session():
    """A tiny session configured as the page configures it (settings_from), its importance measured."""
    s = tiny_session()
    s.configure(settings_from(*controls(s)))
    s.schedule.measure()
    return s


def controls(s, **kw) -> list:
    """The schedule controls as the page sends them (percent), from the session's settings and ``kw``."""
    d = s.settings.prune
    values = dict(target=100 * d.target, amplitude=d.amplitude, step=100 * d.step, criterion=s.settings.criterion_choice,
                  method=d.method, custom=None, corpus=d.calibration, upload=None, n_windows=d.n_windows,
                  window=d.window, seed=d.seed, ppl_tokens=s.settings.quick_ppl.max_tokens,
                  new_tokens=s.settings.max_new_tokens)
    values.update(kw)
    return list(values.values())


@pytest.mark.parametrize("typed, words", [(0, "remove every parameter"), (1, "between 30 % and 99 %"),
                                          (1.5, "1.5 % is outside"), (-5, "-5 % is outside"),
                                          (150, "can only shrink"), (None, "Type a target size"),
                                          (0.9, r"looks like a fraction: .* \(type 90 for 90 %\)")])
def test_a_bad_target_is_explained_in_the_pages_words_and_the_last_good_value_kept(typed, words):
    with pytest.raises(InputProblem, match=words) as exc:
        check("target", typed, 80)
    assert str(exc.value).endswith("Kept 80 %.") and "minimum" not in str(exc.value)
    assert check("target", 45) == 45


def test_the_edit_handler_keeps_the_last_good_value_and_marks_the_plot_stale():
    s, h = page_session(), handlers()
    out = h.edited(s, *controls(s, target=0))
    assert out["target"]["value"] == 85  # the tiny session's target, in %
    assert "would remove every parameter" in out["input_note"] and "Kept 85 %" in out["input_note"]
    assert "Computing the plan for" in out["alloc_md"] and "target 85 %" in out["alloc_md"]
    assert out["alloc_fig"]["elem_classes"] == ["stale"]
    out = h.edited(s, *controls(s, target=70))
    assert out["input_note"] == "" and "target" not in out and s.panel.good["target"] == 70


def test_an_older_preview_is_not_drawn_over_a_newer_one(monkeypatch):
    s, h = page_session(), handlers()
    old, new = controls(s, target=80), controls(s, target=70)
    real, inner = handlers_module.allocation_figure, {}

    def figure(session, settings):  # while the older preview computes, the newer one starts and finishes
        if settings.prune.target == 0.8 and not inner:
            h.edited(s, *new)
            inner["out"] = h.preview(s, *new)
        return real(session, settings)

    monkeypatch.setattr(handlers_module, "allocation_figure", figure)
    h.edited(s, *old)
    assert h.preview(s, *old) == gr.skip()  # superseded: nothing drawn over the newer plan
    out = inner["out"]
    assert "target 70 %" in out["alloc_md"] and out["alloc_fig"]["elem_classes"] == []
    assert "plan for target 70 %" in out["alloc_fig"]["value"].layout.title.text
    assert s.panel.shown == s.panel.wanted and not s.panel.stale
    assert f"0 taken + {out['n_steps']['value']} more step(s)" in out["alloc_md"]


def test_an_edit_that_arrives_after_the_newer_preview_started_does_not_leave_the_plot_recomputing():
    """The edits run outside the queue: under load an older edit can reach the server after the preview sent
    with the newer values on screen (seen in CI: the arrow keys' 40 % edit, then the 39 % preview)."""
    s, h = page_session(), handlers()
    older, newer = controls(s, target=40), controls(s, target=39)
    h.edited(s, *newer)
    h.edited(s, *older)  # late
    out = h.preview(s, *newer)  # the values on screen when it was sent
    assert "plan for target 39 %" in out["alloc_fig"]["value"].layout.title.text
    assert not s.panel.stale and s.panel.shown.prune.target == 0.39


def test_steps_set_delta_within_its_range_and_the_steps_box_follows_the_plan():
    s, h = page_session(), handlers()
    lo, hi = BOUNDS["step"].low, BOUNDS["step"].high
    for n in (1, 2, 5, 200):
        out = h.steps_to_budget(s, n, *controls(s, target=60))
        delta = out["step"]["value"]
        assert lo <= delta <= hi
        if "outside the slider" in out["input_note"]:
            assert delta in (lo, hi)
        values = controls(s, target=60, step=delta)
        drawn = h.preview(s, *values)
        planned = drawn["n_steps"]["value"]
        assert f"+ {planned} more step(s)" in drawn["alloc_md"]  # the box shows the plan's count
        assert 1 <= planned <= BOUNDS["n_steps"].high
    # 2 steps to 60 % need a Δ above the slider's maximum: clamped and said, never 19 on a 0.5–10 slider
    out = h.steps_to_budget(s, 2, *controls(s, target=60))
    assert out["step"]["value"] == hi and "outside the slider's 0.5–10 %" in out["input_note"]


def test_a_step_cuts_the_settings_on_screen_after_drawing_their_plan():
    s, h = page_session(), handlers()
    values = controls(s, target=70)
    ups = list(h.step(s, "The", *values))
    assert "Drawing the plan for the settings on screen" in ups[0]["status"]
    assert "target 70 %" in ups[0]["alloc_md"]
    assert s.settings.prune.target == 0.7 and s.steps_taken == 1
    assert settings_label(s.settings).startswith("target 70 %")


def test_settings_from_refuses_out_of_range_values_in_the_pages_words():
    s, h = tiny_session(), handlers()
    ups = list(h.step(s, "The", *controls(s, target=150)))
    assert "can only shrink" in ups[-1]["status"] and s.steps_taken == 0
    assert set(CHECKED) == set(BOUNDS) - {"n_steps"}


def test_the_train_cost_counts_the_perplexity_before_and_after_and_learns_its_rate():
    s = tiny_session()
    md = s.costs.train_markdown(s.settings)
    # before, after and the quick evaluation's at the end (tests/test_tour.py checks the sums)
    assert "3 quick perplexities (before, after, and the evaluation's) ≈ 3 ×" in md
    assert "first guess" in md.split("before, after")[1]
    s.quality.ppl(s.model)  # one quick perplexity: the session's own rate from now on
    after = s.costs.train_markdown(s.settings).split("before, after")[1]
    assert "measured in this session" in after.split("in all")[0]


def test_the_compare_tab_estimates_before_running_with_a_modest_default_selection():
    from studio.compare import DEFAULT_METHODS

    s = tiny_session()
    assert DEFAULT_METHODS == ("adaptive", "uniform", "shortgpt")  # minutes on a CPU, not a quarter of an hour
    md = s.costs.compare_markdown(s.settings, DEFAULT_METHODS)
    assert "3 method(s) to 85 %" in md and "shortgpt 1 step(s)" in md and "first guess" in md
    total, rows, _ = s.costs.compare_seconds(s.settings, ["adaptive", "flap"])
    assert rows[0][1] >= 2 and rows[1][1] == 1 and total == pytest.approx(rows[0][2] + rows[1][2])
    assert s.costs.compare_markdown(s.settings, []) == "Pick at least one method to compare."


def test_fill_from_the_adaptive_plan_uses_the_target_on_screen():
    s, h = page_session(), handlers()
    at_60 = h.custom_table(s, *controls(s, target=60, method="custom"))
    at_90 = h.custom_table(s, *controls(s, target=90, method="custom"))
    assert list(at_60["layer"]) == [0, 1, 2]
    assert at_60["final sparsity %"].mean() > at_90["final sparsity %"].mean()  # not the session's 85 % plan
    assert s.settings.prune.target == 0.85  # filling a table changes no setting


def test_a_light_handler_with_nothing_to_draw_skips_its_outputs():
    """A single-output handler that returns {} hands Gradio a dict as the value (a server error): it skips."""
    s, h = tiny_session(), handlers()
    h.page.cmp_cost = "cmp_cost"
    assert h.compare_cost(s, ["adaptive"], *controls(s, target=0)) == gr.skip()
    assert "Estimate" in h.compare_cost(s, ["adaptive"], *controls(s))["cmp_cost"]


def test_a_move_without_release_plans_a_good_value_and_leaves_a_half_typed_one_alone():
    s, h = page_session(), handlers()
    out = h.nudged(s, *controls(s, target=39))  # the slider stepped by the arrow keys
    assert "target 39 %" in out["alloc_md"] and s.panel.good["target"] == 39
    assert "target 39 %" in h.preview(s, *controls(s, target=39))["alloc_md"]
    assert h.nudged(s, *controls(s, target=3)) == gr.skip()  # "3" on the way to "39": not rewritten while typed
    assert s.panel.good["target"] == 39 and s.panel.wanted.prune.target == 0.39


def test_the_number_boxs_own_clamp_of_a_typed_value_is_left_to_the_release():
    """Typed 150 (or 0.5), the box clamps it to 99 (30) and sends that as an input before the release carries 150:
    the input must neither plan 99 nor make it the last good value (seen in a browser walk)."""
    s, h = page_session(), handlers()
    assert s.panel.good["target"] == 85
    assert h.nudged(s, *controls(s, target=99)) == gr.skip()
    assert h.nudged(s, *controls(s, target=30)) == gr.skip()
    assert s.panel.good["target"] == 85
    out = h.edited(s, *controls(s, target=150))  # the release: explained, the last good value kept
    assert "Kept 85 %" in out["input_note"] and out["target"]["value"] == 85
    h.nudged(s, *controls(s, target=31))
    assert "target 30 %" in h.nudged(s, *controls(s, target=30))["alloc_md"]  # the arrow keys reach the end


def test_every_schedule_slider_replans_on_input_as_well_as_on_release():
    from studio.ui import build_demo
    from tests.test_session import tiny_model, tiny_tokenizer

    cfg = build_demo(tiny_model(), tiny_tokenizer(), source="tiny").config
    by_elem = {c.get("props", {}).get("elem_id"): c["id"] for c in cfg["components"]}
    plot = by_elem["alloc-heatmap"]
    triggers = {(t[0], t[1], d.get("trigger_mode")) for d in cfg["dependencies"] if plot in d["outputs"]
                for t in d["targets"]}
    for elem in ("target", "amplitude", "step", "n-windows", "window"):
        assert any(t[:2] == (by_elem[elem], "release") for t in triggers)
        assert (by_elem[elem], "input", "always_last") in triggers  # arrow keys send no release
