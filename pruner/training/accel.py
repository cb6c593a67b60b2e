"""Adapt-Accel: incremental pruning interleaved with recovery training (docs/method.md, "Adapt-Accel").

Stage k of N prunes to ``P_k = P0 − (P0 − P_target)·k/N`` parameters with :class:`pruner.Pruner` (its
sub-steps and re-measured importance inside), then trains on the stage's token share — ``2k/(N(N+1))`` of the
total ("linear", the paper's) or ``1/N`` ("constant"). One WSD learning-rate schedule spans all stages; the
optimiser state is reset at every stage. ``mode="oneshot"`` prunes to the target first and then trains on all
tokens (the baseline); ``PruneConfig(method="uniform")`` gives the uniform-allocation baseline.

Distributed (``accelerate launch``): pruning runs on the main process only; the kept units of every layer
(original indices) are broadcast and the other ranks apply the same cut with ``build_cut``/``apply_patch``,
so every rank holds the same shapes and weights; the model is re-wrapped for DDP at every stage.

Resilience: after every stage a checkpoint ``OUT/checkpoints/stage_KK/`` holds the model (the saved-folder
format of :func:`pruner.save_pruned`), the AdamW state (safetensors), the RNG states (safetensors) and
``state.json`` (schedule position, data position, the pruner's allocated sparsity, the stage records). A run
resumed from it (:func:`load_checkpoint` + ``iter_accel(..., resume=state)``) ends identical to an
uninterrupted one. A cancel restores the model to the last completed stage.

Studio / notebook use (typed progress events)::

    for ev in iter_accel(model, tok, AccelConfig(target=0.7, stages=6, tokens=200_000), out_dir="runs/a"):
        ...  # AccelStart, PruneStep, StagePruned, TrainStep, StageTrained, CheckpointSaved, AccelCancelled, AccelDone
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from pruner.data import CalibrationText
from pruner.model.adapters import adapter_for
from pruner.model.structure import (
    ORIGIN_ATTR,
    LayerCut,
    apply_patch,
    build_cut,
    count_parameters,
    layer_widths,
    origin_of,
)
from pruner.pruning.planner import target_tolerance
from pruner.pruning.pruner import Pruner, StepRecord
from pruner.runtime.memory import peak_memory
from pruner.training.accel_config import (
    FORMAT,
    MODES,
    STATE_FILE,
    TOKEN_SCHEDULES,
    AccelConfig,
    AccelState,
    stage_plan,
    token_shares,
)
from pruner.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    prune_old_checkpoints,
    save_checkpoint,
)
from pruner.training.events import (
    AccelCancelled,
    AccelDone,
    AccelEvent,
    AccelStart,
    CheckpointSaved,
    PruneStep,
    StagePruned,
    StageTrained,
    event_dict,
)
from pruner.training.train import (
    PackedData,
    TrainDone,
    TrainStep,
    WSDSchedule,
    iter_train,
    make_accelerator,
)

# ---------------------------------------------------------------------- distributed pruning


def _broadcast(acc, obj):
    if acc.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def apply_kept_units(model: nn.Module, kept_groups: list[list[int]], kept_channels: list[list[int]]) -> None:
    """Cut ``model`` down to the given kept units (original indices, as in ``Origin``) and update its origin.

    Used on the non-main ranks to repeat the main process's pruning exactly.
    """
    adapter = adapter_for(model)
    origin = origin_of(model)
    cuts = {}
    for li, (g_new, c_new) in enumerate(zip(kept_groups, kept_channels, strict=True)):
        g_now, c_now = origin.kept_groups[li], origin.kept_channels[li]
        if g_new == g_now and c_new == c_now:
            continue
        pos_g = {u: i for i, u in enumerate(g_now)}
        pos_c = {u: i for i, u in enumerate(c_now)}
        cuts[li] = LayerCut([pos_g[u] for u in g_new], [pos_c[u] for u in c_new])
    if cuts:
        apply_patch(model, build_cut(model, cuts, adapter, lazy=True), adapter)
    origin.kept_groups = [list(g) for g in kept_groups]
    origin.kept_channels = [list(c) for c in kept_channels]


# ---------------------------------------------------------------------- cancel support


def _snapshot(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu")


def _restore(model: nn.Module, snap: nn.Module) -> None:
    """Put the snapshot's shapes and weights back into ``model`` in place."""
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    for layer, old in zip(adapter.layers(model), adapter.layers(snap), strict=True):
        for path, part in adapter.parts(old).items():
            part = copy.deepcopy(part)
            adapter.set_part(layer, path, part.to(device) if isinstance(part, nn.Module) else
                             nn.Parameter(part.data.to(device), requires_grad=part.requires_grad))
    model.load_state_dict(snap.state_dict())
    apply_patch(model, {}, adapter)  # syncs the config with the shapes
    setattr(model, ORIGIN_ATTR, copy.deepcopy(getattr(snap, ORIGIN_ATTR)))


