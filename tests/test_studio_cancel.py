"""What Cancel keeps, said exactly, and every kept step on the trajectory; Cancel stops evaluation and generation;
prompts capped to the model's context (tiny model)."""

from __future__ import annotations

import pytest

from pruner import Cancelled
from studio.quality import EvaluationCancelled
from tests.test_session import tiny_session


def run_until(run, text: str):
    for u in run:
        if text in u.message:
            return u
    raise AssertionError(f"no update said {text!r}")


def test_cancel_during_a_runs_quick_evaluation_keeps_the_step_and_its_trajectory_point():
    s = tiny_session()
    run = s.schedule.run_to_target(prompt="The")
    run_until(run, "Step 2 done; quick evaluation")  # step 2 is cut; its evaluation starts when the run resumes
    s.cancel()
    rest = list(run)
    assert any("Cancelled during step 2's quick evaluation: step 2 is kept" in u.message for u in rest)
    last = rest[-1]
    assert last.done and "This run kept 2 step(s) (steps 1–2)" in last.message and "unchanged" not in last.message
    assert f"{s.work.params() / 1e6:.2f} M parameters" in last.message
    assert s.steps_taken == 2 and [p.step for p in s.quality.trajectory] == [0, 1, 2]
    assert s.quality.last_eval.step == 2 and s.quality.last_eval.tokens_per_s is None
    assert "generation was skipped" in s.quality.last_eval.summary() and not s.busy


def test_cancel_while_measuring_says_no_step_was_cut():
    s = tiny_session()
    run = s.schedule.run_to_target(prompt="The")
    run_until(run, "Step 1: measuring importance")
    s.cancel()
    last = list(run)[-1]
    assert "while measuring and cutting step 1 (it was not cut)" in last.message and "kept 0 step(s)" in last.message
    assert s.steps_taken == 0


def test_cancel_stops_evaluate_now_and_says_nothing_was_measured(monkeypatch):
    s = tiny_session()
    measure = s.quality.ppl

    def cancelled_midway(model, settings=None):
        s.cancel()  # Cancel pressed while the perplexity is being measured
        return measure(model, settings)

    monkeypatch.setattr(s.quality, "ppl", cancelled_midway)
    with pytest.raises(EvaluationCancelled, match="nothing was measured. The model is untouched: 0 step"):
        s.quality.quick_eval("The")
    assert s.quality.last_eval is None and s.quality.trajectory == [] and not s.busy


def test_cancel_stops_a_generation():
    s = tiny_session(max_new_tokens=64)
    s.work.cancel()
    with pytest.raises(Cancelled):
        s.quality.generate(s.model, "The")


def test_a_prompt_longer_than_the_context_is_capped_with_a_note():
    s = tiny_session()
    context = s.model.config.max_position_embeddings
    ev = s.quality.quick_eval("the history of " * context)
    assert f"fit the model's context of {context:,} tokens" in ev.note and ev.note in ev.summary()
    ids, note = s.quality.capped_prompt("The")
    assert note == "" and len(ids) >= 1
