"""Output paths: checked before any work starts, and replaced only when what they hold was written here.

A finished prune must never be lost to an output path that turns out to be unusable after an hour of work, and
``--force`` must never delete a user's unrelated files: a folder is replaced only when every file in it is one
that this project writes (a saved model, an export, a report).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import time
from pathlib import Path

from pruner.errors import OutputError

#: Files this project writes into a model or export folder (anything else in a folder makes it foreign).
OWN_FILES = (
    "model.safetensors", "config.json", "generation_config.json", "pruned_widths.json", "pruning_record.json",
    "studio_report.json", "README.md", "*.gguf", "configuration_adapt_pruned.py", "modeling_adapt_pruned.py",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    # Adapt-Accel run folders
    "model", "checkpoints", "checkpoints/*",
)


def _own(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in OWN_FILES)


def foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that this project does not write (sorted)."""
    return sorted(p.name for p in folder.iterdir() if not _own(p.name))


def check_output_folder(path, force: bool = False, what: str = "output folder",
                        allow: str = "pass overwrite=True") -> Path:
    """Raise :class:`OutputError` unless ``path`` can receive a folder: absent (and creatable), empty, or — with
    ``force`` — a folder holding only files this project writes. Nothing is created or deleted. ``allow`` says
    how the caller's user allows replacing a folder ("use --force" on the command line)."""
    out = Path(path).expanduser()
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise OutputError(f"The {what} '{out}' is a file; name a folder")
    if out.is_dir() and any(out.iterdir()):
        foreign = foreign_files(out)
        if foreign:
            shown = ", ".join(foreign[:4]) + (" …" if len(foreign) > 4 else "")
            raise OutputError(f"The {what} '{out}' holds files this project did not write ({shown}); it is never "
                              "replaced, even when asked to: choose an empty or new folder")
        if not force:
            raise OutputError(f"The {what} '{out}' exists and is not empty; choose another folder, or {allow} to "
                              "replace it")
    _check_writable(out if out.is_dir() else _first_existing_parent(out), what, out)
    return out


def check_output_file(path, what: str = "report") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be (over)written as a file."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise OutputError(f"The {what} '{out}' is a folder; name a file")
    if out.exists():
        try:
            with open(out, "a"):
                pass
        except OSError as exc:
            raise OutputError(f"The {what} '{out}' is not writable ({exc.strerror})") from exc
        return out
    _check_writable(_first_existing_parent(out), what, out)
    return out


def _first_existing_parent(path: Path) -> Path:
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    return p


def _check_writable(folder: Path, what: str, target: Path) -> None:
    """A real probe (a temporary file created and removed): permissions, read-only mounts and odd file systems
    all answer the same way."""
    if not folder.is_dir():
        raise OutputError(f"The {what} '{target}' cannot be created: '{folder}' is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".adapt-pruner-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"The {what} '{target}' cannot be written: '{folder}' is not writable "
                          f"({exc.strerror or exc})") from exc


def rescue_folder(name: str) -> Path:
    """A fresh folder for work whose intended output failed: in the current folder if writable, else in the
    system's temporary folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for base in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            _check_writable(base, "rescue folder", base)
        except OutputError:
            continue
        return base / f"adapt-pruner-rescue-{name}-{stamp}"
    return Path(tempfile.mkdtemp(prefix=f"adapt-pruner-rescue-{name}-"))


def replace_folder(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` into place as ``out``. An existing ``out`` is moved aside first and only
    deleted once the move has succeeded, so a failure keeps the old folder (and ``new``)."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}-old{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
