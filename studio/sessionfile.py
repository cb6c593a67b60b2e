"""A studio session in one file, and continuing from an exported model.

A **session file** is a zip::

    session.json              {"format": "adapt-pruner-studio-session", "version": 1, "model", "settings", ...}
    history.json              the runs of the session (pruner.explore.History)
    calibration_upload.txt    the uploaded calibration text, when the settings use one
    model/                    optionally: the working model, as pruner.save_pruned writes it (its pruning record
                              inside), in its own dtype, so that it loads back with identical logits

Loading one puts the settings back, merges its history into the session's (runs already there, by id, are not
doubled) and, when it holds a model, makes that model the working model. **An exported zip** (the Export tab's
download, or any zip of a folder :func:`pruner.save_pruned` wrote) loads the same way: its model becomes the
working model with its pruning record, and the settings of its ``studio_report.json`` come back when it has one.

Everything is read, loaded and checked first (:func:`read`); only then does the session change (:func:`apply`), so
a file that cannot be used leaves the session exactly as it was, and :class:`SessionError` says why in one line.
A model must descend from the session's original model (the same architecture, depth and original size): the
original stays the reference for distillation, the quick evaluation's side-by-side and Reset.
"""

from __future__ import annotations

import json
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from torch import nn

from pruner import PrunerError, adapter_for, load_model, save_pruned
from pruner.data import CalibrationText
from pruner.explore import History
from pruner.io.formats import RECORD_FILE, WIDTHS_FILE
from pruner.model.structure import count_parameters, origin_of
from pruner.pruning.pruner import Pruner, PruneRecord

from .history import merge, settings_dict, settings_from_dict
from .panel import SchedulePanel
from .settings import StudioSettings
from .workspace import SessionError

FORMAT = "adapt-pruner-studio-session"
SESSION_FILE, HISTORY_FILE, UPLOAD_FILE, MODEL_DIR = "session.json", "history.json", "calibration_upload.txt", "model"
REPORT_FILE = "studio_report.json"  # what the Export tab puts beside the model
MAX_UNPACKED = 32 * 2**30  # bytes: a zip that unpacks to more is refused before anything is written


# ---------------------------------------------------------------------- saving
def save_session(session, out_dir=None, with_model: bool = False) -> Path:
    """Write the session's settings and history (and with ``with_model`` the working model) as one zip; returns
    its path."""
    work = session.work
    with work.task():
        out = Path(out_dir or tempfile.mkdtemp(prefix="adapt-pruner-session-"))
        out.mkdir(parents=True, exist_ok=True)
        s = work.settings
        meta = {"format": FORMAT, "version": 1, "model": work.name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "settings": settings_dict(s),
                "runs": len(work.history), "with_model": bool(with_model), "steps": work.steps_taken,
                "params": work.params(), "original_params": work.original_total}
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        zpath = out / f"studio-session-{stamp}{'-with-model' if with_model else ''}.zip"
        with tempfile.TemporaryDirectory(prefix="adapt-pruner-session-") as tmp:
            if with_model:
                save_pruned(work.model, work.tokenizer, Path(tmp) / MODEL_DIR, record=work.pruner.record,
                            overwrite=True)
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(SESSION_FILE, json.dumps(meta, indent=1, default=str))
                z.writestr(HISTORY_FILE, work.history.to_json())
                if s.upload is not None:
                    z.writestr(UPLOAD_FILE, s.upload.text)
                for f in sorted(Path(tmp).rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(tmp).as_posix())
        return zpath


# ---------------------------------------------------------------------- reading (the session is not touched)
@dataclass
class Loaded:
    """What a file brings: settings, history, a model with its pruning record; what it is, and notes."""

    kind: str  # "session" or "model" (an exported zip)
    name: str
    settings: StudioSettings | None = None
    history: History | None = None
    model: nn.Module | None = None
    record: PruneRecord | None = None
    notes: list[str] = field(default_factory=list)


