"""What a plan will cost, before anything is cut: the model evaluated *as if* a plan's final widths were cut.

    from pruner import load_model, Pruner, PruneConfig
    from pruner.explore import Explorer
    model, tok = load_model("default")
    ex = Explorer(Pruner(model, tok, PruneConfig(target=0.8)))
    ex.what_if().perplexity                      # the configured plan
    ex.what_if(config=PruneConfig(target=0.7, method="flap"))

The plan is the one :meth:`pruner.Pruner.preview` returns (the one planner, the same measurement); its steps are
turned into masks by each method (:meth:`pruner.methods.Method.simulate`: removed units zeroed, FLAP's removed
inputs replaced by their calibration means, ShortGPT's layers skipped), composed, and installed as hooks for one
perplexity pass (:func:`pruner.model.masking.masked`). No weight is written: the model afterwards is bit-identical,
also after a cancel or an error.

It is a one-shot estimate with today's scores: a real incremental run re-measures importance between sub-steps, so
its result can be better. The evaluation sample (:class:`EvalSample`) is fixed and is not the calibration text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from pruner.config import PruneConfig
from pruner.errors import AllocationError, ConfigError
from pruner.evaluation.perplexity import format_perplexity, perplexity
from pruner.importance.measure import Importance, measure_importance
from pruner.importance.sensitivity import LEVELS, Sensitivity, measure_sensitivity
from pruner.methods import UnitScores
from pruner.methods.allocation import plan_widths
from pruner.model.masking import LayerMask, compose, masked
from pruner.pruning.planner import Schedule
from pruner.pruning.pruner import Pruner

#: What the estimate is, said next to it wherever it is shown.
ONE_SHOT_NOTE = ("predicted: the plan's final widths masked in one shot with today's scores; a real incremental "
                 "run re-measures between sub-steps and can do better")


@dataclass(frozen=True)
class EvalSample:
    """The fixed evaluation sample of every what-if: the first ``max_tokens`` tokens of WikiText-2 validation in
    non-overlapping ``window``-token windows (the calibration draws from other text unless configured to use
    ``wikitext2``, which :meth:`Explorer.notes` points out)."""

    dataset: str = "wikitext2"
    split: str = "valid"
    window: int = 128
    # 1,024 tokens: a what-if in about 4 s on the default model on a 2-core CPU; over 24 real runs its predictions
    # rank as the 4,096-token ones do (Spearman ρ 0.994 / 0.983 against the measured test perplexity, README)
    max_tokens: int = 1024
    bos: bool = False
    batch_size: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WhatIf:
    """The predicted quality of one plan."""

    settings: dict  # the plan's settings: method, target, amplitude, step, attention, criterion
    params: int  # parameters of the planned result
    fraction: float  # of the original parameters
    reached: bool
    steps: int  # planned sub-steps
    perplexity: dict  # perplexity() result: the number and its settings
    widths: list[dict]
    removed_layers: list[int] = field(default_factory=list)  # indices in the model now
    seconds: float = 0.0  # the masked evaluation
    note: str = ONE_SHOT_NOTE

    @property
    def ppl(self) -> float:
        return self.perplexity["perplexity"]

    def describe(self) -> str:
        return f"predicted perplexity {format_perplexity(self.perplexity)} at {self.fraction:.1%} of the parameters"

    def to_dict(self) -> dict:
        return asdict(self)


def plan_masks(pruner: Pruner, schedule: Schedule, scores: UnitScores,
               config: PruneConfig | None = None) -> dict[int, LayerMask]:
    """The masks (by layer index of the model now) that make the model behave as if ``schedule`` had been cut:
    each step simulated by its method on the scores of the units that survive the steps before, composed."""
    method, geo = pruner.planner_for(config).method, pruner.geo
    widths = pruner.widths()
    alive = list(range(len(widths)))  # the layers not skipped, in the numbering of the model now
    out: dict[int, LayerMask] = {}
    for step in schedule.steps:
        step_masks = method.simulate(step, widths, scores)
        out = compose(out, step_masks, alive)
        if step.remove_layers:
            gone = set(step.remove_layers)
            alive = [a for i, a in enumerate(alive) if i not in gone]
            scores = scores.without_layers(step.remove_layers)
        elif step.keep_groups is not None:
            scores = scores.restricted(step.keep_groups, step.keep_channels, geo)
        widths = step.widths
    return out


class Explorer:
    """What-ifs, sweeps and the sensitivity scan over one pruning session's model (``pruner``), from one importance
    measurement per criterion (the calibration sample of the session's next sub-step, as its real step would
    measure). Nothing here changes the model or the session."""

    def __init__(self, pruner: Pruner, sample: EvalSample | None = None):
        self.pruner = pruner
        self.sample = sample or EvalSample()
        self._measured: dict[tuple, Importance] = {}
        self._baseline: dict | None = None
        self.forward_seconds: float | None = None  # a plain forward over the evaluation sample, once measured
        self._plan_seconds: float | None = None

    # ------------------------------------------------------------------ configurations and measurements
    def config_for(self, config: PruneConfig | None) -> PruneConfig:
        return self.pruner.config if config is None else config

    def measurement(self, config: PruneConfig | None = None,
                    should_stop: Callable[[], bool] | None = None) -> Importance:
        """The importance a plan of ``config`` is made from, measured once per criterion (and sensitivity levels):
        what the session's next :meth:`~pruner.Pruner.measure` would measure for that method."""
        method = self.pruner.planner_for(config).method
        return self._measure(method.measured_criterion, method.sensitivity_levels, should_stop)

    def has_measurement(self, criterion: str | None, levels: tuple | None = None) -> bool:
        """Whether a plan needing this measurement can be made without measuring again."""
        return (criterion, levels) in self._measured or any(
            criterion is None or (crit == criterion and levels is None) for crit, _ in self._measured)

    def _measure(self, criterion: str | None, levels: tuple | None,
                 should_stop: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Importance:
        key = (criterion, levels)
        if key in self._measured:
            return self._measured[key]
        for (crit, _levels), imp in self._measured.items():
            # the layer cosines come with every measurement; a measurement with a table has the scores too
            if criterion is None or (crit == criterion and levels is None):
                return imp
        p = self.pruner
        windows = p.calibration(len(p.record.steps))
        if levels is None:
            imp = measure_importance(p.model, windows, criterion, p.config.batch_size, should_stop,
                                     checkpoint=p.config.checkpoint)
        else:  # the unit scores once, then the table on the same windows: what an importance pass with levels does
            base = self._measure(criterion, None, should_stop)
            if base.group_scores is None:
                raise ConfigError("The sensitivity table ranks units by their scores: it needs a unit criterion")
            table = measure_sensitivity(p.model, windows, base.group_scores, base.channel_scores, levels,
                                        p.config.batch_size, should_stop, progress)
            table.units = {"criterion": criterion}
            imp = replace(base, sensitivity=table, seconds=base.seconds + table.seconds)
        self._measured[key] = imp
        return imp

    def remember(self, importance: Importance, sensitivity_levels: tuple | None = None) -> None:
        """Use an importance measured elsewhere (e.g. the studio's last measurement) for its criterion."""
        self._measured[(importance.criterion, sensitivity_levels)] = importance

    def plan(self, config: PruneConfig | None = None, should_stop: Callable[[], bool] | None = None) -> Schedule:
        """The plan of ``config`` (default: the session's): :meth:`pruner.Pruner.preview` on this measurement."""
        return self.pruner.preview(self.measurement(config, should_stop), config=config)

    def notes(self, config: PruneConfig | None = None) -> list[str]:
        cfg = self.config_for(config)
        out = [ONE_SHOT_NOTE]
        if cfg.calibration == self.sample.dataset:
            out.append(f"the calibration text ({cfg.calibration}) is also where the evaluation sample comes from")
        return out

    # ------------------------------------------------------------------ evaluation
    def _perplexity(self, should_stop: Callable[[], bool] | None) -> dict:
        s, p = self.sample, self.pruner
        return perplexity(p.model, p.tokenizer, s.dataset, s.split, window=s.window, max_tokens=s.max_tokens,
                          bos=s.bos, batch_size=s.batch_size, should_stop=should_stop)

    def baseline(self, should_stop: Callable[[], bool] | None = None) -> dict:
        """The perplexity of the model as it is, on the evaluation sample (measured once)."""
        if self._baseline is None:
            self._baseline = self._perplexity(should_stop)
            self.forward_seconds = self._baseline["seconds"]
        return self._baseline

    def plan_seconds(self) -> float:
        """The core of one plan on this model (the widths of every layer halved, no scores needed), the fastest
        of three, timed once: every estimate of a sweep is scaled from the same figure."""
        if self._plan_seconds is None:
            p = self.pruner
            widths = p.widths()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                plan_widths(p.geo, p.origin.widths, widths, [0.5] * len(widths))
                times.append(time.perf_counter() - t0)
            self._plan_seconds = min(times)
        return self._plan_seconds

    def what_if(self, plan: Schedule | None = None, config: PruneConfig | None = None,
                should_stop: Callable[[], bool] | None = None) -> WhatIf:
        """The predicted perplexity of ``plan`` (default: the plan of ``config``, or of the session's settings):
        the evaluation sample through the model masked as if the plan's final widths were cut. A ``plan`` given
        must have been made with ``config`` (default: the session's settings) on this explorer's measurement
        (:meth:`plan`, or :meth:`pruner.Pruner.preview` with :meth:`measurement`)."""
        cfg = self.config_for(config)
        scores = UnitScores.of(self.measurement(cfg, should_stop))
        plan = plan if plan is not None else self.pruner.preview(self.measurement(cfg), config=config)
        if not plan.steps:
            raise AllocationError("The plan has no steps: the model is already at its target")
        masks = plan_masks(self.pruner, plan, scores, config)
        t0 = time.perf_counter()
        with masked(self.pruner.model, masks, self.pruner.adapter):
            ppl = self._perplexity(should_stop)
        total0 = self.pruner.origin.params["total"]
        last = plan.steps[-1]
        return WhatIf(settings=settings_of(cfg), params=last.params, fraction=last.params / total0,
                      reached=plan.reached, steps=len(plan.steps), perplexity=ppl,
                      widths=[w.to_dict() for w in last.widths],
                      removed_layers=sorted(li for li, m in masks.items() if m.skip),
                      seconds=time.perf_counter() - t0)


    # ------------------------------------------------------------------ the oracle beside the heuristic
    def sensitivity(self, levels: tuple[float, ...] = LEVELS, should_stop: Callable[[], bool] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> SensitivityReport:
        """The per-layer sensitivity table on the calibration sample (units ranked by the session's criterion),
        beside the paper's layer importance and their rank correlation per level. At the sensitivity method's
        levels it is the very table that method allocates with (measured once for both)."""
        levels = tuple(float(v) for v in levels)
        imp = self._measure(self.pruner.config.criterion, levels, should_stop, progress)
        table = imp.sensitivity
        return SensitivityReport(table, list(imp.layer_importance), table.correlation(imp.layer_importance))


@dataclass
class SensitivityReport:
    """The sensitivity table with the paper's layer importance ``I_l = −cos`` and Spearman's ρ between them per
    level (positive: the layers the heuristic calls important are the ones whose pruning costs most)."""

    table: Sensitivity
    layer_importance: list[float]
    correlation: dict[str, float | None]

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(), "layer_importance": self.layer_importance,
                "spearman": self.correlation}


#: The settings a sweep varies and a what-if reports.
SWEPT = ("method", "target", "amplitude", "step", "attention")


def settings_of(config: PruneConfig) -> dict:
    """The settings that make a plan what it is (what a sweep varies, and the criterion)."""
    d = config.to_dict()
    return {k: d[k] for k in (*SWEPT, "criterion")}
