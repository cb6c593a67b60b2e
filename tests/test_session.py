"""StudioSession on a tiny random Llama with an offline BPE tokenizer (seconds, no default-model cache)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from types import SimpleNamespace

import pytest
import torch

from pruner import load_model
from pruner.config import PruneConfig
from pruner.data import CalibrationText, load_text
from pruner.evaluation.perplexity import PerplexityConfig
from pruner.model.structure import count_parameters, layer_widths
from pruner.testing import tiny_model as _tiny_model
from pruner.testing import tiny_tokenizer
from studio import UPLOADED, SessionError, StudioSession, StudioSettings
from studio.handlers import settings_from
from studio.quality import Quality


def tiny_model(seed: int = 0):
    """The studio tests' model: three layers, tied embeddings (like the default model)."""
    return _tiny_model("llama", seed, perturb=False, num_hidden_layers=3, tie_word_embeddings=True)


_PRUNE_FIELDS = {f.name for f in dataclasses.fields(PruneConfig)}


def tiny_settings(**kw) -> StudioSettings:
    """Studio settings for the tiny model, from flat names as the page has them: PruneConfig fields, ``ppl_window``
    / ``ppl_tokens`` (the quick perplexity), ``calibration_text`` / ``calibration_name`` (an upload), ``train``
    (TrainConfig fields)."""
    kw = {**dict(target=0.85, step=0.05, amplitude=0.05, n_windows=4, window=32, batch_size=4, ppl_window=64,
                 ppl_tokens=512, max_new_tokens=6), **kw}
    text, name = kw.pop("calibration_text", None), kw.pop("calibration_name", None)
    if kw.get("calibration") == UPLOADED:
        kw.pop("calibration")
    prune = {k: kw.pop(k) for k in list(kw) if k in _PRUNE_FIELDS}
    train = {**kw.pop("train", {}), **({"lr": kw.pop("lr")} if "lr" in kw else {})}
    ppl = PerplexityConfig(window=kw.pop("ppl_window"), max_tokens=kw.pop("ppl_tokens"))
    upload = CalibrationText(text, name or UPLOADED) if text is not None else None
    return StudioSettings.build(prune=prune, train=train, upload=upload, quick_ppl=ppl, **kw)


def tiny_session(**kw) -> StudioSession:
    return StudioSession(tiny_model(), tiny_tokenizer(), name="tiny", settings=tiny_settings(**kw))


def state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def test_measure_is_cached_and_fills_the_importance_columns():
    s = tiny_session()
    assert s.schedule.importance_columns() == ([], [])
    imp = s.schedule.measure()
    assert s.schedule.measure() is imp  # cached: same model, same settings
    assert imp.tokens == 4 * 32
    labels, cols = s.schedule.importance_columns()
    assert labels == ["step 1 (next)"] and cols == [imp.layer_importance]
    s.configure(tiny_settings(seed=1))  # another calibration sample: the cache no longer applies
    assert not s.schedule.has_current_importance()
    sec, source = s.costs.importance_seconds(s.settings)
    assert sec > 0 and "measured in this session" in source


def test_preview_plans_to_the_target_without_touching_the_model():
    s = tiny_session()
    with pytest.raises(SessionError, match="Measure importance first"):
        s.schedule.preview()
    s.schedule.measure()
    before = state(s.model)
    p = s.schedule.preview()
    assert same_state(before, state(s.model))
    assert p.reached and len(p.params) >= 2
    assert all(a > b for a, b in zip(p.params, p.params[1:], strict=False))
    target = 0.85 * s.pruner.origin.params["total"]
    assert p.params[-1] <= target + 0.001 * s.pruner.origin.params["total"]
    assert len(p.attention) == len(p.mlp) == len(p.allocated) == len(p.params)
    assert all(len(row) == 3 for row in p.mlp)
    # a smaller budget needs more steps; a lower target too
    assert len(s.schedule.preview(tiny_settings(step=0.02)).params) > len(p.params)
    assert len(s.schedule.preview(tiny_settings(target=0.7)).params) > len(p.params)


def test_budget_for_steps_gives_about_that_many_steps():
    s = tiny_session()
    s.schedule.measure()
    for n in (2, 5):
        delta = s.schedule.budget_for_steps(n, 0.8)
        planned = len(s.schedule.preview(tiny_settings(target=0.8, step=delta, amplitude=0.0)).params)
        assert n <= planned <= n + 2


