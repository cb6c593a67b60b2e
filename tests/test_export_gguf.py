"""GGUF export: per-layer metadata, llama.cpp tensor conventions, tokenizer, read back and next-token agreement."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from pruner.export import ExportError, export_gguf, load_gguf_model, read_gguf
from pruner.export.gguf import _gguf_tensors, permute_qk, unpermute_qk, write_gguf
from pruner.io.outputs import MANIFEST
from pruner.model.structure import layer_widths
from pruner.testing import random_windows, tiny_model, uneven_model


def uneven(arch: str):
    return uneven_model(arch)


def test_permutation_is_invertible():
    w = torch.randn(6 * 8, 5)
    p = permute_qk(w, 6)
    assert not torch.equal(p, w)
    torch.testing.assert_close(unpermute_qk(p, 6), w, rtol=0, atol=0)
    # llama.cpp pairs dimension j with j + head_dim/2 of the HF layout as rows 2j, 2j+1 of each head
    torch.testing.assert_close(p[:8:2], w[:4], rtol=0, atol=0)
    torch.testing.assert_close(p[1:8:2], w[4:8], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama"])
def test_f32_gguf_round_trip_metadata_and_tensors(tmp_path, arch, tiny_tokenizer):
    model = uneven(arch)
    path = tmp_path / "m.gguf"
    info = write_gguf(model, tiny_tokenizer, path, dtype="f32")
    arch = {"llama": "deci", "qwen2": "qwen2"}[arch]  # llama.cpp's Llama with per-layer widths is "deci"
    assert info["arch"] == arch and info["uniform"] is False
    back = read_gguf(path)
    meta = back["metadata"]
    widths = layer_widths(model)
    assert meta["general.architecture"] == arch
    assert meta[f"{arch}.attention.head_count"] == [w.num_heads for w in widths] == [6, 8, 2, 8]
    assert meta[f"{arch}.attention.head_count_kv"] == [w.num_kv_heads for w in widths]
    assert meta[f"{arch}.feed_forward_length"] == [w.intermediate_size for w in widths] == [48, 96, 96, 6]
    assert meta[f"{arch}.attention.key_length"] == meta[f"{arch}.rope.dimension_count"] == 8
    assert meta[f"{arch}.block_count"] == 4 and meta[f"{arch}.embedding_length"] == 64
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    expected = _gguf_tensors(model, arch)
    assert {k: v["shape"] for k, v in back["tensors"].items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert ("blk.0.attn_q.bias" in back["tensors"]) == (arch == "qwen2")
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:  # values equal exactly (f32), q/k in llama.cpp's permuted layout for llama
        np.testing.assert_array_equal(np.asarray(t.data).reshape(expected[t.name].shape), expected[t.name].numpy())
    q = expected["blk.3.attn_q.weight"]
    hf_q = model.model.layers[3].self_attn.q_proj.weight.detach()
    assert torch.equal(q, permute_qk(hf_q, 8) if arch == "deci" else hf_q)
    rebuilt = load_gguf_model(path)
    ids = random_windows(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids).logits, model(ids).logits)


def test_qwen2_is_written_only_where_llama_cpp_can_hold_it(tmp_path, tiny_tokenizer):
    from pruner.export import ExportError
    from pruner.model.structure import LayerCut, apply_patch, build_cut

    # lost heads, or per-layer widths: llama.cpp's qwen2 loader sizes q at the hidden size, one n_ff for all layers
    with pytest.raises(ExportError, match="lost attention heads"):
        write_gguf(uneven("qwen2"), tiny_tokenizer, tmp_path / "a.gguf", dtype="f32")
    model = tiny_model("qwen2")
    apply_patch(model, build_cut(model, {li: LayerCut([0, 1, 2, 3], list(range(0, 96, 2))) for li in range(4)}))
    apply_patch(model, build_cut(model, {0: LayerCut([0, 1, 2, 3], list(range(40)))}))
    with pytest.raises(ExportError, match="different widths"):
        write_gguf(model, tiny_tokenizer, tmp_path / "b.gguf", dtype="f32")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()
    # every head kept, one MLP width for every layer: written as qwen2 with its biases, and read back exactly
    model = tiny_model("qwen2")
    apply_patch(model, build_cut(model, {li: LayerCut([0, 1, 2, 3], list(range(0, 96, 2))) for li in range(4)}))
    info = write_gguf(model, tiny_tokenizer, tmp_path / "c.gguf", dtype="f32")
    back = read_gguf(tmp_path / "c.gguf")
    assert info["arch"] == "qwen2" and back["metadata"]["qwen2.feed_forward_length"] == 48
    assert "blk.0.attn_q.bias" in back["tensors"]
    ids = random_windows(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_gguf_model(tmp_path / "c.gguf")(ids).logits, model(ids).logits)


def test_tokenizer_metadata_from_hf_bpe(tmp_path, tiny_tokenizer):
    model = uneven("llama")
    write_gguf(model, tiny_tokenizer, tmp_path / "m.gguf", dtype="f16")
    meta = read_gguf(tmp_path / "m.gguf")["metadata"]
    assert meta["tokenizer.ggml.model"] == "gpt2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == model.config.vocab_size
    vocab = tiny_tokenizer.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    merges = json.loads(tiny_tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert len(meta["tokenizer.ggml.merges"]) == len(merges) > 0
    assert meta["tokenizer.ggml.bos_token_id"] == tiny_tokenizer.bos_token_id
    assert meta["tokenizer.ggml.eos_token_id"] == tiny_tokenizer.eos_token_id
    types = meta["tokenizer.ggml.token_type"]
    assert types[tiny_tokenizer.eos_token_id] == gguf.TokenType.CONTROL
    assert types[len(vocab)] == gguf.TokenType.UNUSED  # padding up to the model's vocabulary size


def test_uniform_llama_gguf_matches_transformers_loader(tmp_path):
    """transformers' GGUF loader undoes llama.cpp's q/k permutation: equal logits prove the convention."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", tie_word_embeddings=True)
    assert write_gguf(model, None, tmp_path / "u.gguf", dtype="f32")["arch"] == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="u.gguf", dtype=torch.float32).eval()
    ids = random_windows(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
    assert "output.weight" not in read_gguf(tmp_path / "u.gguf")["tensors"]  # tied: stored once


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_export_gguf_folder_card_and_agreement(tmp_path, tiny_tokenizer, dtype):
    model = uneven("llama")
    summary = export_gguf(model, tiny_tokenizer, tmp_path / "out", dtype=dtype)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [MANIFEST, "README.md", f"out-{dtype}.gguf"]  # the manifest: what --force may replace
    back = read_gguf(summary["path"])
    kinds = {v["type"] for k, v in back["tensors"].items() if k.endswith("_norm.weight")}
    assert kinds == {"F32"}  # 1-D tensors stay float32
    assert back["tensors"]["blk.0.attn_q.weight"]["type"] == dtype.upper()
    assert summary["verify"]["agreement"] == 1.0 and summary["verify"]["prompts"] == 10
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: gguf" in card and "deci.attention.head_count" in card
    with pytest.raises(FileExistsError):
        export_gguf(model, tiny_tokenizer, tmp_path / "out", dtype=dtype)


def test_unknown_gguf_dtype_is_refused(tmp_path):
    with pytest.raises(ExportError, match="f32, f16, bf16"):
        write_gguf(uneven("llama"), None, tmp_path / "m.gguf", dtype="q4_0")


def test_cli_exports_a_saved_pruned_folder(tmp_path, tiny_tokenizer):
    from pruner.cli.main import main
    from pruner.io.models import save_pruned

    save_pruned(uneven("llama"), tiny_tokenizer, tmp_path / "pruned")
    assert main(["export", "--model", str(tmp_path / "pruned"), "--format", "gguf", "--gguf-dtype", "f32",
                 "--out", str(tmp_path / "g")]) == 0
    assert main(["export", "--model", str(tmp_path / "pruned"), "--format", "gguf", "--out", str(tmp_path / "g")]) == 2
    assert main(["export", "--model", str(tmp_path / "pruned"), "--format", "hf", "--out", str(tmp_path / "h"),
                 "--no-verify"]) == 0
    assert (tmp_path / "h" / "modeling_adapt_pruned.py").is_file() and (tmp_path / "h" / "tokenizer.json").is_file()
    # an exported folder can be exported again (read with this package's code, not the folder's)
    assert main(["export", "--model", str(tmp_path / "h"), "--format", "gguf", "--out", str(tmp_path / "g2"),
                 "--no-verify"]) == 0
    first = read_gguf(tmp_path / "g" / "g-f32.gguf")["tensors"]
    again = read_gguf(tmp_path / "g2" / "g2-f16.gguf")["tensors"]
    assert {k: v["shape"] for k, v in first.items()} == {k: v["shape"] for k, v in again.items()}


# ---------------------------------------------------------------- the baselines' models (issue 13)


def baseline(arch: str, method: str, tokenizer):
    import pruner

    cfg = pruner.PruneConfig(target=0.7, method=method, n_windows=4, window=24, batch_size=4, calibration="wikitext2")
    p = pruner.Pruner(tiny_model(arch), tokenizer, cfg)
    p.run()
    return p.model


def test_flap_biases_are_carried_by_the_llama_gguf(tmp_path, tiny_tokenizer):
    model = baseline("llama", "flap", tiny_tokenizer)
    info = write_gguf(model, None, tmp_path / "f.gguf", dtype="f32")
    tensors = read_gguf(tmp_path / "f.gguf")["tensors"]
    assert info["arch"] in ("llama", "deci")
    assert all(f"blk.{i}.attn_output.bias" in tensors and f"blk.{i}.ffn_down.bias" in tensors for i in range(4))
    rebuilt = load_gguf_model(tmp_path / "f.gguf")
    assert all(layer.mlp.down_proj.bias is not None for layer in rebuilt.model.layers)
    ids = random_windows(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids).logits, model(ids).logits)


def test_flap_biases_in_a_qwen2_gguf_are_refused_with_the_reason(tmp_path, tiny_tokenizer):
    model = baseline("qwen2", "flap", tiny_tokenizer)
    # whichever llama.cpp limit bites first (its qwen2 loader has no o_proj/down_proj bias, sizes q at the hidden
    # size and gives every layer one FFN width), the refusal names it and points to the HF export
    with pytest.raises(ExportError, match=r"(no o_proj or down_proj bias|lost attention heads|different widths).*hf"):
        export_gguf(model, None, tmp_path / "out", dtype="f32")
    assert not (tmp_path / "out").exists()


def test_a_shortgpt_model_is_a_plain_gguf_with_fewer_blocks(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = baseline("llama", "shortgpt", tiny_tokenizer)
    n = model.config.num_hidden_layers
    assert n < 4
    info = write_gguf(model, None, tmp_path / "s.gguf", dtype="f32")
    assert info["arch"] == "llama" and read_gguf(tmp_path / "s.gguf")["metadata"]["llama.block_count"] == n
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="s.gguf", dtype=torch.float32).eval()
    ids = random_windows(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
