"""Will a model fit? The memory plan (:mod:`pruner.training.memory_plan`) for the model named in the picker,
before it is loaded: read from its config alone (a named shape, a shipped model, a local folder, or a hub id's
config where a hub is reachable), for the device the studio would use and the studio's own settings (undo history
of :data:`studio.workspace` length, Adapt-Accel's snapshot)."""

from __future__ import annotations

import re
from pathlib import Path

from pruner.errors import PrunerError
from pruner.runtime.devices import pick_device
from pruner.training.memory_plan import GB, NAMED_SHAPES, model_shape, plan_memory

from .settings import StudioSettings

KEEP_HISTORY = 3  # the studio's undo history (StudioSession's default)


def fit_note(source: str | None, settings: StudioSettings | None = None, device: str | None = None) -> str:
    """One or two lines for the page: "fits / does not fit on <device>, needs about N GB" for pruning and for
    recovery training, or why no plan could be made."""
    name = (source or "").strip() or "default"
    s = settings or StudioSettings()
    dev = str(pick_device(device))
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None
    if hub_id and name.lower() not in NAMED_SHAPES and not Path(name).expanduser().exists():
        # a hub id: its config is a network request (retried for minutes without a hub), not for a picker change
        return (f"Memory plan for **{name}**: made from its config when it loads; before that, "
                f"`adapt-pruner plan-memory --model {name}` reads the config from the hub.")
    try:
        shape = model_shape(name)
        plan = plan_memory(shape, "auto", dev, prune=s.prune, train=s.train, keep_history=KEEP_HISTORY)
    except (PrunerError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"Memory plan for **{name}**: not available before loading ({first[:240]})."
    prune_peak = max((ph for ph in plan.phases if ph.name != "training"), key=lambda ph: ph.bytes)
    train = plan.phase("training")

    def verdict(ph) -> str:
        word = {True: "fits", False: "**does not fit**", None: "needs"}[ph.fits]
        return f"{word}{', needs' if ph.fits is not None else ''} about {ph.bytes / GB:.1f} GB"

    cap = f"{plan.capacity_bytes / GB:.1f} GB available" if plan.capacity_bytes else plan.capacity_source
    return (f"Memory plan for **{name}** ({shape.params_total / 1e6:,.0f} M parameters, {plan.dtype} on {plan.device}, "
            f"{cap}): pruning {verdict(prune_peak)} (peak: {prune_peak.name}); recovery training "
            f"{verdict(train)}. A prediction from the config, before loading (`adapt-pruner plan-memory`).")