def _unpack(path: Path, into: Path) -> None:
    """Extract a zip, refusing members outside it, links and more than :data:`MAX_UNPACKED` bytes."""
    with zipfile.ZipFile(path) as z:
        members = z.infolist()
        for m in members:
            p = PurePosixPath(m.filename)
            if p.is_absolute() or ".." in p.parts or "\\" in m.filename:
                raise SessionError(f"'{path.name}' holds a file outside its own folder ({m.filename}); refusing it")
            if (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise SessionError(f"'{path.name}' holds a link ({m.filename}); refusing it")
        if sum(m.file_size for m in members) > MAX_UNPACKED:
            raise SessionError(f"'{path.name}' unpacks to more than {MAX_UNPACKED / 2**30:.0f} GB; refusing it")
        z.extractall(into)


def _json(path: Path, what: str) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionError(f"{what} is not readable JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise SessionError(f"{what} is not a JSON object")
    return d


def read(path, work) -> Loaded:
    """Read a session file or an exported zip completely (model loaded and checked against the session's original,
    settings validated against that model); the session is not touched."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise SessionError(f"No such file: '{name}'")
    if not zipfile.is_zipfile(path):
        raise SessionError(f"'{name}' is not a zip: upload a session file (Save session) or an exported model zip "
                           "(Export tab); a history (.json, .csv) goes to “Upload a history”")
    with tempfile.TemporaryDirectory(prefix="adapt-pruner-load-") as tmp:
        root = Path(tmp)
        try:
            _unpack(path, root)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise SessionError(f"'{name}' is a damaged zip ({exc})") from exc
        if (root / SESSION_FILE).is_file():
            out = _read_session(root, name, work)
        else:
            out = _read_export(root, name, work)
    _check_settings(out, work)
    return out


def _read_session(root: Path, name: str, work) -> Loaded:
    meta = _json(root / SESSION_FILE, f"'{name}': {SESSION_FILE}")
    if meta.get("format") != FORMAT:
        raise SessionError(f"'{name}' is not a studio session file ({SESSION_FILE} has format "
                           f"{meta.get('format')!r}, expected {FORMAT!r})")
    if int(meta.get("version") or 0) > 1:
        raise SessionError(f"'{name}' was written by a newer studio (session file version {meta.get('version')})")
    upload = None
    if (root / UPLOAD_FILE).is_file():
        upload_name = (meta.get("settings") or {}).get("upload") or "uploaded text"
        upload = CalibrationText((root / UPLOAD_FILE).read_text(encoding="utf-8"), str(upload_name))
    settings = settings_from_dict(meta.get("settings") or {}, work.settings, upload, f"The settings in '{name}'")
    history = History()
    if (root / HISTORY_FILE).is_file():
        try:
            history = History.from_json((root / HISTORY_FILE).read_text(encoding="utf-8"))
        except (PrunerError, KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"'{name}': its {HISTORY_FILE} is not a history ({exc})") from exc
    out = Loaded("session", name, settings, history)
    if (root / MODEL_DIR).is_dir():
        out.model, out.record, notes = _load_model(root / MODEL_DIR, name, work)
        out.notes += notes
    return out


def _read_export(root: Path, name: str, work) -> Loaded:
    folders = sorted({p.parent for p in root.rglob(WIDTHS_FILE)}) or sorted({p.parent for p in root.rglob("config.json")})
    if not folders:
        raise SessionError(f"'{name}' is neither a session file nor an exported model (no {SESSION_FILE}, no "
                           f"{WIDTHS_FILE}, no config.json inside)")
    if len(folders) > 1:
        raise SessionError(f"'{name}' holds {len(folders)} models; upload the zip of one")
    folder = folders[0]
    out = Loaded("model", name)
    out.model, out.record, out.notes = _load_model(folder, name, work)
    if (folder / REPORT_FILE).is_file():
        report = _json(folder / REPORT_FILE, f"'{name}': {REPORT_FILE}")
        if isinstance(report.get("settings"), dict):
            s = report["settings"]
            out.settings = settings_from_dict(s, work.settings, None, f"The settings in '{name}'")
            if s.get("calibration_upload"):
                out.notes.append("it was calibrated on an uploaded text that the zip does not hold: calibration is now "
                                 f"'{out.settings.prune.calibration}'")
    return out


def _load_model(folder: Path, name: str, work):
    """The model of a saved folder in the session's dtype and device, checked to descend from the session's
    original; its pruning record when it has one that fits it."""
    try:
        model, _ = load_model(folder, device=work.device, dtype=next(work.model.parameters()).dtype, progress=None)
    except PrunerError as exc:
        raise SessionError(f"The model in '{name}' cannot be loaded: {exc}") from exc
    mine, theirs = origin_of(work.original), origin_of(model)
    a, b = adapter_for(work.original).model_type, adapter_for(model).model_type
    if (a, mine.n_layers, mine.params["total"], work.original.config.vocab_size) != (
            b, theirs.n_layers, theirs.params["total"], model.config.vocab_size):
        raise SessionError(f"The model in '{name}' was pruned from a {b} model of {theirs.params['total'] / 1e6:.2f} M "
                           f"parameters ({theirs.n_layers} layers), not from this session's '{work.name}' ({a}, "
                           f"{mine.params['total'] / 1e6:.2f} M, {mine.n_layers} layers): load its original model "
                           "first (“Model”), then this file")
    notes, record = [], None
    if (folder / RECORD_FILE).is_file():
        try:
            record = PruneRecord.from_dict(_json(folder / RECORD_FILE, f"'{name}': {RECORD_FILE}"))
        except (SessionError, TypeError, ValueError, AttributeError) as exc:
            notes.append(f"its pruning record is unreadable ({exc}); a new record starts here")
        if record is not None and (record.final_params or {}).get("total") != count_parameters(model)["total"]:
            notes.append("its pruning record describes another size than its weights; a new record starts here")
            record = None
    return model, record, notes


def _check_settings(loaded: Loaded, work) -> None:
    """The settings must fit the model they will run on (the loaded one, or the session's)."""
    if loaded.settings is None:
        return
    model = loaded.model if loaded.model is not None else work.model
    try:
        Pruner(model, work.tokenizer, loaded.settings.prune, keep_history=0, calibration_text=loaded.settings.upload)
    except PrunerError as exc:
        raise SessionError(f"The settings in '{loaded.name}' do not fit the model: {exc}") from exc


# ---------------------------------------------------------------------- applying
def apply(session, loaded: Loaded) -> str:
    """Make the session what ``loaded`` says (model, settings, history); returns what changed, in one line."""
    work = session.work
    with work.task():
        if loaded.model is not None:
            work.replace_model(loaded.model, loaded.record)
        if loaded.settings is not None:
            work.configure(loaded.settings)
            session.panel = SchedulePanel(work.settings)
        new = merge(work, loaded.history) if loaded.history is not None else 0
    parts = []
    if loaded.settings is not None:
        parts.append("the settings")
    if loaded.history is not None:
        parts.append(f"{len(loaded.history)} run(s) of history ({new} new)")
    if loaded.model is not None:
        parts.append(f"the model ({work.params() / 1e6:.2f} M parameters, {work.params() / work.original_total:.1%} "
                     f"of the original, {work.steps_taken} step(s) in its record)")
    what = "session file" if loaded.kind == "session" else "exported model"
    return (f"Loaded the {what} '{loaded.name}': " + ", ".join(parts) + "."
            + ("  \n" + "; ".join(loaded.notes) if loaded.notes else ""))


def load(session, path) -> str:
    """:func:`read`, then :func:`apply`: the one call of the page and of a notebook."""
    session.work.check_open()
    if session.work.busy:
        raise SessionError("This session is busy with another task; wait for it or press Cancel")
    return apply(session, read(path, session.work))
