"""Every figure function: the plotted data equals the input, axes and labels are right."""

from __future__ import annotations

import numpy as np
import pytest

import visualizations as viz
from pruner.model.structure import LayerWidths


def test_layer_importance_heatmap_is_layers_by_steps():
    cols = [[0.1, 0.5, 0.2], [0.15, 0.4, 0.3]]  # two measurements of three layers
    fig = viz.layer_importance_heatmap(cols, ["step 1", "step 2"])
    hm = fig.data[0]
    assert [list(r) for r in hm.z] == [[0.1, 0.15], [0.5, 0.4], [0.2, 0.3]]
    assert list(hm.x) == ["step 1", "step 2"] and list(hm.y) == [0, 1, 2]
    assert fig.layout.yaxis.title.text == "decoder layer" and fig.layout.yaxis.autorange == "reversed"
    assert "cos" in fig.layout.title.text
    assert list(viz.layer_importance_heatmap(cols).data[0].x) == ["step 1", "step 2"]
    many = [[0.9] + [0.1 + 0.01 * i for i in range(29)]]  # an outlier layer saturates the colour scale
    hm = viz.layer_importance_heatmap(many).data[0]
    assert hm.zmax < 0.9 and hm.zmin == 0.1 and [r[0] for r in hm.z] == many[0]
    norm = viz.layer_importance_heatmap([[-1.0, 1.0, 0.0]], normalised=True)
    assert norm.data[0].zmid == 0 and "normalised" in norm.layout.title.text
    with pytest.raises(ValueError):
        viz.layer_importance_heatmap(cols, ["only one"])


def test_layer_importance_reads_as_one_minus_cos_for_a_class():
    fig = viz.layer_importance_heatmap([[-0.98, -0.75, None]], one_minus_cos=True)
    z = [r[0] for r in fig.data[0].z]
    assert z[0] == pytest.approx(0.02) and z[1] == pytest.approx(0.25) and z[2] is None
    assert "1 − cos" in fig.layout.title.text and "leaves its input unchanged" in fig.layout.title.text
    assert fig.data[0].colorbar.title.text == "1 − cos"


def test_empty_figures_say_what_to_do():
    assert len(viz.layer_importance_heatmap([]).data) == 0
    assert "Measure importance" in viz.layer_importance_heatmap([]).layout.annotations[0].text
    assert "Measure importance" in viz.unit_importance_heatmap([], []).layout.annotations[0].text
    assert "prune step" in viz.trajectory_figure([], []).layout.annotations[0].text
    assert len(viz.allocated_sparsity_heatmap([], []).data) == 0
    assert len(viz.loss_curve([], []).data) == 0


def test_bin_scores_and_unit_matrix():
    assert viz.bin_scores([1, 5, 3, 7], 2) == [6.0, 2.0]  # ranked high → low, then averaged
    assert viz.bin_scores([1, 5, 3, 7], 2, sort=False) == [3.0, 5.0]
    assert viz.bin_scores([2.0], 4) == [2.0]
    m = viz.unit_score_matrix([[1.0, 3.0], [2.0, 2.0, 2.0]])  # relative to each layer's mean, padded
    assert m == [[0.5, 1.5, None], [1.0, 1.0, 1.0]]
    assert viz.unit_score_matrix([[1.0, 3.0]], relative=False) == [[1.0, 3.0]]


def test_unit_importance_heatmap_groups_and_binned_channels():
    groups = [[1.0, 3.0], [4.0, 4.0]]
    channels = [list(np.arange(1, 9, dtype=float)), list(np.arange(1, 5, dtype=float))]
    fig = viz.unit_importance_heatmap(groups, channels, n_bins=4, note="measured before step 2")
    g, c = fig.data
    assert [list(r) for r in g.z] == viz.unit_score_matrix(groups)
    assert [list(r) for r in c.z] == viz.unit_score_matrix(channels, 4)
    assert list(g.x) == ["g0", "g1"] and list(c.x) == ["b1", "b2", "b3", "b4"] and list(g.y) == [0, 1]
    assert c.z[0][0] > c.z[0][-1]  # ranked high → low
    assert not fig.layout.xaxis.title.text and "ranked high → low" in fig.layout.xaxis2.title.text  # no overlap
    assert "g0, g1, …: KV groups" in fig.layout.title.text
    assert "taylor" in fig.layout.title.text and "step 2" in fig.layout.title.text
    with pytest.raises(ValueError):
        viz.unit_importance_heatmap(groups, channels[:1])


