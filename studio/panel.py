"""The schedule panel of one session: one source of truth for what the allocation plot shows.

Every edit of a schedule control says which settings the page now wants previewed (:meth:`SchedulePanel.want`);
a preview computed for other settings — an older edit that finished late — is not drawn
(:meth:`SchedulePanel.current`), and the plot is marked as being recomputed until the wanted one is drawn. The
panel also keeps every checked control's last good value (a bad value typed is replaced by it) and the settings
the plot shows, so that Prune and Run can tell whether they cut the plan on screen.
"""

from __future__ import annotations

import threading

from .inputs import BOUNDS
from .settings import StudioSettings


class SchedulePanel:
    """Which settings the page wants previewed, which ones the plot shows, and the controls' last good values."""

    def __init__(self, settings: StudioSettings):
        p = settings.prune
        self.good: dict[str, float] = {"target": round(100 * p.target), "amplitude": p.amplitude,
                                       "step": 100 * p.step, "n_steps": 12, "n_windows": p.n_windows,
                                       "window": p.window}
        assert set(self.good) == set(BOUNDS)
        self._lock = threading.Lock()
        self.wanted: StudioSettings | None = None  # the latest edit's settings
        self.shown: StudioSettings | None = None  # the settings the plot was drawn for
        self.generation = 0  # bumped by every edit

    def want(self, settings: StudioSettings) -> int:
        """An edit: ``settings`` are now the ones to preview (any older preview still running is superseded)."""
        with self._lock:
            self.generation += 1
            self.wanted = settings
            return self.generation

    def current(self, settings: StudioSettings) -> bool:
        """True when a preview for ``settings`` is still the one the page wants (no newer edit came in)."""
        with self._lock:
            return self.wanted is None or self.wanted == settings

    def drawn(self, settings: StudioSettings) -> None:
        """The plot now shows the plan for ``settings``."""
        with self._lock:
            self.shown = settings

    @property
    def stale(self) -> bool:
        """True while the plot shows another plan than the wanted one."""
        with self._lock:
            return self.wanted is not None and self.wanted != self.shown
