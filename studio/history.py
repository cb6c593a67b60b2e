"""The studio's memory: every real run of a session kept as a :class:`pruner.explore.Experiment` in the
workspace's :class:`pruner.explore.History` (``work.history``), and the studio's settings as plain data (for a
history entry, a session file, and "load its settings" back into the sliders).

What is recorded, one experiment each:

* ``prune``: a "Prune one step" (one step), or a "Run to target" (all the steps that run kept, cancelled or not);
* ``compare``: every method of a comparison that reached the target, and the uniform baseline of the Studio tab;
* ``accel``: an Adapt-Accel run that completed at least one stage;
* ``train``: a Train round that took at least one optimiser step.

Each holds the settings it ran with (the :class:`pruner.PruneConfig` fields flat, as the library's history reads
them, and the studio's own under ``"studio"``: training, the quick perplexity, budgets), the parameters and their
share of the original, the quick perplexity measured on the result (with its dataset, split and window) when one
was, the widths of every *original* layer (None: removed whole) and the seconds it took.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields, replace

from pruner import PrunerError
from pruner.data import CalibrationText
from pruner.errors import DataError
from pruner.evaluation.perplexity import PerplexityConfig
from pruner.explore import Experiment, History
from pruner.methods import method_class
from pruner.training.train import TrainConfig

from .layers import LayerMap
from .settings import StudioSettings
from .workspace import SessionError, Workspace

#: The studio's own settings (beside the library's three configs).
OWN = ("criterion_choice", "max_new_tokens", "train_tokens", "stages", "accel_tokens")


# ---------------------------------------------------------------------- settings as data
def studio_part(s: StudioSettings) -> dict:
    """What the studio adds to a :class:`PruneConfig`: its own settings, training and the quick perplexity."""
    return {**{k: getattr(s, k) for k in OWN}, "train": s.train.to_dict(), "quick_perplexity": s.quick_ppl.to_dict()}


def settings_dict(s: StudioSettings) -> dict:
    """All of the settings as JSON-ready data (the uploaded calibration text by its name; the text travels apart)."""
    return {"prune": s.prune.to_dict(), **studio_part(s), "upload": s.upload.name if s.upload is not None else None}


def _train(d: dict | None, base: TrainConfig) -> TrainConfig:
    if not d:
        return base
    known = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in d.items() if k in known}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return TrainConfig(**kw)


def _quick(d: dict | None, base: PerplexityConfig) -> PerplexityConfig:
    if not d:
        return base
    known = {f.name for f in fields(PerplexityConfig)}
    return PerplexityConfig(**{k: v for k, v in d.items() if k in known})


def _own(part: dict) -> dict:
    out = {}
    for k in OWN:
        if k in part and part[k] is not None:
            out[k] = str(part[k]) if k == "criterion_choice" else int(part[k])
    return out


def settings_from_dict(d: dict, base: StudioSettings | None = None, upload: CalibrationText | None = None,
                       what: str = "the settings") -> StudioSettings:
    """The settings of :func:`settings_dict` back (validated by the library's configs); a problem is one line."""
    from pruner.config import PruneConfig

    base = base or StudioSettings()
    try:
        known = {f.name for f in fields(PruneConfig)}
        prune = PruneConfig(**{k: v for k, v in (d.get("prune") or {}).items() if k in known})
        return replace(base, prune=prune, train=_train(d.get("train"), base.train),
                       quick_ppl=_quick(d.get("quick_perplexity"), base.quick_ppl), upload=upload, **_own(d))
    except (PrunerError, TypeError, ValueError, AttributeError) as exc:
        raise SessionError(f"{what} cannot be used: {exc}") from exc


def settings_of(e: Experiment, base: StudioSettings) -> tuple[StudioSettings, list[str]]:
    """A run's settings as the studio's (its schedule and calibration; training and the quick perplexity where the
    run was the studio's), and notes on what could not be brought back."""
    try:
        prune = e.prune_config()
    except (PrunerError, TypeError, ValueError) as exc:
        raise SessionError(f"The settings of run {e.id} cannot be used: {exc}") from exc
    notes = []
    if not isinstance(e.settings.get("calibration", ""), str):
        notes.append("it calibrated on an uploaded text, which a history does not hold: the corpus is now "
                     f"'{prune.calibration}'")
    part = e.settings.get("studio") or {}
    own = _own(part)
    if "criterion_choice" not in own and method_class(prune.method).criterion is None:
        own["criterion_choice"] = prune.criterion
    try:
        s = replace(base, prune=prune, train=_train(part.get("train"), base.train),
                    quick_ppl=_quick(part.get("quick_perplexity"), base.quick_ppl), upload=None, **own)
    except (PrunerError, TypeError, ValueError) as exc:
        raise SessionError(f"The settings of run {e.id} cannot be used: {exc}") from exc
    return s, notes


# ---------------------------------------------------------------------- building the experiments
def full_widths(work: Workspace) -> list[dict | None]:
    """The working model's widths per original layer (None: removed by depth pruning)."""
    rec = work.pruner.record
    return LayerMap.of(work.pruner.origin, rec.steps, rec.original_widths).full_widths(work.widths())


def run_settings(s: StudioSettings, config: dict) -> dict:
    """An experiment's settings: a :class:`PruneConfig`'s fields flat (as the record writes them: an uploaded text
    by its facts) and the studio's own under ``"studio"``, as JSON has them (what a saved history gives back)."""
    return json.loads(json.dumps({**config, "studio": studio_part(s)}))


def of_working_model(work: Workspace, kind: str, s: StudioSettings, seconds: float, notes: str = "",
                     measured: dict | None = None) -> Experiment:
    """An experiment of the working model as it is now (a step, a run, a Train round, Adapt-Accel)."""
    params = work.params()
    return Experiment(kind=kind, settings=run_settings(s, work.pruner.config_record()), params=params,
                      fraction=params / work.original_total, model=work.name, measured=measured,
                      seconds=float(seconds), widths=full_widths(work), notes=notes)


def record_steps(work: Workspace, s: StudioSettings, steps: Sequence, what: str) -> Experiment | None:
    """A prune (one step or a run) that kept ``steps``: its seconds are theirs (measure and cut)."""
    if not steps:
        return None
    first, last = steps[0].index + 1, steps[-1].index + 1
    which = f"step {first}" if first == last else f"steps {first}–{last}"
    seconds = sum(r.seconds_importance + r.seconds_surgery for r in steps)
    return work.record(of_working_model(work, "prune", s, seconds, f"{what}: {which}"))


def copy_widths(pruner) -> list[dict | None]:
    """The widths per original layer of the model a :class:`pruner.Pruner` pruned (None: removed)."""
    rec = pruner.record
    return LayerMap.of(pruner.origin, rec.steps, rec.original_widths).full_widths(pruner.widths())


def record_copy(work: Workspace, s: StudioSettings, record, widths, measured: dict | None, notes: str,
                kind: str = "compare") -> Experiment:
    """A run on a copy of the original (a method of a comparison, the uniform baseline): its record's settings,
    size and seconds; the working model is not what it describes."""
    params = record.final_params["total"]
    return work.record(Experiment(kind=kind, settings=run_settings(s, dict(record.config)), params=params,
                                  fraction=params / record.original_params["total"], model=work.name,
                                  measured=dict(measured) if measured else None, seconds=float(record.seconds_total),
                                  widths=list(widths), notes=notes), of_working_model=False)


# ---------------------------------------------------------------------- reading a history file
def read_history(path) -> History:
    """A history file (JSON or CSV, by its name), or one line saying why it is not one."""
    from pathlib import Path

    name = Path(path).name
    try:
        return History.load(path)
    except DataError as exc:
        raise SessionError(f"'{name}' is not a history file: {exc}") from exc
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise SessionError(f"'{name}' is not a history file ({type(exc).__name__}: {exc})") from exc


def merge(work: Workspace, other: History) -> int:
    """Continue from ``other``: its runs not already here (by id) are appended; returns how many."""
    n = len(work.history)
    work.history.extend(other)
    return len(work.history) - n