def test_allocated_sparsity_heatmap_attention_and_mlp():
    attn = [[0.0, 1 / 3], [1 / 3, 1 / 3], [1 / 3, 2 / 3]]  # 3 steps × 2 layers
    mlp = [[0.05, 0.1], [0.1, 0.2], [0.15, 0.3]]
    alloc = [[0.05, 0.1], [0.1, 0.2], [0.15, 0.31]]
    fig = viz.allocated_sparsity_heatmap(attn, mlp, ["1", "2", "3"], n_done=1, allocated=alloc)
    a, m = fig.data
    assert [list(r) for r in a.z] == [[0.0, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 2 / 3]]
    assert [list(r) for r in m.z] == [[0.05, 0.1, 0.15], [0.1, 0.2, 0.3]]
    assert np.allclose(np.array(m.customdata, dtype=float), np.array(alloc).T)
    assert a.zmin == 0 and a.zmax == 1 and list(a.x) == ["1", "2", "3"]
    assert len(fig.layout.shapes) == 2 and fig.layout.shapes[0].x0 == 0.5  # taken │ preview separator
    assert "steps 1–1 taken, 2–3 previewed" in fig.layout.title.text
    titles = [an.text for an in fig.layout.annotations]
    assert any("attention" in t for t in titles) and any("MLP" in t for t in titles)
    assert fig.layout.yaxis.title.text == "decoder layer"
    assert len(viz.allocated_sparsity_heatmap(attn, mlp, n_done=3).layout.shapes) == 0
    with pytest.raises(ValueError):
        viz.allocated_sparsity_heatmap(attn, mlp[:2])


def test_architecture_figure_kept_and_removed():
    orig = [LayerWidths(9, 3, 1536), LayerWidths(9, 3, 1536)]
    cur = [{"num_heads": 6, "num_kv_heads": 2, "intermediate_size": 1000}, LayerWidths(9, 3, 1400)]
    fig = viz.architecture_figure(orig, cur)
    kept_g, removed_g, kept_c, removed_c = fig.data
    assert list(kept_g.x) == [2, 3] and list(removed_g.x) == [1, 0]
    assert list(kept_c.x) == [1000, 1400] and list(removed_c.x) == [536, 136]
    assert list(kept_g.y) == [0, 1] and fig.layout.barmode == "stack"
    assert fig.layout.xaxis.title.text == "KV groups" and fig.layout.xaxis2.title.text == "channels"
    with pytest.raises(ValueError):
        viz.architecture_figure(orig, cur[:1])


def test_trajectory_figure_with_uniform_overlay():
    fig = viz.trajectory_figure([134_000_000, 120_000_000], [18.0, 25.0], "perplexity (wikitext2 test, 256)",
                                [134_000_000, 120_000_000], [18.0, 31.0], steps=[0, 1])
    ada, uni = fig.data
    assert list(ada.x) == [134.0, 120.0] and list(ada.y) == [18.0, 25.0] and list(ada.text) == ["0", "1"]
    assert list(uni.x) == [134.0, 120.0] and list(uni.y) == [18.0, 31.0] and uni.name == "uniform baseline"
    assert fig.layout.xaxis.title.text == "parameters (millions)"
    assert "wikitext2 test, 256" in fig.layout.title.text and fig.layout.yaxis.type == "log"
    assert fig.layout.yaxis.title.text.startswith("perplexity")
    assert len(viz.trajectory_figure([1_000_000], [3.0]).data) == 1
    with pytest.raises(ValueError):
        viz.trajectory_figure([1, 2], [3.0])


