"""The Learn tab's guided tour (studio/tour.py, studio/tour_handlers.py) and the studio's polish items of issue 19, on
the tiny model (seconds)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

import pruner.io.shipped
from pruner.io.shipped import SHIPPED
from studio import SessionError, StudioSettings, tour
from studio.costs import TRAIN_PPL, accel_perplexities
from studio.handlers import settings_from
from studio.inputs import InputProblem, custom_sparsity
from studio.text import CUSTOM_EMPTY, TOUR_AT_TARGET, TOUR_STEPS
from studio.tour_handlers import TourHandlers
from studio.views import unit_figure
from tests.test_session import state, tiny_session, tiny_settings
from tests.test_session_training import STEP_TOKENS, TRAIN, accel_session

LOW = tiny_settings(target=0.5)  # low enough that the plan removes KV groups on the tiny model


def test_every_step_before_measuring_says_to_measure_first():
    s = tiny_session()
    for run in (lambda: tour.amplitude_effect(s, LOW), lambda: tour.units_of_layer(s, 0),
                lambda: tour.score_policy(s, LOW)):
        with pytest.raises(tour.TourPrerequisite, match="step 1.*Measure layer importance"):
            run()


def test_step_1_shows_one_minus_cos_per_layer():
    s = tiny_session()
    fig, note = tour.measure_importance(s, LOW)
    imp = s.schedule.current_importance()
    (bars,) = fig.data
    assert list(bars.x) == pytest.approx([1 + v for v in imp.layer_importance])  # 1 − cos, 0 = does nothing
    assert list(bars.y) == [0, 1, 2] and all(0 < v < 1 for v in bars.x)
    top = max(range(3), key=lambda i: bars.x[i])
    assert f"Layer **{top}** changes its input most" in note
    assert "0 = the layer changes nothing" in fig.layout.title.text


def test_step_2_plans_a_zero_and_a_large_amplitude_without_cutting():
    s = tiny_session()
    tour.measure_importance(s, LOW)
    before = state(s.model)
    fig, note = tour.amplitude_effect(s, LOW)
    low, high, diff = fig.data
    assert len(set(round(v, 6) for v in low.x)) == 1  # A = 0: every layer alike
    assert max(high.x) - min(high.x) > 0.2  # A = 0.1: the effect is visible
    assert list(diff.x) == pytest.approx([h - lo for h, lo in zip(high.x, low.x, strict=True)])
    # the least important layer is pruned more, the most important less
    imp = s.schedule.current_importance().layer_importance
    assert diff.x[imp.index(min(imp))] > 0 > diff.x[imp.index(max(imp))]
    assert s.steps_taken == 0 and all((before[k] == v).all() for k, v in state(s.model).items())
    assert "A = 0.1" in fig.layout.title.text and "nothing cut" in fig.layout.title.text


def test_step_3_shows_kv_groups_with_their_query_heads_and_ranked_channels():
    s = tiny_session()
    tour.measure_importance(s, LOW)
    assert tour.layer_choices(s) == [0, 1, 2]
    fig, note = tour.units_of_layer(s, 1)
    groups, channels = fig.data
    assert list(groups.x) == ["KV 0<br>q 0–1", "KV 1<br>q 2–3", "KV 2<br>q 4–5", "KV 3<br>q 6–7"]  # 2 query heads each
    assert list(groups.y) == pytest.approx(s.schedule.current_importance().group_scores[1].tolist())
    assert len(channels.y) == 96 and list(channels.y) == sorted(channels.y, reverse=True)
    assert "4 KV groups of 2 query head(s)" in note
    with pytest.raises(tour.TourPrerequisite, match="not in the model"):
        tour.units_of_layer(s, 7)


def test_step_4_ranks_the_units_by_score_per_parameter_as_the_plan_removes_them():
    s = tiny_session()
    tour.measure_importance(s, tiny_settings(target=0.5, step=0.2, amplitude=0.1))
    settings = tiny_settings(target=0.5, step=0.2, amplitude=0.1)
    fig, note = tour.score_policy(s, settings)
    plan = s.schedule.preview(settings)
    layer = int(note.split("Layer **")[1].split("**")[0])
    cur, nxt = s.work.widths()[layer], plan.widths[0][layer]
    removed = {t.name: len(t.x) for t in fig.data if t.name.endswith("removed")}
    assert removed.get("KV group (with its query heads): removed", 0) == cur.num_kv_heads - nxt["num_kv_heads"]
    assert removed.get("MLP channel: removed", 0) == cur.intermediate_size - nxt["intermediate_size"]
    # within each kind the removed units are the lowest scores per parameter
    for kind in ("KV group (with its query heads)", "MLP channel"):
        gone = [y for t in fig.data if t.name == f"{kind}: removed" for y in t.y]
        kept = [y for t in fig.data if t.name == f"{kind}: kept" for y in t.y]
        assert not gone or not kept or max(gone) <= min(kept)
    # the layer shown: the most important one that loses a KV group in the next step, when one does
    imp = s.schedule.current_importance().layer_importance
    losing = [i for i in range(3) if plan.widths[0][i]["num_kv_heads"] < s.work.widths()[i].num_kv_heads]
    if losing:
        assert layer == max(losing, key=imp.__getitem__)
    assert "KV groups go from layer(s)" in note  # at 50 % the plan removes groups somewhere


def test_step_5_prunes_two_steps_and_the_trajectory_has_them():
    s = tiny_session()
    messages = list(tour.prune_and_evaluate(s, LOW, "The capital"))
    assert s.steps_taken == 2 and "2 step(s) pruned" in messages[-1]
    fig, note = tour.trajectory(s)
    assert len(fig.data[0].x) == 3  # the original and both steps
    assert "2 step(s) on the trajectory" in note


def test_a_cancel_during_step_5_says_which_steps_were_kept(monkeypatch):
    from studio.quality import EvaluationCancelled

    s = tiny_session()

    def cancelled(prompt, settings=None):
        s.work.cancel()  # Cancel pressed during the first step's quick evaluation
        raise EvaluationCancelled("cancelled")

    monkeypatch.setattr(s.quality, "quick_eval", cancelled)
    messages = list(tour.prune_and_evaluate(s, LOW, "The"))
    assert s.steps_taken == 1 and "This run kept 1 step(s) (step 1)" in messages[-1]
    assert "tour step 5" in messages[-1]


def test_the_tour_survives_other_actions():
    s = tiny_session()
    tour.measure_importance(s, LOW)
    s.schedule.step(LOW)  # pruned on the Studio tab: the measurement no longer describes the model
    with pytest.raises(tour.TourPrerequisite, match="changed since the last measurement"):
        tour.score_policy(s, LOW)
    s.reset()
    with pytest.raises(tour.TourPrerequisite, match="step 1"):
        tour.units_of_layer(s, 0)
    s.schedule.step(LOW)
    s.schedule.step(LOW)  # about 92 % of the original now
    high = tiny_settings(target=0.95)
    tour.measure_importance(s, high)
    with pytest.raises(tour.TourPrerequisite, match="already at the target"):
        tour.amplitude_effect(s, high)
    assert TOUR_AT_TARGET.startswith("⚠️")
    with pytest.raises(tour.TourPrerequisite, match="already at the target"):
        list(tour.prune_and_evaluate(s, high, "The"))


def fake_page():
    names = ["tour_k", "tour_pos", "tour_text", "tour_btn", "tour_layer", "tour_fig", "tour_note", "tour_back",
             "tour_next", "status", "state"]
    return SimpleNamespace(**{n: n for n in names})


def controls_for(settings_pct: dict | None = None) -> list:
    """The schedule controls' values as the page sends them (settings_from's order), for the tiny model."""
    c = dict(target=50, amplitude=0.05, step=5, criterion="taylor", method="adaptive", custom=None, corpus="wiki",
             upload=None, n_windows=4, window=32, seed=0, ppl_tokens=512, new_tokens=6)
    c.update(settings_pct or {})
    return list(c.values())


def test_back_and_next_walk_the_steps_and_the_button_names_each_action():
    h = TourHandlers(fake_page())
    s = tiny_session()
    out = h.go(s, 0)
    assert out["tour_pos"] == f"**Step 1 of {len(TOUR_STEPS)}: {TOUR_STEPS[0][0]}**"
    assert out["tour_back"]["interactive"] is False
    labels = [out["tour_btn"]["value"]]
    k = 0
    for _ in range(len(TOUR_STEPS) + 2):  # past the end: it stays on the last step
        out = h.next(s, k)
        k = out["tour_k"]
        labels.append(out["tour_btn"]["value"])
        assert out["tour_layer"]["visible"] == (k == 2)
    assert k == len(TOUR_STEPS) - 1 and out["tour_next"]["interactive"] is False
    assert list(dict.fromkeys(labels)) == [st[2] for st in TOUR_STEPS]
    assert h.back(s, 0)["tour_k"] == 0
    assert h.go(s, 2)["tour_layer"]["choices"] == [0, 1, 2] and h.go(s, 2)["tour_layer"]["value"] == 1


def test_the_action_handler_says_what_is_missing_and_then_runs(monkeypatch):
    import studio.tour_handlers as th

    monkeypatch.setattr(th, "page_views", lambda page, s, settings=None: {})
    h = TourHandlers(fake_page())
    s = tiny_session()
    assert "loading" in list(h.act(None, 0, None, "The", *controls_for()))[-1]["tour_note"].lower()
    last = list(h.act(s, 3, None, "The", *controls_for()))[-1]
    assert "Go to **step 1**" in last["tour_note"] and "tour_fig" not in last
    last = list(h.act(s, 0, None, "The", *controls_for()))[-1]
    assert last["tour_fig"].data and "Measured on 128 calibration tokens" in last["tour_note"]
    last = list(h.act(s, 2, 2, "The", *controls_for()))[-1]
    assert "Layer **2**" in last["tour_note"]
    updates = list(h.act(s, 4, None, "The capital", *controls_for()))
    assert s.steps_taken == 2 and "2 step(s) on the trajectory" in updates[-1]["tour_note"]
    assert any("pruning step 1" in u.get("status", "") for u in updates)
    bad = list(h.act(s, 1, None, "The", *controls_for({"target": 0})))[-1]  # a bad value on the left: said there
    assert bad["tour_note"].startswith("⚠️") and "would remove every parameter" in bad["tour_note"]


# ---------------------------------------------------------------------- polish items of issue 19
def test_the_unit_heatmap_shows_the_units_of_the_model_after_train_and_adapt_accel():
    s = tiny_session(**TRAIN)
    s.schedule.measure()
    list(s.training.train(tokens=2 * STEP_TOKENS, prompt="The"))
    groups, channels = unit_figure(s).data
    assert len(groups.z) == 3 and "measured before step 1" in unit_figure(s).layout.title.text
    s = accel_session()
    list(s.training.run_accel(prompt="The"))
    fig = unit_figure(s)
    assert len(fig.data) == 2  # not the empty "press Measure" figure
    kv = [w.num_kv_heads for w in s.work.widths()]
    assert [sum(v is not None for v in row) for row in fig.data[0].z] == kv  # the units the model has now
    assert s.schedule.has_current_importance()  # the next step reuses it


def test_an_empty_custom_table_is_explained_in_the_pages_words():
    with pytest.raises(InputProblem) as exc:
        custom_sparsity(None, "custom")
    msg = str(exc.value)
    assert msg == CUSTOM_EMPTY and "Fill from the adaptive plan" in msg
    assert "--custom" not in msg and "custom=[" not in msg and "method 'custom'" not in msg
    assert custom_sparsity(pd.DataFrame({"layer": [], "final sparsity %": []}), "adaptive") is None
    assert custom_sparsity(pd.DataFrame({"layer": [0, 1], "final sparsity %": [20, 35.5]}), "custom") == \
        pytest.approx([0.2, 0.355])
    with pytest.raises(InputProblem, match="Layer 1's final sparsity .* not 150"):
        custom_sparsity(pd.DataFrame({"layer": [0, 1], "final sparsity %": [20, 150]}), "custom")
    with pytest.raises(SessionError, match="Fill from the adaptive plan"):
        settings_from(*controls_for({"method": "custom"}))


def test_the_costs_count_every_perplexity_and_the_measurement_after():
    s = tiny_session(**TRAIN)
    s.costs.tokens_per_s.update(perplexity=100.0, taylor=64.0, train=1000.0)
    settings = StudioSettings.build(s.settings, stages=3)
    text = s.costs.train_markdown(settings)
    ppl = settings.quick_ppl.max_tokens / 100.0
    imp = s.costs.calibration_tokens(settings) / 64.0
    train_s = s.costs.train_seconds(settings.train.tokens_per_step()
                                    * settings.capped_train().steps_for(settings.train_tokens))[0]
    assert f"≈ **{train_s + TRAIN_PPL * ppl + imp:.0f} s** in all" in text
    assert f"{accel_perplexities(3)} quick perplexities" in text and accel_perplexities(3) == 8
    more = s.costs.train_markdown(StudioSettings.build(settings, quick_ppl=settings.quick_ppl.__class__(
        window=64, max_tokens=4 * settings.quick_ppl.max_tokens)))
    minutes = [float(t.split("≈ **")[-1].split(" min")[0]) for t in (text, more)]
    assert minutes[1] > minutes[0]  # Adapt-Accel's total grows with its perplexity evaluations


def test_the_train_cost_follows_every_training_and_schedule_control():
    from studio.ui import build_demo
    from tests.test_session import tiny_model, tiny_tokenizer

    demo = build_demo(tiny_model(), tiny_tokenizer(), source="tiny")
    cfg = demo.config
    by_elem = {c.get("props", {}).get("elem_id"): c["id"] for c in cfg["components"]}
    cost = by_elem["train-cost"]
    deps = [d for d in cfg["dependencies"] if d["outputs"] == [cost]]
    changed = {t[0] for d in deps for t in d["targets"] if t[1] == "change"}
    inputs = set(deps[0]["inputs"]) - {deps[0]["inputs"][0]}  # without the session state
    assert inputs and inputs <= changed  # every control the estimate reads updates it, however it changes
    for elem in ("train-tokens", "stages", "accel-tokens", "target", "amplitude", "step", "n-windows", "window"):
        assert by_elem[elem] in changed


def test_the_model_picker_lists_a_model_once_it_is_fetched(monkeypatch, tiny_llama_folder):
    from studio.handlers import model_choices
    from studio.ui import build_demo
    from tests.test_session import tiny_model, tiny_tokenizer

    name = next(iter(SHIPPED))
    assert any("not fetched yet" in label for label, value in model_choices() if value == name) or \
        pruner.io.shipped.is_fetched(name)
    monkeypatch.setattr(pruner.io.shipped, "is_fetched", lambda n: n == name)  # as after `adapt-pruner fetch`
    demo = build_demo(tiny_model(), tiny_tokenizer(), source="tiny")
    h = next(fn for fn in (getattr(b.fn, "__self__", None) for b in demo.fns.values()) if hasattr(fn, "load"))
    out = h.load(str(tiny_llama_folder), SimpleNamespace(session_hash="t"))
    picker = out[h.page.source]
    label = dict((v, lbl) for lbl, v in picker["choices"])[name]
    assert "not fetched" not in label and SHIPPED[name].title in label
