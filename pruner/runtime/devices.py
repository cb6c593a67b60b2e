"""Where a model runs and in which precision: the device (CUDA, then MPS, then CPU unless given; a device the
machine lacks is one clear line), the dtype (bfloat16 on CUDA, float32 elsewhere unless given), and accelerate's
placement of a model over several devices (``device_map``)."""

from __future__ import annotations

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


def slow_half_note(model: nn.Module) -> str | None:
    """A sentence when the model computes in a half dtype on a CPU without matrix instructions for it (x86 without
    avx512_bf16 / amx_bf16 for bfloat16, or avx512_fp16 / amx_fp16 for float16): torch then multiplies matrices
    with its portable loops. Measured here (AVX2 only): pruning the default model to 90 % in bfloat16 took many
    times as long as in float32. None when the CPU has them, the model is not on a CPU, or in float32."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu" or p.dtype not in (torch.bfloat16, torch.float16):
        return None
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    if not flags:
        return None
    want = ("avx512_bf16", "amx_bf16") if p.dtype == torch.bfloat16 else ("avx512_fp16", "amx_fp16")
    if flags & set(want):
        return None
    name = str(p.dtype).replace("torch.", "")
    return (f"note: this CPU has no {name} matrix instructions ({' / '.join(want)}): {name} halves the memory, "
            "but its matrix products run in torch's portable loops, many times slower than float32 here")
