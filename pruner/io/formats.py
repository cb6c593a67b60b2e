"""Names of the files and formats the library writes, and where it caches things: the lowest layer, shared by
loading (:mod:`pruner.io.models`), export (:mod:`pruner.export`) and Adapt-Accel checkpoints."""

from __future__ import annotations

import json
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


_WIDTH_KEYS = ("num_heads", "num_kv_heads", "intermediate_size")


def read_widths(folder: str | os.PathLike) -> dict:
    """``pruned_widths.json`` of a saved folder, checked: a JSON object of this format whose ``layers`` hold the
    three whole-number widths each and whose ``biases`` (when present) are lists of names per layer. Anything
    else is one :class:`ModelLoadError` naming the file, never a raw KeyError or TypeError."""
    path = Path(folder) / WIDTHS_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{path}' is not valid JSON ({exc}); the folder cannot be loaded") from exc

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"'{path}' is damaged: {why}; the folder cannot be loaded")

    if not isinstance(meta, dict):
        raise bad(f"a JSON object was expected, found a {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ModelLoadError(f"'{path}' has format {meta.get('format')!r}, expected {FORMAT!r}")
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers:
        raise bad('"layers" must be a non-empty list of per-layer widths')
    for i, w in enumerate(layers):
        if not isinstance(w, dict) or set(w) != set(_WIDTH_KEYS):
            raise bad(f"layer {i} must hold exactly {', '.join(_WIDTH_KEYS)}, found {w!r}"[:300])
        if any(isinstance(w[k], bool) or not isinstance(w[k], int) or w[k] < 0 for k in _WIDTH_KEYS):
            raise bad(f"layer {i}'s widths must be whole numbers ≥ 0, found {w!r}")
    biases = meta.get("biases")
    if biases is not None and (not isinstance(biases, list)
                               or not all(isinstance(b, list) and all(isinstance(x, str) for x in b) for b in biases)):
        raise bad('"biases" must be a list (one per layer) of lists of projection names')
    if "origin" in meta and not isinstance(meta["origin"], dict):
        raise bad('"origin" must be a JSON object')
    return meta
