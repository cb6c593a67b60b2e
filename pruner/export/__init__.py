"""Exporting pruned models so that they load anywhere.

- :func:`export_hf`: a portable Hugging Face folder (plain architecture when widths are uniform, else the stock
  classes plus two small remote-code files that read per-layer widths from the config);
- :func:`export_gguf`: a GGUF file for llama.cpp (per-layer head counts and feed-forward sizes as arrays);
- :func:`check_folder`: refuse a folder whose weights do not match its config, reading headers only;
- :func:`model_card`: the README.md (Hub model-card format) written with every export.
"""

from pruner.export.card import model_card
from pruner.export.common import ExportError, model_facts, refuse_pickles
from pruner.export.gguf import export_gguf, gguf_next_token_agreement, load_gguf_model, read_gguf
from pruner.export.hf import check_folder, export_hf, portable_config, verify_logits

__all__ = ["ExportError", "check_folder", "export_gguf", "export_hf", "gguf_next_token_agreement",
           "load_gguf_model", "model_card", "model_facts", "portable_config", "read_gguf", "refuse_pickles",
           "verify_logits"]