def test_step_eval_undo_reset():
    s = tiny_session()
    p0 = count_parameters(s.model)["total"]
    original = state(s.original)
    w0 = layer_widths(s.model)
    rec = s.schedule.step()
    assert rec.params_total < p0 and s.steps_taken == 1
    ev = s.quality.quick_eval("The history of")
    assert ev.params == rec.params_total and ev.perplexity["window"] == 64 and ev.perplexity["perplexity"] > 1
    assert ev.tokens_per_s > 0 and isinstance(ev.generation, str) and isinstance(ev.original_generation, str)
    assert [p.step for p in s.quality.trajectory] == [0, 1]
    assert s.quality.trajectory[0].params == p0 and s.quality.trajectory[1].params == rec.params_total
    alloc, attn, mlp = s.schedule.sparsity_history()
    assert len(alloc) == 1 and max(mlp[0]) > 0
    s.undo()
    assert layer_widths(s.model) == w0 and s.steps_taken == 0 and [p.step for p in s.quality.trajectory] == [0]
    with pytest.raises(SessionError, match="Nothing to undo"):
        s.undo()
    s.schedule.step()
    s.reset()
    assert layer_widths(s.model) == w0 and count_parameters(s.model)["total"] == p0 and s.quality.trajectory == []
    assert same_state(original, state(s.original))  # the original is never pruned


def test_a_failed_step_leaves_the_model_as_it_was(monkeypatch):
    s = tiny_session()
    s.schedule.measure()
    before = state(s.model)

    def broken(*a, **k):
        raise RuntimeError("surgery failed")

    monkeypatch.setattr("pruner.pruning.pruner.build_cut", broken)
    with pytest.raises(RuntimeError, match="surgery failed"):
        s.schedule.step()
    assert same_state(before, state(s.model)) and s.steps_taken == 0
    assert not s.busy  # the session is usable again


def test_cancel_during_a_run_keeps_the_model_intact():
    s = tiny_session()
    before = state(s.model)
    run = s.schedule.run_to_target(prompt="The")
    first = next(run)
    assert "measuring importance" in first.message
    with pytest.raises(SessionError, match="busy"):
        s.schedule.step()  # one task at a time per session
    s.cancel()
    rest = list(run)
    assert rest[-1].done and "Cancelled" in rest[-1].message
    assert same_state(before, state(s.model)) and s.steps_taken == 0 and not s.busy


def test_run_to_target_streams_every_step_and_meets_the_target():
    s = tiny_session()
    updates = list(s.schedule.run_to_target(prompt="The", evaluate_every=1))
    steps = [u for u in updates if u.evaluation is not None]
    assert len(steps) == s.steps_taken >= 2
    assert updates[-1].done and "Target reached" in updates[-1].message
    total0 = s.pruner.origin.params["total"]
    assert count_parameters(s.model)["total"] <= 0.85 * total0 + 0.001 * total0
    assert [p.step for p in s.quality.trajectory] == list(range(s.steps_taken + 1))
    with pytest.raises(SessionError, match="already at or below"):
        s.schedule.step()


def test_custom_and_uploaded_calibration_settings_are_validated():
    s = tiny_session()
    with pytest.raises(SessionError, match="one final sparsity per layer"):
        s.configure(tiny_settings(method="custom", custom=[0.1]))
    with pytest.raises(SessionError, match="upload"):  # "uploaded file" chosen, no file given
        settings_from(85, 0.05, 5, "taylor", "adaptive", None, UPLOADED, None, 4, 32, 0, 512, 6)
    text = load_text("stories")[:20000]
    s.configure(tiny_settings(method="custom", custom=[0.0, 0.3, 0.3], calibration="uploaded file",
                              calibration_text=text, calibration_name="my-notes.txt"))
    rec = s.schedule.step()
    assert rec.allocated_sparsity[0] == 0.0 and rec.allocated_sparsity[1] > 0
    # the records say what the calibration was: the file, its sha256 and the tokens read — not a shipped corpus
    said = s.work.pruner.record.to_dict()["config"]["calibration"]
    assert said == {"file": "my-notes.txt", "sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text),
                    "tokens": len(s.work.tokenizer(text, add_special_tokens=False)["input_ids"])}


