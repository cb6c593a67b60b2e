"""The schedule's number inputs in the page's own words: every value a visitor types is checked here, against the
control's range, before Gradio's own bounds check could answer with its raw "Value 0 is less than minimum value
30" toast. A bad value is replaced by the control's last good one and explained in one line.

:class:`FreeSlider` is a ``gr.Slider`` whose server side passes any typed value (or a cleared box, None)
through to the handler; :func:`check` decides and words the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr

from pruner.methods import method_class

from . import text


class FreeSlider(gr.Slider):
    """A ``gr.Slider`` whose server side hands the handler what was typed (out of range, or None for a cleared box)
    instead of raising Gradio's error: :func:`check` explains the problem next to the control and keeps the last
    good value. (A class, not a patched instance: Gradio rebuilds a component from its class once a handler has
    updated it. Gradio writes a stub, ``inputs.pyi``, next to this module; it is not part of the source.)"""

    def get_block_name(self) -> str:
        """The browser draws it as Gradio's own slider."""
        return "slider"

    def preprocess(self, payload: float | None) -> float | None:
        """The typed value as a number (None: a cleared box; NaN: not a number), without the bounds check."""
        if payload is None or payload == "":
            return None
        try:
            return float(payload)
        except (TypeError, ValueError):
            return math.nan


@dataclass(frozen=True)
class Bounds:
    """A control's range and how the page names it."""

    label: str
    low: float
    high: float
    unit: str = ""
    integer: bool = False

    def show(self, v: float) -> str:
        return f"{v:g}{self.unit}"


#: The checked controls of the schedule panel (their ranges are the sliders' ones; ui.py builds them from here).
BOUNDS = {
    "target": Bounds("target size", 30, 99, " %"),
    "amplitude": Bounds("amplitude A", 0, 0.1),
    "step": Bounds("budget per step Δ", 0.5, 10, " %"),
    "n_steps": Bounds("number of steps", 1, 200, integer=True),
    "n_windows": Bounds("calibration windows", 2, 128, integer=True),
    "window": Bounds("window length", 32, 512, " tokens", integer=True),
}


#: The Δ slider's grid (in %): fine enough that "number of steps" can set Δ close to what it asks for.
DELTA_STEP = 0.05


class InputProblem(ValueError):
    """A typed value the control cannot take; the message is the page's one line about it."""


def check(name: str, value, last_good: float | None = None) -> float:
    """``value`` as a number within the control's range, or :class:`InputProblem` saying why not in the page's
    words (and which value is kept)."""
    b = BOUNDS[name]
    kept = "" if last_good is None else text.INPUT_KEPT.format(value=b.show(last_good))
    if value is None:
        raise InputProblem(text.INPUT_EMPTY.format(label=b.label, low=b.show(b.low), high=b.show(b.high)) + kept)
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise InputProblem(text.INPUT_NOT_A_NUMBER.format(label=b.label) + kept)
    if name == "target":
        if 0 < v < 1:  # someone typing a fraction, as the records and the command line use
            raise InputProblem(text.TARGET_FRACTION.format(value=f"{v:g}", percent=f"{100 * v:g}") + kept)
        if v == 0:
            raise InputProblem(text.TARGET_NOTHING.format(value=b.show(v), low=b.show(b.low), high=b.show(b.high))
                               + kept)
        if v >= 100:
            raise InputProblem(text.TARGET_GROW.format(value=b.show(v), high=b.show(b.high)) + kept)
    if not b.low <= v <= b.high:
        raise InputProblem(text.INPUT_RANGE.format(label=b.label, value=b.show(v), low=b.show(b.low),
                                                   high=b.show(b.high)) + kept)
    if b.integer and v != int(v):
        raise InputProblem(text.INPUT_WHOLE.format(label=b.label, value=f"{v:g}") + kept)
    return int(v) if b.integer else v


def custom_sparsity(table, method: str) -> list[float] | None:
    """The custom table's last column (final sparsity in %) as fractions, or None when it is empty; a problem said
    in the page's words: an empty table while the allocation needs it, a cell that is not a number or not a share
    below 100 %."""
    if table is None or not len(table):
        if method_class(method).uses_custom:
            raise InputProblem(text.CUSTOM_EMPTY)
        return None
    out = []
    for layer, v in enumerate(table.iloc[:, -1]):
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not 0 <= x < 100:  # NaN too
            raise InputProblem(text.CUSTOM_CELL.format(layer=layer, value=v))
        out.append(x / 100)
    return out
