"""Shared fixtures. The tiny models and the tiny tokenizer themselves live in :mod:`pruner.testing`."""

from __future__ import annotations

import pytest
import torch

from pruner.testing import ARCHITECTURES, NEW_ARCHITECTURES
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