# ---------------------------------------------------------------------- the loop


def _evaluate(model, tok, cfg: AccelConfig, acc, final: bool = False) -> dict | None:
    """WikiText-2 (by default) test perplexity on the main process; other ranks get the same dict."""
    result = None
    if acc.is_main_process:
        ev = replace(cfg.eval, max_tokens=cfg.final_eval_max_tokens) if final and cfg.final_eval_max_tokens else cfg.eval
        result = ev.measure(model, tok)
    return _broadcast(acc, result)


# ---------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What the stages of one run share."""

    cfg: AccelConfig
    acc: object
    tokenizer: object
    data: PackedData
    schedule: WSDSchedule
    state: AccelState
    original: int
    teacher: nn.Module | None
    should_stop: Callable[[], bool] | None
    calibration_text: str | CalibrationText | None


def iter_accel(
    model: nn.Module,
    tokenizer,
    config: AccelConfig | None = None,
    *,
    out_dir=None,
    accelerator=None,
    teacher: nn.Module | None = None,
    data: PackedData | None = None,
    resume: AccelState | None = None,
    should_stop: Callable[[], bool] | None = None,
    calibration_text: str | CalibrationText | None = None,
    checkpoint_guard: Callable[[], AbstractContextManager] | None = None,
) -> Iterator[AccelEvent]:
    """Run Adapt-Accel on ``model`` in place, yielding typed events: :class:`AccelStart`, then per stage
    :class:`PruneStep` (per sub-step, main process only), :class:`StagePruned`, :class:`TrainStep` (per
    optimiser step), :class:`StageTrained` and :class:`CheckpointSaved` (with ``out_dir``), and at the end
    :class:`AccelDone` (its ``report`` is JSON-serialisable) or :class:`AccelCancelled`.

    ``resume`` (from :func:`load_checkpoint`, with the checkpoint's model) continues after its last stage.
    With distillation (``config.train.distill_weight > 0``) pass the unpruned ``teacher``. ``calibration_text``
    replaces the shipped calibration corpus (a user's text). An error inside a stage restores the model to the
    end of the last completed stage before it propagates. ``checkpoint_guard`` wraps every checkpoint write (the
    command line holds Ctrl-C and SIGTERM there, so a checkpoint is never cut short).
    """
    cfg = config or AccelConfig()
    acc = accelerator or make_accelerator(cfg.train.mixed_precision)
    state = copy.deepcopy(resume) if resume is not None else AccelState()
    model.to(acc.device)
    if teacher is not None:
        teacher.to(acc.device)
    original = origin_of(model).params["total"]
    start_params = (state.stages[0]["start_params"] if state.stages else count_parameters(model)["total"])
    plan = stage_plan(cfg, start_params, original, acc.num_processes)
    if not state.stages:  # as prune does: an unreachable target is refused before any data or training
        Pruner(model, tokenizer, replace(cfg.prune, target=cfg.target), keep_history=0).target_params()
    data = data or PackedData(tokenizer, cfg.train.data, cfg.train.seq_len, cfg.train.seed, cfg.train.exclude)
    schedule = WSDSchedule(sum(s["steps"] for s in plan), cfg.train.lr, cfg.train.warmup, cfg.train.decay)
    run = _Run(cfg, acc, tokenizer, data, schedule, state, original, teacher, should_stop, calibration_text)
    t_run = time.perf_counter()
    if state.initial is None and cfg.eval_initial and not state.stages:
        state.initial = {"params": count_parameters(model)["total"], "perplexity": _evaluate(model, tokenizer, cfg, acc)}
    yield AccelStart(plan, count_parameters(model), original, data.describe(), schedule.to_dict(), state.initial,
                     state.completed_stages if resume is not None else None, acc.num_processes, str(acc.device),
                     cfg.tokens)

    for st in plan[state.completed_stages:]:
        k = st["stage"]
        snap = _snapshot(model)  # the last completed stage, restored on cancel or error
        try:
            outcome = yield from _stage(model, run, st, final=(k == plan[-1]["stage"]))
        except BaseException:
            # an error (or the consumer closing this generator) mid-stage: back to the last completed stage
            _restore(model, snap)
            raise
        if outcome is None:
            _restore(model, snap)
            yield AccelCancelled(state.completed_stages, f"cancelled during stage {k}: the model is back at the end "
                                                         f"of stage {state.completed_stages}")
            return
        del snap
        if out_dir is not None:
            if acc.is_main_process:
                with checkpoint_guard() if checkpoint_guard is not None else contextlib.nullcontext():
                    path = save_checkpoint(Path(out_dir) / "checkpoints" / f"stage_{k:02d}", model, tokenizer,
                                           state, cfg, outcome)
                prune_old_checkpoints(Path(out_dir) / "checkpoints", cfg.keep_checkpoints)
                yield CheckpointSaved(k, str(path))
            acc.wait_for_everyone()
    yield AccelDone(_report(model, run, plan, t_run, resume is not None))


