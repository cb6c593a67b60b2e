"""Portable Hugging Face folders: load with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.

Uniform widths export as the plain architecture (no remote code), whatever the depth (a ShortGPT model is a stock
model with fewer layers). Per-layer widths export as ``adapt_pruned_<type>``: the stock config plus
``num_attention_heads_per_layer``, ``num_key_value_heads_per_layer`` and ``intermediate_size_per_layer``, with two
small files of modelling code (``remote_code/``) that subclass the stock classes. Biases the stock config cannot
express (FLAP's compensation on o_proj / down_proj) go the same way, with ``o_proj_bias_per_layer`` and
``down_proj_bias_per_layer``, and so does a SliceGPT model (``sliced_hidden_size``: the residual width; the layers
add their residual through shortcut matrices and normalise by the original width). Weights are safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from pruner.errors import ExportError
from pruner.export.common import describe_source, model_facts, staging
from pruner.io.exported import (  # the reader checks what the writer wrote
    _DROP,
    FAMILIES,
    PER_LAYER,
    SLICED,
    _plain_config_is_valid,
    check_folder,
    expected_shapes,
)
from pruner.model.adapters import adapter_for
from pruner.model.rotation import residual_width
from pruner.model.skeleton import output_bias_lists
from pruner.model.structure import is_uniform, sync_config

REMOTE_DIR = Path(__file__).resolve().parent.parent / "model" / "remote_code"
REMOTE_FILES = ("configuration_adapt_pruned.py", "modeling_adapt_pruned.py")
# model_type -> the prefix of its remote-code classes (AdaptPruned<family>Config, ...ForCausalLM)
STOCK_CLASSES = {"gemma3_text": "Gemma3ForCausalLM"}  # where the stock class is not <family>ForCausalLM
def _remote_classes(family: str) -> dict[str, str]:
    return {
        "AutoConfig": f"configuration_adapt_pruned.AdaptPruned{family}Config",
        "AutoModel": f"modeling_adapt_pruned.AdaptPruned{family}Model",
        "AutoModelForCausalLM": f"modeling_adapt_pruned.AdaptPruned{family}ForCausalLM",
    }


def portable_config(model: nn.Module) -> tuple[dict, bool]:
    """The ``config.json`` of the export and whether it needs the remote code.

    Uniform widths give the stock config; per-layer widths (or a uniform width the stock config rejects, e.g.
    a hidden size that is not a multiple of the head count, or biases it has no place for) give the
    ``adapt_pruned_<type>`` config.
    """
    from pruner.model.remote_code import configuration_adapt_pruned as remote

    adapter = adapter_for(model)
    widths = sync_config(model, adapter)
    model_type = adapter.model_type
    family = FAMILIES[model_type]
    fields = {k: v for k, v in model.config.to_diff_dict().items() if not k.startswith("_") and k not in _DROP}
    fields["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    sliced = residual_width(model)  # SliceGPT: shortcut matrices no stock class has
    if sliced is None and is_uniform(widths) and _plain_config_is_valid(model_type, fields):
        stock = STOCK_CLASSES.get(model_type, f"{family}ForCausalLM")
        plain = {"architectures": [stock], "model_type": model_type, **fields}
        if not _missing_biases(model, plain):
            return plain, False
    for attr, key in PER_LAYER.items():
        fields[key] = [getattr(w, attr) for w in widths]
    cls = getattr(remote, f"AdaptPruned{family}Config")
    if _missing_biases(model, {"model_type": cls.model_type, **fields}):
        fields.update(output_bias_lists(model))
    if sliced is not None:
        fields[SLICED] = sliced
    cls(**fields)  # validates the lists before anything is written
    config = {"architectures": [f"AdaptPruned{family}ForCausalLM"], "model_type": cls.model_type,
              "auto_map": _remote_classes(family), **fields}
    return config, True


# ------------------------------------------------------------------ checking a folder without loading it


def _missing_biases(model: nn.Module, config: dict) -> bool:
    """Whether ``model`` has biases that a model built from ``config`` would not have (FLAP's o / down biases)."""
    expected = expected_shapes(config)
    return any(k.endswith(".bias") and k not in expected for k in model.state_dict())


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

    from pruner.export.card import model_card

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

