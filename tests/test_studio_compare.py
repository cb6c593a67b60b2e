"""Comparing methods in a studio session (tiny model), and the studio with the baselines: ShortGPT's removed layers in
the preview, the history and the heatmaps, a cost estimate for every criterion, Adapt-Accel's refusal."""

from __future__ import annotations

import gc
import zipfile
from types import SimpleNamespace

import pytest

import visualizations as viz
from pruner import load_model, perplexity
from pruner.config import CRITERIA, METHODS
from pruner.model.structure import count_parameters, layer_widths
from pruner.pruning.planner import target_tolerance
from studio import SessionError, StudioSession
from studio.pool import SessionPool
from studio.views import compare_views, page_views
from tests.test_session import same_state, state, tiny_model, tiny_session, tiny_settings, tiny_tokenizer


def shared_session(**kw) -> StudioSession:
    """A visitor's session on a shared startup model (its working model *is* the original until it changes)."""
    return StudioSession.from_shared(tiny_model(), tiny_tokenizer(), name="tiny", settings=tiny_settings(**kw))


def run(s, methods, **kw) -> list:
    return list(s.compare.run(methods, **{"prompt": "The", **kw}))


def reload(zip_path, tmp_path):
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp_path)
        folder = tmp_path / z.namelist()[0].split("/")[0]
    return load_model(folder, device="cpu", progress=None)[0]


#: Every method but custom (which needs a table): more than the tab ticks by default.
SIX = ("adaptive", "uniform", "llm-pruner", "flap", "shortgpt", "wanda-sp")


def test_every_method_prunes_its_own_copy_to_the_target(tmp_path):
    s = shared_session()
    before, p0 = state(s.model), s.work.original_total
    updates = run(s, SIX)
    assert updates[-1].done and "6 method(s) pruned to 85%" in updates[-1].message
    # the working model (here: the shared original) is untouched, nothing was copied for it, no copy is left
    assert s.model is s.original and not s.work.private and same_state(before, state(s.model))
    assert s.steps_taken == 0 and s.work.extra_models == 0
    gc.collect()
    assert len(s.compare.model_refs) == 6 and all(ref() is None for ref in s.compare.model_refs)

    c = s.compare
    assert [r.method for r in c.results] == list(SIX) and all(r.status == "done" for r in c.results)
    limit = 0.85 * p0 + target_tolerance(p0)
    ref_ppl = c.reference.perplexity["perplexity"]
    for r in c.results:
        assert r.params <= limit and r.fraction == pytest.approx(r.params / p0)
        params = [p.params for p in r.trajectory]
        assert params[0] == p0 and params[-1] == r.params and params == sorted(params, reverse=True)
        assert r.trajectory[0].perplexity == ref_ppl and r.trajectory[-1].perplexity == r.perplexity["perplexity"]
        assert len(r.trajectory) == r.steps + 1 and r.tokens_per_s > 0 and r.zero_shot is None
        assert len(r.widths) == 3
        # the download is the pruned model: it reloads to the recorded widths, size and quick perplexity
        model = reload(r.zip_path, tmp_path / r.method)
        assert [w.to_dict() for w in layer_widths(model)] == [w for w in r.widths if w is not None]
        assert count_parameters(model)["total"] == r.params
        again = perplexity(model, s.work.tokenizer, "wikitext2", "test", window=64, max_tokens=512)
        assert again["perplexity"] == pytest.approx(r.perplexity["perplexity"], rel=1e-5)
    steps = {r.method: r.steps for r in c.results}
    assert steps["adaptive"] > 1 and all(steps[m] == 1 for m in ("llm-pruner", "flap", "shortgpt", "wanda-sp"))
    short = next(r for r in c.results if r.method == "shortgpt")
    assert None in short.widths and short.layers == 3 - short.widths.count(None)
    assert all(None not in r.widths for r in c.results if r.method != "shortgpt")

    # the table and the figures say what the results say
    table = c.table()
    assert list(table["method"]) == ["original", *SIX]
    assert list(table["parameters"])[1:] == [r.params for r in c.results]
    assert list(table["quick perplexity"])[0] == round(ref_ppl, 2)
    fig = viz.methods_trajectory(c.trajectories())
    assert [t.name for t in fig.data] == list(SIX)
    assert list(fig.data[4].x) == [p0 / 1e6, short.params / 1e6]
    widths = viz.method_widths(c.layers.original, c.widths())
    attn = widths.data[0]
    assert list(attn.x) == list(SIX)
    col = list(SIX).index("shortgpt")
    for li, w in enumerate(short.widths):
        assert attn.z[li][col] == (0.0 if w is None else w["num_kv_heads"] / 4)
        assert attn.text[li][col] == ("✕" if w is None else str(w["num_kv_heads"]))
    diff = viz.method_width_difference(c.layers.original, c.widths())
    assert list(diff.data[1].x) == [m for m in SIX if m != "adaptive"]
    adaptive = c.results[0].widths
    for li in range(3):
        w, a = short.widths[li], adaptive[li]
        mine = 0.0 if w is None else w["intermediate_size"] / 96
        assert diff.data[1].z[li][col - 1] == pytest.approx(mine - a["intermediate_size"] / 96)


