"""StudioSession: recovery training rounds and Adapt-Accel in the studio (tiny random Llama, seconds)."""

from __future__ import annotations

import pytest

import pruner.training.accel
import pruner.training.train
from pruner.model.structure import count_parameters, layer_widths
from studio import SessionError, StudioSettings
from tests.test_session import same_state, state, tiny_session

TRAIN = dict(train=dict(seq_len=32, batch_size=2, data="stories", lr=3e-3))
STEP_TOKENS = 32 * 2


def test_train_round_streams_losses_and_lowers_perplexity():
    s = tiny_session(**TRAIN)
    assert "prior for CPU" in s.costs.train_markdown(s.settings) and "Adapt-Accel" in s.costs.train_markdown(s.settings)
    before = state(s.model)
    updates = list(s.training.train(tokens=4 * STEP_TOKENS, prompt="The"))
    steps = [u for u in updates if u.kind == "train_step"]
    assert len(steps) == 4 and "loss" in steps[0].message
    assert updates[-1].done and "→" in updates[-1].message
    assert len(s.training.log.losses) == 4 and s.training.log.starts == [0] and s.training.log.labels == ["train 1"]
    (point,) = s.training.recovery
    assert point.stage is None and point.tokens == 4 * STEP_TOKENS
    assert point.perplexity_after < point.perplexity_before  # lr 3e-3 on a random model: the loss falls
    assert not same_state(before, state(s.model))
    assert s.quality.last_eval is not None and s.quality.trajectory == []  # training does not add a pruning-trajectory point
    with pytest.raises(SessionError, match="Nothing to undo"):
        s.undo()  # undoing a step would undo the training too
    cost = s.costs.train_markdown(s.settings)
    assert "measured in this session" in cost and "256 optimiser steps of 2 × 32" in cost  # 16,384 tokens


def test_training_input_is_checked_before_anything_changes():
    s = tiny_session(**TRAIN)
    before = state(s.model)
    for tokens, msg in ((0, "positive"), (-5, "positive"), (10**9, "more than this studio runs")):
        with pytest.raises(SessionError, match=msg):
            list(s.training.train(tokens=tokens))
    with pytest.raises(SessionError, match="learning rate"):
        list(s.training.train(tokens=STEP_TOKENS, settings=StudioSettings.build(s.settings, train={"lr": 5.0})))
    assert same_state(before, state(s.model)) and not s.busy and s.training.log.losses == []


def test_an_error_during_training_restores_the_weights(monkeypatch):
    real = pruner.training.train.iter_train

    def failing(model, *a, **kw):
        for i, ev in enumerate(real(model, *a, **kw)):
            if i == 2:
                raise RuntimeError("CUDA out of memory (simulated)")
            yield ev

    monkeypatch.setattr(pruner.training.train, "iter_train", failing)
    s = tiny_session(**TRAIN)
    before = state(s.model)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(s.training.train(tokens=5 * STEP_TOKENS))
    assert same_state(before, state(s.model))  # two optimiser steps were taken, and undone
    assert s.training.log.losses == [] and s.training.log.starts == [] and s.training.recovery == [] and not s.busy


def test_cancelled_training_keeps_its_completed_steps():
    s = tiny_session(**TRAIN)
    run = s.training.train(tokens=6 * STEP_TOKENS)
    for u in run:
        if u.kind == "train_step" and "step 2/" in u.message:
            s.cancel()
    assert len(s.training.log.losses) == 2 and s.training.recovery[0].tokens == 2 * STEP_TOKENS
    assert u.done and "cancelled after 2 step(s)" in u.message and not s.busy


def accel_session(**kw):
    return tiny_session(**{**TRAIN, "target": 0.8, "stages": 2, "accel_tokens": 6 * STEP_TOKENS, **kw})


