"""Adapt-Accel with two CPU processes (DDP, gloo): both ranks end with identical shapes and weights.

Each rank is a separate Python process started with the environment ``accelerate launch`` would set (RANK,
WORLD_SIZE, MASTER_ADDR, ...). Only rank 0 runs the pruner; rank 1 applies the broadcast cut.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def worker(out: str) -> None:
    """One rank: a tiny model, two stages, then write the weights and what this rank saw."""
    from safetensors.torch import save_file

    from pruner.model.structure import layer_widths
    from pruner.testing import tiny_tokenizer
    from pruner.training.accel import event_dict, iter_accel
    from pruner.training.train import make_accelerator
    from tests.test_accel import tiny_cfg
    from tests.test_train import tiny_llama

    acc = make_accelerator("no", cpu=True)
    model = tiny_llama()
    if acc.process_index == 1:  # a different start on rank 1: DDP must sync it from rank 0
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
    events = [event_dict(ev)["event"] for ev in iter_accel(model, tiny_tokenizer(), tiny_cfg(stages=2, eval_initial=False),
                                               accelerator=acc)]
    rank = acc.process_index
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, f"{out}/rank{rank}.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps({
        "world": acc.num_processes, "events": events, "widths": [w.to_dict() for w in layer_widths(model)],
    }))
    acc.wait_for_everyone()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_end_identical(tmp_path):
    from safetensors.torch import load_file

    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}
        code = f"from tests.test_accel_ddp import worker; worker({str(tmp_path)!r})"
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert info[0]["world"] == info[1]["world"] == 2
    assert "prune_step" in info[0]["events"] and "prune_step" not in info[1]["events"]  # only rank 0 prunes
    assert info[0]["events"].count("trained") == info[1]["events"].count("trained") == 2
    assert info[0]["widths"] == info[1]["widths"]
    assert info[0]["widths"] != [{"num_heads": 6, "num_kv_heads": 3, "intermediate_size": 96}] * 3  # it pruned
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert w0[k].shape == w1[k].shape and torch.equal(w0[k], w1[k]), k
