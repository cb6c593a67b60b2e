"""The library's errors. Every error that ``pruner`` raises on purpose derives from :class:`PrunerError`, so a
caller (the command line, the studio, a notebook) can catch one class and show its message; each also keeps the
built-in base it always had (``ValueError`` for bad input), so ``except ValueError`` keeps working."""

from __future__ import annotations


class PrunerError(Exception):
    """Base class of every error the library raises on purpose; its message is meant for the user."""


class ConfigError(PrunerError, ValueError):
    """A setting is out of range or not one of its choices."""


class UnsupportedArchitectureError(PrunerError, ValueError):
    """The model's architecture has no adapter."""


class AllocationError(PrunerError, ValueError):
    """The requested sparsity cannot be allocated (an impossible target, a stalled schedule)."""


class DataError(PrunerError, ValueError):
    """A corpus or text cannot be used (missing package, empty or too short)."""


class ModelLoadError(PrunerError, RuntimeError):
    """A model source cannot be loaded (missing, corrupt, inconsistent, or unreachable)."""


class Cancelled(PrunerError, RuntimeError):
    """Raised when a caller's ``should_stop`` returned True; nothing was changed."""


class OutputError(PrunerError, FileExistsError):
    """An output path cannot be written: it exists and holds other things, it is a file, or it is not writable."""


class ResourceError(PrunerError, MemoryError):
    """The machine ran out of memory; the message names what to reduce. Nothing was changed."""


class ExportError(ModelLoadError):
    """An export cannot be made or read (unsafe source, mismatched folder, existing output, unsupported setting)."""
