"""The architectures added after the first three (issue 12): Qwen3, Gemma-2, Gemma-3 text, Phi-3, OLMo-2.

Each goes through what Llama / Qwen2 / Mistral go through in test_core.py, test_export_hf.py and
test_export_gguf.py: 0 % prune = identical logits; removing a KV group = zeroing its blocked query heads (for
OLMo-2, whose q/k norms normalise the whole projection, = normalising over the kept heads only); parameter counts
exactly as planned; a run lands on its target; save → load identical; generation with the KV cache after pruning;
Taylor scores equal a hand computation (a unit's rows are slices of Phi-3's fused matrices); an export loads in a
process that cannot import pruner; GGUF where llama.cpp can hold the widths, else a one-line refusal.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from test_export_hf import STRANGER, clean_env
from torch import nn

import pruner
from pruner.adapters import ADAPTERS
from pruner.export import ExportError, export_gguf, export_hf, load_gguf_model, read_gguf
from pruner.export.gguf import write_gguf
from pruner.export.hf import load_exported
from pruner.importance import measure_importance
from pruner.planner import target_tolerance
from pruner.structure import LayerCut, apply_patch, build_cut, count_parameters, geometry, layer_widths
from pruner.testing import HIDE_PROJECT, NEW_ARCHITECTURES, random_windows, tiny_model, uneven_model

CLASSES = {"qwen3": "Qwen3", "gemma2": "Gemma2", "gemma3_text": "Gemma3Text", "phi3": "Phi3", "olmo2": "Olmo2"}


@pytest.fixture(params=NEW_ARCHITECTURES)
def new_arch(request):
    return request.param


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def o_proj(model, li):
    return model.model.layers[li].self_attn.o_proj


def config(**kw):
    base = dict(target=0.8, n_windows=4, window=32, batch_size=4, calibration="wikitext2")
    return pruner.PruneConfig(**{**base, **kw})


# ---------------------------------------------------------------- surgery


def test_keeping_every_unit_leaves_logits_identical(new_arch):
    model = tiny_model(new_arch)
    ids = random_windows(2, 16)
    ref = logits(model, ids)
    cuts = {i: LayerCut(list(range(w.num_kv_heads)), list(range(w.intermediate_size)))
            for i, w in enumerate(layer_widths(model))}
    patch = build_cut(model, cuts)
    assert patch == {}
    apply_patch(model, patch)
    torch.testing.assert_close(logits(model, ids), ref, rtol=0, atol=0)


def test_removing_a_kv_group_equals_zeroing_its_blocked_query_heads(new_arch):
    """Query heads [g·n_rep, (g+1)·n_rep) go with KV group g. Sequences (16) are longer than Gemma's sliding
    window (6), so the local layers' masks take part; for Phi-3 the group's rows are three slices of qkv_proj."""
    if new_arch == "olmo2":
        pytest.skip("OLMo-2 normalises q/k over the whole projection: see the test below")
    model, zeroed = tiny_model(new_arch), tiny_model(new_arch)
    geo = geometry(model)
    d, r, g = geo.head_dim, geo.n_rep, 1
    with torch.no_grad():
        o_proj(zeroed, 0).weight[:, g * r * d:(g + 1) * r * d] = 0
    ids = random_windows(2, 16)
    apply_patch(model, build_cut(model, {0: LayerCut([0, 2, 3], list(range(96)))}))
    torch.testing.assert_close(logits(model, ids), logits(zeroed, ids), rtol=1e-5, atol=1e-5)
    assert o_proj(model, 0).in_features == 3 * r * d
    if new_arch == "phi3":
        assert model.model.layers[0].self_attn.qkv_proj.out_features == (3 * r + 2 * 3) * d
        assert model.model.layers[0].self_attn.config.num_attention_heads == 3 * r  # the layer's own view


class KeptRMSNorm(nn.Module):
    """OLMo-2's RMSNorm over the kept rows only: the removed rows are zeroed and left out of the mean square."""

    def __init__(self, norm: nn.Module, keep: torch.Tensor):
        super().__init__()
        self.norm, self.keep = norm, keep

    def forward(self, x):
        var = x.float()[..., self.keep].pow(2).mean(-1, keepdim=True)
        y = x.float() * torch.rsqrt(var + self.norm.variance_epsilon)
        return (self.norm.weight * y * self.keep).to(x.dtype)


