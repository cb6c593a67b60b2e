"""Sweeps: the what-if of every combination of method, target, amplitude A, Δ and attention policy, from one
importance measurement per criterion, as a table.

    grid = sweep_grid(PruneConfig(), methods=["adaptive", "uniform", "flap"], targets=[0.9, 0.8, 0.7],
                      amplitudes=[0, 0.02, 0.05])
    result = run_sweep(Explorer(pruner), grid, max_seconds=300)   # refused up front when estimated longer
    print(result.table())

A method is planned once per combination of the settings that change its plan (:attr:`Method.tunes`): FLAP at
80 % is one point however many amplitudes are swept. A cancel keeps the finished points; a point whose settings
cannot be planned (an unreachable target) is kept with its error.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

from pruner.config import PruneConfig
from pruner.errors import Cancelled, PrunerError, ResourceError
from pruner.explore.whatif import Explorer, settings_of
from pruner.importance.measure import criterion_for
from pruner.importance.sensitivity import scan_forwards, scan_tokens
from pruner.methods import method_class


class SweepTooLarge(ResourceError):
    """A sweep whose estimated time exceeds what the caller allows (``estimated_seconds`` says how long)."""

    def __init__(self, message: str, estimated_seconds: float):
        super().__init__(message)
        self.estimated_seconds = estimated_seconds


def sweep_grid(base: PruneConfig, methods: Sequence[str] | None = None, targets: Sequence[float] | None = None,
               amplitudes: Sequence[float] | None = None, steps: Sequence[float] | None = None,
               policies: Sequence[str] | None = None) -> list[PruneConfig]:
    """Every distinct configuration of the product (None: the base's value). Settings a method's plan does not
    depend on keep the base's value, so duplicates collapse; each method gets its own criterion (or the base's,
    when the base method has none of its own)."""
    axes = {"method": methods or [base.method], "target": targets or [base.target],
            "amplitude": amplitudes or [base.amplitude], "step": steps or [base.step],
            "attention": policies or [base.attention]}
    shared = base.criterion if method_class(base.method).criterion is None else None
    out, seen = [], set()
    for combo in itertools.product(*axes.values()):
        kw = dict(zip(axes, combo, strict=True))
        cls = method_class(kw["method"])
        for name in ("amplitude", "step", "attention"):
            if name not in cls.tunes:
                kw[name] = getattr(base, name)
        key = tuple(kw.values())
        if key in seen:
            continue
        seen.add(key)
        out.append(replace(base, **kw, criterion=None if cls.criterion else shared))
    return out


@dataclass
class SweepPoint:
    """One configuration's what-if (or why it has none)."""

    settings: dict
    params: int | None = None
    fraction: float | None = None
    reached: bool | None = None
    steps: int | None = None
    perplexity: float | None = None  # predicted, on the explorer's evaluation sample
    plan: str = ""  # a one-line summary of the plan
    seconds: float = 0.0
    error: str = ""

    def row(self) -> dict:
        return {**self.settings, **{k: v for k, v in asdict(self).items() if k != "settings"}}


@dataclass
class Sweep:
    """A sweep's points in grid order (finished ones only, after a cancel), with the evaluation settings."""

    points: list[SweepPoint] = field(default_factory=list)
    sample: dict = field(default_factory=dict)
    baseline: dict | None = None  # the model as it is, on the same sample
    estimated_seconds: float = 0.0
    seconds: float = 0.0
    stopped: str = ""  # "" (complete) or "cancelled"
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [p.row() for p in self.points]

    def to_dict(self) -> dict:
        return {"points": self.rows(), "sample": self.sample, "baseline": self.baseline,
                "estimated_seconds": self.estimated_seconds, "seconds": self.seconds, "stopped": self.stopped,
                "notes": self.notes}

    def table(self) -> str:
        """A plain-text table: one line per point."""
        head = f"{'method':<12} {'target':>6} {'A':>5} {'Δ':>5} {'policy':<12} {'params':>12} {'kept':>6} " \
               f"{'pred. ppl':>9}  plan"
        lines = [head]
        for p in self.points:
            s = p.settings
            ppl = f"{p.perplexity:9.2f}" if p.perplexity is not None else f"{'—':>9}"
            size = f"{p.params:>12,} {p.fraction:>6.1%}" if p.params is not None else f"{'—':>12} {'—':>6}"
            tunes = method_class(s["method"]).tunes  # a setting the method ignores is shown as "—"
            a, d = (f"{s[k]:>5g}" if k in tunes else f"{'—':>5}" for k in ("amplitude", "step"))
            pol = s["attention"] if "attention" in tunes else "—"
            lines.append(f"{s['method']:<12} {s['target']:>6g} {a} {d} {pol:<12} {size} {ppl}  {p.error or p.plan}")
        return "\n".join(lines)