def test_the_page_shows_the_comparison():
    s = tiny_session()
    page = SimpleNamespace(**{k: k for k in ("cmp_traj", "cmp_widths", "cmp_diff", "cmp_table", "cmp_note",
                                             "cmp_files")})
    empty = compare_views(page, s)
    assert "No comparison yet" in empty["cmp_note"] and empty["cmp_files"] is None
    run(s, ["uniform", "shortgpt"])
    out = compare_views(page, s)
    assert [t.name for t in out["cmp_traj"].data] == ["uniform", "shortgpt"]
    assert "wikitext2 test, 64-token windows, first 512 tokens" in out["cmp_note"]
    assert "not measured" in out["cmp_note"] and "Target 85%" in out["cmp_note"]
    assert len(out["cmp_files"]) == 2 and out["cmp_table"].shape[0] == 3
    assert "adaptive" in out["cmp_diff"].layout.annotations[0].text  # no reference: the figure says what to add


def test_cancel_keeps_the_finished_methods_and_frees_the_copy():
    s = tiny_session()
    before = state(s.model)
    seen = []
    for u in s.compare.run(["flap", "adaptive", "shortgpt"], prompt="The"):
        seen.append(u.message)
        if "adaptive step 1" in u.message:
            s.cancel()
    c = s.compare
    assert [(r.method, r.status) for r in c.results] == [("flap", "done"), ("adaptive", "cancelled")]
    assert "cancelled" in seen[-1] and len(c.downloads()) == 1 and c.downloads()[0].endswith("flap-85pct-0.85.zip")
    assert c.table()["status"].iloc[2].startswith("cancelled")
    assert same_state(before, state(s.model)) and not s.busy
    gc.collect()
    assert all(ref() is None for ref in c.model_refs)


def test_an_error_in_one_method_is_reported_and_the_others_run(monkeypatch):
    import studio.compare as compare

    real = compare.Pruner

    class Failing(real):
        def step(self, *args, **kwargs):
            if self.config.method == "llm-pruner":
                raise RuntimeError("boom")
            return super().step(*args, **kwargs)

    monkeypatch.setattr(compare, "Pruner", Failing)
    s = tiny_session()
    updates = run(s, ["llm-pruner", "custom", "wanda-sp"])
    status = {r.method: (r.status, r.message) for r in s.compare.results}
    assert status["llm-pruner"] == ("failed", "RuntimeError: boom")
    assert status["custom"][0] == "failed" and "custom table" in status["custom"][1]  # no per-layer table given
    assert status["wanda-sp"][0] == "done"
    assert "failed: llm-pruner, custom" in updates[-1].message
    assert [p.split("/")[-1] for p in s.compare.downloads()] == ["wanda-sp-85pct-0.85.zip"]
    gc.collect()
    assert all(ref() is None for ref in s.compare.model_refs)  # the failed method's copy is gone too


