"""Integration on the real default model (SmolLM2-135M-Instruct): prune about 10 % and check that it still works."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import pruner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    torch.set_num_threads(2)
    return pruner.load_model("default", device="cpu")


def greedy(model, tok, prompt: str, n: int = 8) -> str:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_default_model_is_the_expected_one(default_model):
    model, tok = default_model
    info = pruner.describe(model)
    assert info["params"]["total"] == 134_515_008
    assert info["layers"] == 30 and set(info["num_kv_heads"]) == {3} and set(info["intermediate_size"]) == {1536}
    assert "Paris" in greedy(model, tok, "The capital of France is")


def test_prune_ten_percent_keeps_a_working_model(default_model, tmp_path):
    model, tok = default_model
    dense = pruner.perplexity(model, tok, window=256, max_tokens=2048)["perplexity"]
    cfg = pruner.PruneConfig(target=0.9, n_windows=8, window=64, batch_size=8, step=0.04)
    rec = pruner.Pruner(model, tok, cfg).run()
    total0 = rec.original_params["total"]
    assert abs(rec.final_params["total"] - 0.9 * total0) <= 0.01 * total0
    ppl = pruner.perplexity(model, tok, window=256, max_tokens=2048)["perplexity"]
    assert math.isfinite(ppl) and ppl < 4 * dense, (dense, ppl)
    text = greedy(model, tok, "The capital of France is", 10)
    words = [w for w in text.split() if w.isalpha()]
    assert len(words) >= 2, text  # real words, not an empty or garbage continuation
    out = pruner.save_pruned(model, tok, tmp_path / "p90", record=rec)
    loaded, _ = pruner.load_model(str(out), device="cpu")
    ids = tok("Pruning makes models smaller.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_cli_info_and_bad_target():
    res = subprocess.run([sys.executable, "-m", "pruner", "prune", "--model", "default", "--target", "0.001",
                          "--no-ppl"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "cannot be met without emptying a layer" in res.stderr
    res = subprocess.run([sys.executable, "-m", "pruner", "info", "--model", "default"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and '"total": 134515008' in res.stdout