def test_loss_curve():
    fig = viz.loss_curve([1, 2, 3], [3.0, 2.5, 2.2], stage_starts=[2])
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[0].y) == [3.0, 2.5, 2.2]
    assert fig.layout.xaxis.title.text == "optimiser step" and len(fig.layout.shapes) == 1


def test_trajectory_draws_adapt_accel_as_a_saw_tooth_and_training_rounds_as_drops():
    rec = [{"label": "train 1", "params": 120_000_000, "perplexity_before": 40.0, "perplexity_after": 30.0,
            "stage": None},
           {"label": "stage 1", "params": 110_000_000, "perplexity_before": 45.0, "perplexity_after": 33.0, "stage": 1},
           {"label": "stage 2", "params": 100_000_000, "perplexity_before": 50.0, "perplexity_after": 36.0, "stage": 2}]
    fig = viz.trajectory_figure([134_000_000, 120_000_000], [26.0, 40.0], recovery=rec,
                                accel_start=(120_000_000, 30.0))
    by_name = {t.name: t for t in fig.data}
    accel = by_name["Adapt-Accel (prune ↑, train ↓)"]
    assert list(accel.y) == [30.0, 45.0, 33.0, 50.0, 36.0] and list(accel.x) == [120.0, 110.0, 110.0, 100.0, 100.0]
    drop = by_name["recovery training"]
    assert list(drop.x) == [120.0, 120.0] and list(drop.y) == [40.0, 30.0]
    only_training = viz.trajectory_figure([], [], recovery=rec[:1])  # training without pruning still plots
    assert [t.name for t in only_training.data] == ["recovery training"]


def test_accuracy_bars_group_models_and_name_metrics():
    rows = [{"model": m, "task": t, "metric": met, "value": v, "stderr": 0.02}
            for m, off in (("original", 0.0), ("pruned", -0.05), ("uniform baseline", -0.1))
            for t, met, v in (("ARC-Easy", "acc_norm", 0.5 + off), ("WinoGrande", "acc", 0.52 + off))]
    rows += [{"model": m, "task": "Average", "metric": "acc_norm/acc", "value": 0.5, "stderr": 0.014}
             for m in ("original", "pruned", "uniform baseline")]
    fig = viz.accuracy_bars(rows)
    assert [t.name for t in fig.data] == ["original", "pruned", "uniform baseline"]
    assert fig.layout.barmode == "group"
    x = list(fig.data[1].x)
    assert x[0].startswith("ARC-Easy") and "acc_norm" in x[0] and "acc" in x[1] and x[-1].startswith("Average")
    assert list(fig.data[1].y) == pytest.approx([0.45, 0.47, 0.5])
    assert list(fig.data[0].error_y.array) == [0.02, 0.02, 0.014]  # the average's standard error
    unknown = viz.accuracy_bars([{**rows[0], "stderr": None}, {**rows[1], "stderr": float("nan")}])
    assert list(unknown.data[0].error_y.array) == [None, None]  # not known: no error bar
    assert "Run an evaluation" in viz.accuracy_bars([]).layout.annotations[0].text


# ---------------------------------------------------------------- layers removed whole, and comparing methods

W = {"num_heads": 8, "num_kv_heads": 4, "intermediate_size": 100}


def w(kv: int, ch: int) -> dict:
    return {"num_heads": 2 * kv, "num_kv_heads": kv, "intermediate_size": ch}


