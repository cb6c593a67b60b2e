"""The baselines of issue 13 on the tiny models: LLM-Pruner, FLAP, ShortGPT, Wanda-sp (docs/methods.md).

Each score is checked against a hand computation, each decision against its definition, and each pruned model
against the things every model here must do: meet the target, generate with a KV cache, save and reload with
identical logits, undo, keep a JSON record of what was measured and decided.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import pruner
from pruner.methods import method_class
from pruner.methods.flap import flap_scores, standardise
from pruner.methods.llm_pruner import llm_pruner_window
from pruner.model.structure import group_rows, layer_widths
from pruner.pruning.planner import target_tolerance
from pruner.testing import NEW_ARCHITECTURES, random_windows, tiny_model

BASELINES = ("llm-pruner", "flap", "shortgpt", "wanda-sp")


def config(method: str, **kw) -> pruner.PruneConfig:
    base = dict(target=0.7, method=method, n_windows=4, window=24, batch_size=4, calibration="wikitext2")
    return pruner.PruneConfig(**{**base, **kw})


def module_inputs(model, windows) -> dict[tuple[int, str], torch.Tensor]:
    """Every input token of every layer's o_proj and down_proj, [tokens, features], from a plain forward pass."""
    seen, handles = {}, []
    for li, layer in enumerate(model.model.layers):
        for role, mod in (("o", layer.self_attn.o_proj), ("down", layer.mlp.down_proj)):
            def hook(module, args, key=(li, role)):
                x = args[0].detach().reshape(-1, args[0].shape[-1])
                seen[key] = torch.cat([seen[key], x]) if key in seen else x
            handles.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        for i in range(0, windows.shape[0], 4):
            model(input_ids=windows[i:i + 4], use_cache=False)
    for h in handles:
        h.remove()
    return seen