def test_zero_shot_average_per_method(tmp_path, monkeypatch):
    pytest.importorskip("pruner.evaluation")
    from pruner.evaluation import evaluate

    monkeypatch.setenv("ADAPT_PRUNER_CACHE", str(tmp_path / "cache"))  # keep the results cache out of the user's
    s = tiny_session()
    run(s, ["shortgpt"], zero_shot_tasks=["arc_easy"], zero_shot_limit=4)
    r = s.compare.results[0]
    assert 0 <= r.zero_shot["value"] <= 1 and r.zero_shot["tasks"] == ["arc_easy"]
    assert s.compare.reference.zero_shot is not None
    again = evaluate(reload(r.zip_path, tmp_path), s.work.tokenizer, ["arc_easy"], 4, cache=False)
    assert again["average"]["value"] == pytest.approx(r.zero_shot["value"])
    assert s.compare.table()["zero-shot avg"].iloc[1] == round(r.zero_shot["value"], 3)


def test_a_comparison_holds_one_copy_claimed_from_the_pool():
    pool = SessionPool(max_private=2)
    original = tiny_model()
    a, b = (StudioSession.from_shared(original, tiny_tokenizer(), settings=tiny_settings()) for _ in range(2))
    pool.add("a", a)
    pool.add("b", b)
    a.schedule.step()  # a holds its private copy
    counts = []
    for u in b.compare.run(["flap", "uniform"], prompt="The"):
        counts.append(pool.stats()["private_copies"])
        if "pruning a copy" in u.message:  # the next copy is about to be made: the last one must be gone
            gc.collect()
            assert all(ref() is None for ref in b.compare.model_refs)
    assert set(counts) == {2} and pool.stats()["private_copies"] == 1  # a's copy + b's comparison, then a's
    small = SessionPool(max_private=1)
    small.add("a", a)
    small.add("b", b)
    with pytest.raises(SessionError, match="studio is full"):
        run(b, ["flap"])
    assert not b.busy and b.work.extra_models == 0 and len(b.compare.results) == 2  # the last results stay


def test_unknown_or_no_methods_are_refused():
    s = tiny_session()
    with pytest.raises(SessionError, match="at least one method"):
        run(s, [])
    with pytest.raises(SessionError, match="Unknown method"):
        run(s, ["no-such-method"])


# ---------------------------------------------------------------- the studio with the baselines


def page_namespace():
    names = ("status summary layer_fig unit_fig alloc_fig alloc_md arch_fig traj_fig loss_fig train_cost metrics "
             "gen_orig gen_pruned cost n_steps whatif_md").split()
    return SimpleNamespace(**{k: k for k in names})


def test_a_shortgpt_step_shows_its_removed_layers_everywhere():
    s = tiny_session()
    s.schedule.step()  # an adaptive step first: the history then spans a change of depth
    s.configure(tiny_settings(method="shortgpt", target=0.6))
    s.schedule.measure()
    assert "whole layers only" in page_views(page_namespace(), s)["unit_fig"].layout.annotations[0].text
    plan = s.schedule.preview()  # ShortGPT's plan has fewer layers than the model: one row per original layer
    assert len(plan.params) == 1 and all(len(row) == 3 for row in plan.attention + plan.mlp + plan.allocated)
    rec = s.schedule.step()
    gone = rec.removed_original_layers
    assert gone and len(layer_widths(s.model)) == 3 - len(gone)
    assert plan.widths[0] == rec.widths  # the preview was the step
    for li in gone:
        assert plan.attention[0][li] == plan.mlp[0][li] == plan.allocated[0][li] == 1.0
    alloc, attn, mlp = s.schedule.sparsity_history()
    assert len(attn) == 2 and all(len(row) == 3 for row in alloc + attn + mlp)
    assert all(attn[1][li] == mlp[1][li] == 1.0 for li in gone)
    assert all(attn[0][li] < 1 for li in gone)  # the first step still had every layer

    s.configure(tiny_settings(method="adaptive", target=0.5))
    s.schedule.measure()  # on the shallower model
    labels, cols = s.schedule.importance_columns()
    assert len(labels) == 3 and all(len(c) == 3 for c in cols)
    assert all(cols[2][li] is None and cols[1][li] is not None for li in gone)
    views = page_views(page_namespace(), s)
    unit = views["unit_fig"].data[0]  # KV groups: an empty row for a removed layer
    assert len(unit.z) == 3 and all(all(v is None for v in unit.z[li]) for li in gone)
    arch = views["arch_fig"]
    assert list(arch.data[0].y) == [0, 1, 2] and all(arch.data[0].x[li] == 0 and arch.data[1].x[li] == 4 for li in gone)
    assert "removed whole" in arch.layout.title.text
    assert len(viz.layer_importance_heatmap(cols, labels).data[0].z) == 3


