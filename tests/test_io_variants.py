"""Half-precision copies of the cached float32 models (issue 20): the same tensors as converting on load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruner.io.variants import cached_in, variant_dir


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_copy_loads_the_same_tensors_as_converting_the_float32_folder(tiny_llama_folder, dtype):
    folder = cached_in(tiny_llama_folder, dtype)
    assert folder == variant_dir(tiny_llama_folder, dtype) and folder.is_dir()
    converted = AutoModelForCausalLM.from_pretrained(tiny_llama_folder, dtype=dtype).state_dict()
    mapped = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).state_dict()
    assert converted.keys() == mapped.keys()
    for k in converted:
        assert mapped[k].dtype == dtype and torch.equal(converted[k], mapped[k]), k
    assert (folder / "tokenizer.json").is_file()  # everything else is copied


def test_float32_needs_no_copy_and_a_second_call_reuses_the_first(tiny_llama_folder):
    assert cached_in(tiny_llama_folder, torch.float32) == tiny_llama_folder
    first = cached_in(tiny_llama_folder, torch.bfloat16)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert cached_in(tiny_llama_folder, torch.bfloat16) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
