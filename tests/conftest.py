"""Shared fixtures. The tiny models and the tiny tokenizer themselves live in :mod:`pruner.testing`."""

from __future__ import annotations

import pytest
import torch

from pruner.testing import ARCHITECTURES, NEW_ARCHITECTURES, tiny_model
from pruner.testing import tiny_tokenizer as _tiny_tokenizer

torch.set_num_threads(1)  # tiny models: threads only add overhead (and the CI machine has 2 cores)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE with a 300-token vocabulary, trained offline on WikiText-2 validation text."""
    return _tiny_tokenizer()


@pytest.fixture(params=ARCHITECTURES)
def arch(request):
    return request.param


@pytest.fixture(params=NEW_ARCHITECTURES)
def new_arch(request):
    """The architectures added later (tests/test_architectures*.py)."""
    return request.param


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama saved as a plain Hugging Face folder (weights and tokenizer)."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d
