"""Peak memory, as every report states it: CUDA's max allocated bytes on a GPU, the process's peak RSS elsewhere."""

from __future__ import annotations

import resource

import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, what was measured)`` so far in this process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
