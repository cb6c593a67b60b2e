"""The CUDA path (skipped without a GPU; scripts/gpu_check.sh runs it on a machine that has one): load in bf16 on
the GPU, measure importance (CUDA peak memory), prune, generate with the KV cache, save and reload, and train a
step under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

import pruner
from pruner.testing import tiny_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


def test_prune_generate_save_reload_on_cuda(tiny_tokenizer, tmp_path):
    model = tiny_model("qwen2").to("cuda", torch.bfloat16)
    p = pruner.Pruner(model, tiny_tokenizer, pruner.PruneConfig(target=0.8, n_windows=8, window=32,
                                                                  calibration="wikitext2"))
    rec = p.run()
    assert rec.device.startswith("cuda") and rec.peak_memory_kind.startswith("cuda")
    assert rec.steps[0].importance_memory["kind"] == "cuda allocated"
    ids = torch.tensor([[5, 6, 7, 8]], device="cuda")
    out = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    assert torch.equal(out, model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False))
    pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m")
    again, _ = pruner.load_model(tmp_path / "m", device="cuda", dtype="bfloat16", progress=None)
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_a_training_step_under_bf16_autocast(tiny_tokenizer):
    from pruner.training.train import TrainConfig, train

    model = tiny_model("llama").to("cuda")
    out = train(model, tiny_tokenizer, 2 * 64, TrainConfig(lr=1e-3, seq_len=32, batch_size=2, data="stories"))
    assert out["steps"] == 2 and out["peak_memory_kind"].startswith("cuda")