def test_run_accel_streams_stages_and_grows_the_heatmap_columns():
    s = accel_session()
    total0 = count_parameters(s.model)["total"]
    updates = list(s.training.run_accel(prompt="The"))
    assert updates[-1].done and "Adapt-Accel done" in updates[-1].message
    assert [p.stage for p in s.training.recovery] == [1, 2]
    assert all(p.perplexity_after < p.perplexity_before for p in s.training.recovery)  # training recovers every stage
    assert s.training.accel_start is not None and s.training.accel_start.params == total0
    labels, cols = s.schedule.importance_columns()
    # every sub-step's measurement, then the changed model's own (measured at the end, for the unit heatmap)
    assert len(cols) == s.steps_taken + 1 and s.steps_taken >= 2 and any("stage 1" in x for x in labels)
    assert "stage 2" in labels[-2] and labels[-1] == f"step {s.steps_taken + 1} (next)"
    assert [r.index for r in s.pruner.record.steps] == list(range(s.steps_taken))
    alloc, attn, mlp = s.schedule.sparsity_history()
    assert len(alloc) == len(attn) == len(mlp) == s.steps_taken
    assert abs(count_parameters(s.model)["total"] - 0.8 * total0) <= 0.002 * total0
    assert len(s.training.log.starts) == 2 and s.training.log.labels == ["stage 1", "stage 2"]
    assert len(s.training.log.losses) == 2 + 4  # linear token shares 1/3 and 2/3 of 6 steps
    assert s.training.accel_report["final"]["params"] == count_parameters(s.model)["total"]
    assert "adapt_accel" in s.report() and len(s.report()["recovery_training"]) == 2


def test_cancel_accel_keeps_the_last_completed_stage():
    s = accel_session()
    seen = {}
    for u in s.training.run_accel():
        if "Stage 1 trained" in u.message:
            seen["params"] = count_parameters(s.model)["total"]
            seen["state"] = state(s.model)
            seen["steps"] = s.steps_taken
        if "Stage 2 training step 1/" in u.message:
            s.cancel()
    assert "cancelled" in u.message and u.done
    assert count_parameters(s.model)["total"] == seen["params"] and same_state(seen["state"], state(s.model))
    assert s.steps_taken == seen["steps"] and [p.stage for p in s.training.recovery] == [1]
    assert s.training.log.labels == ["stage 1"] and not s.busy
    assert [w.to_dict() for w in layer_widths(s.model)] == s.pruner.record.steps[-1].widths
    s.schedule.step(StudioSettings.build(s.settings, prune={"target": 0.75}))  # the session carries on


def test_an_error_in_a_stage_puts_the_model_back_at_the_last_completed_stage(monkeypatch):
    real = pruner.training.accel.iter_train

    def failing(*a, stage=None, **kw):
        if stage == 2:
            raise RuntimeError("out of memory (simulated)")
        yield from real(*a, stage=stage, **kw)

    monkeypatch.setattr(pruner.training.accel, "iter_train", failing)
    s = accel_session()
    seen = {}
    with pytest.raises(RuntimeError, match="out of memory"):
        for u in s.training.run_accel():
            if "Stage 1 trained" in u.message:
                seen["state"], seen["steps"] = state(s.model), s.steps_taken
    assert same_state(seen["state"], state(s.model)) and s.steps_taken == seen["steps"]
    assert [p.stage for p in s.training.recovery] == [1] and not s.busy


def test_accel_refuses_a_target_above_the_current_size():
    s = accel_session(target=0.8)
    list(s.schedule.run_to_target())
    before = state(s.model)
    with pytest.raises(SessionError, match="below the model's size"):
        list(s.training.run_accel(StudioSettings.build(s.settings, prune={"target": 0.9})))
    assert same_state(before, state(s.model)) and not s.busy


def test_zero_shot_compares_original_pruned_and_uniform_baseline(tmp_path, monkeypatch):
    pytest.importorskip("pruner.evaluation")
    monkeypatch.setenv("ADAPT_PRUNER_CACHE", str(tmp_path))
    s = tiny_session(target=0.9)
    list(s.quality.run_uniform_baseline())
    assert s.quality.baseline_model is not None
    steps = list(s.quality.iter_zero_shot(["arc_easy"], 3))
    table = steps[-1][1]
    assert list(dict.fromkeys(table["model"])) == ["original", "pruned (0 steps)", "uniform baseline"]
    assert steps[0][1] is None and len(steps) == 4  # one message per model, then the final table