def test_every_criterion_and_method_has_a_cost_estimate():
    s = tiny_session()
    for method in METHODS:
        for criterion in CRITERIA:
            settings = tiny_settings(method=method, criterion=criterion, custom=[0.1] * 3)
            sec, _ = s.costs.importance_seconds(settings)
            assert sec > 0
    assert s.costs.criterion_of(tiny_settings(method="flap")) == "fluctuation"
    assert s.costs.criterion_of(tiny_settings(method="wanda-sp")) == "wanda-sp"
    assert s.costs.criterion_of(tiny_settings(method="llm-pruner", criterion="magnitude")) == "taylor"
    assert s.costs.criterion_of(tiny_settings(method="shortgpt")) == "layers"
    assert s.costs.criterion_of(tiny_settings(criterion="activation")) == "activation"
    # the page says that a baseline's own criterion replaces the radio's, instead of ignoring the radio silently
    md = s.costs.prune_markdown(tiny_settings(method="flap", criterion="magnitude"))
    assert "with fluctuation" in md and "do not apply" in md
    assert "do not apply" not in s.costs.prune_markdown(tiny_settings())
    s.configure(tiny_settings(method="shortgpt"))
    s.schedule.measure()  # measured: the session's own rate for the layers-only pass
    assert "measured in this session" in s.costs.importance_seconds(s.settings)[1]


def test_adapt_accel_refuses_a_baseline_before_copying_anything():
    s = shared_session()
    with pytest.raises(SessionError, match="one-shot baseline") as err:
        list(s.training.run_accel(tiny_settings(method="flap")))
    assert "Train" in str(err.value) and not s.work.private and not s.busy


def test_the_uniform_baseline_keeps_the_radio_criterion(monkeypatch):
    import studio.quality as quality

    seen = []
    real = quality.Pruner

    def spy(model, tok, cfg, **kw):
        seen.append((cfg.method, cfg.criterion))
        return real(model, tok, cfg, **kw)

    monkeypatch.setattr(quality, "Pruner", spy)
    s = tiny_session(target=0.9)
    settings = tiny_settings(target=0.9, method="flap", criterion="magnitude")
    s.configure(settings)  # the pruner's config now holds flap's own criterion
    list(s.quality.run_uniform_baseline(settings))
    assert seen == [("uniform", "magnitude")]


def test_every_registered_method_has_its_explanation_colour_and_note():
    """Adding a method under pruner/methods/ asks for its explanation and colour in the studio (and a baseline's
    note names its own score): this fails until they are written."""
    from pruner.config import BASELINES, METHODS
    from studio import text
    from visualizations.compare import METHOD_COLORS

    assert set(METHODS) <= set(text.METHOD_EXPLAIN)
    assert set(METHODS) <= set(METHOD_COLORS) and len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    for m in BASELINES:
        assert m in text.baseline_note(m)


def test_on_a_gpu_a_cost_is_unknown_until_measured_not_an_invented_number():
    import math
    from types import SimpleNamespace

    import torch

    from studio.costs import Costs

    work = SimpleNamespace(device=torch.device("cuda"), original_total=134_515_008)
    costs, settings = Costs(work), tiny_settings()
    sec, source = costs.importance_seconds(settings)
    assert math.isnan(sec) and f"{sec:.0f}" == "?" and "unknown until this session has measured it" in source
    assert f"{costs.train_seconds(4096)[0] * 2 + 1:.1f}" == "?"
    costs.observe("taylor", 4096, 2.0)  # what the session measured replaces the unknown
    sec, source = costs.importance_seconds(settings)
    assert f"{sec:.0f}" == f"{4 * 32 / 2048.0:.0f}" and "measured in this session" in source
