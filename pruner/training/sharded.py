"""Training under FSDP (full shard, the paper's recipe) while the pruner keeps working on a whole, plain model.

Under ``accelerate launch --config_file pruner/resources/accelerate/fsdp.yaml`` (FSDP2, full shard, bf16),
:func:`pruner.training.train.iter_train` trains a *working copy*: the plain model moves to the host, a deep copy
of it is sharded over the processes by accelerate (``fully_shard``), and after the last step every weight is
gathered whole (:func:`gather_into`, one all-gather per parameter, every process taking part) back into the plain
model, which returns to the device. The copy is dropped. So between Adapt-Accel's stages every process holds the
same whole model: the main process prunes it, the others repeat the cut, and the next stage shards it anew with
its new shapes.

Accelerate enables FSDP only for accelerator devices: on a CPU (``MULTI_CPU``, gloo) it ignores the plugin and
trains data-parallel. torch's ``fully_shard`` itself runs on a CPU with gloo, so tests/test_accel_fsdp.py checks
:func:`gather_into` and a sharded stage there with ``fully_shard`` directly, and the accelerate path on GPUs
(``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pruner.errors import ConfigError

#: Name parts that wrappers insert (activation checkpointing, torch.compile, FSDP1): not part of the plain names.
WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def is_sharded(acc) -> bool:
    """True when ``acc`` trains under FSDP; FSDP1 (flat parameters) is refused with the setting to change."""
    if str(getattr(acc, "distributed_type", "")).rpartition(".")[2] != "FSDP":
        return False
    if not getattr(acc, "is_fsdp2", False):
        raise ConfigError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config "
                          "(pruner/resources/accelerate/fsdp.yaml)")
    return True


def working_copy(model: nn.Module) -> nn.Module:
    """Move ``model`` to the host and return a deep copy of it to shard (the plain model stays whole)."""
    model.to("cpu")
    return copy.deepcopy(model)


def plain_name(name: str) -> str:
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def full(t: torch.Tensor) -> torch.Tensor:
    """A tensor whole: a sharded ``DTensor`` gathered (a collective: every process must call it), else itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def gather_into(work: nn.Module, model: nn.Module, device: torch.device | str) -> nn.Module:
    """Copy every weight of the (sharded) working copy ``work`` whole into the plain ``model`` and move it to
    ``device``. Every process must call this (each parameter is one all-gather)."""
    plain = dict(model.named_parameters())
    seen = set()
    for name, p in work.named_parameters():
        key = plain_name(name)
        if key not in plain:
            raise ConfigError(f"The sharded model has a parameter '{name}' that the plain model lacks")
        whole = full(p.detach())
        target = plain[key]
        if target.shape != whole.shape:
            raise ConfigError(f"'{key}': the sharded model gathers to {tuple(whole.shape)}, the plain model has "
                              f"{tuple(target.shape)}")
        target.copy_(whole.to(target.device, target.dtype))
        seen.add(key)
    missing = set(plain) - seen
    if missing:
        raise ConfigError(f"The sharded model lacks {sorted(missing)[:5]}")
    return model.to(device)
