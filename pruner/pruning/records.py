"""The records of a pruning run: what every sub-step measured, decided and did (:class:`StepRecord`), and the run's
(:class:`PruneRecord`), JSON-serialisable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass
class StepRecord:
    """What one sub-step measured, decided and did."""

    index: int
    fraction: float  # share of the full per-step budget used (< 1 for the final, target-meeting step)
    layer_cos: list[float]
    layer_importance: list[float]
    layer_importance_norm: list[float]
    calibration_loss: float | None
    allocated_sparsity: list[float]
    actual_sparsity: list[float]
    constraints: list[str]
    floored_layers: list[int]
    widths: list[dict]
    params_total: int
    params_decoder: int
    fraction_of_original: float
    seconds_importance: float
    seconds_surgery: float
    calibration_tokens: int
    importance_memory: dict | None = None  # the importance pass's peak memory and its ratio to the weights
    method: str = "adaptive"
    decision: dict = field(default_factory=dict)  # what the method measured and decided (docs/methods.md)
    removed_layers: list[int] = field(default_factory=list)  # depth pruning: indices before the step
    removed_original_layers: list[int] = field(default_factory=list)  # the same layers in the original model

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneRecord:
    """The record of a pruning run (JSON-serialisable)."""

    config: dict
    model_type: str
    original_params: dict
    original_widths: list[dict]
    start_params: dict
    steps: list[StepRecord] = field(default_factory=list)
    final_params: dict | None = None
    final_widths: list[dict] | None = None
    seconds_total: float = 0.0
    peak_memory_bytes: int | None = None
    peak_memory_kind: str = ""
    device: str = ""
    stopped: str = ""  # "" (target met), "cancelled", "interrupted", or why not: "max_steps: …", "missed: …", "stalled: …"
    source: str = ""  # where the model was loaded from ("default", a folder, a hub id), when known

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = [s.to_dict() if isinstance(s, StepRecord) else s for s in self.steps]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PruneRecord:
        """The record of :meth:`to_dict` (a saved ``pruning_record.json``) back; fields this version does not know
        are left out."""
        known = {f.name for f in fields(cls)}
        step_fields = {f.name for f in fields(StepRecord)}
        out = cls(**{k: v for k, v in d.items() if k in known and k != "steps"})
        out.steps = [StepRecord(**{k: v for k, v in s.items() if k in step_fields}) for s in d.get("steps") or []]
        return out

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