def _stage(model: nn.Module, run: _Run, st: dict, final: bool):
    """One stage: prune to its target (main process; the other ranks repeat the cut), evaluate, train on its
    token share, evaluate. Yields the stage's events; returns the optimiser state, or None when cancelled
    (the caller restores the model)."""
    cfg, acc, state, k = run.cfg, run.acc, run.state, st["stage"]
    rec: dict = {"stage": k, "start_params": count_parameters(model)["total"], **st}
    t_stage = time.perf_counter()
    steps_out: list[StepRecord] = []
    shared = yield from _prune_stage(model, run, st, steps_out)
    if shared["stopped"] == "cancelled":
        return None
    sparsity = shared["sparsity"]
    params = count_parameters(model)
    ppl = _evaluate(model, run.tokenizer, cfg, acc)
    widths = [w.to_dict() for w in layer_widths(model)]
    rec["prune"] = {"params": params["total"], "fraction": params["total"] / run.original,
                    "sub_steps": len(steps_out), "steps": [r.to_dict() for r in steps_out], "perplexity": ppl,
                    "seconds": time.perf_counter() - t_stage, "widths": widths, "sparsity": sparsity}
    yield StagePruned(k, params["total"], params["total"] / run.original, widths, sparsity, ppl, steps_out)
    # ---------------- train on the stage's token share (optimiser state reset)
    train_state = copy.deepcopy(state.train)
    done: TrainDone | None = None
    losses_before = len(train_state.losses)
    for ev in iter_train(model, run.tokenizer, st["tokens"], cfg.train, accelerator=acc, data=run.data,
                         teacher=run.teacher, schedule=run.schedule, state=train_state,
                         should_stop=run.should_stop, stage=k):
        if isinstance(ev, TrainStep):
            yield ev
        else:
            done = ev
    if done.cancelled:
        return None
    ppl_after = _evaluate(model, run.tokenizer, cfg, acc, final=final)
    rec["train"] = {"steps": done.steps, "tokens": done.tokens, "seconds": done.seconds,
                    "tokens_per_s": done.tokens_per_s, "mean_loss": done.mean_loss,
                    "losses": train_state.losses[losses_before:], "lrs": train_state.lrs[losses_before:],
                    "peak_memory_bytes": done.peak_memory_bytes, "peak_memory_kind": done.peak_memory_kind,
                    "perplexity": ppl_after}
    rec["seconds"] = time.perf_counter() - t_stage
    yield StageTrained(k, rec["train"]["losses"], rec["train"]["lrs"], done.tokens, done.tokens_per_s, ppl_after)
    state.train = train_state
    state.sparsity = sparsity
    state.stages.append(rec)
    state.completed_stages = k
    return done.optimizer_state


