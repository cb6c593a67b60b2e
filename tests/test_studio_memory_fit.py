"""The studio's "fits / does not fit" line, made from a model's config before it is loaded (issue 20)."""

from __future__ import annotations

import re

from studio.memory_fit import fit_note


def test_a_named_model_gets_a_plan_for_pruning_and_training_before_loading():
    note = fit_note("default", device="cpu")
    assert "default" in note and "on cpu" in note
    m = re.search(r"pruning (fits|\*\*does not fit\*\*), needs about ([\d.]+) GB", note)
    assert m and 0.3 < float(m.group(2)) < 5, note
    assert "recovery training" in note


def test_an_8b_model_does_not_fit_in_a_tiny_capacity_and_says_so(monkeypatch):
    import pruner.training.memory_plan as mp

    monkeypatch.setattr(mp, "device_capacity", lambda device: (2 * 10**9, "test capacity"))
    note = fit_note("llama-3.1-8b", device="cpu")
    assert "does not fit" in note and "8,030 M parameters" in note


def test_a_local_folder_is_planned_from_its_config(tiny_llama_folder):
    note = fit_note(str(tiny_llama_folder), device="cpu")
    assert "needs about" in note


def test_a_missing_folder_and_a_hub_id_answer_at_once_without_the_network(tmp_path):
    assert "not available before loading" in fit_note(str(tmp_path / "nothing-here"), device="cpu")
    note = fit_note("some-org/some-model", device="cpu")
    assert "when it loads" in note and "plan-memory --model some-org/some-model" in note