def test_olmo2_removing_a_group_slices_the_projection_norms():
    """Removing group g equals the unpruned layer with its q/k norms computed over the kept heads and the removed
    heads' o_proj columns zeroed; zeroing alone differs, because the whole-projection norm still sees them."""
    model, ref, zeroed = tiny_model("olmo2"), tiny_model("olmo2"), tiny_model("olmo2")
    geo = geometry(model)
    d, r, g = geo.head_dim, geo.n_rep, 2
    q_keep = torch.ones(4 * r * d, dtype=torch.bool)
    q_keep[g * r * d:(g + 1) * r * d] = False
    k_keep = torch.ones(4 * d, dtype=torch.bool)
    k_keep[g * d:(g + 1) * d] = False
    for m in (ref, zeroed):
        with torch.no_grad():
            o_proj(m, 1).weight[:, ~q_keep] = 0
    attn = ref.model.layers[1].self_attn
    attn.q_norm, attn.k_norm = KeptRMSNorm(attn.q_norm, q_keep), KeptRMSNorm(attn.k_norm, k_keep)
    apply_patch(model, build_cut(model, {1: LayerCut([0, 1, 3], list(range(96)))}))
    ids = random_windows(2, 16)
    torch.testing.assert_close(logits(model, ids), logits(ref, ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(model, ids), logits(zeroed, ids), atol=1e-3)
    assert model.model.layers[1].self_attn.q_norm.weight.shape == (3 * r * d,)
    assert model.model.layers[1].self_attn.k_norm.weight.shape == (3 * d,)


def test_removing_mlp_channels_equals_zeroing_them(new_arch):
    model, zeroed = tiny_model(new_arch), tiny_model(new_arch)
    drop = [0, 5, 17, 95]
    with torch.no_grad():
        zeroed.model.layers[2].mlp.down_proj.weight[:, drop] = 0
    apply_patch(model, build_cut(model, {2: LayerCut(list(range(4)), [c for c in range(96) if c not in drop])}))
    ids = random_windows(2, 16)
    torch.testing.assert_close(logits(model, ids), logits(zeroed, ids), rtol=1e-5, atol=1e-5)
    assert layer_widths(model)[2].intermediate_size == 92 and model.config.intermediate_size == 96


def test_generation_with_kv_cache_after_uneven_pruning(new_arch):
    model = uneven_model(new_arch)
    ids = random_windows(1, 8)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
        plain = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain) and cached.shape[1] == 18  # past Gemma's sliding window of 6


# ---------------------------------------------------------------- counting, scoring, the run


def test_parameter_count_after_a_step_equals_the_planned_count_and_undo_restores(new_arch, tiny_tokenizer):
    p = pruner.Pruner(tiny_model(new_arch), tiny_tokenizer, config(step=0.1))
    ids = random_windows(2, 12)
    ref = logits(p.model, ids)
    imp = p.measure()
    planned = p.preview(imp).steps[0]
    rec = p.step(importance=imp)
    assert count_parameters(p.model)["total"] == planned.params == rec.params_total
    assert layer_widths(p.model) == planned.widths
    assert len({w.num_kv_heads for w in planned.widths} | {w.intermediate_size for w in planned.widths}) > 1
    p.undo()
    torch.testing.assert_close(logits(p.model, ids), ref, rtol=0, atol=0)


def test_run_to_target_lands_on_it(new_arch, tiny_tokenizer):
    model = tiny_model(new_arch)
    rec = pruner.Pruner(model, tiny_tokenizer, config(target=0.8)).run()
    total0 = rec.original_params["total"]
    slack = max(target_tolerance(total0), geometry(model).params_per_group)
    assert abs(rec.final_params["total"] - round(0.8 * total0)) <= slack
    assert rec.final_params == count_parameters(model)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=random_windows(1, 12)).logits).all()


def _hand_scores(model, arch, li, g, c):
    """Σ|W ⊙ ∂L/∂W| of KV group g and MLP channel c of layer li, written out per architecture."""
    d, r = geometry(model).head_dim, geometry(model).n_rep
    a, m = model.model.layers[li].self_attn, model.model.layers[li].mlp
    n_h, n_kv, inter = 8 * d, 4 * d, 96

    def e(t):
        return (t * t.grad).abs()

    qs, ks = slice(g * r * d, (g + 1) * r * d), slice(g * d, (g + 1) * d)
    o = e(a.o_proj.weight)[:, qs].sum()
    if arch == "phi3":  # rows of the fused matrices: [q | k | v] and [gate | up]
        w = e(a.qkv_proj.weight)
        group = w[qs].sum() + w[n_h + g * d:n_h + (g + 1) * d].sum() + w[n_h + n_kv + g * d:n_h + n_kv + (g + 1) * d].sum()
        gu = e(m.gate_up_proj.weight)
        channel = gu[c].sum() + gu[inter + c].sum()
    else:
        group = e(a.q_proj.weight)[qs].sum() + e(a.k_proj.weight)[ks].sum() + e(a.v_proj.weight)[ks].sum()
        channel = e(m.gate_proj.weight)[c].sum() + e(m.up_proj.weight)[c].sum()
    if arch == "olmo2":  # the norm entries of the group's rows
        group = group + e(a.q_norm.weight)[qs].sum() + e(a.k_norm.weight)[ks].sum()
    return group + o, channel + e(m.down_proj.weight)[:, c].sum()


