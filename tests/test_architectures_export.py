"""Exports of the architectures added after the first three (issue 12): Qwen3, Gemma-2, Gemma-3 text, Phi-3,
OLMo-2. An HF export with per-layer widths loads in a process that cannot import pruner (remote code), uniform
widths export as the plain architecture; GGUF where llama.cpp can hold the widths, else a one-line refusal; a
gemma3 GGUF (how Gemma-3-270M comes) loads as gemma3_text and prunes.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_export_hf import STRANGER, export_for_a_stranger

import pruner
from pruner.export import ExportError, export_gguf, export_hf, load_gguf_model, read_gguf
from pruner.export.gguf import write_gguf
from pruner.io.exported import load_exported
from pruner.model.adapters import ADAPTERS
from pruner.model.structure import LayerCut, apply_patch, build_cut, layer_widths
from pruner.pruning.planner import target_tolerance
from pruner.testing import HIDE_PROJECT, NEW_ARCHITECTURES, random_windows, tiny_model, uneven_model

CLASSES = {"qwen3": "Qwen3", "gemma2": "Gemma2", "gemma3_text": "Gemma3Text", "phi3": "Phi3", "olmo2": "Olmo2"}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------- HF export


@pytest.fixture(scope="module")
def stranger_results(tmp_path_factory, tiny_tokenizer):
    """Export every new architecture with per-layer widths, then load them all in one subprocess that cannot
    import pruner (trust_remote_code), comparing logits and cached generation."""
    root = tmp_path_factory.mktemp("export_arch")
    models = {arch: uneven_model(arch) for arch in NEW_ARCHITECTURES}
    out = export_for_a_stranger(models, root, {"gemma3_text": tiny_tokenizer})
    assert HIDE_PROJECT in STRANGER
    assert out[str(root / "gemma3_text") + ":tokens"] == tiny_tokenizer("hello world").input_ids
    return {arch: out[str(root / arch)] for arch in NEW_ARCHITECTURES}, root, models


def test_stranger_loads_same_logits_and_generates(stranger_results, new_arch):
    results, root, models = stranger_results
    r = results[new_arch]
    assert r["class"] == f"AdaptPruned{CLASSES[new_arch]}ForCausalLM"
    assert r["max_diff"] < 1e-5
    assert r["with_cache"] == r["without_cache"] == r["expected"]
    cfg = json.loads((root / new_arch / "config.json").read_text())
    assert cfg["model_type"] == f"adapt_pruned_{new_arch}"
    assert cfg["num_attention_heads_per_layer"] == [6, 8, 2, 8] and cfg["intermediate_size_per_layer"] == [48, 96, 96, 6]


def test_load_exported_returns_the_stock_class_with_same_logits(stranger_results, new_arch):
    _, root, models = stranger_results
    model, _ = load_exported(root / new_arch)
    assert type(model).__name__ == type(models[new_arch]).__name__
    assert layer_widths(model) == layer_widths(models[new_arch])
    ids = random_windows(2, 16, seed=5)
    torch.testing.assert_close(logits(model, ids), logits(models[new_arch], ids))


def test_uniform_widths_export_the_plain_architecture(new_arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(new_arch)
    apply_patch(model, build_cut(model, {i: LayerCut([0, 1, 2, 3], list(range(64))) for i in range(4)}))
    summary = export_hf(model, None, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert summary["remote_code"] is False and cfg["model_type"] == new_arch and "auto_map" not in cfg
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # no trust_remote_code
    assert type(loaded).__name__ == type(model).__name__
    ids = random_windows(2, 16)
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids))


def test_remote_code_layouts_match_the_adapters():
    """The exported modelling code hard-codes each family's layout; it must say what the adapter says."""
    from pruner.export.hf import FAMILIES
    from pruner.model.remote_code.modeling_adapt_pruned import LAYOUTS

    for model_type, family in FAMILIES.items():
        ours, theirs = ADAPTERS[model_type].layout(), LAYOUTS[family]
        assert ours == {k: theirs[k] for k in ours}, model_type


# ---------------------------------------------------------------- GGUF


def test_gguf_with_per_layer_widths_is_refused_with_the_reason(new_arch, tmp_path):
    with pytest.raises(ExportError, match="different widths.*first layer's head count") as err:
        write_gguf(uneven_model(new_arch), None, tmp_path / "m.gguf")
    assert "\n" not in str(err.value) and ADAPTERS[new_arch].family in str(err.value)
    with pytest.raises(ExportError):
        export_gguf(uneven_model(new_arch), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "phi3", "olmo2"])