def _prune_stage(model: nn.Module, run: _Run, st: dict, steps_out: list):
    """Prune to the stage's target with a :class:`Pruner` on the main process (sub-steps streamed as
    :class:`PruneStep`); the other ranks apply the broadcast cut. Returns the shared outcome."""
    acc, state, k = run.acc, run.state, st["stage"]
    prune_cfg = copy.deepcopy(run.cfg.prune)
    prune_cfg.target = st["target_params"]
    prune_cfg.seed = run.cfg.prune.seed + 1000 * k  # a fresh calibration sample per stage and sub-step
    stopped = ""
    sparsity = state.sparsity
    if acc.is_main_process and count_parameters(model)["total"] > st["target_params"] + target_tolerance(run.original):
        pruner = Pruner(model, run.tokenizer, prune_cfg, keep_history=0, calibration_text=run.calibration_text)
        if state.sparsity is not None:
            pruner.sparsity = list(state.sparsity)
        for srec in pruner.iter_run(run.should_stop):
            steps_out.append(srec)
            yield PruneStep(k, srec)
        stopped = pruner.record.stopped
        sparsity = list(pruner.sparsity)
    shared = _broadcast(acc, {"groups": origin_of(model).kept_groups, "channels": origin_of(model).kept_channels,
                              "sparsity": sparsity, "stopped": stopped})
    if not acc.is_main_process:
        apply_kept_units(model, shared["groups"], shared["channels"])
    return shared


def _report(model: nn.Module, run: _Run, plan: list[dict], t_run: float, resumed: bool) -> dict:
    state = run.state
    mem, kind = peak_memory(run.acc.device)
    total = count_parameters(model)["total"]
    return {
        "format": FORMAT, "config": run.cfg.to_dict(), "plan": plan, "data": run.data.describe(),
        "schedule": run.schedule.to_dict(), "original_params": run.original, "initial": state.initial,
        "stages": state.stages, "final": {"params": total, "fraction": total / run.original,
                                          "widths": [w.to_dict() for w in layer_widths(model)],
                                          "perplexity": state.stages[-1]["train"]["perplexity"] if state.stages else None},
        "train_tokens": state.train.tokens_seen, "train_steps": state.train.global_step,
        "seconds_this_run": time.perf_counter() - t_run, "peak_memory_bytes": mem, "peak_memory_kind": kind,
        "processes": run.acc.num_processes, "device": str(run.acc.device), "resumed": resumed,
    }


def run_accel(model: nn.Module, tokenizer, config: AccelConfig | None = None, **kwargs) -> dict:
    """Run :func:`iter_accel` to the end and return its report (the cancel event as a dict if cancelled)."""
    last = None
    for ev in iter_accel(model, tokenizer, config, **kwargs):
        last = ev
    return last.report if isinstance(last, AccelDone) else event_dict(last)


__all__ = ["FORMAT", "MODES", "STATE_FILE", "TOKEN_SCHEDULES", "AccelCancelled", "AccelConfig", "AccelDone",
           "AccelEvent", "AccelStart", "AccelState", "CheckpointSaved", "PruneStep", "StagePruned", "StageTrained",
           "TrainStep", "apply_kept_units", "event_dict", "iter_accel", "latest_checkpoint", "load_checkpoint",
           "run_accel", "save_checkpoint", "stage_plan", "token_shares"]
