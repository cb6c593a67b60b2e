"""The undo history costs what the sub-steps removed (issue 20): a cut's inverse holds the removed rows, columns and
entries with their indices, rebuilds the old parts bit for bit (every layout: split and fused projections, biases,
unit vectors, FLAP's added biases), and the CLI keeps no history at all."""

from __future__ import annotations

import pytest
import torch

import pruner
from pruner.cli.main import main
from pruner.model.structure import LayerCut, apply_patch, build_cut, layer_widths
from pruner.model.undo import WidthPatch, WidthUndo
from pruner.pruning.pruner import Pruner
from pruner.testing import random_windows, tiny_model


def snapshot(model) -> dict:
    return {k: (v.detach().clone(), v.requires_grad) for k, v in model.named_parameters()}


def assert_same(model, snap: dict) -> None:
    now = dict(model.named_parameters())
    assert now.keys() == snap.keys()
    for k, (t, grad) in snap.items():
        assert now[k].shape == t.shape and torch.equal(now[k].detach(), t), k
        assert now[k].requires_grad == grad, k


def part_bytes(model) -> int:
    """Bytes of the prunable parts of every decoder layer (what the old history copied per sub-step)."""
    from pruner.model.adapters import adapter_for

    ad = adapter_for(model)
    return sum(p.numel() * p.element_size() for layer in ad.layers(model) for part in ad.parts(layer).values()
               for p in (part.parameters() if isinstance(part, torch.nn.Module) else [part]))


def cuts_for(model) -> dict[int, LayerCut]:
    """Uneven cuts: a KV group and some channels out of layer 0, channels only in layer 2, layer 3 unchanged."""
    w = layer_widths(model)
    return {0: LayerCut(list(range(1, w[0].num_kv_heads)), list(range(0, w[0].intermediate_size, 3))),
            2: LayerCut(list(range(w[2].num_kv_heads)), list(range(5, w[2].intermediate_size)))}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "olmo2", "gemma3_text"])
def test_a_cut_undone_and_redone_is_exact(arch):
    model = tiny_model(arch)
    next(model.model.layers[0].mlp.parameters()).requires_grad_(False)  # frozen parts stay frozen
    before = snapshot(model)
    ids = random_windows(2, 12)
    patch = build_cut(model, cuts_for(model))
    assert isinstance(patch, WidthPatch)
    undo = apply_patch(model, patch)
    assert isinstance(undo, WidthUndo) and set(undo) == {0, 2}
    cut = snapshot(model)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    redo = apply_patch(model, undo)
    assert_same(model, before)
    assert isinstance(redo, WidthPatch)
    again = apply_patch(model, redo)  # the redo holds the cut parts: the same cut again
    assert_same(model, cut)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)
    apply_patch(model, again)
    assert_same(model, before)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_a_lazy_cut_builds_a_layer_at_a_time_and_equals_the_eager_one(arch, monkeypatch):
    from pruner.model import structure

    eager, lazy = tiny_model(arch), tiny_model(arch)
    before = snapshot(lazy)
    undo_eager = apply_patch(eager, build_cut(eager, cuts_for(eager)))
    pending = build_cut(lazy, cuts_for(lazy), lazy=True)
    assert isinstance(pending, structure.PendingCut)
    assert_same(lazy, before)  # checked, nothing built or changed yet
    real, seen = structure._layer_patch, []

    def build(adapter, layer, geo, cur, cut):  # when layer 2 is built, layer 0 is already cut and its old parts gone
        seen.append(layer_widths(lazy)[0].intermediate_size)
        return real(adapter, layer, geo, cur, cut)

    monkeypatch.setattr(structure, "_layer_patch", build)
    undo = apply_patch(lazy, pending)
    full = layer_widths(eager)[0].intermediate_size
    assert seen[0] > full and seen[1] == full  # layer 0: built before its cut; layer 2: after layer 0's
    assert isinstance(undo, WidthUndo) and set(undo) == set(undo_eager) == {0, 2}
    assert_same(lazy, snapshot(eager))
    apply_patch(lazy, undo)
    assert_same(lazy, before)


