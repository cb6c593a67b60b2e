"""The memory plan (pruner.training.memory_plan, ``adapt-pruner plan-memory``): exact parameter counts from a config
alone, predictions within 15 % of the peaks measured on the 2-core CPU (benchmarks/results/*.json), and how each
setting moves each phase, on tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pruner
from pruner.cli.main import main
from pruner.config import PruneConfig
from pruner.errors import ConfigError, ModelLoadError
from pruner.model.structure import LayerWidths, count_parameters
from pruner.testing import tiny_model, uneven_model
from pruner.training.memory_plan import (
    NAMED_SHAPES,
    model_shape,
    named_config,
    parse_bytes,
    plan_memory,
    shape_of_config,
)
from pruner.training.train import TrainConfig

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
SCALE = json.loads((RESULTS / "scale_cpu.json").read_text())["models"]
MEASURED = ["default", "qwen2.5-0.5b", "gemma3-270m"]


def close(predicted: int, measured: int, tol: float = 0.15) -> bool:
    return abs(predicted - measured) <= tol * measured


@pytest.mark.parametrize("name", MEASURED)
def test_named_shapes_count_what_the_measured_runs_loaded(name):
    shape, m = model_shape(name), SCALE[name]
    assert shape.params_total == m["architecture"]["params"]["total"]
    assert shape.params_prunable * 4 == m["importance"]["memory"]["scored_gradient_bytes"]
    assert (shape.layers, shape.hidden_size, shape.vocab_size) == (
        m["architecture"]["layers"], m["architecture"]["hidden_size"], m["architecture"]["vocab_size"])


@pytest.mark.parametrize("name", MEASURED)
def test_the_importance_peak_is_within_15_percent_of_the_measured_one(name):
    m = SCALE[name]
    mem, s = m["importance"]["memory"], m["settings"]
    cfg = PruneConfig(n_windows=s["n_windows"], window=s["window"], batch_size=s["batch_size"])
    ph = plan_memory(model_shape(name), "float32", "cpu", "100GB", prune=cfg).phase("importance")
    assert close(ph.bytes, mem["peak_bytes"])  # the process's peak RSS during the pass
    baseline = sum(ph.parts[k] for k in ("runtime", "tokenizer", "data and scratch", "weights"))
    assert close(ph.bytes - baseline, mem["pass_extra_bytes"])  # what the pass adds to the loaded model


def test_the_training_peak_is_within_15_percent_of_the_measured_one():
    """Adapt-Accel one-shot on the default model (pruned to 70 %, then trained), benchmarks/results/accel_compare."""
    run = json.loads((RESULTS / "accel_compare_cpu.json").read_text())["runs"]["oneshot"]["report"]
    stage, t = run["stages"][0], run["config"]["train"]
    trained = shape_of_config(named_config("default"), "pruned", [LayerWidths(**w) for w in stage["prune"]["widths"]])
    assert trained.params_total == stage["prune"]["params"]
    plan = plan_memory(model_shape("default"), "float32", "cpu", "100GB", trained=trained,
                       train=TrainConfig(seq_len=t["seq_len"], batch_size=t["batch_size"]))
    assert close(plan.phase("training").bytes, stage["train"]["peak_memory_bytes"])


def test_the_larger_named_shapes_count_their_published_parameters():
    counts = {"qwen2.5-1.5b": 1_543_714_304, "llama-3.1-8b": 8_030_261_248, "qwen2.5-7b": 7_615_616_512,
              "qwen2.5-coder-1.5b": 1_777_088_000}  # the last: the tensors of its GGUF header, untied head
    assert {n: model_shape(n).params_total for n in counts} == counts


def test_a_folder_and_a_pruned_folder_count_exactly(tmp_path, tiny_tokenizer):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "plain")
    assert model_shape(str(tmp_path / "plain")).params_total == count_parameters(model)["total"]
    cut = uneven_model("llama")
    pruner.save_pruned(cut, tiny_tokenizer, tmp_path / "cut")
    shape = model_shape(str(tmp_path / "cut"))
    assert shape.params_total == count_parameters(cut)["total"]
    assert shape.intermediate_total == sum(layer.mlp.down_proj.in_features for layer in cut.model.layers)


def tiny_shape():
    return shape_of_config(tiny_model("llama").config, "tiny")


def test_each_setting_moves_its_phase():
    shape = tiny_shape()
    base = plan_memory(shape, "float32", "cpu", "1GB")
    half = plan_memory(shape, "bfloat16", "cpu", "1GB")
    assert half.phase("load").parts["weights"] * 2 == base.phase("load").parts["weights"]
    assert half.phase("importance").parts["scored gradients"] * 2 == base.phase("importance").parts["scored gradients"]
    longer = plan_memory(shape, "float32", "cpu", "1GB", prune=PruneConfig(window=256))
    assert longer.phase("importance").parts["checkpointed layer inputs"] == \
        2 * base.phase("importance").parts["checkpointed layer inputs"]
    assert "checkpointed layer inputs" not in plan_memory(shape, prune=PruneConfig(checkpoint=False)).phase(
        "importance").parts
    history = plan_memory(shape, "float32", "cpu", "1GB", keep_history=3)
    assert history.phase("surgery").bytes > base.phase("surgery").bytes == sum(base.phase("surgery").parts.values())
    sharded = plan_memory(shape, "float32", "cpu", "1GB", processes=2)
    key = "weights, gradients, AdamW moments"
    assert sharded.phase("training").parts[key] * 2 == base.phase("training").parts[key]
    fsdp = plan_memory(shape, "bfloat16", "cuda:0", "1GB", processes=2).phase("training")  # accelerate upcasts
    assert fsdp.parts[key] == 4 * shape.params_total * 4 // 2 and fsdp.host_bytes == 2 * shape.params_total * 2


def test_fits_follows_the_capacity_and_cuda_keeps_the_snapshot_on_the_host():
    shape = tiny_shape()
    assert all(ph.fits for ph in plan_memory(shape, "float32", "cpu", "100GB").phases)
    assert not any(ph.fits for ph in plan_memory(shape, "float32", "cpu", "1MB").phases)
    gpu = plan_memory(shape, "bfloat16", "cuda:0", "24GB")
    assert gpu.phase("training").host_bytes == shape.params_total * 2
    assert "stage snapshot" not in gpu.phase("training").parts


def test_sizes_and_bad_input():
    assert parse_bytes("24GB") == 24 * 10**9 and parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("512MB") == 512e6
    with pytest.raises(ConfigError):
        parse_bytes("lots")
    with pytest.raises(ModelLoadError):
        model_shape("./no-such-folder")
    assert set(MEASURED) <= set(NAMED_SHAPES)


def test_the_cli_prints_fits_or_not_per_phase(capsys):
    assert main(["plan-memory", "--model", "default", "--device", "cpu", "--device-memory", "100GB"]) == 0
    out = capsys.readouterr().out
    assert out.count("fits, needs about") == 4 and "SmolLM2-135M" in out
    assert main(["plan-memory", "--model", "llama-3.1-8b", "--dtype", "bfloat16", "--device", "cuda:0",
                 "--device-memory", "24GB"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["load", "fits,", "needs"]  # 16 GB of weights fit in 24 GB
    fit = {line.split()[0]: "does not fit" not in line for line in lines[1:]}
    # the surgery cuts a layer at a time: weights and one layer's new parts; importance and training do not fit
    assert fit == {"load": True, "importance": False, "surgery": True, "training": False}
    assert main(["plan-memory", "--model", "default", "--json", "--device-memory", "100GB"]) == 0
    assert [ph["name"] for ph in json.loads(capsys.readouterr().out)["phases"]] == [
        "load", "importance", "surgery", "training"]
