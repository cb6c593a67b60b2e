"""The schedule explorer (issue 23) on the tiny models: a what-if equals the model really cut, exploring never
changes the model (also after a cancel or an error), the sensitivity table equals losses of really cut models, the
sensitivity method allocates by it, sweeps keep finished points on a cancel and refuse what is too large, and a
history round-trips through its files."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

import pruner
from pruner.config import METHODS
from pruner.errors import Cancelled
from pruner.explore import (
    EvalSample,
    Experiment,
    Explorer,
    History,
    SweepTooLarge,
    run_sweep,
    sweep_grid,
)
from pruner.importance import sensitivity as sensitivity_module
from pruner.importance.sensitivity import (
    Sensitivity,
    lowest_units,
    mean_loss,
    measure_sensitivity,
    scan_tokens,
    spearman,
)
from pruner.methods.sensitivity import allocate_by_sensitivity, interpolate, lower_hull
from pruner.model.depth import build_layer_removal
from pruner.model.masking import LayerMask, compose, masked
from pruner.model.structure import LayerCut, apply_patch, build_cut, geometry, layer_widths
from pruner.testing import NEW_ARCHITECTURES, random_windows, tiny_model

SAMPLE = EvalSample(max_tokens=384, window=64)
CUSTOM = [0.3, 0.6, 0.4, 0.55]


def config(method: str = "adaptive", **kw) -> pruner.PruneConfig:
    base = dict(target=0.7, method=method, step=0.05, amplitude=0.05, n_windows=4, window=24, batch_size=4,
                calibration="wiki", remeasure=False, custom=CUSTOM if method == "custom" else None)
    return pruner.PruneConfig(**{**base, **kw})


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, cloned (and which tensors they are)."""
    out = {f"p:{k}": v.detach().clone() for k, v in model.named_parameters()}
    out.update({f"b:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return out


def assert_identical(model, before: dict[str, torch.Tensor]) -> None:
    now = snapshot(model)
    assert now.keys() == before.keys()
    for k, v in now.items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "a hook was left behind"


def eval_ppl(model, tok) -> float:
    return pruner.perplexity(model, tok, SAMPLE.dataset, SAMPLE.split, window=SAMPLE.window,
                             max_tokens=SAMPLE.max_tokens, batch_size=SAMPLE.batch_size)["perplexity"]


# ---------------------------------------------------------------- what-if == the model really cut


MASKABLE = [m for m in METHODS if m != "slicegpt"]  # SliceGPT's rotation exists only in the cut (refused below)


def test_a_what_if_of_slicegpt_is_refused_in_one_line(tiny_tokenizer):
    ex = Explorer(pruner.Pruner(tiny_model("llama"), tiny_tokenizer, pruner.PruneConfig(method="slicegpt", target=0.8,
                                                                                      n_windows=4, window=32)),
                  SAMPLE)
    with pytest.raises(pruner.ConfigError, match="only the cut computes"):
        ex.what_if()


@pytest.mark.parametrize("method,arch_name", [(m, a) for m in MASKABLE for a in ("llama", "olmo2")]
                         + [("flap", a) for a in ("qwen2", "mistral", *NEW_ARCHITECTURES) if a != "olmo2"])
def test_a_what_if_equals_the_model_really_cut(arch_name, method, tiny_tokenizer):
    """Every method on Llama and on OLMo-2 (q/k norms over the whole projection); FLAP (masks and compensation
    fills) on every other architecture (Phi-3's fused projections, Gemma's soft-capping and sliding windows)."""
    model = tiny_model(arch_name)
    twin = copy.deepcopy(model)
    cfg = config(method)
    ex = Explorer(pruner.Pruner(model, tiny_tokenizer, cfg), SAMPLE)
    predicted = ex.what_if()
    assert predicted.settings["method"] == method and predicted.reached
    real = pruner.Pruner(twin, tiny_tokenizer, cfg)
    real.run()  # the same measurement (held), one shot: the plan's units cut for real
    assert [w.to_dict() for w in layer_widths(twin)] == predicted.widths
    assert real.params_total() == predicted.params
    cut = eval_ppl(twin, tiny_tokenizer)
    assert math.isclose(predicted.ppl, cut, rel_tol=1e-4), (predicted.ppl, cut)
    assert not math.isclose(predicted.ppl, ex.baseline()["perplexity"], rel_tol=1e-4)  # the masks did something


def test_the_what_if_of_a_given_plan_is_the_preview_evaluated(tiny_tokenizer):
    p = pruner.Pruner(tiny_model("qwen2"), tiny_tokenizer, config("adaptive", remeasure=True))
    ex = Explorer(p, SAMPLE)
    other = config("adaptive", target=0.5, attention="proportional")
    plan = p.preview(ex.measurement(other), config=other)  # the studio's preview of other settings
    w = ex.what_if(plan, other)
    assert w.steps == len(plan.steps) and w.params == plan.steps[-1].params
    assert w.settings["target"] == 0.5 and w.settings["attention"] == "proportional"
    assert w.ppl == ex.what_if(config=other).ppl  # planned here from the same measurement: the same plan
    assert w.perplexity["split"] == "valid" and w.perplexity["tokens_scored"] > 0  # settings beside the number


# ---------------------------------------------------------------- the model is never changed


def test_exploring_leaves_the_model_bit_identical_also_after_a_cancel_or_an_error(tiny_tokenizer, monkeypatch):
    model = tiny_model("llama")
    before = snapshot(model)
    ex = Explorer(pruner.Pruner(model, tiny_tokenizer, config("flap")), SAMPLE)  # compensation: fills, biases
    for method in ("flap", "shortgpt", "adaptive"):
        ex.what_if(config=config(method))
    ex.sensitivity()
    assert_identical(model, before)
    calls = []

    def stop():  # cancel in the middle of the masked evaluation (the masks' hooks are in place)
        calls.append(any(m._forward_pre_hooks for m in model.modules()))
        return calls[-1]

    with pytest.raises(Cancelled):
        ex.what_if(config=config("uniform"), should_stop=stop)
    assert calls[-1] is True
    assert_identical(model, before)
    import pruner.explore.whatif as whatif

    def broken(*args, **kwargs):
        raise RuntimeError("the evaluation failed")

    monkeypatch.setattr(whatif, "perplexity", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        ex.what_if(config=config("flap"))
    assert_identical(model, before)
    assert model.training is False and ex.pruner.record.steps == []


def test_masks_compose_and_a_bad_mask_installs_nothing():
    outer = {0: LayerMask([0, 2, 3], [1, 2, 3, 4]), 2: LayerMask(skip=True)}
    inner = {0: LayerMask([1, 2], [0, 3]), 1: LayerMask([0], [5])}  # layer 1 of [0, 1, 3] is layer 1
    got = compose(outer, inner, [0, 1, 3])
    assert got[0].keep_groups == [2, 3] and got[0].keep_channels == [1, 4]
    assert got[1].keep_groups == [0] and got[2].skip
    fills = LayerMask(None, [1, 3], down_fill=torch.tensor([1.0, 2.0, 3.0, 4.0])).then(
        LayerMask(None, [1], down_fill=torch.tensor([7.0, 8.0])))
    assert fills.keep_channels == [3] and fills.down_fill[[0, 1, 2]].tolist() == [1.0, 7.0, 3.0]
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(IndexError), masked(model, {0: LayerMask([0], [0]), 9: LayerMask([0], [0])}):
        pass
    assert_identical(model, before)


# ---------------------------------------------------------------- sensitivity


def test_sensitivity_equals_the_loss_of_the_layer_really_cut(tiny_tokenizer):
    model = tiny_model("qwen2")
    p = pruner.Pruner(model, tiny_tokenizer, config("sensitivity"))
    imp = p.measure()
    table = imp.sensitivity
    assert table.levels == [0.25, 0.5, 0.75, 1.0] and len(table.increase) == 4
    windows = p.calibration(0)
    assert math.isclose(table.base_loss, mean_loss(model, windows, 4), rel_tol=1e-6)
    for li in (0, 3):
        g, c, share = lowest_units(p.geo, imp.group_scores[li], imp.channel_scores[li], 0.5)
        assert abs(share - 0.5) < 0.1 and share == table.removed[li][1]
        twin = copy.deepcopy(model)
        apply_patch(twin, build_cut(twin, {li: LayerCut(g, c)}))
        assert math.isclose(table.increase[li][1], mean_loss(twin, windows, 4) - table.base_loss, abs_tol=1e-5)
        gone = copy.deepcopy(model)
        apply_patch(gone, build_layer_removal(gone, [li]))
        assert math.isclose(table.increase[li][3], mean_loss(gone, windows, 4) - table.base_loss, abs_tol=1e-5)
    report = Explorer(p, SAMPLE).sensitivity()  # the unit scores, then the table: the importance pass's own
    assert report.table.increase == table.increase and report.table.removed == table.removed
    assert report.correlation == {k: spearman(imp.layer_importance, [r[i] for r in table.increase])
                                  for i, k in enumerate(["0.25", "0.5", "0.75", "1"])}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", *NEW_ARCHITECTURES])
def test_the_scan_from_the_pruned_layer_on_equals_whole_masked_forwards(arch):
    """The scan replays the layers before the pruned one from the dense forward; every architecture's table must
    equal whole forwards of the masked model, batch by batch (a last batch shorter than the others too), and the
    layers' forwards are their own again afterwards."""
    model = tiny_model(arch)
    windows = random_windows(10, 20, seed=3)
    geo, n = geometry(model), model.config.num_hidden_layers
    gen = torch.Generator().manual_seed(1)
    groups = [torch.rand(model.config.num_key_value_heads, generator=gen, dtype=torch.float64) for _ in range(n)]
    channels = [torch.rand(model.config.intermediate_size, generator=gen, dtype=torch.float64) for _ in range(n)]
    before = copy.deepcopy(model.state_dict())
    with pytest.MonkeyPatch.context() as mp:  # the loss a few tokens of logits at a time: the model's own logits'
        mp.setattr("pruner.importance.lean.CHUNK_LOGITS", 7 * model.config.vocab_size)
        with torch.no_grad():
            logits = model(input_ids=windows, use_cache=False).logits.float()
        whole = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                  windows[:, 1:].reshape(-1))
        assert math.isclose(mean_loss(model, windows, 10), float(whole), rel_tol=1e-5)
    table = measure_sensitivity(model, windows, groups, channels, (0.5, 1.0), batch_size=4)
    base = mean_loss(model, windows, 4)
    assert math.isclose(table.base_loss, base, rel_tol=1e-6)
    for li in range(n):
        g, c, _ = lowest_units(geo, groups[li], channels[li], 0.5)
        for k, mask in enumerate((LayerMask(g, c), LayerMask(skip=True))):
            with masked(model, {li: mask}):
                want = mean_loss(model, windows, 4) - base
            assert math.isclose(table.increase[li][k], want, rel_tol=1e-5, abs_tol=1e-6), (li, k)
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    if arch == "llama":  # a token budget reads the first whole windows only: the same as those windows alone
        few = measure_sensitivity(model, windows, groups, channels, (0.5, 1.0), batch_size=4, max_tokens=50)
        alone = measure_sensitivity(model, windows[:2], groups, channels, (0.5, 1.0), batch_size=4)
        assert few.tokens == 40 and few.increase == alone.increase and scan_tokens(10, 20, 50) == 40
        with pytest.MonkeyPatch.context() as mp:  # the default budget is read when called (a benchmark sets it)
            mp.setattr(sensitivity_module, "SCAN_TOKENS", 50)
            by_default = measure_sensitivity(model, windows, groups, channels, (0.5, 1.0), batch_size=4)
            assert by_default.tokens == 40 and scan_tokens(10, 20) == 40 and scan_tokens(10, 20, None) == 200
        with sensitivity_module.scan_budget(60):  # for a block, then as it was
            assert scan_tokens(10, 20) == 60
        assert scan_tokens(10, 20) == min(200, sensitivity_module.SCAN_TOKENS // 20 * 20)


def test_a_scan_cancelled_midway_leaves_the_layers_as_they_were():
    model = tiny_model("qwen2")
    before = copy.deepcopy(model.state_dict())
    n = model.config.num_hidden_layers
    groups = [torch.arange(model.config.num_key_value_heads, dtype=torch.float64) for _ in range(n)]
    channels = [torch.arange(model.config.intermediate_size, dtype=torch.float64) for _ in range(n)]
    calls = itertools.count()
    with pytest.raises(Cancelled):
        measure_sensitivity(model, random_windows(8, 20), groups, channels, batch_size=4,
                            should_stop=lambda: next(calls) > 9)  # inside the replay of a later layer
    assert all("forward" not in layer.__dict__ and not layer._forward_hooks for layer in model.model.layers)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_spearman_and_the_lowest_units():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 − 6·4 / (5·24)
    assert spearman([1, 1, 2], [3, 3, 3]) is None
    geo = geometry(tiny_model())
    g, c, share = lowest_units(geo, torch.tensor([5.0, 1.0, 9.0, 7.0]) * geo.params_per_group,
                               torch.arange(96, dtype=torch.float64) * geo.params_per_channel, 0.25)
    assert abs(share - 0.25) <= geo.params_per_group / 2 / (4 * geo.params_per_group + 96 * geo.params_per_channel)
    assert c == list(range(96 - len(c), 96))  # the lowest channels went first
    assert g == [2, 3] and c[0] == 8  # groups 1 and 0 (1 and 5 per parameter) go before channel 5 (ties: groups)


# ---------------------------------------------------------------- the sensitivity method


def test_the_sensitivity_allocation_prefers_cheap_layers_and_is_optimal_on_convex_costs():
    # layer 0 cheap, layer 1 expensive, layer 2 cheap at first then steep
    table = Sensitivity([0.25, 0.5, 0.75, 1.0], 3.0,
                        increase=[[0.01, 0.02, 0.03, 0.04], [1.0, 2.0, 3.0, 4.0], [0.0, 0.05, 2.0, 5.0]],
                        removed=[[0.25, 0.5, 0.75, 1.0]] * 3)
    share, cost = allocate_by_sensitivity(table, [100, 100, 100], [0.9, 0.9, 0.9], 0.5)
    assert sum(s * 100 for s in share) == pytest.approx(0.5 * 270)
    assert share[1] == 0 and share[0] == pytest.approx(0.9) and share[2] == pytest.approx(0.45)
    grid = [k / 20 for k in range(19)]  # shares 0, 0.05, ..., 0.9: every split of the budget on that grid
    best = min(sum(interpolate(*table.curve(li), x) for li, x in enumerate(xs))
               for xs in itertools.product(grid, repeat=3) if abs(sum(xs) - 1.35) < 1e-9)
    assert cost == pytest.approx(best) and cost == pytest.approx(0.03 + 0.01 * 0.6 + 0.04)
    assert lower_hull([0, 1, 2, 3], [0, 2, 2.5, 6]) == [(0, 0), (2, 2.5), (3, 6)]


def test_the_sensitivity_method_meets_the_target_and_its_preview_is_its_step(tiny_tokenizer):
    p = pruner.Pruner(tiny_model("llama"), tiny_tokenizer, config("sensitivity", remeasure=True))
    imp = p.measure()
    plan = p.preview(imp)
    assert len(plan.steps) == 1 and plan.reached
    target, tol = p.target_params(), pruner.target_tolerance(p.origin.params["total"])
    rec = p.step(importance=imp)
    assert [w.to_dict() for w in p.widths()] == [w.to_dict() for w in plan.steps[0].widths]
    assert rec.params_total == plan.steps[0].params <= target + tol  # one shot: never above the target
    assert target - rec.params_total <= max(tol, p.geo.params_per_group)  # within the coarsest unit
    assert rec.decision["predicted_loss_increase"] == plan.steps[0].decision["predicted_loss_increase"]
    share = rec.decision["layer_share"]
    costs = [row[2] for row in imp.sensitivity.increase]  # the layer that suffers least loses most
    assert share[costs.index(min(costs))] >= share[costs.index(max(costs))]


# ---------------------------------------------------------------- sweeps


def test_a_sweep_collapses_what_a_method_ignores_and_tabulates_every_point(tiny_tokenizer):
    base = config("adaptive")
    grid = sweep_grid(base, methods=["adaptive", "uniform", "flap"], targets=[0.8, 0.7], amplitudes=[0, 0.05])
    assert len(grid) == 2 * 2 + 2 + 2  # adaptive: targets × A; uniform and flap: the targets only
    assert {c.criterion for c in grid if c.method == "flap"} == {"fluctuation"}
    ex = Explorer(pruner.Pruner(tiny_model(), tiny_tokenizer, base), SAMPLE)
    result = run_sweep(ex, grid + [pruner.PruneConfig(**{**base.to_dict(), "target": 0.001})])
    assert len(result.points) == len(grid) + 1 and result.stopped == ""
    assert all(p.perplexity is not None for p in result.points[:-1])
    assert result.points[-1].error and result.points[-1].perplexity is None  # unreachable: kept with its reason
    first = result.points[0]
    assert first.perplexity == ex.what_if(config=grid[0]).ppl
    assert "adaptive" in result.table() and result.to_dict()["points"][0]["method"] == "adaptive"


def test_a_cancelled_sweep_keeps_its_finished_points_and_a_large_one_is_refused(tiny_tokenizer):
    base = config("uniform")
    ex = Explorer(pruner.Pruner(tiny_model(), tiny_tokenizer, base), SAMPLE)
    grid = sweep_grid(base, targets=[0.9, 0.8, 0.7, 0.6])
    done = []
    result = run_sweep(ex, grid, should_stop=lambda: len(done) >= 2, progress=lambda p, i, n: done.append(p))
    assert result.stopped == "cancelled" and len(result.points) == 2
    assert [p.settings["target"] for p in result.points] == [0.9, 0.8] and all(p.perplexity for p in result.points)
    with pytest.raises(SweepTooLarge) as err:
        run_sweep(ex, grid * 50, max_seconds=0.01)
    assert err.value.estimated_seconds > 0.01 and "would take about" in str(err.value)


# ---------------------------------------------------------------- history


def test_a_history_round_trips_through_json_and_csv(tiny_tokenizer, tmp_path):
    p = pruner.Pruner(tiny_model(), tiny_tokenizer, config("uniform"))
    ex = Explorer(p, SAMPLE)
    predicted = ex.what_if()
    p.run()
    measured = pruner.perplexity(p.model, tiny_tokenizer, "wikitext2", "valid", window=64, max_tokens=384)
    h = History()
    e = h.add(Experiment.from_record(p.record, measured=measured, predicted=predicted.perplexity, notes="a, \"b\""))
    h.add(Experiment("what-if", {"method": "flap", "target": 0.8}, 123, 0.5, predicted={"perplexity": 1.5}))
    assert e.params == p.params_total() and e.settings["method"] == "uniform" and len(e.widths) == 4
    assert e.measured_ppl == measured["perplexity"] and e.predicted_ppl == predicted.ppl
    for name in ("runs.json", "runs.csv"):
        back = History.load(h.save(tmp_path / name))
        assert [x.to_dict() for x in back.experiments] == [x.to_dict() for x in h.experiments], name
    assert e.prune_config() == p.config and e.prune_config(target=0.5).target == 0.5  # settings back
    e2 = Experiment.from_what_if(predicted, model="tiny")
    assert e2.kind == "what-if" and e2.predicted_ppl == predicted.ppl and e2.measured is None
    uploaded = Experiment("prune", {**p.config.to_dict(), "calibration": {"file": "x.txt", "sha256": "0"}}, 1, 0.5)
    assert uploaded.prune_config().calibration == pruner.PruneConfig.calibration
    rows = h.rows()
    assert rows[0]["method"] == "uniform" and rows[1]["measured_ppl"] is None
    more = History.load(tmp_path / "runs.csv")
    more.extend(h)
    assert len(more) == 2
    with pytest.raises(pruner.DataError):
        History.from_csv("a,b\n1,2\n")


def test_instance_forwards_put_back_what_was_there_when_a_forward_cannot_be_made():
    from torch import nn

    from pruner.importance.lean import instance_forwards

    mods = [nn.Linear(2, 2) for _ in range(3)]
    own = mods[1].forward = lambda x: x  # an instance forward of its own (a dispatch wrapper, say)

    def make(i, _module):
        if i == 2:
            raise RuntimeError("cannot make this one")
        return lambda x: x * 0

    with pytest.raises(RuntimeError, match="cannot make this one"), instance_forwards(mods, make):
        pass
    assert "forward" not in vars(mods[0]) and mods[1].forward is own and "forward" not in vars(mods[2])
    with instance_forwards([mods[0], mods[0]], lambda i, _m: (lambda x: x + i)):  # listed twice
        assert mods[0].forward(1) == 2
    assert "forward" not in vars(mods[0])