def test_removed_layers_stay_rows_in_the_heatmaps_and_the_architecture():
    fig = viz.layer_importance_heatmap([[0.1, 0.5, 0.2], [0.2, None, 0.3]])  # layer 1 gone before step 2
    assert [list(r) for r in fig.data[0].z] == [[0.1, 0.2], [0.5, None], [0.2, 0.3]]
    arch = viz.architecture_figure([W, W, W], [w(2, 60), None, W])
    kept_g, removed_g, kept_c, removed_c = arch.data
    assert list(kept_g.x) == [2, 0, 4] and list(removed_g.x) == [2, 4, 0]
    assert list(kept_c.x) == [60, 0, 100] and list(removed_c.x) == [40, 100, 0]
    assert "depth pruning" in removed_g.customdata[1] and removed_g.customdata[0] == ""
    assert "layers 1 removed whole" in arch.layout.title.text
    unit = viz.unit_importance_heatmap([[1.0, 3.0], [], [2.0, 2.0]], [[1.0, 2.0], [], [3.0, 1.0]], n_bins=2)
    assert list(unit.data[0].z[1]) == [None, None]  # an empty row
    layers_only = viz.unit_importance_heatmap([], [], criterion=None, note="measured before step 2")
    assert len(layers_only.data) == 0 and "whole layers only" in layers_only.layout.annotations[0].text


def test_methods_trajectory_one_line_per_method():
    fig = viz.methods_trajectory({"adaptive": ([100_000, 90_000, 80_000], [10.0, 12.0, 15.0]),
                                  "shortgpt": ([100_000, 75_000], [10.0, 40.0])}, "wikitext2 test, 64-token windows")
    ada, short = fig.data
    assert ada.name == "adaptive" and list(ada.x) == [0.1, 0.09, 0.08] and list(ada.y) == [10.0, 12.0, 15.0]
    assert short.name == "shortgpt" and list(short.x) == [0.1, 0.075] and ada.line.color != short.line.color
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.autorange == "reversed"
    assert "64-token windows" in fig.layout.title.text
    assert "Run a comparison" in viz.methods_trajectory({}).layout.annotations[0].text
    with pytest.raises(ValueError):
        viz.methods_trajectory({"flap": ([1, 2], [3.0])})


def test_method_widths_side_by_side_and_the_difference_from_adaptive():
    original = [W, W, W]
    per = {"adaptive": [w(4, 90), w(3, 50), w(4, 100)], "shortgpt": [W, None, W], "flap": [w(2, 80), w(4, 70), W]}
    fig = viz.method_widths(original, per)
    attn, mlp = fig.data
    assert list(attn.x) == ["adaptive", "shortgpt", "flap"] and list(attn.y) == [0, 1, 2]
    assert [list(r) for r in attn.z] == [[1.0, 1.0, 0.5], [0.75, 0.0, 1.0], [1.0, 1.0, 1.0]]
    assert [list(r) for r in mlp.z] == [[0.9, 1.0, 0.8], [0.5, 0.0, 0.7], [1.0, 1.0, 1.0]]
    assert [list(r) for r in mlp.text][1] == ["50", "✕", "70"] and attn.zmin == 0 and attn.zmax == 1
    assert "removed whole (shortgpt)" in fig.layout.title.text
    diff = viz.method_width_difference(original, per)
    d_attn, d_mlp = diff.data
    assert list(d_attn.x) == ["shortgpt", "flap"] and d_attn.zmid is None and d_attn.zmin == -1
    assert np.allclose(np.array(d_mlp.z, dtype=float), [[0.1, -0.1], [-0.5, 0.2], [0.0, 0.0]])
    assert np.allclose(np.array(d_attn.z, dtype=float), [[0.0, -0.5], [-0.75, 0.25], [0.0, 0.0]])
    assert "Include adaptive" in viz.method_width_difference(original, {"flap": per["flap"]}).layout.annotations[0].text
    assert "Add another method" in viz.method_width_difference(original, {"adaptive": per["adaptive"]}).layout.annotations[0].text
    assert "Run a comparison" in viz.method_widths(original, {}).layout.annotations[0].text
    assert viz.kept_share(original, per["shortgpt"], "num_kv_heads") == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        viz.method_widths(original[:2], per)
