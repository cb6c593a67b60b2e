"""Tiny models and a tiny tokenizer for tests (this project's and yours): seconds on a CPU, no download.

    from pruner.testing import tiny_model, tiny_tokenizer
    model = tiny_model("qwen2", num_hidden_layers=2)
"""

from __future__ import annotations

import functools

import torch

#: The default tiny shape: GQA with 8 query heads over 4 KV heads, untied embeddings.
TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)
ARCHITECTURES = ("llama", "qwen2", "mistral")
#: The architectures added later (issue 12); tests/test_architectures.py runs each of them through everything.
NEW_ARCHITECTURES = ("qwen3", "gemma2", "gemma3_text", "phi3", "olmo2")
_SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # the tiny tokenizer's ids
#: What each new architecture's tiny config adds to :data:`TINY`: the features its adapter must get right.
EXTRA = {
    # q_norm / k_norm over head_dim (shared by all heads); head_dim 8 = hidden / heads
    "qwen3": dict(head_dim=8, **_SPECIAL),
    # head_dim 16 ≠ hidden / heads, query_pre_attn_scalar ≠ head_dim, both soft-cappings (caps low enough to bite
    # on random weights), sliding-window layers (window 6 < the test sequences) alternating with global ones, tied
    # embeddings scaled by √hidden, sandwich norms
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=0.3, final_logit_softcapping=1.0,
                   sliding_window=6, tie_word_embeddings=True, **_SPECIAL),
    # as Gemma-2 plus per-head q_norm / k_norm; layers 0-2 sliding (local rope base), layer 3 global
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=24, final_logit_softcapping=1.0, sliding_window=6,
                        tie_word_embeddings=True, layer_types=["sliding_attention"] * 3 + ["full_attention"],
                        **_SPECIAL),
    "phi3": dict(**_SPECIAL),  # fused qkv_proj and gate_up_proj
    "olmo2": dict(**_SPECIAL),  # q_norm / k_norm over the whole q / k projection, post-norms
}


def tiny_config(arch: str = "llama", **overrides):
    """A transformers config of ``arch`` with the :data:`TINY` shape (and :data:`EXTRA`; ``overrides`` win)."""
    from transformers import AutoConfig

    if arch not in ARCHITECTURES + NEW_ARCHITECTURES:
        raise ValueError(f"No tiny config for '{arch}': use one of {', '.join(ARCHITECTURES + NEW_ARCHITECTURES)}")
    return AutoConfig.for_model(arch, **{**TINY, **EXTRA.get(arch, {}), **overrides})


def tiny_model(arch: str = "llama", seed: int = 0, perturb: bool = True, **overrides):
    """A tiny random model of an architecture, in eval mode, float32 on CPU.

    ``perturb`` gives norms weights in [0.5, 1.5] and biases small random values, so that a wrong mapping of
    units to norm or bias entries shows in the outputs.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
                elif name.endswith("bias"):
                    p.normal_(0, 0.05)
    return model.eval()


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE with a 300-token vocabulary (``<pad>``, ``<s>``, ``</s>`` included), trained offline on
    WikiText-2 validation text. Cached: every caller gets the same object."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pruner.data import load_text

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([load_text("wikitext2", "valid")[:200_000]], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.name_or_path = "tiny-bpe-300"
    return fast


def random_windows(n: int = 8, length: int = 24, seed: int = 0, vocab: int = TINY["vocab_size"]) -> torch.Tensor:
    """Seeded random token windows ``[n, length]``."""
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def uneven_model(arch: str = "llama"):
    """A tiny model pruned to different widths per layer (one layer left whole, so the widest is the original)."""
    from pruner.model.structure import LayerCut, apply_patch, build_cut

    model = tiny_model(arch)
    apply_patch(model, build_cut(model, {
        0: LayerCut([0, 2, 3], list(range(0, 96, 2))),
        2: LayerCut([1], list(range(96))),
        3: LayerCut([0, 1, 2, 3], [5, 7, 11, 40, 41, 90]),
    }))
    return model


#: Python source that makes a fresh interpreter behave as if this project were not installed (for tests that
#: prove an export loads with plain transformers): importing ``pruner``, ``studio`` or ``visualizations`` fails.
HIDE_PROJECT = "import sys\nfor _name in ('pruner', 'studio', 'visualizations'):\n    sys.modules[_name] = None\n"