def test_a_lazy_cut_checks_every_layer_before_it_changes_any():
    model = tiny_model("llama")
    before = snapshot(model)
    w = layer_widths(model)
    bad = {**cuts_for(model), 3: LayerCut([0], [w[3].intermediate_size])}  # an index out of range, in the last
    with pytest.raises(IndexError):
        build_cut(model, bad, lazy=True)
    assert_same(model, before)


def test_the_undo_holds_exactly_the_removed_parameters():
    model = tiny_model("qwen2")  # q/k/v biases: removed bias entries are part of the undo
    params = pruner.count_parameters(model)["total"]
    undo = apply_patch(model, build_cut(model, cuts_for(model)))
    removed = params - pruner.count_parameters(model)["total"]
    held = sum(r.weight.numel() + (r.bias.numel() if r.axis == 0 and r.bias is not None else 0)
               for parts in undo.values() for r in parts.values())
    assert held == removed > 0


def test_flap_compensation_undo_drops_the_biases_it_added():
    model = tiny_model("llama")
    before = snapshot(model)
    w = layer_widths(model)
    mean_o = torch.rand(w[1].num_heads * model.config.head_dim)
    mean_d = torch.rand(w[1].intermediate_size)
    patch = build_cut(model, {1: LayerCut([0, 2, 3], list(range(0, 96, 2)), mean_o, mean_d),
                              3: LayerCut(list(range(4)), list(range(96)), torch.rand(64), torch.rand(96))})
    undo = apply_patch(model, patch)
    assert model.model.layers[3].self_attn.o_proj.bias is not None  # added even where nothing was removed
    apply_patch(model, undo)
    assert all(layer.self_attn.o_proj.bias is None and layer.mlp.down_proj.bias is None
               for layer in model.model.layers)
    assert_same(model, before)


def test_the_history_costs_the_removed_share_not_the_layers(tiny_tokenizer):
    model = tiny_model("llama", hidden_size=128, intermediate_size=512, num_attention_heads=8,
                       num_key_value_heads=4)
    weights = part_bytes(model)
    p = Pruner(model, tiny_tokenizer, pruner.PruneConfig(target=0.5, step=0.05, n_windows=2, window=16,
                                                         batch_size=2, calibration="wikitext2"), keep_history=3)
    sizes = []
    for _ in range(3):
        before = pruner.count_parameters(model)["total"]
        p.step()
        removed_bytes = (before - pruner.count_parameters(model)["total"]) * 4
        sizes.append((removed_bytes, p.history_bytes()))
    held_before = 0
    for removed_bytes, held in sizes:
        entry = held - held_before
        held_before = held
        # the removed rows/columns themselves, plus their indices (int64) and the o/down biases: a few %
        assert removed_bytes <= entry <= 1.2 * removed_bytes, (entry, removed_bytes)
        assert entry < 0.15 * weights  # the old history copied every changed layer's parts: ~100 % per entry
    p.undo()
    assert p.history_bytes() == sizes[1][1]


def test_a_depth_step_holds_only_the_removed_layers(tiny_tokenizer):
    model = tiny_model("llama", num_hidden_layers=6)
    layer_bytes = sum(t.numel() * 4 for t in model.model.layers[0].parameters())
    p = Pruner(model, tiny_tokenizer, pruner.PruneConfig(target=0.7, method="shortgpt", n_windows=2, window=16,
                                                         batch_size=2, calibration="wikitext2"))
    rec = p.step()
    assert rec.removed_layers and p.history_bytes() == len(rec.removed_layers) * layer_bytes


def test_the_prune_command_keeps_no_undo_history(tiny_llama_folder, monkeypatch):
    seen = []
    original = Pruner.step

    def spy(self, *a, **k):
        rec = original(self, *a, **k)
        seen.append((len(self._history), self.history_bytes()))
        return rec

    monkeypatch.setattr(Pruner, "step", spy)
    assert main(["prune", "--model", str(tiny_llama_folder), "--target", "0.8", "--n-windows", "2", "--window",
                 "16", "--no-ppl"]) == 0
    assert seen and all(entry == (0, 0) for entry in seen)
