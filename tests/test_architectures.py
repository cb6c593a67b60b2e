"""The architectures added after the first three (issue 12): Qwen3, Gemma-2, Gemma-3 text, Phi-3, OLMo-2.

Each goes through what Llama / Qwen2 / Mistral go through in test_core.py: 0 % prune = identical logits; removing
a KV group = zeroing its blocked query heads (for OLMo-2, whose q/k norms normalise the whole projection, =
normalising over the kept heads only); parameter counts exactly as planned; a run lands on its target; undo;
save → load identical; generation with the KV cache after pruning; Taylor scores equal a hand computation (a
unit's rows are slices of Phi-3's fused matrices). Exports: tests/test_architectures_export.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruner
from pruner.importance.measure import measure_importance
from pruner.model.structure import LayerCut, apply_patch, build_cut, count_parameters, geometry, layer_widths
from pruner.pruning.planner import target_tolerance
from pruner.testing import NEW_ARCHITECTURES, random_windows, tiny_model, uneven_model


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


@pytest.mark.parametrize("new_arch", [a for a in NEW_ARCHITECTURES if a != "olmo2"])  # OLMo-2: the next test
def test_removing_a_kv_group_equals_zeroing_its_blocked_query_heads(new_arch):
    """Query heads [g·n_rep, (g+1)·n_rep) go with KV group g. Sequences (16) are longer than Gemma's sliding
    window (6), so the local layers' masks take part; for Phi-3 the group's rows are three slices of qkv_proj."""
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


@pytest.mark.parametrize("batch_size", [2, 4])
def test_taylor_scores_equal_a_hand_computation(new_arch, batch_size):
    model = tiny_model(new_arch)
    win = random_windows(4, 16)
    imp = measure_importance(model, win, "taylor", batch_size=batch_size)
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




def test_adapt_accel_restore_puts_every_part_back(new_arch):
    """Adapt-Accel's restore after an error copies every prunable part back (fused Linears, OLMo-2's norms)."""
    from pruner.training.accel import _restore, _snapshot

    model = tiny_model(new_arch)
    pruner.origin_of(model)  # a Pruner records it before anything is cut
    ids = random_windows(2, 12)
    ref, snap = logits(model, ids), _snapshot(model)
    apply_patch(model, build_cut(model, {0: LayerCut([1, 3], list(range(0, 96, 3))), 3: LayerCut([2], [4, 5])}))
    _restore(model, snap)
    assert layer_widths(model) == layer_widths(snap)
    torch.testing.assert_close(logits(model, ids), ref, rtol=0, atol=0)


def test_an_unsupported_architecture_gets_one_line_naming_every_supported_one():
    from transformers import GPT2Config, GPT2LMHeadModel

    from pruner.model.adapters import ADAPTERS

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(pruner.UnsupportedArchitectureError) as err:
        pruner.Pruner(model, None)
    msg = str(err.value)
    assert "\n" not in msg and "'gpt2'" in msg and all(t in msg for t in ADAPTERS)
    assert isinstance(err.value, pruner.PrunerError)
