"""The command line on a tiny model folder: prune → saved folder + report; eval; bad input exits 2 with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pruner
from pruner.testing import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=300, **env_extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "pruner", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tiny") / "model"
    model = tiny_model("qwen2")
    model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def test_prune_then_eval(tiny_folder, tmp_path):
    out, report = tmp_path / "pruned", tmp_path / "report.json"
    r = run_cli("prune", "--model", str(tiny_folder), "--target", "0.8", "--calibration", "wikitext2",
                "--n-windows", "4", "--window", "32", "--out", str(out), "--report", str(report),
                "--ppl-windows", "32,64", "--ppl-max-tokens", "512")
    assert r.returncode == 0, r.stderr
    assert "step   1:" in r.stderr  # progress is shown
    data = json.loads(report.read_text())
    rec = data["record"]
    assert abs(rec["final_params"]["total"] / rec["original_params"]["total"] - 0.8) < 0.01
    assert [p["window"] for p in data["perplexity"]] == [32, 64]
    assert all(p["dataset"] == "wikitext2" and p["split"] == "test" for p in data["perplexity"])
    assert rec["steps"][0]["layer_importance"] and rec["config"]["method"] == "adaptive"
    model, _ = pruner.load_model(str(out))
    assert pruner.count_parameters(model) == rec["final_params"]
    r2 = run_cli("eval", "--model", str(out), "--ppl-windows", "32", "--ppl-max-tokens", "256",
                 "--report", str(tmp_path / "eval.json"))
    assert r2.returncode == 0, r2.stderr
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["perplexity"][0]["window"] == 32 and ev["model"]["params"] == rec["final_params"]
    # refuses to overwrite without --force
    r3 = run_cli("prune", "--model", str(tiny_folder), "--target", "0.9", "--out", str(out), "--no-ppl")
    assert r3.returncode == 2 and "--force" in r3.stderr


@pytest.mark.parametrize("args,message", [
    (["--target", "0"], "must be > 0"),
    (["--target", "1.2"], "≥ 100 %"),
    (["--target", "0.8", "--criterion", "taylor", "--calibration", "/no/such/file.txt"], "No such calibration text file"),
    (["--target", "0.8", "--calibration", "wikipedia"], "Unknown calibration corpus"),
])
def test_bad_input_gives_a_clear_message(tiny_folder, args, message):
    r = run_cli("prune", "--model", str(tiny_folder), "--no-ppl", *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_model_source():
    r = run_cli("info", "--model", "./definitely/not/here")
    assert r.returncode == 2 and "No such model folder" in r.stderr


def test_unreachable_hub_id():
    r = run_cli("info", "--model", "someorg/no-such-model", HF_HUB_OFFLINE="1")
    assert r.returncode == 2 and "could not be fetched" in r.stderr and "Traceback" not in r.stderr


def test_unsupported_architecture_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    r = run_cli("info", "--model", str(tmp_path / "gpt2"))
    assert r.returncode == 2 and "'gpt2' is not supported" in r.stderr