def state_of(layer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


# ---------------------------------------------------------------- scores equal hand computations


def test_wanda_sp_scores_equal_a_hand_computation(tiny_tokenizer):
    model = tiny_model("llama")
    p = pruner.Pruner(model, tiny_tokenizer, config("wanda-sp"))
    imp = p.measure()
    assert imp.criterion == "wanda-sp"
    x = module_inputs(model, p.calibration(0))
    geo = p.geo
    for li, layer in enumerate(model.model.layers):
        col_o = (layer.self_attn.o_proj.weight.abs() * x[(li, "o")].norm(dim=0)).sum(0)  # Σ_i |W_ij| ‖X_j‖₂
        col_d = (layer.mlp.down_proj.weight.abs() * x[(li, "down")].norm(dim=0)).sum(0)
        groups = col_o.view(-1, geo.n_rep * geo.head_dim).sum(1)  # a KV group sums its query heads' columns
        torch.testing.assert_close(imp.group_scores[li], groups.double().detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(imp.channel_scores[li], col_d.double().detach(), rtol=1e-5, atol=1e-6)


def test_fluctuation_scores_equal_a_hand_computation(tiny_tokenizer):
    model = tiny_model("qwen2")
    p = pruner.Pruner(model, tiny_tokenizer, config("flap"))
    imp = p.measure()
    assert p.config.criterion == imp.criterion == "fluctuation"
    x = module_inputs(model, p.calibration(0))
    geo = p.geo
    for li, layer in enumerate(model.model.layers):
        w_o, w_d = layer.self_attn.o_proj.weight.detach().double(), layer.mlp.down_proj.weight.detach().double()
        xo, xd = x[(li, "o")].double(), x[(li, "down")].double()
        wifv_o = xo.var(dim=0, unbiased=True) * w_o.pow(2).sum(0)  # sample variance × squared column norm
        wifv_d = xd.var(dim=0, unbiased=True) * w_d.pow(2).sum(0)
        st = imp.stats[li]
        torch.testing.assert_close(st["o_metric"], wifv_o, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(st["down_metric"], wifv_d, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(st["o_mean"], xo.mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(st["down_mean"], xd.mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(imp.group_scores[li], wifv_o.view(-1, geo.n_rep * geo.head_dim).sum(1), rtol=1e-4,
                                   atol=1e-9)
        # FLAP's standardised scores: attention channels squared, standardised per layer, averaged per group
        z = (wifv_o.pow(2) - wifv_o.pow(2).mean()) / wifv_o.pow(2).std()
        zg, zc = flap_scores(geo, 4, st)
        torch.testing.assert_close(zg, z.view(4, -1).mean(1), rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(zc, (wifv_d - wifv_d.mean()) / wifv_d.std(), rtol=1e-3, atol=1e-6)
    assert standardise(torch.tensor([2.0])).tolist() == [0.0] and standardise(torch.ones(3)).tolist() == [0.0] * 3


# ---------------------------------------------------------------- FLAP


def test_flap_keeps_every_unit_above_one_global_threshold(tiny_tokenizer):
    model = tiny_model("llama")
    p = pruner.Pruner(model, tiny_tokenizer, config("flap"))
    imp = p.measure()
    step = p.preview(imp).steps[0]
    thr = step.decision["threshold"]
    assert step.compensate and step.decision["bias_compensation"]
    for li, st in enumerate(imp.stats):
        zg, zc = flap_scores(p.geo, 4, st)
        for z, keep in ((zg, step.keep_groups[li]), (zc, step.keep_channels[li])):
            removed = [i for i in range(z.numel()) if i not in keep]
            assert all(float(z[i]) <= thr for i in removed)
            floor = {max(range(z.numel()), key=lambda i: (float(z[i]), -i))}  # each layer's best unit stays
            assert all(float(z[i]) >= thr for i in keep if i not in floor)
    # the decision is global: different layers lose different amounts
    assert len(set(step.decision["channels_removed"])) > 1


def test_flap_bias_compensation_equals_the_removed_inputs_mean_contribution(arch, tiny_tokenizer):
    model = tiny_model(arch)
    p = pruner.Pruner(model, tiny_tokenizer, config("flap"))
    imp = p.measure()
    step = p.preview(imp).steps[0]
    x = module_inputs(model, p.calibration(0))
    old = [(layer.self_attn.o_proj, layer.mlp.down_proj) for layer in model.model.layers]
    p.step(importance=imp)
    for li, layer in enumerate(model.model.layers):
        q_idx, _ = group_rows(p.geo, step.keep_groups[li])
        for role, old_mod, new_mod, keep in (("o", old[li][0], layer.self_attn.o_proj, q_idx),
                                             ("down", old[li][1], layer.mlp.down_proj,
                                              torch.tensor(step.keep_channels[li]))):
            mean = x[(li, role)].double().mean(0)
            gone = torch.ones(mean.numel(), dtype=torch.bool)
            gone[keep] = False
            by_hand = old_mod.weight.detach().double()[:, gone] @ mean[gone]
            base = old_mod.bias.detach().double() if old_mod.bias is not None else 0
            torch.testing.assert_close(new_mod.bias.detach().double(), base + by_hand, rtol=1e-5, atol=1e-6)
            with torch.no_grad():  # on the mean input, the compensated module gives the old output
                before = old_mod(mean.float()[None])
                after = new_mod(mean.float()[keep][None])
            assert float((after - before).abs().max()) < 1e-5
    assert p.geo.o_bias and p.geo.down_bias  # every layer now carries both biases


def test_flap_without_compensation_adds_no_bias(tiny_tokenizer):
    model = tiny_model("llama")
    p = pruner.Pruner(model, tiny_tokenizer, config("flap", bias_compensation=False))
    rec = p.step()
    assert rec.decision["bias_compensation"] is False
    assert all(layer.self_attn.o_proj.bias is None and layer.mlp.down_proj.bias is None for layer in model.model.layers)


def test_flap_model_saves_reloads_and_undoes(tiny_tokenizer, tmp_path):
    model = tiny_model("llama")
    ids = random_windows(2, 16)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    p = pruner.Pruner(model, tiny_tokenizer, config("flap"))
    p.run()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m", record=p.record)
    meta = json.loads((tmp_path / "m" / "pruned_widths.json").read_text())
    assert all({"self_attn.o_proj", "mlp.down_proj"} <= set(b) for b in meta["biases"])
    again, _ = pruner.load_model(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, ref)
    p.undo()
    assert not p.geo.o_bias and all(layer.self_attn.o_proj.bias is None for layer in model.model.layers)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, dense)


# ---------------------------------------------------------------- ShortGPT


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shortgpt_removes_exactly_the_lowest_influence_layers(arch, tiny_tokenizer):
    model = tiny_model(arch)
    reference = tiny_model(arch)  # the same weights
    ids = random_windows(2, 16)
    p = pruner.Pruner(model, tiny_tokenizer, config("shortgpt"))
    imp = p.measure()
    assert imp.group_scores is None  # the layers only: no unit scores
    bi = [1 - c for c in imp.layer_cos]
    rec = p.step(importance=imp)
    n = len(rec.removed_layers)
    assert rec.removed_layers == sorted(sorted(range(4), key=lambda i: (bi[i], i))[:n]) and n >= 1
    assert rec.decision["block_influence"] == pytest.approx(bi)
    assert rec.removed_original_layers == rec.removed_layers
    kept = [i for i in range(4) if i not in rec.removed_layers]
    # a standard model with fewer layers: config, layer indices and per-layer config entries re-numbered
    assert model.config.num_hidden_layers == len(model.model.layers) == 4 - n
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(4 - n))
    if arch == "qwen2":
        assert len(model.config.layer_types) == 4 - n
    assert pruner.origin_of(model).kept_layers == kept and pruner.origin_of(model).removed_layers == rec.removed_layers
    # the remaining layers are the original ones, untouched: the reference with those layers deleted agrees
    reference.model.layers = torch.nn.ModuleList([reference.model.layers[i] for i in kept])
    for i, layer in enumerate(reference.model.layers):
        layer.self_attn.layer_idx = i
    reference.config.num_hidden_layers = 4 - n
    if arch == "qwen2":
        reference.config.layer_types = reference.config.layer_types[:4 - n]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
        with_cache = model.generate(ids[:1, :6], max_new_tokens=10, do_sample=False, use_cache=True)
        without = model.generate(ids[:1, :6], max_new_tokens=10, do_sample=False, use_cache=False)
    assert with_cache.tolist() == without.tolist()


def test_shortgpt_model_saves_reloads_exports_plain_and_undoes(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from pruner.export import export_hf

    model = tiny_model("llama")
    ids = random_windows(2, 16)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    p = pruner.Pruner(model, tiny_tokenizer, config("shortgpt"))
    rec = p.step()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m", record=p.record)
    again, _ = pruner.load_model(str(tmp_path / "m"))
    assert pruner.origin_of(again).kept_layers == pruner.origin_of(model).kept_layers
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, ref)
    summary = export_hf(model, None, tmp_path / "hf", record=p.record.to_dict())
    assert summary["remote_code"] is False  # uniform widths, fewer layers: the plain architecture
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"the original layers {rec.removed_original_layers}" in card and "ShortGPT" in card
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert plain.config.num_hidden_layers == 4 - len(rec.removed_layers)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, ref)
    p.undo()
    assert model.config.num_hidden_layers == 4 and [x.self_attn.layer_idx for x in model.model.layers] == [0, 1, 2, 3]
    assert pruner.origin_of(model).kept_layers == [0, 1, 2, 3] and len(p.sparsity) == 4
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, dense)


def test_shortgpt_keeps_a_layer_and_says_so(tiny_tokenizer):
    p = pruner.Pruner(tiny_model(), tiny_tokenizer, config("shortgpt", target=0.2))
    with pytest.raises(pruner.AllocationError, match="ShortGPT keeps one layer"):
        p.run()
    assert len(p.model.model.layers) == 4


# ---------------------------------------------------------------- LLM-Pruner


def test_llm_pruner_leaves_the_layers_outside_its_window_bit_identical(arch, tiny_tokenizer):
    model = tiny_model(arch)
    outside = {li: state_of(model.model.layers[li]) for li in (0, 3)}
    p = pruner.Pruner(model, tiny_tokenizer, config("llm-pruner", block_layers=[1, 3]))
    assert p.config.criterion == "taylor"
    rec = p.step()
    assert rec.decision["window"] == [1, 3] and rec.decision["untouched_layers"] == [0, 3]
    for li, state in outside.items():
        now = model.model.layers[li].state_dict()
        assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    widths = layer_widths(model)
    assert widths[1].intermediate_size == widths[2].intermediate_size < 96  # one ratio inside the window
    assert rec.allocated_sparsity[1] == rec.allocated_sparsity[2] == pytest.approx(rec.decision["ratio"])


def test_llm_pruner_window_scales_with_depth():
    assert llm_pruner_window(32) == (4, 30)  # scripts/llama_prune.sh: --block_*_layer_start 4 --block_*_layer_end 30
    assert llm_pruner_window(30) == (4, 28)  # SmolLM2-135M
    assert llm_pruner_window(4) == (1, 4) and llm_pruner_window(1) == (0, 1)
    with pytest.raises(pruner.ConfigError, match="does not fit"):
        llm_pruner_window(4, [1, 6])
    with pytest.raises(pruner.ConfigError, match="block_layers"):
        pruner.PruneConfig(method="llm-pruner", block_layers=[3, 3])


def test_a_window_beyond_the_model_is_refused_and_changes_nothing(tiny_tokenizer):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pruner.ConfigError, match="does not fit a model with 4 layers"):
        pruner.Pruner(model, tiny_tokenizer, config("llm-pruner", block_layers=[2, 9]))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- all baselines


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_meets_the_target_within_the_adapt_pruner_tolerance(method, tiny_tokenizer):
    model = tiny_model("mistral")
    p = pruner.Pruner(model, tiny_tokenizer, config(method))
    total0 = p.origin.params["total"]
    target, tol = round(0.7 * total0), target_tolerance(total0)
    record = p.run()
    assert len(record.steps) == 1 and not method_class(method).incremental
    final = record.final_params["total"]
    assert final == pruner.count_parameters(model)["total"] <= target + tol
    unit = p.geo.layer_params(p.widths()[0]) if method == "shortgpt" else p.geo.params_per_group
    assert target - final <= max(tol, unit)
    json.dumps(record.to_dict())  # the record is JSON
    assert record.steps[0].method == method and record.steps[0].decision


def test_shortgpt_on_a_layer_boundary_lands_within_the_tolerance(tiny_tokenizer):
    model = tiny_model()
    p = pruner.Pruner(model, tiny_tokenizer, config("shortgpt"))
    one_layer = p.geo.layer_params(p.widths()[0])
    total0 = p.origin.params["total"]
    p.configure(replace(p.config, target=(total0 - one_layer) / total0))
    rec = p.step()
    assert len(rec.removed_layers) == 1 and abs(rec.params_total - (total0 - one_layer)) <= target_tolerance(total0)


def test_the_baselines_refuse_adapt_accel():
    from pruner.training.accel import AccelConfig

    with pytest.raises(pruner.ConfigError, match="one-shot baseline"):
        AccelConfig(prune=pruner.PruneConfig(method="flap"))


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def tiny_folder(tiny_llama_folder):
    return tiny_llama_folder


@pytest.mark.parametrize("extra", [["--method", "flap"], ["--method", "shortgpt"],
                                   ["--method", "llm-pruner", "--block-layers", "1:3"],
                                   ["--method", "wanda-sp", "--criterion", "wanda-sp"]])
def test_cli_prunes_with_each_baseline(tiny_folder, tmp_path, extra, capsys):
    from pruner.cli.main import main

    out, report = tmp_path / "out", tmp_path / "r.json"
    rc = main(["prune", "--model", str(tiny_folder), "--target", "0.7", "--calibration", "wikitext2", "--n-windows", "4",
               "--window", "24", "--no-ppl", "--out", str(out), "--report", str(report), *extra])
    assert rc == 0
    rec = json.loads(report.read_text())["record"]
    assert rec["config"]["method"] == extra[1] and len(rec["steps"]) == 1 and rec["steps"][0]["decision"]
    err = capsys.readouterr().err
    assert f"{extra[1]}: " in err  # what the method decided, on stderr
    assert rec["config"]["criterion"] == method_class(extra[1]).criterion or extra[1] == "shortgpt"
    again, _ = pruner.load_model(str(out))
    assert pruner.count_parameters(again) == rec["final_params"]


@pytest.mark.parametrize("extra,message", [
    (["--method", "llm-pruner", "--block-layers", "2:9"], "does not fit a model with 4 layers"),
    (["--method", "llm-pruner", "--block-layers", "two"], "START:END"),
    (["--method", "shortgpt", "--target", "0.1"], "ShortGPT keeps one layer"),
    (["--method", "wanda-sp", "--criterion", "magnitude"], "wanda-sp scores units with its own criterion 'wanda-sp'"),
])
def test_cli_bad_baseline_input_gives_one_line(tiny_folder, extra, message, capsys):
    from pruner.cli.main import main

    args = ["prune", "--model", str(tiny_folder), "--target", "0.7", "--no-ppl", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_removing_the_widest_layer_updates_the_global_widths(tiny_tokenizer):
    from pruner.model.depth import build_layer_removal
    from pruner.model.structure import LayerCut, apply_patch, build_cut

    model = tiny_model()
    apply_patch(model, build_cut(model, {i: LayerCut([0, 1], list(range(40))) for i in (0, 1, 2)}))
    assert model.config.intermediate_size == 96  # layer 3 is still whole
    inverse = apply_patch(model, build_layer_removal(model, [3]))
    assert (model.config.num_hidden_layers, model.config.intermediate_size, model.config.num_key_value_heads) == (3, 40, 2)
    apply_patch(model, inverse)
    assert (model.config.num_hidden_layers, model.config.intermediate_size) == (4, 96)


@pytest.mark.parametrize("method", ["flap", "shortgpt"])
@pytest.mark.parametrize("point", ["config sync", "record"])
def test_a_failed_baseline_step_leaves_the_model_as_it_was(tiny_tokenizer, monkeypatch, method, point):
    model = tiny_model("qwen2")
    p = pruner.Pruner(model, tiny_tokenizer, config(method))
    imp = p.measure()
    ids = random_windows(1, 8)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    params, types = pruner.count_parameters(model), list(model.config.layer_types)
    boom = RuntimeError("failure (simulated)")
    with monkeypatch.context() as m:
        if point == "config sync":  # after the modules (or layers) are swapped in
            target = "pruner.model.depth.sync_depth" if method == "shortgpt" else "pruner.model.structure.sync_config"
            m.setattr(target, lambda *a, **k: (_ for _ in ()).throw(boom))
        else:
            m.setattr(pruner.Pruner, "_step_record", lambda *a, **k: (_ for _ in ()).throw(boom))
        with pytest.raises(RuntimeError, match="simulated"):
            p.step(importance=imp)
    assert pruner.count_parameters(model) == params and p.record.steps == [] and p.undo() is None
    assert model.config.num_hidden_layers == 4 and list(model.config.layer_types) == types
    assert pruner.origin_of(model).kept_layers == [0, 1, 2, 3] and not p.geo.o_bias
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    assert p.step(importance=imp).params_total < params["total"]  # and the pruner carries on


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_every_baseline_on_the_newer_architectures(arch, method, tiny_tokenizer, tmp_path):
    """Fused projections (Phi-3), projection norms (OLMo-2), per-head norms (Qwen3, Gemma-3), sliding-window layer
    types (Gemma): the plan is the step, the model generates with a KV cache and reloads with identical logits."""
    model = tiny_model(arch)
    p = pruner.Pruner(model, tiny_tokenizer, config(method))
    planned = p.preview().steps[0]
    rec = p.run().steps[0]
    assert layer_widths(model) == planned.widths and rec.params_total == planned.params
    assert rec.params_total <= round(0.7 * p.origin.params["total"]) + target_tolerance(p.origin.params["total"])
    ids = random_windows(2, 12)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        cached = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    pruner.save_pruned(model, tiny_tokenizer, tmp_path / "m")
    again, _ = pruner.load_model(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, ref)