def plan_summary(schedule) -> str:
    """``"8 sub-steps, layer sparsity 0.12–0.45"`` (and the layers removed whole)."""
    last = schedule.steps[-1]
    sp = last.sparsity
    out = f"{len(schedule.steps)} sub-step(s), layer sparsity {min(sp):.2f}–{max(sp):.2f}"
    removed = sorted({li for st in schedule.steps for li in st.remove_layers})
    return out + (f", layers {removed} removed" if removed else "") + ("" if schedule.reached else ", target not reached")


def _plans_per_point(config: PruneConfig) -> int:
    """How many plans (of one sub-step each) the planner makes for a configuration, roughly: the sub-steps and
    the bisection of the last one."""
    from pruner.pruning.planner import BISECTION_STEPS

    cls = method_class(config.method)
    sub_steps = math.ceil(max(1 - config.target, 0) / config.step) + 1 if cls.incremental else 1
    return sub_steps + BISECTION_STEPS + 2


def estimate_seconds(explorer: Explorer, grid: Sequence[PruneConfig]) -> float:
    """The estimated time of a sweep: one masked evaluation per point (a plain forward, measured once on the
    evaluation sample), the planning (one plan timed on this model), and the measurements not yet made (a pass
    over the calibration sample: forward + backward for a gradient criterion, the sensitivity scan's forwards)."""
    p = explorer.pruner
    forward = explorer.baseline()["seconds"]
    eval_tokens = max(explorer.baseline()["tokens_scored"], 1)
    per_token = forward / eval_tokens
    calib_tokens = p.config.n_windows * p.config.window
    per_plan = 3 * explorer.plan_seconds()  # the score policy ranks units: a few times the plain plan
    total, needed = 0.0, set()
    for cfg in grid:
        method = p.planner_for(cfg).method
        needed.add((method.measured_criterion, method.sensitivity_levels))
        total += 1.1 * forward + _plans_per_point(cfg) * per_plan
    for criterion, levels in needed:
        if explorer.has_measurement(criterion, levels):
            continue
        grad = criterion is not None and criterion_for(criterion).needs_grad
        passes = 3 if grad else 1  # forward + backward (checkpointed): about 3 forwards
        total += passes * calib_tokens * per_token
        if levels is not None:
            total += scan_forwards(p.model, levels) * scan_tokens(p.config.n_windows, p.config.window) * per_token
    return total


def iter_sweep(explorer: Explorer, grid: Sequence[PruneConfig],
               should_stop: Callable[[], bool] | None = None) -> Iterator[SweepPoint]:
    """Each point's what-if as it completes; a cancel (``should_stop``) ends the iteration with
    :class:`Cancelled` after the last finished point."""
    for cfg in grid:
        if should_stop is not None and should_stop():
            raise Cancelled("sweep cancelled")
        t0 = time.perf_counter()
        point = SweepPoint(settings_of(cfg))
        try:
            plan = explorer.plan(cfg, should_stop)
            w = explorer.what_if(plan, cfg, should_stop)
        except Cancelled:
            raise
        except PrunerError as exc:
            point.error = str(exc)
        else:
            point.params, point.fraction, point.reached, point.steps = w.params, w.fraction, w.reached, w.steps
            point.perplexity, point.plan = w.ppl, plan_summary(plan)
        point.seconds = time.perf_counter() - t0
        yield point


def run_sweep(explorer: Explorer, grid: Sequence[PruneConfig], should_stop: Callable[[], bool] | None = None,
              progress: Callable[[SweepPoint, int, int], None] | None = None,
              max_seconds: float | None = None) -> Sweep:
    """The whole sweep as a :class:`Sweep`. Refused up front with :class:`SweepTooLarge` when its estimate exceeds
    ``max_seconds``; a cancel keeps the finished points (``stopped == "cancelled"``)."""
    t0 = time.perf_counter()
    est = estimate_seconds(explorer, grid)
    if max_seconds is not None and est > max_seconds:
        raise SweepTooLarge(f"The sweep of {len(grid)} points would take about {est:.0f} s (more than the "
                            f"{max_seconds:.0f} s allowed): sweep fewer methods, targets or settings, or a shorter "
                            f"evaluation sample", est)
    out = Sweep(sample=explorer.sample.to_dict(), baseline=explorer.baseline(), estimated_seconds=est,
                notes=explorer.notes())
    try:
        for point in iter_sweep(explorer, grid, should_stop):
            out.points.append(point)
            if progress is not None:
                progress(point, len(out.points), len(grid))
    except Cancelled:
        out.stopped = "cancelled"
    out.seconds = time.perf_counter() - t0
    return out
