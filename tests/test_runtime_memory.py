"""Memory measurement on the CPU: a watch measures its own stretch, and the whole process's peak stays known
after it (the kernel's counter it resets is also what /usr/bin/time reads); weights left in a mapped
safetensors file get memory of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruner.runtime.memory import own_mapped_weights

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
CPU = torch.device("cpu")


# run in a fresh interpreter: in the suite's own process, threads of earlier tests (a studio server still
# finishing a queue) allocate while this one measures, and the process's RSS is no longer this test's to read
_WATCH = """
import json, torch
from pruner.runtime.memory import MemoryWatch, _status_bytes, peak_memory
cpu = torch.device("cpu")
with MemoryWatch(cpu):  # the kernel's counter starts from the current RSS
    pass
big = torch.ones(96 * 2**20 // 4)  # 96 MiB, touched
high = _status_bytes("VmHWM")
del big
with MemoryWatch(cpu) as w:
    small = torch.ones(2**20)
del small
print(json.dumps(dict(high=high, watch=w.peak, process=peak_memory(cpu)[0], kernel=_status_bytes("VmHWM"))))
"""


@linux
def test_a_watch_measures_its_stretch_and_the_process_peak_survives():
    out = subprocess.run([sys.executable, "-c", _WATCH], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["watch"] is not None and r["watch"] < r["high"] - 64 * 2**20  # the watch saw only its own stretch
    assert r["process"] >= r["high"] - 2**20  # the peak before the watch is not forgotten (RSS counts lag a little)
    assert r["kernel"] < r["high"]  # ... though the kernel's counter was reset


@linux
@pytest.mark.parametrize("name", ["w.safetensors", "hub cache/blobs/5f1d0c"])  # a hub cache's blob: no suffix
def test_weights_in_a_mapped_file_get_memory_of_their_own(tmp_path, name):
    from safetensors.torch import load_file, save_file

    from pruner.testing import tiny_model

    model = tiny_model()
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / name)
    mapped = load_file(tmp_path / name)
    model.load_state_dict(mapped, assign=True)  # the parameters now live in the file mapping
    model.lm_head.weight = model.model.embed_tokens.weight  # tied: must stay one tensor
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        want = model(ids).logits
    moved = own_mapped_weights(model)
    assert moved > 0 and own_mapped_weights(model) == 0  # nothing left in the mapping
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=0)


def test_a_half_dtype_on_a_cpu_without_its_instructions_is_said(monkeypatch):
    import builtins

    from pruner.runtime.devices import slow_half_note
    from pruner.testing import tiny_model

    real_open = builtins.open

    def cpuinfo(flags):
        def fake(path, *a, **k):
            if path == "/proc/cpuinfo":
                import io

                return io.StringIO(f"processor : 0\nflags : fpu {flags}\n")
            return real_open(path, *a, **k)

        return fake

    model = tiny_model()
    assert slow_half_note(model) is None  # float32
    model = model.to(torch.bfloat16)
    monkeypatch.setattr(builtins, "open", cpuinfo("avx avx2 fma"))
    assert "no bfloat16 matrix instructions" in slow_half_note(model)
    monkeypatch.setattr(builtins, "open", cpuinfo("avx2 avx512f avx512_bf16"))
    assert slow_half_note(model) is None


def test_half_weights_multiply_in_float32_on_request_and_keep_their_dtype():
    from pruner.importance.measure import measure_importance
    from pruner.runtime import devices
    from pruner.runtime.devices import Float32Matmuls
    from pruner.testing import random_windows, tiny_model

    model = tiny_model().to(torch.bfloat16)
    win = random_windows(2, 12)
    calls = []
    real_apply = devices._HalfLinear.apply
    with torch.no_grad():
        half = model(win).logits
        with Float32Matmuls(), pytest.MonkeyPatch.context() as mp:
            mp.setattr(devices._HalfLinear, "apply", lambda *a: calls.append(1) or real_apply(*a))
            mixed = model(win).logits
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(calls) == n_linear  # every linear multiplied in float32 blocks, once
    with torch.no_grad():
        full = tiny_model()(win).logits  # the same weights before rounding to bf16: mixed is at least as close
    assert mixed.dtype == torch.bfloat16
    assert (mixed.float() - full).abs().mean() <= (half.float() - full).abs().mean() * 1.05
    with Float32Matmuls():  # autograd passes through: Taylor scores in bf16 weights
        imp = measure_importance(model, win, "taylor", batch_size=2)
    assert all(torch.isfinite(s).all() and s.sum() > 0 for s in imp.group_scores)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.nn.Linear.forward is devices._PLAIN_LINEAR and Float32Matmuls._depth == 0  # nn.Linear's own again
    plain = measure_importance(model, win, "taylor", batch_size=2)
    for a, b in zip(imp.channel_scores, plain.channel_scores, strict=True):  # the same ranking, near enough
        assert torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1] > 0.95


def test_the_half_linear_is_float32_arithmetic_in_blocks_with_its_gradients(monkeypatch):
    from pruner.runtime import devices

    monkeypatch.setattr(devices, "BLOCK_ELEMENTS", 3 * 16)  # 3 weight rows a block: 11 rows → 4 blocks
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(11, 16, generator=gen).bfloat16().requires_grad_()
    b = torch.randn(11, generator=gen).bfloat16().requires_grad_()
    x = torch.randn(2, 5, 16, generator=gen).bfloat16().requires_grad_()
    out = devices._HalfLinear.apply(x, w, b)
    ref_x, ref_w, ref_b = (t.detach().float().requires_grad_() for t in (x, w, b))
    ref = torch.nn.functional.linear(ref_x, ref_w, ref_b)
    torch.testing.assert_close(out, ref.bfloat16(), rtol=0, atol=0)  # float32 products, rounded once
    g = torch.randn(2, 5, 11, generator=gen).bfloat16()
    out.backward(g)
    ref.backward(g.float())
    for mine, want in ((x, ref_x), (w, ref_w), (b, ref_b)):
        assert mine.grad.dtype == torch.bfloat16
        torch.testing.assert_close(mine.grad, want.grad.bfloat16(), rtol=1e-2, atol=1e-2)
