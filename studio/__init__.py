"""Adapt-Pruner Studio, the Gradio app: a page (:func:`build_demo`) over per-tab sessions
(:class:`StudioSession`) that call the ``pruner`` library. ``app.py`` at the repository root is the Hugging Face
Space entry point; ``python -m studio`` runs the same thing."""

from .session import StudioSession
from .settings import STUDIO_DEFAULTS, UPLOADED, StudioSettings
from .workspace import SessionError


def build_demo(*args, **kwargs):
    """See :func:`studio.ui.build_demo` (imported on use: the session classes need no Gradio)."""
    from .ui import build_demo as build

    return build(*args, **kwargs)


__all__ = ["STUDIO_DEFAULTS", "UPLOADED", "SessionError", "StudioSession", "StudioSettings", "build_demo"]
