"""Adapt-Accel checkpoints: after every stage, ``OUT/checkpoints/stage_KK/`` holds the model (the saved-folder
format of :func:`pruner.save_pruned`), the AdamW state and the RNG states (safetensors, no pickle) and
``state.json`` (schedule and data positions, the allocated sparsity, the stage records). Written atomically."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from pruner.errors import ModelLoadError, PrunerError
from pruner.io.models import load_model, save_pruned
from pruner.training.accel_config import FORMAT, STATE_FILE, AccelConfig, AccelState


class CheckpointError(ModelLoadError):
    """A checkpoint cannot be resumed from (a damaged or foreign state, RNG or model file)."""


class CheckpointWriteError(PrunerError, RuntimeError):
    """A completed stage's checkpoint could not be written (nothing half-written is left); the model in memory is
    at the end of that stage."""


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def _python_rng() -> list:
    v, st, g = random.getstate()
    return [v, list(st), g]


def save_checkpoint(folder, model, tokenizer, state: AccelState, cfg: AccelConfig, optimizer_state: dict) -> Path:
    """Write one stage's checkpoint atomically (temporary folder, then rename): any failure — a full disk raises
    safetensors' and the tokenizers' own errors, not only ``OSError`` — removes the temporary folder and raises
    :class:`CheckpointWriteError`; an interrupt removes it too."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_pruned(model, tokenizer, tmp / "model")
        save_file(optimizer_state or {"empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        state.python_rng = _python_rng()
        (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, "config": cfg.to_dict(),
                                                  "state": state.to_dict()}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        text = (getattr(exc, "strerror", None) or str(exc)).strip()
        raise CheckpointWriteError(f"the checkpoint '{folder}' could not be written "
                                   f"({text.splitlines()[0] if text else type(exc).__name__})") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def stage_number(path: Path) -> int:
    """The stage of a checkpoint folder ``stage_KK`` as a number (-1 for other names), so that stage 100 sorts
    after stage 99."""
    tail = path.name.removeprefix("stage_")
    return int(tail) if tail.isdigit() else -1


def _completed(root: Path) -> list[Path]:
    """The completed checkpoints under ``root``, oldest stage first (numerically)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("stage_*") if p.is_dir() and stage_number(p) >= 0
                   and (p / STATE_FILE).is_file()), key=stage_number)


def latest_checkpoint(out_dir) -> Path | None:
    """The last completed stage's checkpoint under ``OUT/checkpoints``, or None."""
    done = _completed(Path(out_dir) / "checkpoints")
    return done[-1] if done else None


def load_checkpoint(folder, device=None, dtype=None):
    """``(model, tokenizer, AccelConfig, AccelState)`` from a checkpoint folder; restores the RNG states."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"'{folder / STATE_FILE}' is not an Adapt-Accel checkpoint state (format "
                                  f"{meta.get('format')!r}, expected {FORMAT!r})")
        state = AccelState.from_dict(meta["state"])
        config = AccelConfig.from_dict(meta["config"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"'{folder / STATE_FILE}' is damaged or not a checkpoint state ({exc}); resume from "
                              "an earlier stage's checkpoint or start again") from exc
    try:
        rng = load_file(str(folder / "rng.safetensors"))
        cpu_state = rng["torch_cpu"]
    except Exception as exc:  # safetensors raises its own error types for a truncated file
        raise CheckpointError(f"'{folder / 'rng.safetensors'}' is damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                              "an exact resume needs it: resume from an earlier stage's checkpoint or start again") \
            from exc
    model, tok = load_model(folder / "model", device=device, dtype=dtype, progress=None)
    torch.set_rng_state(cpu_state)
    cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if state.python_rng:
        v, st, g = state.python_rng
        random.setstate((v, tuple(st), g))
    return model, tok, config, state


def prune_old_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` (≥ 1) newest completed checkpoints (by stage number)."""
    done = _completed(Path(root))
    for p in done[: max(0, len(done) - max(1, keep))]:
        shutil.rmtree(p, ignore_errors=True)
