"""Portable Hugging Face folders: load with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.

Uniform widths export as the plain architecture (no remote code), whatever the depth (a ShortGPT model is a stock
model with fewer layers). Per-layer widths export as ``adapt_pruned_<type>``: the stock config plus
``num_attention_heads_per_layer``, ``num_key_value_heads_per_layer`` and ``intermediate_size_per_layer``, with two
small files of modelling code (``remote_code/``) that subclass the stock classes. Biases the stock config cannot
express (FLAP's compensation on o_proj / down_proj) go the same way, with ``o_proj_bias_per_layer`` and
``down_proj_bias_per_layer``. Weights are safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..adapters import adapter_for
from ..skeleton import OUTPUT_BIAS_LISTS, apply_output_biases, finish, output_bias_lists, skeleton
from ..structure import LayerWidths, is_uniform, standard_head_counts, sync_config
from .common import ExportError, describe_source, model_facts, staging

REMOTE_DIR = Path(__file__).parent / "remote_code"
REMOTE_FILES = ("configuration_adapt_pruned.py", "modeling_adapt_pruned.py")
# model_type -> the prefix of its remote-code classes (AdaptPruned<family>Config, ...ForCausalLM)
FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "qwen3": "Qwen3", "gemma2": "Gemma2",
            "gemma3_text": "Gemma3Text", "phi3": "Phi3", "olmo2": "Olmo2"}
STOCK_CLASSES = {"gemma3_text": "Gemma3ForCausalLM"}  # where the stock class is not <family>ForCausalLM
PER_LAYER = {"num_heads": "num_attention_heads_per_layer", "num_kv_heads": "num_key_value_heads_per_layer",
             "intermediate_size": "intermediate_size_per_layer"}
_DROP = ("transformers_version", "auto_map", "quantization_config", "architectures", "model_type")


def _remote_classes(family: str) -> dict[str, str]:
    return {
        "AutoConfig": f"configuration_adapt_pruned.AdaptPruned{family}Config",
        "AutoModel": f"modeling_adapt_pruned.AdaptPruned{family}Model",
        "AutoModelForCausalLM": f"modeling_adapt_pruned.AdaptPruned{family}ForCausalLM",
    }


def _plain_config_is_valid(model_type: str, fields: dict) -> bool:
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(model_type, **fields)
    except Exception:  # huggingface_hub's strict-dataclass errors are not ValueErrors
        return False
    return True


def portable_config(model: nn.Module) -> tuple[dict, bool]:
    """The ``config.json`` of the export and whether it needs the remote code.

    Uniform widths give the stock config; per-layer widths (or a uniform width the stock config rejects, e.g.
    a hidden size that is not a multiple of the head count, or biases it has no place for) give the
    ``adapt_pruned_<type>`` config.
    """
    from .remote_code import configuration_adapt_pruned as remote

    adapter = adapter_for(model)
    widths = sync_config(model, adapter)
    model_type = adapter.model_type
    family = FAMILIES[model_type]
    fields = {k: v for k, v in model.config.to_diff_dict().items() if not k.startswith("_") and k not in _DROP}
    fields["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    if is_uniform(widths) and _plain_config_is_valid(model_type, fields):
        stock = STOCK_CLASSES.get(model_type, f"{family}ForCausalLM")
        plain = {"architectures": [stock], "model_type": model_type, **fields}
        if not _missing_biases(model, plain):
            return plain, False
    for attr, key in PER_LAYER.items():
        fields[key] = [getattr(w, attr) for w in widths]
    cls = getattr(remote, f"AdaptPruned{family}Config")
    if _missing_biases(model, {"model_type": cls.model_type, **fields}):
        fields.update(output_bias_lists(model))
    cls(**fields)  # validates the lists before anything is written
    config = {"architectures": [f"AdaptPruned{family}ForCausalLM"], "model_type": cls.model_type,
              "auto_map": _remote_classes(family), **fields}
    return config, True


# ------------------------------------------------------------------ checking a folder without loading it


def _missing_biases(model: nn.Module, config: dict) -> bool:
    """Whether ``model`` has biases that a model built from ``config`` would not have (FLAP's o / down biases)."""
    expected = expected_shapes(config)
    return any(k.endswith(".bias") and k not in expected for k in model.state_dict())


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
    """The stock transformers config of an exported ``config.json``, its per-layer widths (None: uniform) and its
    per-layer o_proj / down_proj bias lists ({}: the stock config's biases)."""
    from transformers import AutoConfig

    model_type = str(config.get("model_type", "")).removeprefix("adapt_pruned_")
    if model_type not in FAMILIES:
        raise ExportError(f"model_type {config.get('model_type')!r} is not one this project exports "
                          f"({', '.join(FAMILIES)})")
    lists = {k: config[k] for k in PER_LAYER.values() if k in config}
    biases = {k: config[k] for k in OUTPUT_BIAS_LISTS.values() if config.get(k) is not None}
    fields = {k: v for k, v in config.items()
              if k not in _DROP and k not in lists and k not in OUTPUT_BIAS_LISTS.values() and not k.startswith("_")}
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
        return stock, None, biases
    widths = [LayerWidths(*w) for w in zip(*(lists[PER_LAYER[a]] for a in ("num_heads", "num_kv_heads",
                                                                           "intermediate_size")), strict=True)]
    return stock, widths, biases


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every weight an exported folder must hold, with its shape, from its ``config.json``: the shapes of an empty
    model of the stock architecture with the per-layer widths applied (parameters on ``meta``, nothing read)."""
    stock, widths, biases = _stock_config(config)
    if widths is not None and len(widths) != stock.num_hidden_layers:
        raise ExportError(f"{len(widths)} per-layer widths for {stock.num_hidden_layers} layers")
    if any(len(v) != stock.num_hidden_layers for v in biases.values()):
        raise ExportError(f"per-layer bias lists for other than {stock.num_hidden_layers} layers")
    model = apply_output_biases(skeleton(stock, widths), biases)
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


# ------------------------------------------------------------------ export


def _state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight: stored once
    return {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}


def verify_logits(model: nn.Module, folder: str | os.PathLike, n_tokens: int = 32, seed: int = 0) -> dict:
    """Load ``folder`` as a stranger would (AutoModelForCausalLM, trust_remote_code) and compare its logits with
    ``model`` on a fixed random token sequence. Returns the largest absolute difference and the logit scale."""
    from transformers import AutoModelForCausalLM

    param = next(model.parameters())
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=param.dtype,
                                                  use_safetensors=True).to(param.device).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, n_tokens), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(param.device)
    with torch.no_grad():
        ref, got = model(ids).logits.float(), loaded(ids).logits.float()
    return {"max_abs_logit_diff": float((ref - got).abs().max()), "max_abs_logit": float(ref.abs().max()),
            "same_argmax": bool((ref.argmax(-1) == got.argmax(-1)).all()), "tokens": int(ids.numel()),
            "dtype": str(param.dtype).replace("torch.", "")}


def export_hf(model: nn.Module, tokenizer, out: str | os.PathLike, *, source: str | None = None,
              record: dict | None = None, report: dict | None = None, force: bool = False,
              verify: bool = True) -> dict:
    """Write ``model`` as a portable Hugging Face folder with a model card; returns a summary of the export.

    ``record``: the pruning record (``pruning_record.json``); ``report``: a JSON report whose evaluation results
    go into the card. With ``verify`` the written folder is loaded back through ``AutoModelForCausalLM`` and its
    logits compared with ``model``'s (an :class:`ExportError` if they differ beyond float tolerance).
    """
    from safetensors.torch import save_file

    from .card import model_card

    config, remote = portable_config(model)
    facts = model_facts(model)
    source_name, base_model = describe_source(source, model)
    summary = {"format": "hf", "path": str(out), "remote_code": remote, "uniform": not remote,
               "model_type": config["model_type"]}
    with staging(out, force) as tmp:
        save_file(_state_for_saving(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if remote:
            for name in REMOTE_FILES:
                shutil.copy(REMOTE_DIR / name, tmp / name)
        check_folder(tmp)
        if verify:
            check = verify_logits(model, tmp)
            summary["verify"] = check
            tol = (1e-3 if check["dtype"] == "float32" else 5e-2) * max(1.0, check["max_abs_logit"])
            if check["max_abs_logit_diff"] > tol:
                raise ExportError(f"the exported folder does not reproduce the model: max |Δlogit| "
                                  f"{check['max_abs_logit_diff']:.3g} > {tol:.3g}")
        card = model_card(facts, fmt="hf", source=source_name, base_model=base_model, record=record,
                          report=report, remote_code=remote, verify=summary.get("verify"))
        (tmp / "README.md").write_text(card)
        summary["files"] = sorted(p.name for p in tmp.iterdir())
    return summary


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
        stock, widths, biases = _stock_config(config)
    except ExportError as exc:
        raise ExportError(f"'{folder}': {exc}") from exc
    model = apply_output_biases(skeleton(stock, widths, dtype), biases)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    finish(model, stock, f"'{folder}'", ExportError)
    sync_config(model)
    tok = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").is_file() else None
    return model, tok