def test_uniform_baseline_overlays_without_touching_the_working_model():
    s = tiny_session(target=0.9)
    before = state(s.model)
    updates = list(s.quality.run_uniform_baseline())
    assert updates[-1].done
    assert same_state(before, state(s.model))
    params = [p.params for p in s.quality.baseline]
    assert len(params) >= 2 and params == sorted(params, reverse=True)


def test_export_zip_and_report_round_trip(tmp_path):
    s = tiny_session()
    s.schedule.step()
    s.quality.quick_eval("The")
    z = s.export_zip(tmp_path, dtype="float32")  # exact
    with zipfile.ZipFile(z) as f:
        names = set(f.namelist())
        f.extractall(tmp_path / "x")
    assert {"pruned-model/model.safetensors", "pruned-model/pruned_widths.json",
            "pruned-model/pruning_record.json", "pruned-model/studio_report.json"} <= names
    model, _ = load_model(tmp_path / "x" / "pruned-model", device="cpu", progress=None)
    assert layer_widths(model) == layer_widths(s.model)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids).logits, s.model(ids).logits)
    assert z.name == "pruned-model-target-85pct-0.85-fp32.zip"  # the page's percent and the records' fraction
    report = json.loads(s.export_report(tmp_path).read_text())
    assert report["target"] == {"percent": 85, "fraction": 0.85}
    assert len(report["record"]["steps"]) == 1 and report["trajectory"][1]["step"] == 1
    assert "wikitext2 test, 64-token windows" in report["quick_perplexity_settings"]


def test_summary_names_device_and_parameters():
    s = tiny_session()
    md = s.summary_markdown()
    assert "cpu" in md and "3 layers" in md and f"{count_parameters(s.model)['total']:,} parameters" in md
    assert "calibration tokens per sub-step" in s.costs.prune_markdown(s.settings)


def test_zero_shot_table_for_pruned_and_original(tmp_path, monkeypatch):
    pytest.importorskip("pruner.evaluation")
    monkeypatch.setenv("ADAPT_PRUNER_CACHE", str(tmp_path))  # keep the results cache out of the user's
    s = tiny_session()
    assert "arc_easy" in Quality.zero_shot_tasks()
    table = s.quality.zero_shot(["arc_easy"], 4, with_original=True)
    assert set(table["model"]) == {"pruned (0 steps)", "original"}
    assert set(table["metric"].dropna()) <= {"acc", "acc_norm", "acc_norm/acc"}  # the last names the average
    with pytest.raises(SessionError, match="at least one task"):
        s.quality.zero_shot([], 4)


def test_export_in_bfloat16_is_half_the_size_and_loads_back(tmp_path):
    s = tiny_session()
    s.schedule.step()
    z16, z32 = s.export_zip(tmp_path / "a"), s.export_zip(tmp_path / "b", dtype="float32")
    assert z16.name.endswith("-bf16.zip") and z16.stat().st_size < 0.7 * z32.stat().st_size
    assert next(s.model.parameters()).dtype == torch.float32  # the working model is not cast
    with zipfile.ZipFile(z16) as f:
        f.extractall(tmp_path / "x")
    model, _ = load_model(tmp_path / "x" / "pruned-model", device="cpu", progress=None)
    assert layer_widths(model) == layer_widths(s.model)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids).logits.float(), s.model(ids).logits, atol=0.05, rtol=0.05)


def test_undo_brings_back_the_evaluation_of_the_step_it_returns_to():
    from studio.views import page_views
    from tests.test_studio_panel import NAMES

    page = SimpleNamespace(**{n: n for n in NAMES})
    s = tiny_session()
    s.schedule.step()
    first = s.quality.quick_eval("The history of")
    s.schedule.step()
    s.quality.quick_eval("The history of")
    s.undo()
    assert s.quality.last_eval is first and page_views(page, s)["metrics"].startswith("step 1 ·")
    s.schedule.step()  # step 2 again, not evaluated: nothing of the undone step 2 comes back
    s.undo()
    s.undo()
    assert s.quality.last_eval is None and s.steps_taken == 0
    assert "No evaluation yet" in page_views(page, s)["metrics"]
    # back at the original: its reference perplexity, the trajectory's first point, is named
    assert f"{s.quality.trajectory[0].perplexity:.2f}" in page_views(page, s)["metrics"]
    s.schedule.step()
    assert s.quality.last_eval is None  # the step's own evaluation has not run yet
    s.schedule.step()
    s.undo()
    assert "No evaluation of the model as it is now (after step 1)" in page_views(page, s)["metrics"]
