"""Core library on tiny random models: surgery, importance, allocation, the pruning loop, save/load, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

import pruner
from pruner.importance.measure import Importance, measure_importance
from pruner.methods import REGISTRY, UnitScores
from pruner.methods.allocation import allocate_sparsity, allocate_toward, plan_widths
from pruner.model.structure import LayerCut, apply_patch, build_cut, count_parameters, geometry, layer_widths
from pruner.testing import random_windows, tiny_model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, state):
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert now[k].shape == state[k].shape, k
        assert torch.equal(now[k], state[k]), k


def config(**kw):
    base = dict(target=0.75, n_windows=4, window=32, batch_size=4, calibration="wikitext2", attention="proportional")
    return pruner.PruneConfig(**{**base, **kw})


# ---------------------------------------------------------------- surgery


def test_keeping_every_unit_leaves_logits_identical(arch):
    model = tiny_model(arch)
    ids = random_windows(2, 16)
    ref = logits(model, ids)
    widths = layer_widths(model)
    cuts = {i: LayerCut(list(range(w.num_kv_heads)), list(range(w.intermediate_size))) for i, w in enumerate(widths)}
    patch = build_cut(model, cuts)
    assert patch == {}
    apply_patch(model, patch)
    torch.testing.assert_close(logits(model, ids), ref, rtol=0, atol=0)


def test_removing_a_kv_group_equals_zeroing_its_blocked_query_heads(arch):
    """Removing KV group g must remove query heads [g*n_rep, (g+1)*n_rep) — the blocked GQA mapping.

    The reference code's strided mapping (j mod n_kv) would pair the wrong query heads with the remaining KV
    heads and this equality would fail.
    """
    model = tiny_model(arch)
    geo = geometry(model)
    ids = random_windows(2, 16)
    g = 1
    d, r = geo.head_dim, geo.n_rep
    zeroed = tiny_model(arch)
    with torch.no_grad():
        o = zeroed.model.layers[0].self_attn.o_proj.weight
        o[:, g * r * d : (g + 1) * r * d] = 0
    expected = logits(zeroed, ids)
    n_kv = layer_widths(model)[0].num_kv_heads
    cut = LayerCut([h for h in range(n_kv) if h != g], list(range(layer_widths(model)[0].intermediate_size)))
    apply_patch(model, build_cut(model, {0: cut}))
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-5, atol=1e-5)
    assert model.model.layers[0].self_attn.q_proj.out_features == (n_kv - 1) * r * d
    assert model.model.layers[0].self_attn.k_proj.out_features == (n_kv - 1) * d
    if arch == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias.shape[0] == (n_kv - 1) * r * d


def test_removing_mlp_channels_equals_zeroing_them(arch):
    model = tiny_model(arch)
    ids = random_windows(2, 16)
    drop = [0, 5, 17, 95]
    zeroed = tiny_model(arch)
    with torch.no_grad():
        zeroed.model.layers[2].mlp.down_proj.weight[:, drop] = 0
    keep = [c for c in range(96) if c not in drop]
    apply_patch(model, build_cut(model, {2: LayerCut(list(range(4)), keep)}))
    torch.testing.assert_close(logits(model, ids), logits(zeroed, ids), rtol=1e-5, atol=1e-5)
    assert model.model.layers[2].mlp.intermediate_size == 92
    assert model.config.intermediate_size == 96  # widest layer


def test_generation_with_kv_cache_after_uneven_pruning(arch):
    model = tiny_model(arch)
    apply_patch(model, build_cut(model, {0: LayerCut([0], list(range(40))), 3: LayerCut([1, 3], list(range(0, 96, 2)))}))
    ids = random_windows(1, 8)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        plain = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain)
    assert cached.shape[1] == 16


def test_build_cut_rejects_bad_indices_and_changes_nothing():
    model = tiny_model()
    before = state_copy(model)
    with pytest.raises(IndexError):
        build_cut(model, {0: LayerCut([0, 9], list(range(96)))})
    with pytest.raises(ValueError):
        build_cut(model, {0: LayerCut([], list(range(96)))})
    assert_same_state(model, before)


# ---------------------------------------------------------------- importance


@pytest.mark.parametrize("batch_size", [2, 4])  # two batches; one (every layer reduced during the backward)
def test_taylor_scores_are_blocked_sums_of_weight_times_gradient(batch_size):
    model = tiny_model("qwen2")
    win = random_windows(4, 16)
    imp = measure_importance(model, win, "taylor", batch_size=batch_size)
    # reference computation by hand
    for p in model.parameters():
        p.grad = None
    model.zero_grad()
    loss = model(input_ids=win, labels=win).loss
    loss.backward()
    geo = geometry(model)
    d, r = geo.head_dim, geo.n_rep
    a = model.model.layers[1].self_attn
    e = lambda lin: (lin.weight * lin.weight.grad).abs()  # noqa: E731
    eb = lambda lin: (lin.bias * lin.bias.grad).abs()  # noqa: E731
    g = 2
    qs = slice(g * r * d, (g + 1) * r * d)
    ks = slice(g * d, (g + 1) * d)
    manual = (e(a.q_proj)[qs].sum() + e(a.k_proj)[ks].sum() + e(a.v_proj)[ks].sum() + e(a.o_proj)[:, qs].sum()
              + eb(a.q_proj)[qs].sum() + eb(a.k_proj)[ks].sum() + eb(a.v_proj)[ks].sum())
    torch.testing.assert_close(imp.group_scores[1][g].float(), manual.float(), rtol=2e-3, atol=1e-7)
    m = model.model.layers[1].mlp
    c = 7
    manual_c = e(m.gate_proj)[c].sum() + e(m.up_proj)[c].sum() + e(m.down_proj)[:, c].sum()
    torch.testing.assert_close(imp.channel_scores[1][c].float(), manual_c.float(), rtol=2e-3, atol=1e-7)


def test_one_batch_never_holds_every_layers_gradients(monkeypatch):
    """With one calibration batch each layer's scores are summed as soon as its gradients are complete, and the
    gradients freed: at any moment far fewer than all the scored matrices hold a gradient."""
    from pruner.importance import streamed

    model = tiny_model("llama", num_hidden_layers=6)
    held, real = [], streamed.StreamedUnits.arm

    def arm(self):
        real(self)
        reduce = self.reduce

        def counting(li):
            held.append(sum(p.grad is not None for ps in self.params for p in ps))
            return reduce(li)

        self.reduce = counting

    monkeypatch.setattr(streamed.StreamedUnits, "arm", arm)
    win = random_windows(4, 16)
    one = measure_importance(model, win, "taylor", batch_size=4)
    per_layer = len(held) and max(held)
    assert len(held) == 6 and per_layer <= 2 * 7  # at most two layers' 7 matrices, not all 42
    held.clear()
    two = measure_importance(model, win, "taylor", batch_size=2)  # the first batch accumulates as before
    assert len(held) == 6 and max(held) == 42
    for a, b in zip(one.group_scores + one.channel_scores, two.group_scores + two.channel_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_measurement_leaves_model_flags_and_grads_untouched():
    model = tiny_model()
    before = state_copy(model)
    model.model.embed_tokens.weight.requires_grad_(False)
    for crit in pruner.CRITERIA:
        imp = measure_importance(model, random_windows(4, 16), crit, batch_size=4)
        assert len(imp.layer_importance) == 4
        assert all(torch.isfinite(s).all() for s in imp.group_scores)
    assert_same_state(model, before)
    assert not model.model.embed_tokens.weight.requires_grad
    assert model.model.layers[0].mlp.up_proj.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_layer_importance_is_minus_mean_cosine():
    model = tiny_model()
    win = random_windows(2, 12)
    captured = {}

    def hook(mod, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        y = out[0] if isinstance(out, tuple) else out
        captured["cos"] = torch.nn.functional.cosine_similarity(x, y, dim=-1).mean().item()

    h = model.model.layers[2].register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=win)
    h.remove()
    imp = measure_importance(model, win, "magnitude")
    assert imp.layer_importance[2] == pytest.approx(-captured["cos"], abs=1e-5)
    norm = imp.layer_importance_norm
    assert sum(norm) == pytest.approx(0, abs=1e-9)
    assert max(abs(v) for v in norm) == pytest.approx(1.0)


def test_normalise_importance_handles_equal_layers():
    assert pruner.normalise_importance([0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]
    assert pruner.normalise_importance([1.0, 0.0, 2.0]) == pytest.approx([0.0, -1.0, 1.0])


# ---------------------------------------------------------------- allocation


def test_adaptive_allocation_mean_grows_by_the_budget():
    imp = pruner.normalise_importance([0.5, 0.1, 0.3, 0.2, 0.9, 0.15])
    cur = [0.1] * 6
    a = allocate_sparsity(cur, imp, step=0.05, amplitude=0.02)
    assert sum(a.sparsity) / 6 == pytest.approx(0.1 + 0.05)
    # important layers (high Ĩ) are pruned less
    order = sorted(range(6), key=lambda i: imp[i])
    assert [a.sparsity[i] for i in order] == sorted(a.sparsity, reverse=True)
    assert not a.clipped_low and not a.clipped_high and not a.held


def test_zero_amplitude_equals_uniform():
    imp = pruner.normalise_importance([0.5, 0.1, 0.3, 0.2])
    a = allocate_sparsity([0.0, 0.1, 0.2, 0.0], imp, 0.04, amplitude=0.0)
    u = allocate_sparsity([0.0, 0.1, 0.2, 0.0], None, 0.04, amplitude=0.0)
    assert a.sparsity == u.sparsity == pytest.approx([0.04, 0.14, 0.24, 0.04])
    # the uniform method is the rule with A = 0 whatever amplitude is configured
    geo, w = geometry(tiny_model()), layer_widths(tiny_model())
    method = REGISTRY["uniform"](pruner.PruneConfig(method="uniform", amplitude=0.3, step=0.04), geo, w, 0)
    alloc = method.allocate([0.0, 0.1, 0.2, 0.0], UnitScores(imp, None, None), 1.0)
    assert alloc.sparsity == pytest.approx(a.sparsity)


def test_allocation_clips_and_holds():
    a = allocate_sparsity([0.0, 0.97, 0.5], [1.0, -1.0, 0.0], step=0.01, amplitude=0.05, max_sparsity=0.99)
    assert a.sparsity[0] == 0.0 and 0 in a.clipped_low
    assert a.sparsity[1] == 0.99 and 1 in a.clipped_high
    b = allocate_sparsity([0.3, 0.0], [1.0, -1.0], step=0.01, amplitude=0.05)
    assert b.sparsity[0] == 0.3 and 0 in b.held  # wanted to shrink, but units cannot grow back
    assert any("clipped" in n for n in a.notes())


def test_custom_allocation_reaches_the_schedule():
    s = [0.0] * 3
    for _ in range(50):
        s = allocate_toward(s, [0.1, 0.5, 0.3], 0.05).sparsity
    assert s == pytest.approx([0.1, 0.5, 0.3])
    with pytest.raises(pruner.AllocationError):
        allocate_toward(s, [0.1], 0.05)


def test_plan_widths_floor_and_group_staggering():
    model = tiny_model()
    geo = geometry(model)
    w = layer_widths(model)
    plan, floored = plan_widths(geo, w, w, [0.999] * 4, min_channels=2)
    assert all(p.num_kv_heads == 1 and p.intermediate_size == 2 for p in plan)
    assert floored == [0, 1, 2, 3]
    # uniform 10 %: ideal 3.6 groups per layer, 14.4 in total -> 14 groups: not every layer drops one at once
    plan, _ = plan_widths(geo, w, w, [0.1] * 4)
    assert sum(p.num_kv_heads for p in plan) == 14
    assert all(p.intermediate_size == round(96 * 0.9) for p in plan)
    plan8, _ = plan_widths(geo, w, w, [0.1] * 4, multiple=8)
    assert all(p.intermediate_size % 8 == 0 for p in plan8)


# ---------------------------------------------------------------- the pruning loop


def test_prune_to_target_meets_it_and_records_truthfully(arch, tiny_tokenizer):
    model = tiny_model(arch)
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.8))
    rec = p.run()
    total0 = rec.original_params["total"]
    assert abs(rec.final_params["total"] - 0.8 * total0) <= 0.01 * total0
    assert rec.final_params == count_parameters(model)
    assert rec.final_widths == [w.to_dict() for w in layer_widths(model)]
    last = rec.steps[-1]
    assert last.params_total == rec.final_params["total"]
    assert [w for w in last.widths] == rec.final_widths
    for li, w in enumerate(layer_widths(model)):
        lay = model.model.layers[li]
        assert lay.self_attn.k_proj.weight.shape[0] == w.num_kv_heads * geometry(model).head_dim
        assert lay.mlp.down_proj.weight.shape[1] == w.intermediate_size
        assert len(p.origin.kept_channels[li]) == w.intermediate_size
    json.dumps(rec.to_dict())  # JSON-serialisable
    assert all(len(s.layer_importance) == 4 and len(s.allocated_sparsity) == 4 for s in rec.steps)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=random_windows(1, 8)).logits).all()


def test_removed_units_are_exactly_the_lowest_scoring(tiny_tokenizer):
    model = tiny_model()
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.5, step=0.2, amplitude=0.0))
    gen = torch.Generator().manual_seed(3)
    groups = [torch.rand(4, generator=gen, dtype=torch.float64) for _ in range(4)]
    chans = [torch.rand(96, generator=gen, dtype=torch.float64) for _ in range(4)]
    imp = Importance([0.0] * 4, [0.0] * 4, [0.0] * 4, groups, chans)
    p.step(fraction=1.0, importance=imp)
    for li, w in enumerate(layer_widths(model)):
        kept_c = set(p.origin.kept_channels[li])
        want_c = set(torch.argsort(chans[li], descending=True)[: w.intermediate_size].tolist())
        assert kept_c == want_c
        kept_g = set(p.origin.kept_groups[li])
        want_g = set(torch.argsort(groups[li], descending=True)[: w.num_kv_heads].tolist())
        assert kept_g == want_g


def test_adaptive_prunes_unimportant_layers_more(tiny_tokenizer):
    model = tiny_model()
    p = pruner.Pruner(model, tiny_tokenizer, config(step=0.1, amplitude=0.05))
    imp = Importance([0.0] * 4, [0.4, 0.1, 0.2, 0.3], pruner.normalise_importance([0.4, 0.1, 0.2, 0.3]),
                     [torch.rand(4, dtype=torch.float64) for _ in range(4)],
                     [torch.rand(96, dtype=torch.float64) for _ in range(4)])
    p.step(fraction=1.0, importance=imp)
    w = layer_widths(model)
    assert w[1].intermediate_size < w[2].intermediate_size < w[3].intermediate_size < w[0].intermediate_size


def test_undo_restores_the_model(tiny_tokenizer):
    model = tiny_model("qwen2")
    ids = random_windows(2, 10)
    ref = logits(model, ids)
    before = state_copy(model)
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.6))
    p.step()
    p.step()
    assert count_parameters(model)["total"] < sum(v.numel() for v in before.values())
    assert p.undo() is not None and p.undo() is not None
    assert p.undo() is None
    assert_same_state(model, before)
    torch.testing.assert_close(logits(model, ids), ref, rtol=0, atol=0)
    assert len(p.record.steps) == 0 and p.sparsity == [0.0] * 4


def test_cancel_keeps_completed_steps_and_leaves_the_current_one_undone(tiny_tokenizer):
    model = tiny_model()
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.5))
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3  # cancel in the middle of the second sub-step's measurement

    steps = list(p.iter_run(should_stop=stop))
    assert p.record.stopped == "cancelled"
    assert len(steps) == len(p.record.steps) >= 1
    assert count_parameters(model)["total"] == steps[-1].params_total
    assert [w.to_dict() for w in layer_widths(model)] == steps[-1].widths


# ---------------------------------------------------------------- bad input


def test_impossible_targets_are_refused_and_change_nothing(tiny_tokenizer):
    model = tiny_model()
    before = state_copy(model)
    for target in (0, -0.5, 1.0, 1.5, 10**9):
        with pytest.raises(ValueError):
            pruner.Pruner(model, tiny_tokenizer, config(target=target)).run()
    with pytest.raises(pruner.AllocationError, match="emptying a layer"):
        pruner.Pruner(model, tiny_tokenizer, config(target=0.05)).run()
    with pytest.raises(ValueError):
        pruner.Pruner(model, tiny_tokenizer, config(criterion="psychic"))
    assert_same_state(model, before)


def test_empty_or_short_calibration_text_is_refused(tiny_tokenizer, tmp_path):
    model = tiny_model()
    before = state_copy(model)
    with pytest.raises(pruner.DataError, match="empty"):
        pruner.Pruner(model, tiny_tokenizer, config(), calibration_text="   ").run()
    with pytest.raises(pruner.DataError, match="too short"):
        pruner.Pruner(model, tiny_tokenizer, config(window=64), calibration_text="just a few words").run()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(pruner.DataError):
        pruner.Pruner(model, tiny_tokenizer, config(calibration=str(empty))).run()
    with pytest.raises(pruner.DataError, match="Unknown corpus"):
        pruner.calibration_windows(tiny_tokenizer, "no-such-corpus")
    assert_same_state(model, before)


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(pruner.UnsupportedArchitectureError, match="gpt2.*llama, mistral, qwen2"):
        pruner.Pruner(model, None)


def test_missing_and_corrupt_folders(tmp_path, tiny_tokenizer):
    with pytest.raises(pruner.ModelLoadError, match="No such"):
        pruner.load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(pruner.ModelLoadError, match="no config.json"):
        pruner.load_model(str(tmp_path / "empty"))
    model = tiny_model()
    apply_patch(model, build_cut(model, {1: LayerCut([0, 2], list(range(50)))}))
    out = pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m")
    meta = json.loads((out / "pruned_widths.json").read_text())
    meta["layers"][1]["intermediate_size"] = 60  # lie about a width
    (out / "pruned_widths.json").write_text(json.dumps(meta))
    with pytest.raises(pruner.ModelLoadError, match="do not match"):
        pruner.load_model(str(out))
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    meta["layers"][1]["intermediate_size"] = 50
    (out / "pruned_widths.json").write_text(json.dumps(meta))
    with pytest.raises(pruner.ModelLoadError, match="safetensors"):
        pruner.load_model(str(out))
    with pytest.raises(FileExistsError):
        pruner.save_pruned(model, tiny_tokenizer, out)


# ---------------------------------------------------------------- save / load


def test_save_then_load_gives_identical_logits(arch, tiny_tokenizer, tmp_path):
    model = tiny_model(arch, tie_word_embeddings=(arch == "llama"))
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.7))
    rec = p.run()
    ids = random_windows(2, 20)
    ref = logits(model, ids)
    out = pruner.save_pruned(model, tiny_tokenizer, tmp_path / "pruned", record=rec)
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickle
    loaded, tok = pruner.load_model(str(out), device="cpu")
    torch.testing.assert_close(logits(loaded, ids), ref, rtol=0, atol=0)
    assert layer_widths(loaded) == layer_widths(model)
    assert count_parameters(loaded) == count_parameters(model)
    assert pruner.origin_of(loaded).kept_channels == p.origin.kept_channels
    assert json.loads((out / "pruning_record.json").read_text())["final_params"] == rec.final_params
    assert tok("hello world")["input_ids"] == tiny_tokenizer("hello world")["input_ids"]
    with torch.no_grad():
        g = loaded.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert g.shape[1] == 11
    if arch == "llama":
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_reloaded_model_can_be_pruned_further(tiny_tokenizer, tmp_path):
    model = tiny_model()
    pruner.Pruner(model, tiny_tokenizer, config(target=0.85)).run()
    out = pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m")
    loaded, _ = pruner.load_model(str(out))
    p = pruner.Pruner(loaded, tiny_tokenizer, config(target=0.7))
    assert p.sparsity[0] > 0  # knows it was pruned already
    rec = p.run()
    total0 = rec.original_params["total"]
    # one KV group of this tiny model is 1.9 % of it, so "closest reachable" can be ~1 group away
    assert abs(rec.final_params["total"] - 0.7 * total0) <= 0.02 * total0


# ---------------------------------------------------------------- perplexity


def _manual_perplexity(model, ids, window):
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.numel(), window):
            chunk = ids[s : s + window][None]
            if chunk.shape[1] < 2:
                continue
            lp = torch.log_softmax(model(input_ids=chunk).logits[0, :-1].double(), -1)
            nll -= lp.gather(-1, chunk[0, 1:, None]).sum().item()
            n += chunk.shape[1] - 1
    return math.exp(nll / n)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2",
                                  "slicegpt"])
def test_perplexity_from_the_heads_input_in_chunks_is_the_models_own(arch, tiny_tokenizer, monkeypatch):
    """Perplexity computes the LM head a few tokens at a time from what the model hands its head: the same as the
    model's own logits (soft-capping, a SliceGPT-rotated stream), however small the chunks."""
    model = tiny_model("llama" if arch == "slicegpt" else arch)
    if arch == "slicegpt":
        pruner.Pruner(model, tiny_tokenizer, pruner.PruneConfig(target=0.85, method="slicegpt", n_windows=4,
                                                               window=24)).run()
    text = pruner.load_text("wikitext2", "valid")[:2000]
    ids = torch.tensor(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    monkeypatch.setattr("pruner.evaluation.perplexity.CHUNK_LOGITS", 7 * model.config.vocab_size)  # 7 tokens a chunk
    grad_on = []
    probe = model.model.layers[0].register_forward_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    r = pruner.perplexity(model, tiny_tokenizer, text=text, window=48, batch_size=2)
    probe.remove()
    assert grad_on and not any(grad_on)  # no autograd graph is built (it held 0.5 GB per 512 tokens)
    assert r["perplexity"] == pytest.approx(_manual_perplexity(model, ids, 48), rel=1e-5)
    assert not model.get_output_embeddings()._forward_pre_hooks


def test_perplexity_matches_a_manual_computation(tiny_tokenizer):
    model = tiny_model()
    text = pruner.load_text("wikitext2", "valid")[:3000]
    r = pruner.perplexity(model, tiny_tokenizer, text=text, window=64, batch_size=3)
    ids = torch.tensor(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.numel(), 64):
            chunk = ids[s : s + 64][None]
            if chunk.shape[1] < 2:
                continue
            lp = torch.log_softmax(model(input_ids=chunk).logits[0, :-1].double(), -1)
            nll -= lp.gather(-1, chunk[0, 1:, None]).sum().item()
            n += chunk.shape[1] - 1
    assert r["tokens_scored"] == n
    assert r["perplexity"] == pytest.approx(torch.tensor(nll / n).exp().item(), rel=1e-4)
    assert r["window"] == 64 and r["dataset"] == "text"
    strided = pruner.perplexity(model, tiny_tokenizer, text=text, window=64, stride=32)
    assert strided["tokens_scored"] == ids.numel() - 1
    with pytest.raises(pruner.DataError):
        pruner.perplexity(model, tiny_tokenizer, text="")
    s = pruner.format_perplexity(pruner.perplexity(model, tiny_tokenizer, "wikitext2", "test", window=32, max_tokens=256))
    assert "wikitext2 test" in s and "32-token windows" in s and "248 tokens scored" in s  # 8 windows × 31


def test_save_when_the_widest_layer_has_a_head_count_that_does_not_divide_hidden(tiny_tokenizer, tmp_path):
    model = tiny_model()  # hidden 64, 8 heads / 4 KV groups
    cut = {i: LayerCut([0, 1, 2], list(range(96))) for i in range(4)}  # every layer: 6 heads (64 % 6 != 0)
    apply_patch(model, build_cut(model, cut))
    ids = random_windows(1, 12)
    out = pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m")
    loaded, _ = pruner.load_model(str(out))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)


