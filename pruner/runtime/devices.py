"""Where a model runs and in which precision: the device (CUDA, then MPS, then CPU unless given; a device the
machine lacks is one clear line), the dtype (bfloat16 on CUDA, float32 elsewhere unless given), and accelerate's
placement of a model over several devices (``device_map``)."""

from __future__ import annotations

import os

import torch
from torch import nn

from pruner.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless ``device`` is given; a device this machine lacks is refused."""
    if device not in (None, "auto"):
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"Unknown device '{device}': use {DEVICES}") from exc
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"Device '{device}' was asked for, but CUDA is not available on this machine; "
                                  "use --device cpu (or auto)")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ConfigError(f"Device '{device}' does not exist: this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
        elif dev.type == "mps":
            if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
                raise ConfigError(f"Device '{device}' was asked for, but MPS is not available on this machine")
        elif dev.type != "cpu":
            raise ConfigError(f"Unsupported device '{device}': use {DEVICES}")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def _resolve_dtype(dtype, device) -> torch.dtype:
    if dtype in (None, "auto"):
        return _default_dtype(device)
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                    "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError as exc:
            raise ConfigError(f"Unknown dtype '{dtype}': use float32, bfloat16 or float16") from exc
    return dtype


def dispatch(model: nn.Module, device_map="auto") -> nn.Module:
    """Place ``model`` over the available devices with accelerate (decoder layers are never split)."""
    from accelerate import dispatch_model, infer_auto_device_map

    if device_map == "auto":
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules or [])
    if set(device_map.values()) <= {"cpu"}:
        return model.eval()  # all on the CPU, where it was loaded: nothing to dispatch, no hooks
    return dispatch_model(model, device_map=device_map).eval()


def _half_on_cpu(model: nn.Module) -> torch.dtype | None:
    """The model's dtype when it computes in bfloat16 / float16 on the CPU, else None."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu" or p.dtype not in (torch.bfloat16, torch.float16):
        return None
    return p.dtype


def slow_half_note(model: nn.Module) -> str | None:
    """A sentence when the model computes in a half dtype on a CPU without matrix instructions for it (x86 without
    avx512_bf16 / amx_bf16 for bfloat16, or avx512_fp16 / amx_fp16 for float16): torch then multiplies matrices
    with its portable loops. Measured here (AVX2 only): pruning the default model to 90 % in bfloat16 took many
    times as long as in float32. None when the CPU has them, the model is not on a CPU, or in float32."""
    dtype = _half_on_cpu(model)
    if dtype is None:
        return None
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    if not flags:
        return None
    want = ("avx512_bf16", "amx_bf16") if dtype == torch.bfloat16 else ("avx512_fp16", "amx_fp16")
    if flags & set(want):
        return None
    name = str(dtype).replace("torch.", "")
    return (f"note: this CPU has no {name} matrix instructions ({' / '.join(want)}), where torch's own {name} "
            f"matrix products run many times slower than float32: the weights stay {name} (half the memory) and "
            "each product is computed in float32")


#: Weight rows converted to float32 at a time by :class:`_HalfLinear` (8 M elements: 32 MB).
BLOCK_ELEMENTS = 8_000_000


def _blocks(w: torch.Tensor):
    rows = max(1, BLOCK_ELEMENTS // max(1, w.shape[1]))
    for r in range(0, w.shape[0], rows):
        yield r, w[r : r + rows].float()


class _HalfLinear(torch.autograd.Function):
    """``x @ w.T + b`` for half ``w`` on a CPU, computed in float32 a block of weight rows at a time; only the
    half tensors are saved for the backward (no float32 copy of a weight, of the LM head above all, is held)."""

    @staticmethod
    def forward(ctx, x, w, b):
        x32 = x.float()
        out = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32, device=x.device)
        for r, block in _blocks(w):
            out[..., r : r + block.shape[0]] = x32 @ block.T
        if b is not None:
            out += b.float()
        ctx.save_for_backward(x, w, b)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, w, b = ctx.saved_tensors
        g32 = grad.float()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx32 = torch.zeros(*x.shape, dtype=torch.float32, device=x.device)
            for r, block in _blocks(w):
                gx32 += g32[..., r : r + block.shape[0]] @ block
            gx = gx32.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = (g32.reshape(-1, g32.shape[-1]).T @ x.float().reshape(-1, x.shape[-1])).to(w.dtype)
        if b is not None and ctx.needs_input_grad[2]:
            gb = g32.reshape(-1, g32.shape[-1]).sum(0).to(b.dtype)
        return gx, gw, gb


def _linear_in_float32(self, x):
    w = self.weight
    if w.device.type == "cpu" and w.dtype in (torch.bfloat16, torch.float16) and x.dtype == w.dtype:
        return _HalfLinear.apply(x, w, self.bias)
    return _PLAIN_LINEAR(self, x)


_PLAIN_LINEAR = nn.Linear.forward


class Float32Matmuls:
    """Inside ``with Float32Matmuls():``, a linear layer whose weight is bfloat16 / float16 on a CPU multiplies in
    float32 (the weight, input and bias converted for the product, the result rounded back to the input's
    dtype) — what a CPU with bf16 matrix instructions does in hardware (half inputs, float32 accumulation), here
    at float32 speed instead of torch's portable half loops. The weights stay in their dtype (the memory of a half
    model); a block of one weight's rows is converted at a time, and the backward converts again rather than keep
    float32 copies (:class:`_HalfLinear`). Autograd passes through (the weight's gradient comes back
    in its dtype), recomputation of checkpointed layers included: the block sets ``nn.Linear.forward`` for the
    process and puts it back on the way out, so use it around a whole command (the CLI does), not in a library
    that shares the process with other work. Everything else runs as it would."""

    _depth = 0

    def __enter__(self) -> Float32Matmuls:
        if Float32Matmuls._depth == 0:
            nn.Linear.forward = _linear_in_float32
        Float32Matmuls._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        Float32Matmuls._depth -= 1
        if Float32Matmuls._depth == 0:
            nn.Linear.forward = _PLAIN_LINEAR


def lean_onednn_cache(model: nn.Module) -> str | None:
    """For a half-dtype model on the CPU: turn off oneDNN's primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``,
    unless the environment already sets it; oneDNN reads it when it creates its first primitive, so this must run
    before the first forward). Each sub-step's new widths are new shapes, and the cache kept what it had built for
    the old ones: measured on the default model pruned to 90 % in bf16 on a CPU with avx512_bf16, the whole command
    peaked at 1.02 GB with the cache and 0.90 GB without it (24 % slower, the same perplexity). Returns the note
    to print, or None when nothing was changed."""
    if _half_on_cpu(model) is None:
        return None
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ or "DNNL_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return None
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "0"
    return ("note: oneDNN's primitive cache is off for this half-precision run on the CPU (it kept every "
            "sub-step's old shapes; set ONEDNN_PRIMITIVE_CACHE_CAPACITY to choose otherwise)")


def float32_matmuls_for(model: nn.Module):
    """:class:`Float32Matmuls` where :func:`slow_half_note` has something to say, else a context that does
    nothing."""
    import contextlib

    return Float32Matmuls() if slow_half_note(model) is not None else contextlib.nullcontext()
