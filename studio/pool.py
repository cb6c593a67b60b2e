"""The studio's visitors and the memory they hold (a Hugging Face Space is one process for everybody).

A visitor's session starts on the shared startup model and costs nothing; its private working copy is made only
when it first changes the model (a prune step, training, Adapt-Accel). The pool

* bounds the model copies that sessions hold (``max_private``: private working copies, and the one extra copy a
  running comparison of methods holds): a visitor who would be one too many is told that the studio is full and to
  try again in a minute;
* frees a session's models when its tab closes (Gradio's ``unload`` event) — Gradio itself keeps closed tabs'
  state for an hour, which at ~0.5 GB per copy is what exhausted memory;
* frees the models of a session idle for ``idle_seconds`` (the visitor is told on the next click).
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time

from .workspace import SessionError

#: Defaults sized for a 16 GB Space and the 135 M default model (about 0.55 GB per copy in float32, and a
#: Taylor importance pass peaks near 2.5 GB): four private copies at once leave room for the measurement.
MAX_PRIVATE = 4
IDLE_SECONDS = 15 * 60


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the operating system (glibc keeps them otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the allocator decides
        pass


class SessionPool:
    """Live sessions by browser-session key, and how many of them hold a private model copy."""

    def __init__(self, max_private: int = MAX_PRIVATE, idle_seconds: float = IDLE_SECONDS):
        self.max_private = max_private
        self.idle_seconds = idle_seconds
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    def add(self, key: str, session) -> None:
        """Register a new session; it may make a private copy only through :meth:`claim`."""
        session.work.before_private = self.claim
        with self._lock:
            old = self._sessions.pop(key, None)
            self._sessions[key] = session
        if old is not None and old is not session:
            old.close()
        self.sweep()

    def claim(self, work, extra: bool = False) -> None:
        """Called (with its workspace) before a session makes its private copy, or with ``extra`` before it takes
        one more copy beside the one it holds (a comparison): refuses when the studio is full. Every copy counts,
        so a comparison is one more copy for as long as it runs."""
        self.sweep()
        with self._lock:
            held = sum(s.work.models_held for s in self._sessions.values() if s.work is not work)
        if extra:
            held += work.models_held
        if held >= self.max_private:
            raise SessionError(f"The studio is full: {held} model copies are in use by visitors right now. Try again "
                               "in a minute (measuring, previews and evaluation still work).")

    def release(self, key: str) -> None:
        """The tab closed: free the session's models now."""
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.close()
            release_memory()

    def sweep(self, now: float | None = None) -> int:
        """Free the models of sessions idle longer than ``idle_seconds``; returns how many were freed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [(k, s) for k, s in self._sessions.items()
                    if not s.work.busy and now - s.work.last_used > self.idle_seconds]
            for k, _ in idle:
                del self._sessions[k]
        for _, s in idle:
            s.close(reason=f"it was idle for more than {self.idle_seconds / 60:.0f} minutes")
        if idle:
            release_memory()
        return len(idle)

    def stats(self) -> dict:
        with self._lock:
            sessions = list(self._sessions.values())
        return {"sessions": len(sessions), "private_copies": sum(s.work.models_held for s in sessions),
                "max_private": self.max_private, "idle_seconds": self.idle_seconds}
