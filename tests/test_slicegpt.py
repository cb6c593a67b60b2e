"""SliceGPT (issue 22): folding, the float64 PCA, rotation without and with slicing, the planned size, the step,
save → load, generation, the HF export a stranger loads, the GGUF refusal, the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from test_cli import run_cli
from test_export_hf import export_for_a_stranger

import pruner
from pruner.errors import AllocationError, ConfigError, ExportError
from pruner.export import export_gguf
from pruner.io.models import save_pruned
from pruner.methods.slicegpt import sliced_params
from pruner.model.rotation import (
    OriginalWidthRMSNorm,
    ShortcutDecoderLayer,
    build_folding,
    build_slicing,
    pca,
    residual_width,
    sliced_width,
)
from pruner.model.structure import apply_patch, count_parameters, geometry, layer_widths
from pruner.pruning.planner import target_tolerance
from pruner.testing import random_windows, tiny_model

CASES = [("llama", False), ("llama", True), ("mistral", False), ("qwen2", False), ("qwen2", True)]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def sliced(arch="llama", width=40, tied=False, seed=0):
    model = tiny_model(arch, seed=seed, tie_word_embeddings=tied)
    apply_patch(model, build_slicing(model, width, random_windows(8, 24, seed=1), batch_size=4))
    return model


def config(**kw):
    return pruner.PruneConfig(**{"method": "slicegpt", "target": 0.8, "n_windows": 4, "window": 24,
                                 "batch_size": 4, "calibration": "wikitext2", **kw})


# ---------------------------------------------------------------------- function preserved


@pytest.mark.parametrize("arch,tied", CASES)
def test_folded_norms_alone_keep_the_function(arch, tied):
    model = tiny_model(arch, tie_word_embeddings=tied)  # norms perturbed to [0.5, 1.5]: folding must matter
    ids = random_windows(2, 20, seed=3)
    ref = logits(model, ids)
    apply_patch(model, build_folding(model))
    assert torch.allclose(logits(model, ids), ref, atol=1e-5)
    layer = model.model.layers[0]
    assert isinstance(layer.input_layernorm, OriginalWidthRMSNorm) and not list(layer.input_layernorm.parameters())
    assert isinstance(model.model.norm, OriginalWidthRMSNorm)
    assert model.lm_head.weight is not model.model.embed_tokens.weight and not model.config.tie_word_embeddings


@pytest.mark.parametrize("arch,tied", CASES)
def test_rotation_without_slicing_keeps_the_function(arch, tied):
    model = tiny_model(arch, tie_word_embeddings=tied)
    ids = random_windows(2, 20, seed=3)
    ref = logits(model, ids)
    patch = build_slicing(model, model.config.hidden_size, random_windows(8, 24, seed=1), batch_size=4)
    assert torch.equal(logits(model, ids), ref)  # building the patch only reads the model
    apply_patch(model, patch)
    assert isinstance(model.model.layers[0], ShortcutDecoderLayer)
    q = model.model.layers[0].attn_shortcut_Q.double()
    assert not torch.allclose(q, torch.eye(q.shape[0], dtype=q.dtype), atol=1e-3)  # a real rotation
    assert (logits(model, ids) - ref).abs().max() < 1e-4


def test_slicing_changes_the_function_and_keeps_most_variance():
    model = tiny_model("llama")
    ids = random_windows(2, 20, seed=3)
    ref = logits(model, ids)
    patch = build_slicing(model, 40, random_windows(8, 24, seed=1), batch_size=4)
    apply_patch(model, patch)
    assert (logits(model, ids) - ref).abs().max() > 1e-3
    kept = patch.decision["variance_kept"]
    assert len(kept) == 4 and all(0 < k <= 1 for k in kept) and kept[-1] == pytest.approx(1.0)  # head not sliced
    assert min(patch.decision["attention_variance_kept"]) < 1.0


# ---------------------------------------------------------------------- the pieces


def test_norms_normalise_by_the_original_width():
    x = torch.randn(3, 5, 40)
    got = OriginalWidthRMSNorm(64, 1e-6)(x)
    assert torch.allclose(got, x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / 64 + 1e-6))
    assert not torch.allclose(got, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    model = sliced(width=40)
    assert all(layer.input_layernorm.width == 64 and layer.post_attention_layernorm.width == 64
               for layer in model.model.layers)


def test_the_pca_runs_in_float64():
    gen = torch.Generator().manual_seed(0)
    # a large common offset: accumulating xᵀx in float32 loses the small directions' digits
    x = (torch.randn(4, 50, 16, generator=gen) * torch.logspace(0, -3, 16) + 100.0)
    vals, vecs = pca([x[:2], x[2:]])
    assert vals.dtype == torch.float64 and vecs.dtype == torch.float64
    ref = x.double().reshape(-1, 16).numpy()
    h = ref.T @ ref
    h_damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(16)
    want = np.sort(np.linalg.eigvalsh(h_damped))[::-1] - 0.01 * np.mean(np.diag(h))
    assert np.allclose(vals.numpy(), want, rtol=1e-9, atol=1e-6)
    f32 = x.reshape(-1, 16)
    h32 = (f32.T @ f32).double()  # what a float32 accumulation would give: the check bites
    got32 = torch.linalg.eigvalsh(h32 + 0.01 * h32.diagonal().mean() * torch.eye(16, dtype=torch.float64))
    assert not np.allclose(np.sort(got32.numpy())[::-1] - 0.01 * float(h32.diagonal().mean()), want, rtol=1e-9,
                           atol=1e-6)
    assert torch.all(vals[:-1] >= vals[1:])  # descending
    assert torch.allclose(vecs.T @ vecs, torch.eye(16, dtype=torch.float64), atol=1e-10)


def test_the_pca_leaves_out_padding():
    x = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10)
    mask[1, 6:] = 0
    padded = x.clone()
    padded[1, 6:] = 1e3  # what padding positions hold must not matter
    got, _ = pca([padded], [mask])
    want, _ = pca([torch.cat([x[0], x[1, :6]]).unsqueeze(0)])
    assert torch.allclose(got, want)


def test_the_rotation_leaves_out_padded_calibration_tokens():
    """Right padding under a 0 mask changes nothing that a causal model computes for the real tokens, so the
    rotation built from padded windows is the one built from the windows alone — only if padding is masked."""
    model = tiny_model("llama")
    windows = random_windows(4, 16, seed=1)
    padded = torch.cat([windows, random_windows(4, 8, seed=2)], dim=1)
    mask = torch.cat([torch.ones(4, 16, dtype=torch.long), torch.zeros(4, 8, dtype=torch.long)], dim=1)
    want = build_slicing(model, 40, windows, batch_size=2)
    got = build_slicing(model, 40, padded, batch_size=2, attention_mask=mask)
    unmasked = build_slicing(model, 40, padded, batch_size=2)
    assert torch.allclose(got.embed.weight, want.embed.weight, atol=1e-4)
    assert torch.allclose(got.head.weight, want.head.weight, atol=1e-4)
    assert not torch.allclose(unmasked.embed.weight, want.embed.weight, atol=1e-4)


def test_widths_follow_the_paper_rounding():
    assert sliced_width(576, 0.25) == 432 and sliced_width(576, 0.3) == 400  # int(0.7·576) = 403 → 400
    assert sliced_width(896, 0.0) == 896 and sliced_width(64, 1.0) == 8


@pytest.mark.parametrize("arch,tied", CASES)
def test_the_parameter_count_includes_the_shortcuts(arch, tied):
    model = tiny_model(arch, tie_word_embeddings=tied)
    geo, widths = geometry(model), layer_widths(model)
    fixed = count_parameters(model)["total"] - sum(geo.layer_params(w) for w in widths)
    for width in (64, 40):
        copy_ = copy.deepcopy(model)
        apply_patch(copy_, build_slicing(copy_, width, random_windows(4, 16), batch_size=4))
        layer = copy_.model.layers[0]
        assert tuple(layer.attn_shortcut_Q.shape) == (width, width)
        assert tuple(copy_.model.layers[-1].mlp_shortcut_Q.shape) == (width, 64)
        assert sliced_params(geo, widths, fixed, width) == count_parameters(copy_)["total"]


# ---------------------------------------------------------------------- the method through the pruner


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_slicing_to_a_target_meets_it(arch, tied, tiny_tokenizer):
    model = tiny_model(arch, tie_word_embeddings=tied)
    geo, widths = geometry(model), layer_widths(model)
    fixed = count_parameters(model)["total"] - sum(geo.layer_params(w) for w in widths)
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.8))
    target = p.target_params()
    planned = p.preview().steps[0]
    rec = p.run()
    total = count_parameters(model)["total"]
    assert total <= target + target_tolerance(rec.original_params["total"]) and p.reached()
    assert total == planned.params == rec.final_params["total"]
    d = rec.steps[0].decision
    assert d["residual_width"] == residual_width(model) == planned.slice_width and d["residual_width"] % 8 == 0
    assert d["slicing"] == pytest.approx(1 - d["residual_width"] / 64)
    assert d["params_share"] == pytest.approx(total / rec.original_params["total"])
    assert d["params_share"] > 1 - d["slicing"]  # a slice removes fewer parameters than its share of the width
    assert len(d["variance_kept"]) == 4 and rec.steps[0].method == "slicegpt"
    wider = sliced_params(geo, widths, fixed, d["residual_width"] + 8)
    assert wider > target + target_tolerance(rec.original_params["total"])  # the widest width that meets it


def test_undo_restores_the_model_and_a_second_slice_is_refused(tiny_tokenizer):
    model = tiny_model("qwen2", tie_word_embeddings=True)
    ids = random_windows(2, 20, seed=3)
    ref, before = logits(model, ids), count_parameters(model)
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.8))
    p.step()
    with pytest.raises(AllocationError, match="already"):
        pruner.Pruner(model, tiny_tokenizer, config(target=0.6)).run()
    p.undo()
    assert count_parameters(model) == before and torch.equal(logits(model, ids), ref)
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.config.tie_word_embeddings


def test_other_architectures_are_refused_in_one_line(tiny_tokenizer):
    with pytest.raises(ConfigError, match="SliceGPT supports Llama") as exc:
        pruner.Pruner(tiny_model("phi3"), tiny_tokenizer, config())
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------- save, generate, export


@pytest.mark.parametrize("arch,tied", [("llama", True), ("mistral", False), ("qwen2", True)])
def test_save_load_identical_and_generation_with_cache(arch, tied, tiny_tokenizer, tmp_path):
    model = sliced(arch, 40, tied)
    save_pruned(model, tiny_tokenizer, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "pruned_widths.json").read_text())["residual_width"] == 40
    loaded, _ = pruner.load_model(str(tmp_path / "m"), device="cpu")
    ids = random_windows(2, 20, seed=3)
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    assert count_parameters(loaded) == count_parameters(model)
    prompt = ids[:1, :6]
    cached = loaded.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True)
    assert torch.equal(cached, loaded.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False))


def test_export_loads_without_pruner(tiny_tokenizer, tmp_path):
    models = {"llama-sliced": sliced("llama", 40, True), "qwen2-sliced": sliced("qwen2", 48, False)}
    results = export_for_a_stranger(models, tmp_path, {})
    for name in models:
        got = results[str(tmp_path / name)]
        assert got["class"].startswith("AdaptPruned") and got["max_diff"] < 1e-4
        assert got["with_cache"] == got["without_cache"] == got["expected"]
    cfg = json.loads((tmp_path / "llama-sliced" / "config.json").read_text())
    assert cfg["sliced_hidden_size"] == 40 and cfg["hidden_size"] == 64 and not cfg["tie_word_embeddings"]


def test_gguf_is_refused_with_the_reason(tiny_tokenizer, tmp_path):
    with pytest.raises(ExportError, match="shortcut rotations"):
        export_gguf(sliced(), tiny_tokenizer, tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_cli_prunes_with_slicegpt(tiny_llama_folder, tmp_path):
    out = tmp_path / "sliced"
    r = run_cli("prune", "--model", str(tiny_llama_folder), "--target", "0.8", "--method", "slicegpt",
                "--calibration", "wikitext2", "--n-windows", "4", "--window", "24", "--out", str(out), "--no-ppl")
    assert r.returncode == 0, r.stderr
    assert "residual stream rotated and sliced to" in r.stderr
    model, _ = pruner.load_model(str(out), device="cpu")
    rec = json.loads((out / "pruning_record.json").read_text())
    assert residual_width(model) == rec["steps"][0]["decision"]["residual_width"]
    assert count_parameters(model)["total"] == rec["final_params"]["total"]
    info = run_cli("info", "--model", str(out))
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["residual_width"] == residual_width(model) < 64


def test_layer_cosines_of_a_rotated_model_compare_in_one_basis(tiny_tokenizer):
    """After a rotation the layer's input and output live in different bases: the importance pass carries the input
    along the residual path (shortcut matrices) first, so a rotation alone measures the same cosines."""
    model = tiny_model("llama")
    p = pruner.Pruner(model, tiny_tokenizer, config())
    dense = p.measure(0).layer_cos
    apply_patch(model, build_slicing(model, 64, p.calibration(1), batch_size=4))
    assert pruner.Pruner(model, tiny_tokenizer, config(method="adaptive")).measure(0).layer_cos == pytest.approx(
        dense, abs=1e-5)
    sliced_model = sliced("llama", 40)
    cos = pruner.Pruner(sliced_model, tiny_tokenizer, config(method="adaptive")).measure(0).layer_cos
    assert len(cos) == 4 and all(-1 <= c <= 1 for c in cos)  # the last layer writes all 64: still measurable


def test_units_can_be_pruned_after_slicing_but_not_layers(tiny_tokenizer, tmp_path):
    model = tiny_model("qwen2", tie_word_embeddings=True)
    pruner.Pruner(model, tiny_tokenizer, config(target=0.8)).run()
    sliced_total = count_parameters(model)["total"]
    with pytest.raises(ConfigError, match="ShortGPT cannot remove layers"):
        pruner.Pruner(model, tiny_tokenizer, config(method="shortgpt", target=0.6))
    pruner.Pruner(model, tiny_tokenizer, config(method="adaptive", target=0.6)).run()
    assert count_parameters(model)["total"] < sliced_total and residual_width(model) == 32
    assert any(w.num_kv_heads < 4 or w.intermediate_size < 96 for w in layer_widths(model))
    save_pruned(model, tiny_tokenizer, tmp_path / "m")
    loaded, _ = pruner.load_model(str(tmp_path / "m"), device="cpu")
    ids = random_windows(2, 20, seed=3)
    assert torch.equal(logits(loaded, ids), logits(model, ids))
