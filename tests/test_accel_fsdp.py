"""FSDP (full shard) between Adapt-Accel's stages: a sharded working copy trains, is gathered back whole into the
plain model, the main process prunes it, the other repeats the cut, and the next stage shards the new shapes.

Accelerate enables FSDP only on accelerator devices (on a CPU, ``MULTI_CPU``, it ignores the FSDP plugin), so on a
CPU two gloo processes run the same cycle with torch's ``fully_shard`` directly and are checked against one
process training on the whole batch; the accelerate path with the shipped config runs where CUDA is
(``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruner.training.sharded import is_sharded
from tests.test_accel_ddp import ROOT, _free_port

CONFIG = ROOT / "pruner" / "resources" / "accelerate" / "fsdp.yaml"
CUT = {i: ([0, 1, 3], list(range(0, 96, 2))) for i in range(4)}  # stage 2's cut (current unit indices)
LR = 0.1


def batch():
    from pruner.testing import random_windows

    return random_windows(4, 16, seed=1)


def sgd_step(model, ids) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def cut(model) -> None:
    from pruner.model.structure import LayerCut, apply_patch, build_cut

    apply_patch(model, build_cut(model, {i: LayerCut(g, c) for i, (g, c) in CUT.items()}))


def fsdp_worker(out: str) -> None:
    """One of two gloo processes: two stages of (shard a copy, one SGD step on this rank's half, gather whole),
    pruned by rank 0 in between and repeated by rank 1 from the broadcast kept units."""
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.fsdp import fully_shard

    from pruner.model.structure import origin_of
    from pruner.testing import tiny_model
    from pruner.training.accel import apply_kept_units
    from pruner.training.sharded import gather_into, working_copy

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_model("llama")
    shards = []
    for stage in range(2):
        if stage == 1:  # rank 0 decides (as the pruner does), every rank cuts to the broadcast kept units
            box = [[g for g, _ in CUT.values()], [c for _, c in CUT.values()]] if rank == 0 else [None, None]
            dist.broadcast_object_list(box, src=0)
            apply_kept_units(model, *box)
            assert origin_of(model).kept_channels == box[1]
        work = working_copy(model)
        for layer in work.model.layers:
            fully_shard(layer)
        fully_shard(work)
        shards.append(work.model.layers[0].mlp.down_proj.weight.to_local().shape[0])
        sgd_step(work, batch()[rank::2])
        gather_into(work, model, "cpu")
        del work
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              f"{out}/rank{rank}.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps({"shards": shards}))
    dist.destroy_process_group()


def run_ranks(code: str, cwd: Path, n: int = 2, timeout: int = 600) -> list[str]:
    port, procs = _free_port(), []
    for rank in range(n):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-3000:]
    return outs


def test_two_cpu_processes_shard_gather_prune_and_reshard(tmp_path):
    from safetensors.torch import load_file

    from pruner.testing import tiny_model

    run_ranks(f"from tests.test_accel_fsdp import fsdp_worker; fsdp_worker({str(tmp_path)!r})", ROOT)
    shards = [json.loads((tmp_path / f"rank{r}.json").read_text())["shards"] for r in range(2)]
    assert shards[0] == shards[1] == [32, 32]  # down_proj's 64 rows split in two, in both stages
    ref = tiny_model("llama")  # one process, the whole batch: the same mean gradient as the two halves
    sgd_step(ref, batch())
    cut(ref)
    sgd_step(ref, batch())
    want = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() == want.keys()
    assert want["model.layers.0.mlp.down_proj.weight"].shape == (64, 48)  # the second stage trained the cut model
    for k in want:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        torch.testing.assert_close(ranks[0][k], want[k], rtol=1e-5, atol=1e-6)


class GlooFSDP:
    """accelerate's ``Accelerator`` on a CPU (gloo) with what accelerate does not do there: FSDP2. ``prepare``
    shards the model with ``fully_shard`` (each decoder layer, then the root) and points the optimiser at the
    sharded parameters, as accelerate's FSDP2 preparation does on GPUs; everything else is the real accelerator."""

    distributed_type, is_fsdp2 = "DistributedType.FSDP", True

    def __init__(self):
        from accelerate import Accelerator

        self._acc = Accelerator(cpu=True)

    def __getattr__(self, name):
        return getattr(self._acc, name)

    def prepare(self, model, opt):
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        opt.param_groups[0]["params"] = [p for p in model.parameters() if p.requires_grad]
        opt.state.clear()
        return model, opt

    def no_sync(self, model):
        import contextlib

        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm)


