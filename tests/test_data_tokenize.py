"""A corpus is tokenized in pieces (issue 20: the whole text at once held ~0.27 GB of tokenizer output on the
default model), and the ids are exactly those of the whole text."""

from __future__ import annotations

import torch

import pruner.data as data


def whole(tok, text):
    return torch.tensor(data._encode(tok, text), dtype=torch.long)


def test_pieces_give_the_ids_of_the_whole_text(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_CHARS", 2_000)  # many cuts on a short text
    text = data.load_text("wikitext2", "valid")[:60_000]
    ids = data.token_ids(tiny_tokenizer, text)
    assert torch.equal(ids, whole(tiny_tokenizer, text))


def test_the_text_is_cut_into_pieces(tiny_tokenizer, monkeypatch):
    calls = []
    real = data._encode
    monkeypatch.setattr(data, "CHUNK_CHARS", 2_000)
    monkeypatch.setattr(data, "_encode", lambda tok, text: calls.append(len(text)) or real(tok, text))
    data.token_ids(tiny_tokenizer, data.load_text("wikitext2", "valid")[:60_000])
    assert max(calls) < 10_000  # no piece near the whole 60,000 characters


def test_a_tokenizer_that_changes_at_every_cut_reads_the_text_whole(tiny_tokenizer, monkeypatch):
    """A tokenizer that marks the start of each text (like SentencePiece's prefix space): no cut is safe, so the
    text is tokenized whole and the ids are still exact."""

    class Marking:
        def __call__(self, text, **kw):
            return {"input_ids": [1] + tiny_tokenizer(text, add_special_tokens=False)["input_ids"]}

    monkeypatch.setattr(data, "CHUNK_CHARS", 2_000)
    text = data.load_text("wikitext2", "valid")[:20_000]
    assert torch.equal(data.token_ids(Marking(), text), whole(Marking(), text))


def test_calibration_windows_are_unchanged_by_the_pieces(tiny_tokenizer, monkeypatch):
    data._TOKEN_CACHE.clear()
    before = data.calibration_windows(tiny_tokenizer, "wikitext2", n_windows=4, window=32, seed=3)
    data._TOKEN_CACHE.clear()
    monkeypatch.setattr(data, "CHUNK_CHARS", 1_000)
    after = data.calibration_windows(tiny_tokenizer, "wikitext2", n_windows=4, window=32, seed=3)
    data._TOKEN_CACHE.clear()
    assert torch.equal(before, after)
