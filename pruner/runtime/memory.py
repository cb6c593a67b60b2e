"""Memory, as every report states it: CUDA's allocated bytes on a GPU, the process's resident set (RSS) elsewhere.

:class:`MemoryWatch` measures the peak of one stretch of work (an importance pass) on its own: on Linux the
kernel's peak-RSS counter is reset at the start (``/proc/self/clear_refs``), on CUDA the allocator's peak.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, what was measured)``: the peak so far in this process (since the last :class:`MemoryWatch`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm, "process peak RSS"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_bytes("VmRSS")


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


class MemoryWatch:
    """``with MemoryWatch(device) as w: ...`` then ``w.before``, ``w.peak`` (bytes) and ``w.kind``; ``w.peak`` is
    None where the peak of just this stretch cannot be measured (no /proc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before = self.peak = None
        self.kind = "cuda allocated" if device.type == "cuda" else "process RSS"

    def __enter__(self) -> MemoryWatch:
        self.before = current_memory(self.device)
        self._isolated = _reset_peak(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self._isolated:
            self.peak = peak_memory(self.device)[0]


_TAMED = False


def tame_allocator() -> None:
    """Fix glibc's mmap threshold at 128 KiB (once per process).

    By default glibc raises the threshold after every large free, so the next backward pass's activations come
    from the heap, which is then fragmented and not returned: measured on the default model, a Taylor pass then
    peaks 0.2 GB higher and keeps 0.5 GB after it ends. With the threshold fixed, every tensor above 128 KiB is
    its own mapping and goes back to the system when freed. A no-op where the C library is not glibc.
    """
    global _TAMED
    if _TAMED:
        return
    _TAMED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


@torch.no_grad()
def touch_weights(model) -> None:
    """Read one element per memory page of every weight, so weights mapped lazily from a safetensors file are
    resident before a measurement starts (their first reading is not counted as the measurement's memory)."""
    for p in model.parameters():
        if p.device.type == "cpu":
            flat = p.detach().reshape(-1)
            flat[:: max(1, 4096 // flat.element_size())].sum()
