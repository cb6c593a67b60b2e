"""Output paths: checked before any work starts, and replaced only when what they hold was written here.

A finished prune must never be lost to an output path that turns out to be unusable after an hour of work, and
``--force`` must never delete a user's files. Every folder this project writes (a saved model, an export) gets a
manifest, :data:`MANIFEST`, listing each file it wrote there with its size; ``--force`` replaces a folder only
when every file in it, at any depth, is listed there unchanged — anything else (a file of the user's, a
subfolder, a file edited since, a folder without a manifest) keeps the folder as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pruner.errors import OutputError

#: The list of files this project wrote into a folder (relative path → size in bytes).
MANIFEST = ".adapt-pruner-files.json"
MANIFEST_FORMAT = "adapt-pruner-files/1"


def _listing(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every entry below ``folder`` that is not a plain directory (files, links, empty folders), as relative
    POSIX paths; symbolic links are listed, never followed."""
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for d in list(dirs):
            p = base / d
            if p.is_symlink() or not any(p.iterdir()):
                dirs.remove(d)
                yield p.relative_to(folder).as_posix(), p
        for f in files:
            p = base / f
            yield p.relative_to(folder).as_posix(), p


def _read_manifest(folder: Path) -> dict[str, int] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            return None
        return {str(k): int(v) for k, v in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_manifest(folder: Path) -> None:
    """List every file now in ``folder`` (at any depth) as written by this project."""
    files = {rel: p.stat().st_size for rel, p in sorted(_listing(folder))
             if rel != MANIFEST and p.is_file() and not p.is_symlink()}
    (folder / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))


def note_written(path) -> None:
    """Add a file this project just wrote to the manifest of the folder it lies in (a report saved inside a
    model folder), so that a later ``--force`` may replace it too; nothing happens outside such a folder."""
    path = Path(path)
    folder = path.parent
    files = _read_manifest(folder) if (folder / MANIFEST).is_file() else None
    if files is None or not path.is_file():
        return
    files[path.name] = path.stat().st_size
    (folder / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))


def foreign_files(folder: Path) -> list[str]:
    """Entries of ``folder`` (relative paths, at any depth, sorted) that this project did not write there: not in
    its manifest, changed in size since, links, empty folders — everything when there is no manifest."""
    folder = Path(folder)
    own = _read_manifest(folder) or {}
    out = []
    for rel, p in _listing(folder):
        if rel == MANIFEST and own:
            continue
        if rel not in own or p.is_symlink() or not p.is_file() or p.stat().st_size != own[rel]:
            out.append(rel)
    return sorted(out)


def check_output_folder(path, force: bool = False, what: str = "output folder",
                        allow: str = "pass overwrite=True") -> Path:
    """Raise :class:`OutputError` unless ``path`` can receive a folder: absent (and creatable), empty, or — with
    ``force`` — a folder holding only files this project wrote there (its manifest, :data:`MANIFEST`). Nothing is
    created or deleted. ``allow`` says how the caller's user allows replacing a folder ("use --force" on the
    command line)."""
    out = Path(path).expanduser()
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise OutputError(f"The {what} '{out}' is a file; name a folder")
    if out.is_dir() and any(out.iterdir()):
        _refuse_foreign(out, what)
        if not force:
            raise OutputError(f"The {what} '{out}' exists and is not empty; choose another folder, or {allow} to "
                              "replace it")
    _check_writable(out if out.is_dir() else _first_existing_parent(out), what, out)
    return out


def _refuse_foreign(out: Path, what: str) -> None:
    foreign = foreign_files(out)
    if not foreign:
        return
    shown = ", ".join(foreign[:4]) + (" …" if len(foreign) > 4 else "")
    why = "" if (out / MANIFEST).is_file() else f" (it has no {MANIFEST} listing what this project wrote there)"
    raise OutputError(f"The {what} '{out}' holds files this project did not write ({shown}){why}; it is never "
                      "replaced, even when asked to: choose an empty or new folder")


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


def _overlap(a: Path, b: Path) -> str:
    """How path ``a`` relates to ``b``: "is", "lies inside", "contains" or "" (resolved, links followed)."""
    a, b = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "contains"
    return ""


def check_no_alias(inputs: dict[str, object], folders: dict[str, object], files: dict[str, object]) -> None:
    """Refuse, before any work, outputs that would overwrite what the command reads or each other: an output
    folder that is, lies inside or contains an input; an output file that is an input or lies inside an input
    folder; an output file that is an output folder. ``inputs`` / ``folders`` / ``files`` map an argument's name
    (``--model``) to its path; None and paths that do not exist (inputs) are skipped."""
    ins = {k: Path(str(v)).expanduser() for k, v in inputs.items() if v is not None and Path(str(v)).expanduser().exists()}
    outs = {k: v for k, v in {**folders, **files}.items() if v is not None}
    for name, out in outs.items():
        for src_name, src in ins.items():
            rel = _overlap(Path(str(out)), src)
            if rel and (name in folders or rel != "contains"):
                raise OutputError(f"{name} '{out}' {rel} {src_name} '{src}': writing there would replace what this "
                                  "command reads; choose another place")
    for fname, f in files.items():
        for dname, d in folders.items():
            if f is not None and d is not None and _overlap(Path(str(f)), Path(str(d))) == "is":
                raise OutputError(f"{fname} '{f}' is the same path as {dname}: the report needs a file of its own "
                                  "(e.g. next to the folder)")


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


def rescue_folders(name: str) -> list[Path]:
    """Fresh places for work whose intended output failed, best first: the current folder, then the system's
    temporary folder (those that are writable now)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = []
    for base in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            _check_writable(base, "rescue folder", base)
        except OutputError:
            continue
        out.append(base / f"adapt-pruner-rescue-{name}-{stamp}")
    return out


def rescue_folder(name: str) -> Path:
    """The first of :func:`rescue_folders` (a fresh temporary folder when neither place is writable)."""
    places = rescue_folders(name)
    return places[0] if places else Path(tempfile.mkdtemp(prefix=f"adapt-pruner-rescue-{name}-"))


def replace_folder(new: Path, out: Path, what: str = "output folder") -> None:
    """Move the finished folder ``new`` into place as ``out``, with a manifest of the files in it. An existing
    ``out`` is checked again (a file of the user's may have appeared during the work), moved aside and only
    deleted once the move has succeeded, so a failure keeps the old folder (and ``new``)."""
    write_manifest(new)
    old = None
    if out.exists():
        if out.is_dir() and any(out.iterdir()):
            _refuse_foreign(out, what)
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
