"""Names of the files and formats the library writes, and where it caches things: the lowest layer, shared by
loading (:mod:`pruner.io.models`), export (:mod:`pruner.export`) and Adapt-Accel checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from pruner.errors import ModelLoadError

FORMAT = "adapt-pruner/1"  # pruned_widths.json
WIDTHS_FILE = "pruned_widths.json"
RECORD_FILE = "pruning_record.json"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where converted models are cached: ``$ADAPT_PRUNER_CACHE`` or ``~/.cache/adapt-pruner``."""
    return Path(os.environ.get("ADAPT_PRUNER_CACHE", Path.home() / ".cache" / "adapt-pruner"))


#: Weight files that are Python pickles: loading one can run arbitrary code, so the library never does.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def refuse_pickles(path: str | os.PathLike, error: type[ModelLoadError] = ModelLoadError) -> None:
    """Refuse a weight file that is a pickle, or a model folder whose weights exist only as pickles."""
    path = Path(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise error(f"'{path}' is a pickle file, which this project never loads (it can run arbitrary code); "
                        "convert it to safetensors once, in an environment you trust (save_pretrained writes them)")
        return
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise error(f"'{path}' holds its weights only as pickle files ({', '.join(pickles[:3])}), which this project "
                    "never loads (they can run arbitrary code); convert them to safetensors once, in an environment "
                    "you trust (save_pretrained writes them)")


def strip_quantization(model) -> None:
    """GGUF-loaded models are flagged as quantized although they are de-quantized fp32; unflag them so they
    can be saved and trained."""
    q = getattr(model, "hf_quantizer", None)
    if q is not None:
        q.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        try:
            del model.config.quantization_config
        except AttributeError:
            pass
