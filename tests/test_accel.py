"""Adapt-Accel (pruner.training.accel): schedule, stages, checkpoints, exact resume, cancel — on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from pruner.evaluation.perplexity import PerplexityConfig
from pruner.model.structure import count_parameters, geometry, layer_widths
from pruner.pruning.pruner import PruneConfig
from pruner.testing import tiny_tokenizer
from pruner.training.accel import (
    AccelConfig,
    event_dict,
    iter_accel,
    latest_checkpoint,
    load_checkpoint,
    run_accel,
    stage_plan,
    token_shares,
)
from pruner.training.train import TrainConfig, make_accelerator
from tests.test_train import tiny_llama


def tiny_cfg(**kw) -> AccelConfig:
    base = {
        "target": 0.75, "stages": 3, "tokens": 6 * 64,
        "prune": PruneConfig(n_windows=4, window=32, step=0.1, calibration="stories"),
        "train": TrainConfig(lr=3e-3, seq_len=32, batch_size=2, data="stories"),
        "eval": PerplexityConfig(window=64, max_tokens=512),
    }
    base.update(kw)
    return AccelConfig(**base)


def test_token_shares_and_stage_targets():
    assert token_shares(4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert token_shares(4, "constant") == [0.25] * 4
    cfg = AccelConfig(target=0.7, stages=5, tokens=100_000, train=TrainConfig(seq_len=100, batch_size=10))
    plan = stage_plan(cfg, 1000, 1000)
    assert [p["target_params"] for p in plan] == [940, 880, 820, 760, 700]
    assert [p["steps"] for p in plan] == [7, 13, 20, 27, 33]  # 2k/(N(N+1)) of 100 steps, rounded
    one = stage_plan(AccelConfig(target=0.7, mode="oneshot", tokens=100_000,
                                 train=TrainConfig(seq_len=100, batch_size=10)), 1000, 1000)
    assert len(one) == 1 and one[0]["target_params"] == 700 and one[0]["steps"] == 100
    with pytest.raises(ValueError):
        stage_plan(AccelConfig(target=0.7), 600, 1000)  # already below the target


def test_accel_prunes_in_stages_and_trains_between():
    tok = tiny_tokenizer()
    model = tiny_llama()
    p0 = count_parameters(model)["total"]
    group = geometry(model).params_per_group  # the coarsest unit the pruner removes
    cfg = tiny_cfg()
    events = [event_dict(e) for e in iter_accel(model, tok, cfg, accelerator=make_accelerator("no", cpu=True))]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("pruned") == 3 and kinds.count("trained") == 3 and "prune_step" in kinds
    pruned = [e for e in events if e["event"] == "pruned"]
    sizes = [e["params"] for e in pruned]
    assert sizes[0] > sizes[1] > sizes[2]
    plan = events[0]["plan"]
    for e, st in zip(pruned, plan, strict=True):  # each stage lands on its target within one KV group
        assert abs(e["params"] - st["target_params"]) <= group + 0.001 * p0
    report = events[-1]["report"]
    assert abs(report["final"]["params"] - 0.75 * p0) <= group + 0.001 * p0
    assert count_parameters(model)["total"] == report["final"]["params"]
    steps = [s["train"]["steps"] for s in report["stages"]]
    assert steps == [p["steps"] for p in plan] and steps[0] <= steps[1] <= steps[2]
    # one WSD schedule across stages: the learning rate at each global step
    lrs = [lr for s in report["stages"] for lr in s["train"]["lrs"]]
    assert len(lrs) == report["train_steps"] == sum(steps)
    assert lrs[-1] < lrs[len(lrs) // 2]
    for s in report["stages"]:
        assert s["prune"]["perplexity"]["dataset"] == "wikitext2" and s["prune"]["perplexity"]["window"] == 64
        assert s["train"]["perplexity"]["perplexity"] > 0
    json.dumps(report)  # JSON-serialisable


def test_oneshot_and_uniform_modes():
    tok = tiny_tokenizer()
    m1 = tiny_llama()
    r1 = run_accel(m1, tok, tiny_cfg(mode="oneshot", eval_initial=False), accelerator=make_accelerator("no", cpu=True))
    assert len(r1["stages"]) == 1 and r1["stages"][0]["train"]["steps"] == 6
    assert abs(r1["final"]["fraction"] - 0.75) <= 0.035  # one KV group of the tiny model is ~3 %
    m2 = tiny_llama()
    cfg = tiny_cfg(stages=2, eval_initial=False)
    cfg.prune.method = "uniform"
    r2 = run_accel(m2, tok, cfg, accelerator=make_accelerator("no", cpu=True))
    sp = r2["stages"][-1]["prune"]["sparsity"]
    assert max(sp) - min(sp) < 1e-9  # uniform allocation: every layer at the same sparsity


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_interrupted_run_resumes_identical(tmp_path):
    tok = tiny_tokenizer()
    acc = make_accelerator("no", cpu=True)
    cfg = tiny_cfg()
    # uninterrupted
    ref = tiny_llama()
    ref_report = run_accel(ref, tok, cfg, out_dir=tmp_path / "a", accelerator=acc)
    # interrupted during stage 3's training: the model goes back to the end of stage 2
    model = tiny_llama()
    seen = {"stage3": False}

    def stop():
        return seen["stage3"]

    events = []
    for ev in map(event_dict, iter_accel(model, tok, cfg, out_dir=tmp_path / "b", accelerator=acc, should_stop=stop)):
        events.append(ev)
        if ev["event"] == "train_step" and ev["stage"] == 3:
            seen["stage3"] = True
    assert events[-1]["event"] == "cancelled" and events[-1]["stage"] == 2
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt.name == "stage_02"
    assert not (tmp_path / "b" / "checkpoints" / "stage_01").exists()  # keep_checkpoints=1
    # the cancelled model equals the stage-2 checkpoint
    m2, _, _, _ = load_checkpoint(ckpt)
    assert layer_widths(m2) == layer_widths(model)
    for k, v in _weights(m2).items():
        assert torch.equal(v, model.state_dict()[k]), k
    # resume from the checkpoint: ends identical to the uninterrupted run
    model, tok2, cfg2, state = load_checkpoint(ckpt)
    assert state.completed_stages == 2 and cfg2 == cfg
    report = run_accel(model, tok2, cfg2, out_dir=tmp_path / "b", accelerator=acc, resume=state)
    assert report["resumed"] and len(report["stages"]) == 3
    assert layer_widths(model) == layer_widths(ref)
    ref_w = _weights(ref)
    for k, v in _weights(model).items():
        assert torch.equal(v, ref_w[k]), k
    assert report["stages"][2]["train"]["losses"] == ref_report["stages"][2]["train"]["losses"]
    assert report["final"]["perplexity"]["perplexity"] == ref_report["final"]["perplexity"]["perplexity"]
    # the optimiser state is tensors in safetensors, and the state file is plain JSON
    from safetensors.torch import load_file

    opt = load_file(str(latest_checkpoint(tmp_path / "b") / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg_sq") for k in opt)
    json.loads((latest_checkpoint(tmp_path / "b") / "state.json").read_text())


def test_cancel_during_pruning_keeps_the_start():
    tok = tiny_tokenizer()
    model = tiny_llama()
    before = _weights(model)
    widths = layer_widths(model)
    evs = []
    for ev in iter_accel(model, tok, tiny_cfg(eval_initial=False), accelerator=make_accelerator("no", cpu=True),
                         should_stop=lambda: any(e["event"] == "prune_step" for e in evs)):
        evs.append(event_dict(ev))
    assert evs[-1]["event"] == "cancelled" and evs[-1]["stage"] == 0
    assert layer_widths(model) == widths
    for k, v in _weights(model).items():
        assert torch.equal(v, before[k]), k


def test_an_error_or_a_closed_stream_mid_stage_restores_the_last_completed_stage():
    tok = tiny_tokenizer()
    acc = make_accelerator("no", cpu=True)

    def run(model, stop_when_stage_2_pruned: bool):
        """Iterate until stage 2 is pruned; then either raise from should_stop or close the stream."""
        seen: dict = {}

        def should_stop():
            if stop_when_stage_2_pruned and seen.get("stage2_pruned"):
                raise RuntimeError("out of memory (simulated)")
            return False

        stream = iter_accel(model, tok, tiny_cfg(eval_initial=False), accelerator=acc, should_stop=should_stop)
        for ev in map(event_dict, stream):
            if ev["event"] == "trained" and ev["stage"] == 1:
                seen["weights"], seen["widths"] = _weights(model), layer_widths(model)
            if ev["event"] == "pruned" and ev["stage"] == 2:
                seen["stage2_pruned"] = True
                assert layer_widths(model) != seen["widths"]
                if not stop_when_stage_2_pruned:
                    stream.close()  # the consumer walks away mid-stage
                    break
        return seen

    for raising in (False, True):
        model = tiny_llama()
        if raising:
            with pytest.raises(RuntimeError, match="out of memory"):
                run(model, True)
            # the error hit stage 2's training; the expected state is the end of stage 1, recorded by a rerun
            seen = run(tiny_llama(), False)
        else:
            seen = run(model, False)
        assert layer_widths(model) == seen["widths"]
        for k, v in _weights(model).items():
            assert torch.equal(v, seen["weights"][k]), k


def test_cli_runs_and_resumes(tmp_path, capsys):
    from pruner.cli.main import main
    from pruner.io.models import save_pruned

    src = save_pruned(tiny_llama(), tiny_tokenizer(), tmp_path / "tiny")
    common = ["--model", str(src), "--device", "cpu", "--target", "0.75", "--stages", "2", "--tokens", "256",
              "--calibration", "stories", "--n-windows", "4", "--window", "32", "--step", "0.1", "--data", "stories",
              "--seq-len", "32", "--batch-size", "2", "--ppl-windows", "64", "--ppl-max-tokens", "256"]
    rc = main(["accel", *common, "--out", str(tmp_path / "run"), "--report", str(tmp_path / "r.json")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "stage 2 step" in err and "tokens/s" in err and "ETA" in err and "wikitext2 test, 64-token windows" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [1, 2]
    assert report["stages"][0]["train"]["losses"] and report["stages"][1]["prune"]["perplexity"]["window"] == 64
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # an existing run folder is refused without --resume; with --resume after the last stage it just reports
    assert main(["accel", *common, "--out", str(tmp_path / "run")]) == 2
    assert main(["accel", *common, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "resuming after stage 2" in capsys.readouterr().err
