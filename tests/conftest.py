"""Shared fixtures: tiny random-initialised models (Llama / Qwen2 / Mistral with GQA) and a tiny offline tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

torch.set_num_threads(1)  # tiny models: threads only add overhead (and the CI machine has 2 cores)

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    """A tiny random model of an architecture, in eval mode, float32 on CPU."""
    torch.manual_seed(seed)
    kw = {**TINY, **overrides}
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**kw))
    else:
        raise ValueError(arch)
    with torch.no_grad():  # give norms non-trivial weights so a wrong mapping would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE with a 300-token vocabulary, trained offline on WikiText-2 validation text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from pruner.data import load_text

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([load_text("wikitext2", "valid")[:200_000]], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert len(fast) <= TINY["vocab_size"]
    return fast


@pytest.fixture(params=["llama", "qwen2", "mistral"])
def arch(request):
    return request.param


def random_windows(n: int = 8, length: int = 24, seed: int = 0, vocab: int = TINY["vocab_size"]) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def uneven_model(arch: str = "llama"):
    """A tiny model pruned to different widths per layer (one layer left whole, so the widest is the original)."""
    from pruner.structure import LayerCut, apply_patch, build_cut

    model = tiny_model(arch)
    apply_patch(model, build_cut(model, {
        0: LayerCut([0, 2, 3], list(range(0, 96, 2))),
        2: LayerCut([1], list(range(96))),
        3: LayerCut([0, 1, 2, 3], [5, 7, 11, 40, 41, 90]),
    }))
    return model
