"""dtypes and devices on a CPU-only machine: bfloat16 end to end ranks units as float32 does; the lean importance
pass (checkpointed layers, chunked loss) equals the plain one; a model dispatched by accelerate (hooks on every
decoder layer, as ``device_map="auto"`` places them over several devices) measures, prunes and generates
exactly like the undispatched model; the pass reports its memory against the weights."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import pruner
from pruner.importance.measure import measure_importance
from pruner.model.structure import layer_widths
from pruner.testing import ARCHITECTURES, random_windows, tiny_model


def _bottom(scores: torch.Tensor, share: float) -> set[int]:
    k = max(1, int(share * scores.numel()))
    return set(torch.argsort(scores)[:k].tolist())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_ranks_the_units_like_fp32(arch):
    model = tiny_model(arch, seed=1)
    windows = random_windows(8, 32, seed=2)
    ref = measure_importance(model, windows, "taylor", batch_size=4)
    low = measure_importance(copy.deepcopy(model).to(torch.bfloat16), windows, "taylor", batch_size=4)
    assert low.group_scores[0].dtype == torch.float64  # products accumulated in float32, summed in float64
    for g32, g16 in zip(ref.group_scores, low.group_scores, strict=True):
        assert torch.argsort(g32).tolist() == torch.argsort(g16).tolist()  # KV groups: the same order
    overlap = [len(_bottom(c32, 0.25) & _bottom(c16, 0.25)) / len(_bottom(c32, 0.25))
               for c32, c16 in zip(ref.channel_scores, low.channel_scores, strict=True)]
    assert min(overlap) >= 0.8, overlap  # the channels a 25 % cut removes: (almost) the same ones
    assert ref.layer_importance_norm == pytest.approx(low.layer_importance_norm, abs=0.1)


def test_a_bf16_model_prunes_saves_and_reloads_in_bf16(tiny_tokenizer, tmp_path):
    model = tiny_model("llama").to(torch.bfloat16)
    p = pruner.Pruner(model, tiny_tokenizer, pruner.PruneConfig(target=0.8, n_windows=4, window=32,
                                                                  calibration="wikitext2"))
    p.run()
    assert all(t.dtype == torch.bfloat16 for t in model.parameters())
    pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m")
    again, _ = pruner.load_model(tmp_path / "m", dtype="bfloat16", progress=None)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_lean_pass_equals_the_models_own_loss_and_gradients(arch, monkeypatch):
    import contextlib

    import pruner.importance.measure as imp

    model = tiny_model(arch, seed=3)
    windows = random_windows(6, 24, seed=4)
    lean = measure_importance(model, windows, "taylor", batch_size=4)
    monkeypatch.setattr(imp, "checkpointed", lambda layers: contextlib.nullcontext())
    monkeypatch.setattr(imp, "causal_lm_loss", lambda m, ids: m(input_ids=ids, labels=ids, use_cache=False).loss)
    plain = measure_importance(model, windows, "taylor", batch_size=4)
    assert lean.loss == pytest.approx(plain.loss, rel=1e-6)
    assert lean.layer_cos == pytest.approx(plain.layer_cos, rel=1e-9)  # the layer hooks fire once per batch
    for a, b in zip(lean.group_scores + lean.channel_scores, plain.group_scores + plain.channel_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_the_pass_reports_its_memory_against_the_weights():
    model = tiny_model("llama")
    imp = measure_importance(model, random_windows(4, 16), "taylor", batch_size=4)
    m = imp.memory
    assert m["weights_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert 0 < m["scored_gradient_bytes"] < m["weights_bytes"]  # embeddings and head are never scored
    if m["peak_bytes"] is not None:  # Linux
        assert m["peak_bytes"] >= m["before_bytes"] and m["ratio_to_weights"] >= 1


def _dispatched(model):
    """Attach accelerate's device hooks to every decoder layer and the LM head, as ``device_map`` dispatch does
    (here every "device" is the CPU, so the numbers must not change)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    for layer in model.model.layers:
        add_hook_to_module(layer, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    add_hook_to_module(model.lm_head, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    return model


def test_a_dispatched_model_measures_prunes_and_generates_like_the_plain_one(tiny_tokenizer):
    plain, hooked = tiny_model("llama"), _dispatched(tiny_model("llama"))
    cfg = pruner.PruneConfig(target=0.75, n_windows=4, window=32, calibration="wikitext2")
    recs = [pruner.Pruner(m, tiny_tokenizer, cfg).run() for m in (plain, hooked)]
    assert layer_widths(plain) == layer_widths(hooked)
    assert [s.params_total for s in recs[0].steps] == [s.params_total for s in recs[1].steps]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(hooked(ids).logits, plain(ids).logits, rtol=0, atol=0)
    out = hooked.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(out, plain.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True))


def test_load_model_with_a_device_map_prunes_and_reloads(tiny_tokenizer, tmp_path):
    pruner.save_pruned(tiny_model("qwen2"), tiny_tokenizer, tmp_path / "m")
    mapped, tok = pruner.load_model(tmp_path / "m", device_map="auto", progress=None)
    _dispatched(mapped)  # one CPU here, so dispatch attached nothing: the hooks a multi-device placement adds
    assert all(hasattr(layer, "_hf_hook") for layer in mapped.model.layers)
    plain, _ = pruner.load_model(tmp_path / "m", progress=None)
    cfg = pruner.PruneConfig(target=0.8, n_windows=4, window=32, calibration="wikitext2")
    for m in (mapped, plain):
        pruner.Pruner(m, tok, cfg).run()
    assert layer_widths(mapped) == layer_widths(plain) != layer_widths(tiny_model("qwen2"))
    pruner.save_pruned(mapped, tok, tmp_path / "pruned")  # saved through the hooks ...
    again, _ = pruner.load_model(tmp_path / "pruned", device_map="auto", progress=None)  # ... and reloaded
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(mapped(ids).logits, plain(ids).logits, rtol=0, atol=0)
    torch.testing.assert_close(again(ids).logits, plain(ids).logits, rtol=0, atol=0)
    from pruner.runtime.devices import dispatch

    plain = tiny_model("llama")
    explicit = dispatch(plain, {"": "cpu"})  # all on the CPU: the same model back, without accelerate's hooks
    assert explicit is plain and not any(hasattr(m, "_hf_hook") for m in plain.modules())


def test_a_half_run_on_the_cpu_turns_off_onednns_primitive_cache_unless_told_otherwise(monkeypatch):
    from pruner.runtime.devices import lean_onednn_cache
    from pruner.testing import tiny_model

    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"):
        monkeypatch.setenv(name, "")  # recorded as it was, so that the environment is put back after the test
        monkeypatch.delenv(name)
    assert lean_onednn_cache(tiny_model()) is None and "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ  # fp32
    note = lean_onednn_cache(tiny_model().to(torch.bfloat16))
    assert "primitive cache is off" in note and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")  # the user's choice stands
    assert lean_onednn_cache(tiny_model().to(torch.bfloat16)) is None
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
