"""Recovery training in the studio: a Train round, and Adapt-Accel (prune ↔ train in stages), streamed to the
page; the loss curve and the perplexity before/after every round or stage.

Both consume the library's typed events (:mod:`pruner.training.train`, :mod:`pruner.training.accel`). A cancel keeps what was
completed (the optimiser steps of a round, the stages of a run); an error puts the model back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pruner.training.accel as accel
import pruner.training.train as train
from pruner import Cancelled, PrunerError
from pruner.config import BASELINES

from .events import Progress
from .history import of_working_model
from .quality import EvaluationCancelled, Quality, TrajectoryPoint
from .schedule import ScheduleControl
from .settings import StudioSettings
from .text import ACCEL_BASELINE
from .workspace import SessionError, Workspace

MAX_TRAIN_TOKENS = 50_000_000


@dataclass
class RecoveryPoint:
    """Quick perplexity before and after one round of recovery training (a Train round or an Adapt-Accel stage,
    whose "before" is right after the stage's pruning)."""

    label: str
    params: int
    perplexity_before: float
    perplexity_after: float
    tokens: int
    stage: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainLog:
    """Every optimiser step's loss in this session (Train rounds and Adapt-Accel stages), for the loss curve."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # index of the first step of every round / stage
    labels: list[str] = field(default_factory=list)

    def add(self, ev: train.TrainStep) -> None:
        self.losses.append(float(ev.loss))
        self.lrs.append(float(ev.lr))

    def begin(self, label: str) -> None:
        self.starts.append(len(self.losses))
        self.labels.append(label)

    def truncate(self, n: int, rounds: int) -> None:
        del self.losses[n:], self.lrs[n:], self.starts[rounds:], self.labels[rounds:]


def check_tokens(tokens, what: str) -> int:
    try:
        tokens = int(tokens)
    except (TypeError, ValueError) as exc:
        raise SessionError(f"The {what} must be a whole number of tokens, got {tokens!r}") from exc
    if tokens <= 0:
        raise SessionError(f"The {what} must be a positive number of tokens, got {tokens:,}")
    if tokens > MAX_TRAIN_TOKENS:
        raise SessionError(f"The {what} ({tokens:,} tokens) is more than this studio runs in one go "
                           f"({MAX_TRAIN_TOKENS:,}); use `python -m pruner accel` for long runs")
    return tokens


class Training:
    """Train rounds and Adapt-Accel runs of one session."""

    def __init__(self, work: Workspace, quality: Quality, schedule: ScheduleControl, costs):
        self.work, self.quality, self.schedule, self.costs = work, quality, schedule, costs
        self._packed = None  # training data, tokenized once per session
        self.clear()
        work.on_change(lambda change: self.clear() if change in ("reset", "load") else None)
        quality.on_new_yardstick(self._forget_points)

    def clear(self) -> None:
        self.recovery: list[RecoveryPoint] = []  # Train rounds and Adapt-Accel stages
        self.accel_start: TrajectoryPoint | None = None  # where the last Adapt-Accel run started
        self.log = TrainLog()
        self.accel_report: dict | None = None

    def _forget_points(self) -> None:
        self.recovery, self.accel_start = [], None

    def _setup(self, s: StudioSettings):
        """TrainConfig, the (cached) training data and the teacher for distillation."""
        try:
            cfg = s.capped_train(getattr(self.work.model.config, "max_position_embeddings", None))
        except PrunerError as exc:
            raise SessionError(str(exc)) from exc
        if not 0 < cfg.lr <= 0.1:
            raise SessionError(f"The learning rate must lie in (0, 0.1], got {cfg.lr}")
        key = (cfg.data, cfg.seq_len, cfg.seed, cfg.exclude)
        if self._packed is None or self._packed[0] != key:
            try:
                self._packed = (key, train.PackedData(self.work.tokenizer, cfg.data, cfg.seq_len, cfg.seed,
                                                      cfg.exclude))
            except PrunerError as exc:
                raise SessionError(str(exc)) from exc
        teacher = self.work.original if cfg.distill_weight > 0 else None
        return cfg, self._packed[1], teacher

    # ------------------------------------------------------------------ a Train round
    def train(self, tokens: int | None = None, settings: StudioSettings | None = None,
              prompt: str | None = None) -> Iterator[Progress]:
        """Recovery training of the working model on ``tokens`` tokens of the shipped corpora (AdamW, one WSD
        schedule over this round, gradient clipping, optional distillation from the original model), yielding a
        light :class:`Progress` (``kind="train_step"``) per optimiser step and a quick evaluation at the end.

        ``cancel()`` stops after the current optimiser step and keeps the completed steps. An error restores the
        weights from before the round. The undo history is cleared (undoing a step would undo the training).
        """
        work = self.work
        s = settings or work.settings
        with work.task():
            tokens = check_tokens(s.train_tokens if tokens is None else tokens, "training budget")
            work.configure(s)
            cfg, data, teacher = self._setup(s)
            work.ensure_private()  # training changes the weights: this session's own copy from here on
            t0 = time.perf_counter()
            try:
                yield Progress(f"Training: measuring the perplexity before ({s.quick_ppl.describe()}) …")
                before = self.quality.ppl(work.model)["perplexity"]
                done = yield from self._train_round(tokens, cfg, data, teacher)
                if done is None:
                    yield Progress("Training cancelled before its first step; the model is unchanged.", done=True)
                    return
                work.adopt(work.pruner.sparsity)
                self.costs.observe("train", done.tokens, done.seconds)
                work.clear_cancel()  # a cancel ended the training; the short evaluation after it still runs
                yield Progress(f"Trained {done.steps} step(s) on {done.tokens:,} tokens "
                               f"({done.tokens_per_s:.0f} tokens/s); measuring the perplexity after …")
                measured = self.quality.ppl(work.model)
                after = measured["perplexity"]
                work.record(of_working_model(work, "train", s, time.perf_counter() - t0, measured=measured,
                                             notes=f"{done.steps} optimiser step(s) on {done.tokens:,} tokens"
                                                   + (" (cancelled)" if done.cancelled else "")))
                self.recovery.append(RecoveryPoint(self.log.labels[-1], work.params(), before, after, done.tokens))
                ev = self.quality.evaluate_now(prompt, track=False) if prompt else None
                yield from self._measure_for_heatmaps()
                how = "cancelled after" if done.cancelled else "done:"
                yield Progress(f"Training {how} {done.steps} step(s), {done.tokens:,} tokens, "
                               f"{done.tokens_per_s:.0f} tokens/s; perplexity {before:.2f} → {after:.2f} "
                               f"({s.quick_ppl.describe()}).", evaluation=ev, done=True)
            except (Cancelled, EvaluationCancelled) as exc:
                raise SessionError("Cancelled during the evaluation; the model keeps its training") from exc

    def _train_round(self, tokens: int, cfg, data, teacher):
        """Run :func:`pruner.training.train.iter_train`, logging every step; returns its :class:`TrainDone` (None when
        cancelled before the first step). On an error the weights and the log are put back."""
        work = self.work
        snap = {k: v.detach().to("cpu", copy=True) for k, v in work.model.state_dict().items()}
        n0, r0 = len(self.log.losses), len(self.log.starts)
        self.log.begin(f"train {sum(1 for p in self.recovery if p.stage is None) + 1}")
        done = None
        try:
            for ev in train.iter_train(work.model, work.tokenizer, tokens, cfg, data=data, teacher=teacher,
                                       should_stop=work.should_stop):
                if isinstance(ev, train.TrainStep):
                    self.log.add(ev)
                    yield Progress(f"Training step {ev.step}/{ev.steps}: loss {ev.loss:.3f}, lr {ev.lr:.2e}, "
                                   f"{ev.tokens_per_s:.0f} tokens/s, ETA {ev.eta_s:.0f} s", kind="train_step")
                else:
                    done = ev
        except BaseException:
            work.model.load_state_dict(snap)
            self.log.truncate(n0, r0)
            raise
        finally:
            work.model.eval()
        if done.steps == 0:
            self.log.truncate(n0, r0)
            return None
        return done

    # ------------------------------------------------------------------ Adapt-Accel
    def run_accel(self, settings: StudioSettings | None = None, prompt: str | None = None) -> Iterator[Progress]:
        """Adapt-Accel from the working model to ``settings.target``: ``settings.stages`` stages, each pruning its
        equal share of parameters (adaptive sub-steps with the schedule settings) and then training on its share
        of ``settings.accel_tokens`` (linear growth). Streams every sub-step (``record``), every optimiser step
        (``kind="train_step"``) and every stage's perplexity after pruning and after training.

        ``cancel()`` ends the run at the last completed stage (the model is restored to it); an error does the
        same before it propagates as a :class:`SessionError`.
        """
        work = self.work
        s = settings or work.settings
        if settings is not None:
            work.configure(settings)
        with work.task():
            tokens = check_tokens(s.accel_tokens, "Adapt-Accel token budget")
            if s.prune.method in BASELINES:  # refused before a private copy is made for nothing
                raise SessionError(ACCEL_BASELINE.format(method=s.prune.method))
            tcfg, data, teacher = self._setup(s)
            work.ensure_private()
            try:
                cfg = accel.AccelConfig(target=s.prune.target, stages=int(s.stages), tokens=tokens,
                                        prune=work.pruner.config, train=tcfg, eval=s.quick_ppl)
            except PrunerError as exc:
                raise SessionError(str(exc)) from exc
            mark = self._mark()  # the end of the last completed stage (rolled back to on cancel or error)
            events = accel.iter_accel(work.model, work.tokenizer, cfg, teacher=teacher, data=data,
                                      should_stop=work.should_stop, calibration_text=s.upload)
            state = {"pruned_ppl": {}, "mark": mark, "finished": False, "stages": 0, "ppl": None,
                     "t0": time.perf_counter(), "settings": s}
            try:
                for ev in events:
                    update = self._on_accel_event(ev, state, tokens)
                    if update is not None:
                        yield update
                        if update.done:
                            return
            except BaseException as exc:
                events.close()  # iter_accel puts the model back at the end of the last completed stage
                self._rollback(*state["mark"])
                if isinstance(exc, PrunerError):
                    raise SessionError(f"Adapt-Accel stopped: {exc}") from exc
                raise
            if state["finished"]:
                work.adopt(work.pruner.sparsity)
                self._record_accel(state, f"{state['stages']} stage(s), {tokens:,} training tokens")
                ev = self.quality.evaluate_now(prompt, track=False) if prompt else None
                yield from self._measure_for_heatmaps()
                last = self.recovery[-1] if self.recovery else None
                yield Progress(f"Adapt-Accel done: {work.params() / 1e6:.2f} M parameters"
                               + (f", perplexity {last.perplexity_after:.2f}" if last else "") + ".",
                               evaluation=ev, done=True)

    def _measure_for_heatmaps(self) -> Iterator[Progress]:
        """The importance of the changed model, so that the unit heatmap shows the units it has now."""
        s = self.work.settings
        sec, _ = self.costs.importance_seconds(s)
        yield Progress(f"Measuring the importance of the changed model for the heatmaps "
                       f"({self.costs.calibration_tokens(s):,} tokens, ≈ {sec:.0f} s) …")
        self.schedule.measure_changed()

    def _on_accel_event(self, ev, state: dict, tokens: int) -> Progress | None:
        """Book one Adapt-Accel event into the session and say what the page shows for it."""
        work, record = self.work, self.work.pruner.record
        if isinstance(ev, accel.AccelStart):
            ppl0 = ev.initial["perplexity"]["perplexity"]
            self.accel_start = TrajectoryPoint(work.steps_taken, ev.params["total"], ppl0)
            plan = ", ".join(f"{st['target_params'] / 1e6:.1f} M" for st in ev.plan)
            return Progress(f"Adapt-Accel: {len(ev.plan)} stages ({plan}), {tokens:,} training tokens; "
                            f"perplexity now {ppl0:.2f}")
        if isinstance(ev, accel.PruneStep):
            (rec,) = work.pruner.adopt([ev.record])
            self.schedule.tags[rec.index] = f"stage {ev.stage}"
            return Progress(f"Stage {ev.stage}: sub-step cut to {rec.params_total / 1e6:.2f} M parameters "
                            f"({rec.fraction_of_original:.1%})", rec)
        if isinstance(ev, accel.StagePruned):
            work.pruner.adopt(sparsity=ev.sparsity)
            state["pruned_ppl"][ev.stage] = ev.perplexity["perplexity"]
            self.log.begin(f"stage {ev.stage}")
            return Progress(f"Stage {ev.stage} pruned to {ev.params / 1e6:.2f} M parameters: "
                            f"perplexity {ev.perplexity['perplexity']:.2f}; training …")
        if isinstance(ev, accel.TrainStep):
            self.log.add(ev)
            return Progress(f"Stage {ev.stage} training step {ev.step}/{ev.steps}: loss {ev.loss:.3f}, "
                            f"{ev.tokens_per_s:.0f} tokens/s, ETA {ev.eta_s:.0f} s", kind="train_step")
        if isinstance(ev, accel.StageTrained):
            k, after = ev.stage, ev.perplexity["perplexity"]
            self.costs.observe("train", ev.tokens, ev.tokens / ev.tokens_per_s if ev.tokens_per_s else 0)
            self.recovery.append(RecoveryPoint(f"stage {k}", work.params(), state["pruned_ppl"][k], after,
                                               ev.tokens, stage=k))
            state["mark"] = self._mark()
            state["stages"], state["ppl"] = state["stages"] + 1, ev.perplexity
            return Progress(f"Stage {k} trained on {ev.tokens:,} tokens ({ev.tokens_per_s:.0f} tokens/s): "
                            f"perplexity {state['pruned_ppl'][k]:.2f} → {after:.2f}",
                            record.steps[-1] if record.steps else None)
        if isinstance(ev, accel.AccelCancelled):
            self._rollback(*state["mark"])
            if state["stages"]:  # the model keeps the completed stages: a run of its own
                self._record_accel(state, f"cancelled after {state['stages']} stage(s)")
            return Progress(f"Adapt-Accel cancelled: {ev.message}.", done=True)
        if isinstance(ev, accel.AccelDone):
            self.accel_report = ev.report
            state["finished"] = True
        return None

    def _record_accel(self, state: dict, notes: str) -> None:
        self.work.record(of_working_model(self.work, "accel", state["settings"], time.perf_counter() - state["t0"],
                                          notes=notes, measured=state["ppl"]))

    def _mark(self) -> tuple[int, int, int, int, list[float]]:
        """What the session holds now, for :meth:`_rollback`: record steps, losses, training rounds, recovery
        points and the sparsity."""
        return (len(self.work.pruner.record.steps), len(self.log.losses), len(self.log.starts), len(self.recovery),
                list(self.work.pruner.sparsity))

    def _rollback(self, n_rec: int, n_loss: int, n_round: int, n_recovery: int, sparsity: list[float]) -> None:
        """Forget what an unfinished Adapt-Accel stage added (its model changes were undone by iter_accel)."""
        self.work.pruner.truncate(n_rec)
        del self.recovery[n_recovery:]
        self.log.truncate(n_loss, n_round)
        self.work.adopt(sparsity)
