"""Memory, as every report states it: CUDA's allocated bytes on a GPU, the process's resident set (RSS) elsewhere.

:class:`MemoryWatch` measures the peak of one stretch of work (an importance pass) on its own: on Linux the
kernel's peak-RSS counter is reset at the start (``/proc/self/clear_refs``), on CUDA the allocator's peak.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

#: The process's peak RSS before the last reset of the kernel's counter (a :class:`MemoryWatch` resets it to
#: measure one stretch on its own, which also lowers what ``getrusage`` and ``/usr/bin/time`` report afterwards).
_EARLIER_PEAK = 0


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, what was measured)``: the peak so far in this process — on a CPU over the whole process, the
    stretches before a :class:`MemoryWatch` reset the kernel's counter included; on CUDA since the last watch."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    hwm = _status_bytes("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(hwm, _EARLIER_PEAK), "process peak RSS"


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
    global _EARLIER_PEAK
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    _EARLIER_PEAK = max(_EARLIER_PEAK, _status_bytes("VmHWM") or 0)  # kept: the whole run's peak stays known
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
            self.peak = (peak_memory(self.device)[0] if self.device.type == "cuda"
                         else _status_bytes("VmHWM"))  # this stretch's own peak


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


def _file_mappings() -> list[tuple[int, int]]:
    """The address ranges of this process's private, non-executable file mappings (Linux; [] elsewhere): where a
    parameter lies in one, it is a mapped weights file, whatever its name (a hub cache maps ``blobs/<sha256>``)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)  # the path may hold spaces
        if len(parts) == 6 and parts[1][3] == "p" and parts[1][2] != "x" and parts[5].startswith("/"):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


@torch.no_grad()
def own_mapped_weights(model) -> int:
    """Give every CPU parameter and buffer that still lies in a mapped weights file memory of its own,
    and hand the file's pages back (``madvise(MADV_DONTNEED)``, one tensor at a time). Returns the bytes moved.

    Why: a model loaded from safetensors reads its weights from a private file mapping that stays mapped for the
    whole process. Surgery gives every cut matrix new memory, but the old pages, resident since the first
    forward pass, were still counted in the process's memory: on the default model 0.6 GB of them after the first
    sub-step, beside the new weights. Only file-backed pages are handed back (never anonymous memory, whose
    contents would be lost), and only after the copy; a page shared with a neighbour stays until that one moves.
    """
    ranges = _file_mappings()
    if not ranges:
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        libc = None
    page = resource.getpagesize()

    def mapped(t: torch.Tensor) -> bool:
        ptr = t.data_ptr()
        return t.device.type == "cpu" and t.numel() > 0 and any(lo <= ptr < hi for lo, hi in ranges)

    moved, done = 0, {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in list(table.items()):
                if t is None:
                    continue
                key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
                if key in done:  # a tied weight (or two views of one): the same new tensor
                    table[name] = done[key]
                    continue
                if not mapped(t):
                    continue
                ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                copy = t.detach().clone(memory_format=torch.contiguous_format)
                new = torch.nn.Parameter(copy, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) \
                    else copy
                table[name] = done[key] = new
                moved += copy.nbytes
                lo, hi = -(-ptr // page) * page, (ptr + nbytes) // page * page
                if libc is not None and hi > lo:
                    libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED
    return moved


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere). Surgery frees
    many tensors below the mmap threshold, whose pages glibc otherwise keeps: measured on the default model,
    0.3 GB of the process's memory after the first sub-step, until the next one."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
