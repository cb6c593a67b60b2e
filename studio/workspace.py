"""The models of one studio session and their lifecycle: the working model and its :class:`pruner.Pruner`, the
untouched original, one task at a time, cancel, undo and reset.

Everything else in a session (the schedule view, evaluation, training, export) reads the workspace and is told
when the working model changes, so that what it shows never describes a model that is gone.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pruner import PrunerError, adapter_for, count_parameters, describe, layer_widths
from pruner.explore import Experiment, History
from pruner.pruning.pruner import Pruner, PruneRecord, StepRecord

from .settings import StudioSettings


class SessionError(PrunerError):
    """A request the session cannot carry out, with a message meant for the page."""


#: What happened to the working model, as told to a session's parts: a step was cut, undone, the weights were
#: trained (or Adapt-Accel changed shape and weights), the model was reset to the original, or another model
#: took its place (a session file or an exported zip loaded: like a reset, nothing said of the old one holds).
CHANGES = ("step", "undo", "train", "reset", "load")


class Workspace:
    """The working model, the original and the pruner of one session.

    With a shared ``original`` (the studio's startup model, shared by every visitor) the working model *is* the
    original until the first change: :meth:`ensure_private` makes the private copy then (and asks
    ``before_private`` first, which the visitor pool uses to bound memory). Measuring, previews and evaluation
    only read the model, so they run on the shared one.
    """

    def __init__(self, model: nn.Module, tokenizer, original: nn.Module | None = None, name: str = "model",
                 settings: StudioSettings | None = None, keep_history: int = 3):
        adapter_for(model)  # fail early on an unsupported architecture
        self.name = name
        self.tokenizer = tokenizer
        # the pristine model: never pruned, may be shared read-only between sessions
        self.original = original if original is not None else copy.deepcopy(model)
        self._copy_on_write = model is self.original  # the working model starts as the original itself
        self.own_original = original is None  # the original belongs to this session alone (not shared)
        self.original.eval()
        self.model = model.eval()
        self.before_private: Callable[..., None] | None = None  # (workspace, extra=False): may refuse
        self.extra_models = 0  # models held beside the working one (a comparison's pruned copy)
        self.closed: str | None = None  # why the session was closed (its models freed)
        self.last_used = time.monotonic()
        self.settings = settings or StudioSettings()
        self.keep_history = keep_history
        self.version = 0  # bumped on every change of the working model
        self._listeners: list[Callable[[str], None]] = []
        self._flag_lock = threading.Lock()
        self._busy = False
        self.surgery = threading.Lock()  # held while the model's structure changes (short)
        self._stop = threading.Event()
        self.pruner = self._new_pruner()
        self.history = History()  # every real run of the session (studio.history builds the experiments)
        self._evaluated: tuple[int, dict] | None = None  # (version, quick perplexity) of the last evaluation
        self._recorded: tuple[int, Experiment] | None = None  # the last experiment of the working model

    def _new_pruner(self, record=None) -> Pruner:
        p = Pruner(self.model, self.tokenizer, self.settings.prune, keep_history=self.keep_history,
                   calibration_text=self.settings.upload)
        if record is not None:
            p.record = record
        return p

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def steps_taken(self) -> int:
        return len(self.pruner.record.steps)

    @property
    def original_total(self) -> int:
        return self.pruner.origin.params["total"]

    def params(self) -> int:
        return count_parameters(self.model)["total"]

    def widths(self):
        return layer_widths(self.model)

    def summary(self) -> dict:
        """Architecture summary of the working model (see :func:`pruner.describe`) plus the original size."""
        d = describe(self.model)
        d["name"] = self.name
        d["original_params"] = self.original_total
        return d

    # ------------------------------------------------------------------ one task at a time, cancel
    @contextlib.contextmanager
    def task(self) -> Iterator[None]:
        """Hold the session for one task. A flag, not a thread-owned lock: a UI generator may be resumed in
        different worker threads."""
        self.check_open()
        self.last_used = time.monotonic()
        with self._flag_lock:
            if self._busy:
                raise SessionError("This session is busy with another task; wait for it or press Cancel")
            self._busy = True
        self._stop.clear()
        try:
            yield
        finally:
            self.last_used = time.monotonic()
            with self._flag_lock:
                self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def cancel(self) -> None:
        """Ask the running task to stop at the next safe point (the model stays intact)."""
        self._stop.set()

    def clear_cancel(self) -> None:
        self._stop.clear()

    @property
    def should_stop(self) -> Callable[[], bool]:
        return self._stop.is_set

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ settings
    def configure(self, settings: StudioSettings) -> None:
        """Apply new settings to the next steps (checked against the model by the library first; the model is not
        touched). The one way settings change: afterwards ``settings.prune`` is the pruner's config."""
        try:
            self.pruner.configure(settings.prune, settings.upload)
        except PrunerError as exc:
            raise SessionError(str(exc)) from exc
        self.settings = settings

    # ------------------------------------------------------------------ shared or private, open or closed
    @property
    def private(self) -> bool:
        """True once the working model is this session's own copy."""
        return self.model is not None and self.model is not self.original

    @property
    def holds_memory(self) -> bool:
        """True when the session holds a model of its own (a private copy, or an original loaded for it alone)."""
        return self.model is not None and (self.private or self.own_original)

    @property
    def models_held(self) -> int:
        """Model copies this session holds beyond the shared original: its own working copy (or its own original)
        and any extra copy in use (what the visitor pool counts)."""
        return int(self.holds_memory) + self.extra_models

    @contextlib.contextmanager
    def extra_model(self) -> Iterator[None]:
        """Hold one more model copy for the duration (a comparison prunes a copy of the original): the visitor pool
        is asked first, as for a private copy, and may refuse."""
        self.check_open()
        if self.before_private is not None:
            self.before_private(self, extra=True)
        self.extra_models += 1
        try:
            yield
        finally:
            self.extra_models -= 1

    def ensure_private(self) -> None:
        """Make the working model this session's own copy before its first change (a no-op when it is)."""
        self.check_open()
        if self.private:
            return
        if self.before_private is not None:
            self.before_private(self)  # may refuse: the studio is full
        with self.surgery:
            self.model = copy.deepcopy(self.original).eval()
            self.pruner = self._new_pruner(self.pruner.record)

    def check_open(self) -> None:
        if self.closed is not None:
            raise SessionError(f"This session was closed because {self.closed}, and its models were freed; "
                               "reload the page to start a new one")

    def close(self, reason: str = "its tab was closed") -> None:
        """Free the models (the session can no longer be used)."""
        self.closed = reason
        self.model = self.original = self.pruner = None

    # ------------------------------------------------------------------ the history of runs
    def record(self, experiment: Experiment, of_working_model: bool = True) -> Experiment:
        """Add a run to the history. A run that left the working model as it is now takes the quick perplexity
        measured on it since (or later, see :meth:`evaluated`) unless it brings its own."""
        if of_working_model:
            if experiment.measured is None and self._evaluated is not None and self._evaluated[0] == self.version:
                experiment.measured = dict(self._evaluated[1])
            self._recorded = (self.version, experiment)
        return self.history.add(experiment)

    def evaluated(self, perplexity: dict) -> None:
        """The working model's quick perplexity was measured: it completes the last run of this model that has none."""
        self._evaluated = (self.version, perplexity)
        if self._recorded is not None and self._recorded[0] == self.version and self._recorded[1].measured is None:
            self._recorded[1].measured = dict(perplexity)

    # ------------------------------------------------------------------ changes of the working model
    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(change)`` (one of :data:`CHANGES`) after every change of the working model."""
        self._listeners.append(listener)

    def changed(self, change: str) -> None:
        self.version += 1
        for fn in self._listeners:
            fn(change)

    def adopt(self, sparsity: list[float] | None = None) -> None:
        """After training or Adapt-Accel changed the model outside the pruner: a fresh Pruner on it that keeps the
        record (the undo history is cleared, since undoing a step would also undo the training)."""
        self.pruner = self._new_pruner(self.pruner.record)
        self.pruner.adopt(sparsity=sparsity)
        self.changed("train")

    def step(self, importance, should_stop) -> StepRecord:
        self.ensure_private()
        with self.surgery:
            rec = self.pruner.step(None, importance=importance, should_stop=should_stop)
        self.changed("step")
        return rec

    def undo(self) -> StepRecord:
        """Undo the last step (up to ``keep_history`` steps back)."""
        with self.task():
            with self.surgery:
                rec = self.pruner.undo()
            if rec is None:
                raise SessionError(f"Nothing to undo (the history keeps the last {self.keep_history} steps)")
            self.changed("undo")
            return rec

    def replace_model(self, model: nn.Module, record: PruneRecord | None = None) -> None:
        """Another model takes the working model's place (a loaded session file or exported zip): it must descend
        from this session's original (the same architecture and original widths; checked by the caller), becomes
        this session's own copy (the visitor pool is asked first) and keeps ``record`` as its pruning record."""
        self.check_open()
        if not self.private and self.before_private is not None:
            self.before_private(self)  # may refuse: the studio is full
        with self.surgery:
            old = (self.model, self.pruner)
            self.model = model.eval()
            try:
                self.pruner = self._new_pruner(record)
                if record is not None:
                    self.pruner.adopt()  # the record's final sizes are the model's
            except BaseException:
                self.model, self.pruner = old
                raise
        self.changed("load")

    def reset(self) -> None:
        """Back to the original model: the shared one again (the private copy is freed), or a fresh copy when
        this session owns its original."""
        with self.task():
            with self.surgery:
                self.model = self.original if self._copy_on_write else copy.deepcopy(self.original).eval()
                self.pruner = self._new_pruner()
            self.changed("reset")