def test_taylor_scores_equal_a_hand_computation(new_arch):
    model = tiny_model(new_arch)
    win = random_windows(4, 16)
    imp = measure_importance(model, win, "taylor", batch_size=2)
    model.zero_grad()
    model(input_ids=win, labels=win).loss.backward()
    group, channel = _hand_scores(model, new_arch, 1, 2, 7)
    torch.testing.assert_close(imp.group_scores[1][2].float(), group.float(), rtol=2e-3, atol=1e-7)
    torch.testing.assert_close(imp.channel_scores[1][7].float(), channel.float(), rtol=2e-3, atol=1e-7)
    for crit in ("magnitude", "activation"):
        other = measure_importance(model, win, crit, batch_size=4)
        assert all(s.shape == (4,) and torch.isfinite(s).all() for s in other.group_scores)


# ---------------------------------------------------------------- save / load


def test_save_then_load_gives_identical_logits(new_arch, tiny_tokenizer, tmp_path):
    model = uneven_model(new_arch)
    ids = random_windows(2, 20)
    out = pruner.save_pruned(model, tiny_tokenizer, tmp_path / "pruned")
    loaded, _ = pruner.load_model(str(out), device="cpu")
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
    assert layer_widths(loaded) == layer_widths(model)
    assert count_parameters(loaded) == count_parameters(model)
    with torch.no_grad():
        cached = loaded.generate(ids[:1, :5], max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        plain = loaded.generate(ids[:1, :5], max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain)
    if model.config.tie_word_embeddings:  # Gemma: tied, and the embedding scale √hidden rebuilt
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
        assert float(loaded.model.embed_tokens.embed_scale) == pytest.approx(64 ** 0.5)
    for key in ("head_dim", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                "sliding_window", "layer_types"):
        assert getattr(loaded.config, key, None) == getattr(model.config, key, None), key


def test_phi3_layers_read_their_own_widths_and_follow_the_model_config():
    model = uneven_model("phi3")
    views = [layer.self_attn.config for layer in model.model.layers]
    assert [v.num_attention_heads for v in views] == [w.num_heads for w in layer_widths(model)]
    assert views[1] is model.config  # the widest layer reads the model's config itself
    model.config._attn_implementation = "eager"
    assert views[0]._attn_implementation == "eager"
    assert views[0].hidden_size == model.config.hidden_size


# ---------------------------------------------------------------- HF export


@pytest.fixture(scope="module")
def stranger_results(tmp_path_factory, tiny_tokenizer):
    """Export every new architecture with per-layer widths, then load them all in one subprocess that cannot
    import pruner (trust_remote_code), comparing logits and cached generation."""
    root = tmp_path_factory.mktemp("export_arch")
    models, folders = {}, []
    for arch in NEW_ARCHITECTURES:
        model = uneven_model(arch)
        folder = root / arch
        export_hf(model, tiny_tokenizer if arch == "gemma3_text" else None, folder)
        ids = random_windows(2, 20, seed=3)
        with torch.no_grad():
            ref = model(ids).logits
            generated = model.generate(ids[:1, :6], max_new_tokens=10, do_sample=False, use_cache=True)
        save_file({"ids": ids, "logits": ref, "generated": generated}, str(folder) + ".ref.safetensors")
        models[arch], folders = model, [*folders, str(folder)]
    cwd = root / "cwd"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", STRANGER, *folders], cwd=cwd, env=clean_env(root),
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert HIDE_PROJECT in STRANGER
    out = json.loads(proc.stdout.strip().splitlines()[-1])
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
    from pruner.export.remote_code.modeling_adapt_pruned import LAYOUTS

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
    from pruner.io import _strip_quantization

    _strip_quantization(model)
    rec = pruner.Pruner(model, tiny_tokenizer, config(target=0.96, method="uniform")).run()
    assert [w["num_kv_heads"] for w in rec.final_widths] == [1, 1]  # one KV group: only MLP channels can go
    total0 = rec.original_params["total"]
    assert abs(rec.final_params["total"] - round(0.96 * total0)) <= target_tolerance(total0)
    loaded, _ = pruner.load_model(str(pruner.save_pruned(model, tiny_tokenizer, tmp_path / "pruned")))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