def test_gguf_of_an_unwritten_layout_is_refused_with_the_reason(arch, tmp_path):
    with pytest.raises(ExportError, match="not supported: this exporter writes") as err:
        write_gguf(tiny_model(arch), None, tmp_path / "m.gguf")
    assert "\n" not in str(err.value)


def test_uniform_qwen3_gguf_matches_the_transformers_loader(tmp_path, tiny_tokenizer):
    """transformers' qwen3 GGUF reader assumes head_dim 128 (it ignores key_length), as real Qwen3 models have."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("qwen3", head_dim=128, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    apply_patch(model, build_cut(model, {i: LayerCut([0, 1], list(range(0, 96, 2))) for i in range(4)}))
    info = write_gguf(model, tiny_tokenizer, tmp_path / "q.gguf", dtype="f32")
    assert info["arch"] == "qwen3" and info["uniform"]
    assert "blk.0.attn_q_norm.weight" in read_gguf(tmp_path / "q.gguf")["tensors"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32).eval()
    ids = random_windows(2, 16)
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits(load_gguf_model(tmp_path / "q.gguf"), ids), logits(model, ids))
    summary = export_gguf(model, tiny_tokenizer, tmp_path / "out", dtype="f16")
    assert summary["verify"]["agreement"] == 1.0
    assert "llama.cpp's `qwen3` architecture" in (tmp_path / "out" / "README.md").read_text()


def test_a_gemma3_gguf_loads_as_gemma3_text_and_prunes(tmp_path, tiny_tokenizer):
    """Gemma-3-270M comes as a GGUF: transformers reads a gemma3 GGUF as Gemma3ForCausalLM with a Gemma3TextConfig
    (model_type gemma3_text), which this adapter prunes. The file is laid out as llama.cpp's converter does (its
    names, norms stored as 1 + w; one KV group of head_dim 256, as in the real model)."""
    import gguf
    from transformers import AutoModelForCausalLM

    src = tiny_model("gemma3_text", head_dim=256, query_pre_attn_scalar=256, num_attention_heads=4,
                     num_key_value_heads=1, final_logit_softcapping=None, layer_types=None, sliding_window=512,
                     num_hidden_layers=2)
    c, names = src.config, gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, 2)
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), arch="gemma3")
    for add, value in ((w.add_block_count, 2), (w.add_context_length, c.max_position_embeddings),
                       (w.add_embedding_length, 64), (w.add_vocab_size, 320), (w.add_feed_forward_length, 96),
                       (w.add_head_count, 4), (w.add_head_count_kv, 1), (w.add_key_length, 256),
                       (w.add_value_length, 256), (w.add_layer_norm_rms_eps, c.rms_norm_eps),
                       (w.add_rope_freq_base, 1e6), (w.add_sliding_window, 512)):
        add(value)
    for k, t in src.state_dict().items():
        if k != "lm_head.weight":  # tied
            w.add_tensor(names.get_name(k, try_suffixes=(".weight",)), (t + 1 if "norm" in k else t).float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="g.gguf", dtype=torch.float32).eval()
    assert (type(model).__name__, type(model.config).__name__) == ("Gemma3ForCausalLM", "Gemma3TextConfig")
    assert model.config.model_type == "gemma3_text"
    ids = random_windows(2, 16)
    torch.testing.assert_close(logits(model, ids), logits(src, ids))
    from pruner.io.formats import strip_quantization as _strip_quantization

    _strip_quantization(model)
    cfg = pruner.PruneConfig(target=0.96, method="uniform", n_windows=4, window=32, batch_size=4, calibration="wikitext2")
    rec = pruner.Pruner(model, tiny_tokenizer, cfg).run()
    assert [w["num_kv_heads"] for w in rec.final_widths] == [1, 1]  # one KV group: only MLP channels can go
    total0 = rec.original_params["total"]
    assert abs(rec.final_params["total"] - round(0.96 * total0)) <= target_tolerance(total0)
    loaded, _ = pruner.load_model(str(pruner.save_pruned(model, tiny_tokenizer, tmp_path / "pruned")))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)


def test_cli_refuses_a_gguf_it_cannot_write_in_one_line(tmp_path, tiny_tokenizer, capsys):
    from pruner.cli.main import main

    pruner.save_pruned(uneven_model("gemma3_text"), tiny_tokenizer, tmp_path / "pruned")
    capsys.readouterr()
    assert main(["export", "--model", str(tmp_path / "pruned"), "--format", "gguf", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gemma3" in err[0] and "first layer's head count" in err[0]
    assert not (tmp_path / "g").exists()
    assert main(["export", "--model", str(tmp_path / "pruned"), "--format", "hf", "--out", str(tmp_path / "h")]) == 0