def accel_worker(out: str) -> None:
    """One rank of Adapt-Accel (2 stages) under :class:`GlooFSDP`: weights and widths written for comparison."""
    from safetensors.torch import save_file

    from pruner.model.structure import layer_widths
    from pruner.testing import tiny_tokenizer
    from pruner.training.accel import event_dict, iter_accel
    from tests.test_accel import tiny_cfg
    from tests.test_train import tiny_llama

    torch.set_num_threads(1)
    acc = GlooFSDP()
    model = tiny_llama()
    events = [event_dict(ev)["event"] for ev in iter_accel(model, tiny_tokenizer(), tiny_cfg(stages=2, eval_initial=False),
                                                           accelerator=acc)]
    rank = acc.process_index
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              f"{out}/rank{rank}.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(
        {"events": events, "widths": [w.to_dict() for w in layer_widths(model)],
         "plain": all(type(p) is torch.nn.Parameter for p in model.parameters())}))
    acc.wait_for_everyone()


def test_adapt_accel_trains_sharded_between_prunes_on_two_cpu_processes(tmp_path):
    from safetensors.torch import load_file

    from tests.test_train import tiny_llama

    run_ranks(f"from tests.test_accel_fsdp import accel_worker; accel_worker({str(tmp_path)!r})", ROOT)
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert "prune_step" in info[0]["events"] and "prune_step" not in info[1]["events"]  # only rank 0 prunes
    assert info[0]["events"].count("trained") == info[1]["events"].count("trained") == 2
    assert info[0]["widths"] == info[1]["widths"] and info[0]["plain"] and info[1]["plain"]
    assert info[0]["widths"] != [{"num_heads": 6, "num_kv_heads": 3, "intermediate_size": 96}] * 3  # it pruned
    start = tiny_llama().state_dict()
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert w0["model.embed_tokens.weight"].shape == start["model.embed_tokens.weight"].shape
    assert not torch.equal(w0["model.embed_tokens.weight"], start["model.embed_tokens.weight"])  # it trained


class FakeAccelerator:
    def __init__(self, kind: str, fsdp2: bool = False):
        self.distributed_type, self.is_fsdp2 = f"DistributedType.{kind}", fsdp2


def test_only_fsdp2_shards_and_fsdp1_is_refused():
    from pruner.errors import ConfigError

    assert not is_sharded(FakeAccelerator("MULTI_CPU")) and not is_sharded(FakeAccelerator("MULTI_GPU"))
    assert is_sharded(FakeAccelerator("FSDP", fsdp2=True))
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        is_sharded(FakeAccelerator("FSDP"))


def test_the_shipped_config_is_full_shard_bf16_fsdp2():
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["distributed_type"] == "FSDP" and cfg["mixed_precision"] == "bf16" and not cfg["use_cpu"]
    assert cfg["fsdp_config"]["fsdp_version"] == 2 and cfg["fsdp_config"]["fsdp_reshard_after_forward"] is True


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="accelerate enables FSDP only on accelerator devices: on a CPU (MULTI_CPU) it ignores the "
                           "FSDP plugin; run by scripts/gpu_check.sh")
def test_accelerate_fsdp_runs_adapt_accel_on_gpus(tiny_llama_folder, tmp_path):
    n = min(2, torch.cuda.device_count())
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    report = tmp_path / "report.json"
    args = [launcher, "launch", "--config_file", str(CONFIG), "--num_processes", str(n), "-m", "pruner", "accel",
            "--model", str(tiny_llama_folder), "--target", "0.75", "--stages", "2", "--tokens", "512",
            "--seq-len", "32", "--batch-size", "2", "--data", "stories", "--calibration", "stories",
            "--n-windows", "4", "--window", "32", "--step", "0.1", "--report", str(report)]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(report.read_text())
    rep = rep.get("report", rep)
    assert rep["processes"] == n and len(rep["stages"]) == 2
    assert rep["final"]["fraction"] < 0.8 and rep["stages"][1]["train"]["steps"] >= 1
