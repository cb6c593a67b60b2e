"""Signals on the command line: SIGTERM (what ``timeout``, ``docker stop`` and batch schedulers send) is handled
like Ctrl-C, and neither cuts a save short.

While a command runs, SIGTERM raises :class:`KeyboardInterrupt` just as Ctrl-C does, so every command's Ctrl-C
path (save what was reached, say how to continue, exit 130) also serves a terminated job. Inside
:func:`deferred` (a save, a report) both are only noted: the save finishes, then :func:`pending` tells the
caller that the user asked to stop, and a further signal while stopping is answered with one line instead of
a traceback. Handlers are only changed on the main thread and are restored when the command ends.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"pending": False}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """For one command: SIGTERM raises KeyboardInterrupt like Ctrl-C; the previous handlers come back after."""
    if not _main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in _SIGNALS}
    signal.signal(signal.SIGTERM, _as_interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _state["pending"] = False
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred(what: str) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until ``what`` (e.g. "the save") is done; a signal meanwhile is noted for
    :func:`pending` and answered with one line."""
    if not _main_thread():
        yield
        return

    def note(signum, frame) -> None:
        _state["pending"] = True
        log(f"{signal.Signals(signum).name} received: finishing {what} first, then stopping")

    old = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def stopping() -> None:
    """The command is already stopping (after a first interrupt): further signals are noted, not raised."""
    if _main_thread():
        def note(signum, frame) -> None:
            log(f"{signal.Signals(signum).name} received: already stopping, finishing what was reached")

        for s in _SIGNALS:
            signal.signal(s, note)


def pending() -> bool:
    """Whether a signal arrived inside :func:`deferred` (the flag is cleared)."""
    seen, _state["pending"] = _state["pending"], False
    return seen


def ignore_from_now() -> None:
    """Ignore Ctrl-C and SIGTERM for the rest of the process (its shutdown, once the command has returned)."""
    if _main_thread():
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)
