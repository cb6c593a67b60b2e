"""One planner: the preview is what the pruner does. For every method × attention policy on the tiny models,
the first planned step equals the next real step with the same importance, and with importance held fixed the
last planned widths are the widths the run reaches. The baselines (one planned step each, which ignore the
attention policy) are in the same parametrisation."""

from __future__ import annotations

from dataclasses import replace

import pytest

import pruner
from pruner.config import ATTENTION_POLICIES, INCREMENTAL_METHODS, METHODS
from pruner.methods import method_class
from pruner.model.structure import layer_widths
from pruner.pruning.planner import target_tolerance, top_units
from pruner.testing import tiny_model

CUSTOM = [0.3, 0.6, 0.4, 0.55]
#: every incremental method under both attention policies; a baseline decides its split itself (once)
PLANS = [(m, a) for m in METHODS for a in (ATTENTION_POLICIES if m in INCREMENTAL_METHODS else ATTENTION_POLICIES[:1])]


def config(method: str, attention: str, **kw) -> pruner.PruneConfig:
    base = dict(target=0.7, method=method, attention=attention, step=0.05, amplitude=0.05, n_windows=4, window=24,
                batch_size=4, calibration="wikitext2", custom=CUSTOM if method == "custom" else None)
    return pruner.PruneConfig(**{**base, **kw})


@pytest.mark.parametrize("method,attention", PLANS)
def test_the_first_planned_step_is_the_next_real_step(arch, method, attention, tiny_tokenizer):
    p = pruner.Pruner(tiny_model(arch), tiny_tokenizer, config(method, attention))
    for _ in range(2):  # from the dense model, and again after a step
        imp = p.measure()
        plan = p.preview(imp)
        assert plan.reached and plan.steps and not plan.steps[0].estimate
        assert all(s.estimate for s in plan.steps[1:])  # later ones reuse today's scores
        first = plan.steps[0]
        kept_before = list(p.origin.kept_layers)
        rec = p.step(importance=imp)
        # what the model and the pruner's state are now, not the record's copies of the step's own plan
        assert layer_widths(p.model) == first.widths
        assert pruner.count_parameters(p.model)["total"] == first.params
        assert p.sparsity == first.sparsity  # where the next sub-step starts from
        assert [li for li in kept_before if li not in p.origin.kept_layers] == [kept_before[i] for i in
                                                                                 first.remove_layers]
        cut = method_class(method).measured_by_the_cut  # what the cut measures (SliceGPT's variance kept)
        assert rec.fraction == first.fraction
        assert {k: v for k, v in rec.decision.items() if k not in cut} == first.decision and set(cut) <= set(rec.decision)
        if not method_class(method).repeatable:
            break
        if (not method_class(method).incremental):  # one step reaches the target: plan again from the pruned model
            p.configure(replace(p.config, target=0.5))


@pytest.mark.parametrize("method,attention", PLANS)
def test_with_importance_held_fixed_the_plan_is_the_run(arch, method, attention, tiny_tokenizer):
    model = tiny_model(arch)
    p = pruner.Pruner(model, tiny_tokenizer, config(method, attention, remeasure=False))
    plan = p.preview()  # measures once; the run then reuses that measurement
    assert not any(s.estimate for s in plan.steps)
    # the same tolerance for every method, in units of the coarsest thing it removes (ShortGPT: a layer)
    unit = p.planner.method.resolution(p.widths())
    steps = list(p.iter_run())
    one_shot = (not method_class(method).incremental)
    assert len(steps) == len(plan.steps) >= (1 if one_shot else 2)
    assert layer_widths(model) == plan.steps[-1].widths
    assert [r.params_total for r in steps] == [s.params for s in plan.steps]
    assert [r.allocated_sparsity for r in steps] == [s.sparsity for s in plan.steps]
    assert p.sparsity == plan.steps[-1].sparsity and pruner.count_parameters(model)["total"] == plan.steps[-1].params
    total0 = p.origin.params["total"]
    target = round(0.7 * total0)
    tol = target_tolerance(total0)
    assert abs(steps[-1].params_total - target) <= max(tol, unit)
    if one_shot:
        assert steps[-1].params_total <= target + tol  # a one-shot method never stops above the target


def test_preview_changes_nothing_and_previews_other_settings(tiny_tokenizer):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = pruner.Pruner(model, tiny_tokenizer, config("adaptive", "score"))
    imp = p.measure()
    here = p.preview(imp)
    lower = p.preview(imp, config=config("adaptive", "score", target=0.5))
    assert len(lower.steps) > len(here.steps) and p.config.target == 0.7
    assert all(k in before and (v == before[k]).all() for k, v in model.state_dict().items())
    assert p.record.steps == []


def test_preview_needs_a_measurement_for_the_score_policy(tiny_tokenizer):
    p = pruner.Pruner(tiny_model(), tiny_tokenizer, config("adaptive", "score"))
    with pytest.raises(pruner.AllocationError, match="Measure importance first"):
        p.preview(measure=False)
    # the proportional policy with a uniform allocation needs no scores to plan the widths
    q = pruner.Pruner(tiny_model(), tiny_tokenizer, config("uniform", "proportional"))
    plan = q.planner.schedule(q.sparsity, q.widths(), pruner.pruning.planner.UnitScores.of(None), q.target_params())
    assert plan.reached and plan.steps[0].keep_groups is None


def test_a_stale_preview_after_a_step_is_all_estimates(tiny_tokenizer):
    p = pruner.Pruner(tiny_model(), tiny_tokenizer, config("adaptive", "score"))
    p.step()
    plan = p.preview(measure=False)
    assert plan.steps and all(s.estimate for s in plan.steps)


def test_one_tolerance_and_ties_to_the_lower_index():
    assert target_tolerance(134_515_008) == 134_515 and target_tolerance(10) == 1
    import torch

    assert top_units(torch.tensor([1.0, 3.0, 3.0, 0.5]), 2) == [1, 2]
    assert top_units(torch.tensor([2.0, 2.0, 2.0]), 1) == [0]


def test_a_last_step_that_would_remove_nothing_overshoots_instead_of_failing(tiny_tokenizer):
    """Uniform at the studio's defaults on the tiny model: near the target the bisection's closer plan was the one
    that removes nothing, and the run failed with "This step would remove nothing" (found by the history helper)."""
    cfg = pruner.PruneConfig(target=0.8, method="uniform", n_windows=4, window=32, step=0.02)
    p = pruner.Pruner(tiny_model(), tiny_tokenizer, cfg, keep_history=0)
    p.run()
    assert p.reached()
    sizes = [p.record.start_params["total"]] + [st.params_total for st in p.record.steps]
    assert all(b < a for a, b in zip(sizes, sizes[1:], strict=False)), sizes  # every step removed something


def test_a_budget_below_one_unit_per_layer_grows_until_a_unit_goes(tiny_tokenizer):
    cfg = pruner.PruneConfig(target=0.95, method="uniform", n_windows=4, window=32, step=0.001)
    p = pruner.Pruner(tiny_model(), tiny_tokenizer, cfg, keep_history=0)
    plan = p.preview()
    assert plan.reached and any(st.decision.get("budget_multiple", 1) > 1 for st in plan.steps)
    sizes = [p.params_total()] + [st.params for st in plan.steps]
    assert all(b < a for a, b in zip(sizes, sizes[1:], strict=False)), sizes  # every planned step removes a unit
