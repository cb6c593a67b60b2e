"""The studio's history of runs and session files, on the tiny model: what is recorded after a step, a run, a
comparison, Train and Adapt-Accel; the history through CSV and JSON; a session file with and without the model;
continuing from an exported zip; bad files refused with the session unchanged."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from studio import SessionError
from studio.history import read_history, settings_dict, settings_from_dict, settings_of
from tests.test_session import same_state, state, tiny_session, tiny_settings


def logits(model):
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def pruned():
    """A session with a step, a run to the target (evaluated), and its history."""
    s = tiny_session(target=0.8)
    s.schedule.step()
    s.quality.quick_eval("The capital")
    updates = list(s.schedule.run_to_target(prompt="The capital"))
    assert updates[-1].done
    return s


def test_a_step_and_a_run_are_recorded_with_their_settings_widths_and_perplexity(pruned):
    s = pruned
    step, run = s.history.experiments
    assert (step.kind, run.kind) == ("prune", "prune")
    assert step.notes == "one step: step 1" and run.notes.startswith("run to target: steps 2–")
    assert run.params == s.work.params() and run.fraction == pytest.approx(s.work.params() / s.work.original_total)
    assert step.params > run.params
    # the quick perplexity measured on exactly that model, with its settings
    assert step.measured["perplexity"] == s.quality.trajectory[1].perplexity
    assert run.measured == s.quality.last_eval.perplexity
    assert run.measured["window"] == 64 and run.measured["split"] == "test"
    assert run.settings["target"] == 0.8 and run.settings["method"] == "adaptive"
    assert run.settings["studio"]["quick_perplexity"]["max_tokens"] == 512
    assert [w["intermediate_size"] for w in run.widths] == [w.intermediate_size for w in s.work.widths()]
    assert run.seconds == pytest.approx(sum(r.seconds_importance + r.seconds_surgery
                                            for r in s.pruner.record.steps[1:]))


def test_a_step_evaluated_later_gets_its_perplexity_and_an_undone_model_does_not():
    s = tiny_session()
    s.schedule.step()
    assert s.history.experiments[0].measured is None
    s.quality.quick_eval("The")
    assert s.history.experiments[0].measured == s.quality.last_eval.perplexity
    s.schedule.step()
    s.undo()
    s.quality.quick_eval("The")  # the model of step 1 again: not the second step's perplexity
    assert s.history.experiments[1].measured is None


def test_each_method_of_a_comparison_and_the_uniform_baseline_are_recorded():
    s = tiny_session(target=0.8)
    list(s.compare.run(["adaptive", "shortgpt"], prompt="The"))
    exps = s.history.experiments
    assert [e.kind for e in exps] == ["compare", "compare"]
    assert [e.settings["method"] for e in exps] == ["adaptive", "shortgpt"]
    for e, r in zip(exps, s.compare.results, strict=True):
        assert (e.params, e.measured, e.widths) == (r.params, r.perplexity, r.widths)
    assert exps[1].widths.count(None) >= 1  # ShortGPT's removed layer stays a row
    list(s.quality.run_uniform_baseline())
    base = s.history.experiments[-1]
    assert base.settings["method"] == "uniform" and base.measured["perplexity"] == s.quality.baseline[-1].perplexity


def test_train_and_adapt_accel_are_recorded():
    s = tiny_session(target=0.8, stages=2, accel_tokens=1024, train_tokens=512, ppl_tokens=256,
                     train={"seq_len": 32, "batch_size": 4})
    list(s.training.train())
    list(s.training.run_accel())
    train, accel = s.history.experiments
    assert train.kind == "train" and train.measured["perplexity"] == s.training.recovery[0].perplexity_after
    assert train.settings["studio"]["train_tokens"] == 512 and train.params == s.work.original_total
    assert accel.kind == "accel" and accel.notes.startswith("2 stage(s)")
    assert accel.params == s.work.params() < train.params
    assert accel.measured["perplexity"] == s.training.recovery[-1].perplexity_after
    assert accel.settings["studio"]["stages"] == 2


def test_the_history_round_trips_through_csv_and_json_and_merges(pruned, tmp_path):
    h = pruned.history
    for name in ("runs.csv", "runs.json"):
        back = read_history(h.save(tmp_path / name))
        assert [e.to_dict() for e in back.experiments] == [e.to_dict() for e in h.experiments]
    s = tiny_session()
    s.work.history.extend(read_history(tmp_path / "runs.json"))
    s.work.history.extend(read_history(tmp_path / "runs.csv"))  # the same runs: not doubled
    assert len(s.history) == len(h)


def test_bad_history_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.csv").write_text("x,y\n1,2\n")
    (tmp_path / "c.json").write_text(json.dumps({"experiments": [{"kind": "prune"}]}))
    for n in ("a.json", "b.csv", "c.json"):
        with pytest.raises(SessionError, match=f"'{n}' is not a history file") as e:
            read_history(tmp_path / n)
        assert "\n" not in str(e.value)


def test_load_its_settings_gives_the_runs_settings(pruned):
    run = pruned.history.experiments[-1]
    s, notes = settings_of(run, tiny_settings(target=0.5, amplitude=0.0))
    assert notes == [] and s.prune == pruned.settings.prune and s.quick_ppl == pruned.settings.quick_ppl
    assert s.train == pruned.settings.train
    back = settings_from_dict(json.loads(json.dumps(settings_dict(pruned.settings))))
    assert back == pruned.settings


def test_a_session_file_round_trips_settings_history_and_the_model(pruned, tmp_path):
    light = pruned.save_session(tmp_path, with_model=False)
    heavy = pruned.save_session(tmp_path / "m", with_model=True)
    s = tiny_session(target=0.6, amplitude=0.0)
    p0 = s.work.params()
    msg = s.load_file(light)
    assert "the settings" in msg and f"{len(pruned.history)} new" in msg
    assert s.settings == pruned.settings and s.work.params() == p0  # no model in it: the model stays
    assert [e.id for e in s.history.experiments] == [e.id for e in pruned.history.experiments]
    msg = s.load_file(heavy)
    assert "(0 new)" in msg and "the model" in msg
    assert s.work.params() == pruned.work.params() and s.steps_taken == pruned.steps_taken
    assert torch.equal(logits(s.model), logits(pruned.model))
    assert s.original is not s.model and s.work.private
    s.configure(tiny_settings(target=0.6))
    s.schedule.measure()
    assert s.schedule.preview().reached  # the loaded model plans on: the record and the origin fit it
    s.reset()
    assert s.work.params() == p0


def test_continue_from_an_exported_zip(pruned, tmp_path):
    z = pruned.export_zip(tmp_path, dtype="float32")
    s = tiny_session(target=0.6)
    msg = s.load_file(z)
    assert msg.startswith("Loaded the exported model")
    assert s.settings.prune == pruned.settings.prune  # from the zip's studio report
    assert s.work.params() == pruned.work.params()
    assert len(s.pruner.record.steps) == len(pruned.pruner.record.steps)
    assert torch.equal(logits(s.model), logits(pruned.model))
    assert len(s.history) == 0


def test_bad_files_leave_the_session_exactly_as_it_was(pruned, tmp_path):
    s = tiny_session()
    s.schedule.step()
    s.quality.quick_eval("The")
    before = (state(s.model), s.settings, [e.to_dict() for e in s.history.experiments], s.steps_taken, s.work.version)
    bad = {}
    (tmp_path / "notes.txt").write_text("hello")
    bad["notes.txt"] = "is not a zip"
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("readme.md", "nothing")
    bad["empty.zip"] = "neither a session file nor an exported model"
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../x.txt", "x")
    bad["evil.zip"] = "outside its own folder"
    good = pruned.save_session(tmp_path / "g", with_model=True)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "broken.zip", "w") as z:
        for m in src.infolist():
            data = src.read(m)
            if m.filename == "session.json":
                meta = json.loads(data)
                meta["settings"]["prune"]["method"] = "no-such-method"
                data = json.dumps(meta)
            z.writestr(m, data)
    bad["broken.zip"] = "settings in 'broken.zip' cannot be used"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "cut.zip", "w") as z:
        for m in src.infolist():
            z.writestr(m, src.read(m)[:100] if m.filename.endswith("model.safetensors") else src.read(m))
    bad["cut.zip"] = "cannot be loaded"
    from pruner.testing import tiny_model as arch_model
    from pruner.testing import tiny_tokenizer
    from studio import StudioSession

    qwen = StudioSession(arch_model("qwen2", 0, perturb=False, num_hidden_layers=2), tiny_tokenizer(), name="q",
                         settings=tiny_settings())
    bad["other-model.zip"] = "not from this session's"
    qz = qwen.export_zip(tmp_path / "q", dtype="float32")
    (tmp_path / "other-model.zip").write_bytes(qz.read_bytes())
    for name, why in bad.items():
        with pytest.raises(SessionError, match=why) as e:
            s.load_file(tmp_path / name)
        assert "\n" not in str(e.value)
        after = (state(s.model), s.settings, [e.to_dict() for e in s.history.experiments], s.steps_taken,
                 s.work.version)
        assert same_state(before[0], after[0]) and before[1:] == after[1:], name
    assert not s.busy


def test_a_cancelled_run_is_recorded_with_the_steps_it_kept():
    s = tiny_session(target=0.6)
    for u in s.schedule.run_to_target(prompt="The"):
        if u.record is not None and u.evaluation is not None:
            s.cancel()
    (run,) = s.history.experiments
    assert run.notes == "run to target: step 1" and run.params == s.work.params() < s.work.original_total
    assert run.measured == s.quality.last_eval.perplexity


def test_the_history_figures_draw_every_measured_run_and_a_runs_widths(pruned):
    from studio.history_tab import describe, table
    from visualizations.history import run_widths, runs_scatter

    rows = pruned.history.rows()
    fig = runs_scatter(rows + [{**rows[0], "id": "x", "measured_ppl": None}])
    assert [t.name for t in fig.data] == ["prune · adaptive"] and len(fig.data[0].x) == 2
    assert fig.data[0].y == tuple(e.measured_ppl for e in pruned.history.experiments)
    assert "1 run(s) without a measured perplexity" in fig.layout.title.text
    run = pruned.history.experiments[-1]
    widths = run_widths(run.widths, pruned.schedule.layer_map().original).data
    assert list(widths[2].x) == [w["intermediate_size"] for w in run.widths]  # MLP channels kept, per layer
    assert f"measured perplexity **{run.measured_ppl:.2f}** (wikitext2 test, 64-token windows, no BOS" in describe(run)
    t = table(pruned.history)
    assert list(t["id"]) == [e.id for e in pruned.history.experiments] and list(t["target %"]) == [80.0, 80.0]
