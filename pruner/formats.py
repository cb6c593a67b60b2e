"""Names of the files and formats the library writes, and where it caches things: the lowest layer, shared by
loading (:mod:`pruner.io`), export (:mod:`pruner.export`) and Adapt-Accel checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

FORMAT = "adapt-pruner/1"  # pruned_widths.json
WIDTHS_FILE = "pruned_widths.json"
RECORD_FILE = "pruning_record.json"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where converted models are cached: ``$ADAPT_PRUNER_CACHE`` or ``~/.cache/adapt-pruner``."""
    return Path(os.environ.get("ADAPT_PRUNER_CACHE", Path.home() / ".cache" / "adapt-pruner"))
