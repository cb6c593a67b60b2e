"""A history of runs: every real run of a session (prune to target, each method of a comparison, Adapt-Accel,
training) kept as an :class:`Experiment` — its settings, parameters, predicted and measured quality, time — and
saved as JSON or CSV, both of which load back into the same history.

    history = History()
    history.add(Experiment.from_record(pruner.record, kind="prune", measured=ppl, predicted=what_if.perplexity))
    history.save("runs.json"); History.load("runs.json")   # or runs.csv
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pruner.config import PruneConfig
from pruner.errors import DataError

#: The kinds of runs the studio records.
KINDS = ("prune", "compare", "accel", "train", "what-if")


@dataclass
class Experiment:
    """One run. ``predicted`` / ``measured``: perplexity results (``perplexity()`` dicts: the number and its
    settings) or None; ``widths``: the per-layer widths it reached."""

    kind: str
    settings: dict
    params: int
    fraction: float  # of the original parameters
    model: str = ""
    predicted: dict | None = None
    measured: dict | None = None
    seconds: float = 0.0
    widths: list[dict] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    notes: str = ""

    @property
    def predicted_ppl(self) -> float | None:
        return None if self.predicted is None else self.predicted.get("perplexity")

    @property
    def measured_ppl(self) -> float | None:
        return None if self.measured is None else self.measured.get("perplexity")

    @classmethod
    def from_record(cls, record, kind: str = "prune", measured: dict | None = None, predicted: dict | None = None,
                    notes: str = "") -> Experiment:
        """From a :class:`pruner.PruneRecord` (or its dict)."""
        r = record if isinstance(record, dict) else record.to_dict()
        total = r["final_params"]["total"]
        return cls(kind=kind, settings=dict(r["config"]), params=total,
                   fraction=total / r["original_params"]["total"], model=r.get("source", ""), predicted=predicted,
                   measured=measured, seconds=float(r.get("seconds_total", 0.0)),
                   widths=list(r.get("final_widths") or []), notes=notes)

    @classmethod
    def from_what_if(cls, what_if, model: str = "", notes: str = "") -> Experiment:
        """A what-if kept as an experiment of kind ``what-if`` (a prediction, nothing measured)."""
        return cls(kind="what-if", settings=dict(what_if.settings), params=what_if.params,
                   fraction=what_if.fraction, model=model, predicted=dict(what_if.perplexity),
                   seconds=what_if.seconds, widths=list(what_if.widths), notes=notes)

    def prune_config(self, **overrides) -> PruneConfig:
        """The run's settings as a :class:`PruneConfig` ("load these settings back"): fields a config does not
        have are left out, and a calibration described by its facts (an uploaded text) becomes the default
        corpus — the text itself is not in the history."""
        known = {f.name for f in fields(PruneConfig)}
        kw = {k: v for k, v in self.settings.items() if k in known}
        if not isinstance(kw.get("calibration", ""), str):
            kw.pop("calibration")
        return PruneConfig(**{**kw, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Experiment:
        known = {f.name for f in fields(cls)}
        missing = {"kind", "settings", "params", "fraction"} - set(d)
        if missing:
            raise DataError(f"An experiment needs {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in d.items() if k in known})


#: CSV columns: readable ones first, then the structured fields as JSON (what makes the round trip exact).
SCALAR = ("id", "created", "kind", "model", "params", "fraction", "seconds", "notes")
READABLE = ("method", "target", "amplitude", "step", "attention", "predicted_ppl", "measured_ppl")
STRUCTURED = ("settings", "predicted", "measured", "widths")


class History:
    """The experiments of a session, oldest first."""

    def __init__(self, experiments: list[Experiment] | None = None):
        self.experiments: list[Experiment] = list(experiments or [])

    def __len__(self) -> int:
        return len(self.experiments)

    def add(self, experiment: Experiment) -> Experiment:
        self.experiments.append(experiment)
        return experiment

    def get(self, exp_id: str) -> Experiment:
        for e in self.experiments:
            if e.id == exp_id:
                return e
        raise KeyError(exp_id)

    def extend(self, other: History) -> None:
        """Append the experiments of ``other`` not already here (by id): continuing from an uploaded file."""
        have = {e.id for e in self.experiments}
        self.experiments += [e for e in other.experiments if e.id not in have]

    def rows(self) -> list[dict]:
        """One flat row per experiment (the table, and the scatter of measured perplexity vs parameters)."""
        out = []
        for e in self.experiments:
            row = {k: getattr(e, k) for k in SCALAR}
            row.update({k: e.settings.get(k) for k in READABLE[:5]})
            row.update(predicted_ppl=e.predicted_ppl, measured_ppl=e.measured_ppl)
            out.append(row)
        return out

    # ------------------------------------------------------------------ files
    def to_json(self) -> str:
        return json.dumps({"format": "adapt-pruner-history", "version": 1,
                           "experiments": [e.to_dict() for e in self.experiments]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> History:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"Not a history file (invalid JSON: {exc})") from exc
        items = d.get("experiments") if isinstance(d, dict) else d
        if not isinstance(items, list):
            raise DataError("Not a history file: no list of experiments")
        return cls([Experiment.from_dict(x) for x in items])

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[*SCALAR, *READABLE, *STRUCTURED], lineterminator="\n")
        w.writeheader()
        for e, row in zip(self.experiments, self.rows(), strict=True):
            w.writerow({**row, **{k: json.dumps(getattr(e, k)) for k in STRUCTURED}})
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> History:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not set(STRUCTURED) <= set(reader.fieldnames):
            raise DataError(f"Not a history CSV: it needs the columns {', '.join(STRUCTURED)}")
        out = []
        for row in reader:
            try:
                d = {k: json.loads(row[k]) for k in STRUCTURED}
            except json.JSONDecodeError as exc:
                raise DataError(f"Not a history CSV: a structured column is not JSON ({exc})") from exc
            d.update(id=row["id"], created=row["created"], kind=row["kind"], model=row["model"],
                     params=int(row["params"]), fraction=float(row["fraction"]), seconds=float(row["seconds"]),
                     notes=row["notes"])
            out.append(Experiment.from_dict(d))
        return cls(out)

    def save(self, path) -> Path:
        """Write ``.csv`` as CSV, anything else as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_csv() if path.suffix.lower() == ".csv" else self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path) -> History:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"Cannot read the history file '{path}' ({exc.strerror or exc})") from exc
        return cls.from_csv(text) if path.suffix.lower() == ".csv" else cls.from_json(text)
