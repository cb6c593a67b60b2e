"""``adapt-pruner explore`` and ``prune --method sensitivity`` on a tiny model folder (issue 23)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def tiny_folder(tiny_llama_folder):
    return tiny_llama_folder  # the shared tiny Llama folder of conftest.py


def test_explore_prints_the_table_and_writes_the_report(tiny_folder, tmp_path):
    report = tmp_path / "explore.json"
    r = run_cli("explore", "--model", str(tiny_folder), "--methods", "adaptive,uniform,flap", "--targets", "0.9,0.7",
                "--amplitudes", "0,0.05", "--sensitivity", "--n-windows", "4", "--window", "24", "--scan-tokens", "50",
                "--eval-tokens", "256", "--eval-window", "64", "--report", str(report))
    assert r.returncode == 0, r.stderr
    assert "pred. ppl" in r.stdout and "Spearman" in r.stdout and "no BOS" in r.stdout
    data = json.loads(report.read_text())
    points = data["sweep"]["points"]
    assert len(points) == 2 * 2 + 2 + 2  # adaptive: targets × A; uniform and flap: the targets
    assert all(p["perplexity"] > 1 and not p["error"] for p in points)
    assert {p["method"] for p in points} == {"adaptive", "uniform", "flap"}
    assert data["sweep"]["sample"]["split"] == "valid" and data["sweep"]["baseline"]["tokens_scored"] > 0
    assert len(data["sensitivity"]["table"]["increase"]) == 4 and set(data["sensitivity"]["spearman"]) == {
        "0.25", "0.5", "0.75", "1"}
    assert data["sensitivity"]["table"]["tokens"] == 48  # --scan-tokens 50: the first two whole 24-token windows


def test_explore_refuses_a_sweep_too_large_and_bad_methods(tiny_folder):
    r = run_cli("explore", "--model", str(tiny_folder), "--targets", "0.9,0.8,0.7", "--n-windows", "4",
                "--window", "24", "--eval-tokens", "256", "--eval-window", "64", "--max-seconds", "0.001")
    assert r.returncode == 2 and "would take about" in r.stderr
    r = run_cli("explore", "--model", str(tiny_folder), "--methods", "adaptive,nope")
    assert r.returncode == 2 and "use one or more of" in r.stderr


def test_prune_with_the_sensitivity_method(tiny_folder, tmp_path):
    report = tmp_path / "r.json"
    r = run_cli("prune", "--model", str(tiny_folder), "--target", "0.75", "--method", "sensitivity",
                "--n-windows", "4", "--window", "24", "--report", str(report), "--ppl-windows", "64",
                "--ppl-max-tokens", "256")
    assert r.returncode == 0, r.stderr
    rec = json.loads(report.read_text())["record"]
    assert rec["config"]["method"] == "sensitivity" and len(rec["steps"]) == 1
    assert "predicted_loss_increase" in rec["steps"][0]["decision"]
    assert abs(rec["final_params"]["total"] / rec["original_params"]["total"] - 0.75) < 0.03
