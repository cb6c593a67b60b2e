"""Reading a folder written by :mod:`pruner.export.hf` back into this project: the weight files are checked against
``config.json`` first (headers only, no pickle), and the model is built as the stock transformers class with
per-layer widths; the folder's own ``.py`` files are never executed. Writing an export lives in
:mod:`pruner.export`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pruner.errors import ExportError
from pruner.model.skeleton import OUTPUT_BIAS_LISTS, apply_output_biases, finish, skeleton
from pruner.model.structure import LayerWidths, standard_head_counts, sync_config

#: model_type -> the prefix of its remote-code classes (AdaptPruned<family>Config, ...ForCausalLM)
FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "qwen3": "Qwen3", "gemma2": "Gemma2",
            "gemma3_text": "Gemma3Text", "phi3": "Phi3", "olmo2": "Olmo2"}


PER_LAYER = {"num_heads": "num_attention_heads_per_layer", "num_kv_heads": "num_key_value_heads_per_layer",
             "intermediate_size": "intermediate_size_per_layer"}


SLICED = "sliced_hidden_size"  # SliceGPT's residual width (the remote config's field)

_DROP = ("transformers_version", "auto_map", "quantization_config", "architectures", "model_type")


def _plain_config_is_valid(model_type: str, fields: dict) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(model_type, **fields)
    except Exception:  # huggingface_hub's strict-dataclass errors are not ValueErrors
        return False
    return True


def _weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"'{folder}' has no .safetensors weights")
    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    shapes[k] = tuple(st.get_slice(k).get_shape())
        except Exception as exc:
            raise ExportError(f"'{f}' is not a readable safetensors file: {exc}") from exc
    return shapes


def _stock_config(config: dict):
    """The stock transformers config of an exported ``config.json``, its per-layer widths (None: uniform) and what
    the stock config cannot say: the per-layer o_proj / down_proj bias lists and SliceGPT's ``sliced_hidden_size``
    ({}: nothing)."""
    from transformers import AutoConfig

    model_type = str(config.get("model_type", "")).removeprefix("adapt_pruned_")
    if model_type not in FAMILIES:
        raise ExportError(f"model_type {config.get('model_type')!r} is not one this project exports "
                          f"({', '.join(FAMILIES)})")
    lists = {k: config[k] for k in PER_LAYER.values() if k in config}
    extras = {k: config[k] for k in (*OUTPUT_BIAS_LISTS.values(), SLICED) if config.get(k) is not None}
    fields = {k: v for k, v in config.items() if k not in _DROP and k not in lists and k not in OUTPUT_BIAS_LISTS.values()
              and k != SLICED and not k.startswith("_")}
    if lists and not _plain_config_is_valid(model_type, fields):
        # the stock config refuses the widest layer's head count; any valid pair will do, the lists decide
        n_rep = fields["num_attention_heads"] // fields["num_key_value_heads"]
        heads, kv = standard_head_counts(fields["hidden_size"], fields["head_dim"], n_rep)
        fields.update(num_attention_heads=heads, num_key_value_heads=kv)
    try:
        stock = AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # huggingface_hub's strict-dataclass errors are not ValueErrors
        raise ExportError(f"its config cannot be expressed as a stock {model_type} config: {exc}") from exc
    if not lists:
        return stock, None, extras
    widths = [LayerWidths(*w) for w in zip(*(lists[PER_LAYER[a]] for a in ("num_heads", "num_kv_heads",
                                                                           "intermediate_size")), strict=True)]
    return stock, widths, extras


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every weight an exported folder must hold, with its shape, from its ``config.json``: the shapes of an empty
    model of the stock architecture with the per-layer widths applied (parameters on ``meta``, nothing read)."""
    stock, widths, extras = _stock_config(config)
    if widths is not None and len(widths) != stock.num_hidden_layers:
        raise ExportError(f"{len(widths)} per-layer widths for {stock.num_hidden_layers} layers")
    if any(len(v) != stock.num_hidden_layers for k, v in extras.items() if k != SLICED):
        raise ExportError(f"per-layer bias lists for other than {stock.num_hidden_layers} layers")
    model = apply_output_biases(skeleton(stock, widths, residual_width=extras.get(SLICED)), extras)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if getattr(stock, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


def check_folder(folder: str | os.PathLike) -> dict:
    """Refuse, with a clear message, a folder whose weight files do not match its ``config.json``.

    Reads only the config and the safetensors headers (no tensor data, no pickle). Returns the config.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"'{folder}' has no readable config.json: {exc}") from exc
    try:
        expected = expected_shapes(config)
    except (KeyError, TypeError, ValueError, ExportError) as exc:
        raise ExportError(f"'{folder}/config.json' does not describe a model this project exports: {exc}") from exc
    found = {k: v for k, v in _weight_shapes(folder).items() if not k.endswith("rotary_emb.inv_freq")}
    tied = config.get("tie_word_embeddings", False)
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and not (tied and k == "lm_head.weight")]
    wrong = [f"{k} is {found[k]} in the weights but {expected[k]} by the config"
             for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(wrong)} shape mismatches, e.g. {'; '.join(wrong[:2])}" if wrong else "",
                 f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else ""]
        raise ExportError(f"'{folder}': the weight files do not match config.json ("
                          + "; ".join(p for p in parts if p) + "). Refusing to use it.")
    return config


def load_exported(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a folder written by :func:`export_hf` back into this project, as the stock transformers class with
    per-layer widths (the folder's own ``.py`` files are never executed). Weights are checked against the config
    first; returns ``(model, tokenizer)``.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(folder)
    config = check_folder(folder)
    try:
        stock, widths, extras = _stock_config(config)
    except ExportError as exc:
        raise ExportError(f"'{folder}': {exc}") from exc
    model = apply_output_biases(skeleton(stock, widths, dtype, residual_width=extras.get(SLICED)), extras)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    finish(model, stock, f"'{folder}'", ExportError)
    sync_config(model)
    tok = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").is_file() else None
    return model, tok