def test_score_policy_removes_the_lowest_score_per_parameter_first(tiny_tokenizer):
    from pruner.methods.allocation import plan_widths_by_score

    model = tiny_model()
    geo = geometry(model)
    w = layer_widths(model)
    ch_scores = [torch.ones(96, dtype=torch.float64) for _ in range(4)]
    important = [torch.full((4,), 1e6, dtype=torch.float64) for _ in range(4)]
    plan, _ = plan_widths_by_score(geo, w, w, [0.2] * 4, important, ch_scores)
    assert all(p.num_kv_heads == 4 for p in plan)  # attention too valuable: only channels go
    budget = 0.8 * (4 * geo.params_per_group + 96 * geo.params_per_channel)
    assert all(abs(geo.layer_prunable_params(p) - budget) <= geo.params_per_channel for p in plan)
    cheap = [torch.full((4,), 1e-9, dtype=torch.float64) for _ in range(4)]
    plan, _ = plan_widths_by_score(geo, w, w, [0.2] * 4, cheap, ch_scores)
    assert all(p.num_kv_heads < 4 for p in plan)  # cheap groups go first
    p = pruner.Pruner(model, tiny_tokenizer, config(target=0.8, attention="score"))
    rec = p.run()
    assert abs(rec.final_params["total"] / rec.original_params["total"] - 0.8) <= 0.02
