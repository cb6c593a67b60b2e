"""Adapt-Accel: incremental pruning interleaved with recovery training (METHOD.md, "Adapt-Accel schedule").

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

Studio / notebook use::

    for ev in iter_accel(model, tok, AccelConfig(target=0.7, stages=6, tokens=200_000), out_dir="runs/a"):
        ...  # ev["event"] in start, prune_step, pruned, train_step, trained, checkpoint, cancelled, done
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .adapters import adapter_for
from .io import load_model, save_pruned
from .perplexity import perplexity
from .prune import ORIGIN_ATTR, Origin, PruneConfig, Pruner, origin_of
from .structure import LayerCut, apply_patch, build_cut, count_parameters, layer_widths
from .train import PackedData, TrainConfig, TrainState, WSDSchedule, iter_train, make_accelerator, peak_memory

STATE_FILE = "state.json"
FORMAT = "adapt-accel/1"


@dataclass
class AccelConfig:
    """An Adapt-Accel run. ``prune`` holds the pruner's own settings (its ``target`` is set per stage)."""

    target: float = 0.7  # fraction of the original parameters (or a count > 1)
    stages: int = 6
    tokens: int = 200_000  # total training tokens over all stages
    token_schedule: str = "linear"  # linear: 2k/(N(N+1)) | constant: 1/N
    mode: str = "incremental"  # incremental | oneshot
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_dataset: str = "wikitext2"
    eval_split: str = "test"
    eval_window: int = 512
    eval_max_tokens: int | None = 16_384  # intermediate evaluations (None: the whole split)
    final_eval_max_tokens: int | None = None  # the last evaluation (None: same as eval_max_tokens)
    eval_initial: bool = True
    keep_checkpoints: int = 1  # completed-stage checkpoints kept on disk (older ones are deleted)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AccelConfig:
        d = dict(d)
        d["prune"] = PruneConfig(**d["prune"])
        t = dict(d["train"])
        t["betas"] = tuple(t["betas"])
        d["train"] = TrainConfig(**t)
        return cls(**d)


def token_shares(stages: int, schedule: str = "linear") -> list[float]:
    """Share of the training tokens per stage: ``2k/(N(N+1))`` (linear) or ``1/N`` (constant)."""
    if stages < 1:
        raise ValueError(f"Need at least one stage, got {stages}")
    if schedule == "linear":
        return [2 * k / (stages * (stages + 1)) for k in range(1, stages + 1)]
    if schedule == "constant":
        return [1 / stages] * stages
    raise ValueError(f"Unknown token schedule '{schedule}': use linear or constant")


def stage_plan(cfg: AccelConfig, start_params: int, original_params: int, world_size: int = 1) -> list[dict]:
    """Per stage: parameter target, token share, optimiser steps. One-shot mode is one prune then one train."""
    t = cfg.target
    target = int(round(t * original_params)) if t < 1 else int(t)
    if not 0 < target < start_params:
        raise ValueError(f"The target ({target:,} parameters) must lie below the model's size ({start_params:,})")
    if cfg.mode == "oneshot":
        targets, shares = [target], [1.0]
    elif cfg.mode == "incremental":
        n = cfg.stages
        targets = [int(round(start_params - (start_params - target) * k / n)) for k in range(1, n + 1)]
        shares = token_shares(n, cfg.token_schedule)
    else:
        raise ValueError(f"Unknown mode '{cfg.mode}': use incremental or oneshot")
    steps = [cfg.train.steps_for(round(s * cfg.tokens), world_size) for s in shares]
    return [{"stage": k + 1, "target_params": p, "target_fraction": p / original_params, "token_share": s,
             "steps": n, "tokens": n * cfg.train.tokens_per_step(world_size)}
            for k, (p, s, n) in enumerate(zip(targets, shares, steps, strict=True))]


@dataclass
class AccelState:
    """Everything a resumed run needs besides the model (which lives in the checkpoint's folder)."""

    completed_stages: int = 0
    train: TrainState = field(default_factory=TrainState)
    sparsity: list[float] | None = None  # the pruner's allocated sparsity after the last stage
    stages: list[dict] = field(default_factory=list)  # per-stage records (prune, train, evaluations)
    initial: dict | None = None  # evaluation of the starting model
    python_rng: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AccelState:
        d = dict(d)
        d["train"] = TrainState(**d["train"])
        return cls(**d)


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
        apply_patch(model, build_cut(model, cuts, adapter), adapter)
    origin.kept_groups = [list(g) for g in kept_groups]
    origin.kept_channels = [list(c) for c in kept_channels]


# ---------------------------------------------------------------------- checkpoints


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def _python_rng() -> list:
    v, st, g = random.getstate()
    return [v, list(st), g]


def save_checkpoint(folder, model, tokenizer, state: AccelState, cfg: AccelConfig, optimizer_state: dict) -> Path:
    """Write one stage's checkpoint atomically (temporary folder, then rename)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_pruned(model, tokenizer, tmp / "model")
    save_file(optimizer_state or {"empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
    save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
    state.python_rng = _python_rng()
    (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, "config": cfg.to_dict(), "state": state.to_dict()}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def latest_checkpoint(out_dir) -> Path | None:
    """The last completed stage's checkpoint under ``OUT/checkpoints``, or None."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.glob("stage_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def load_checkpoint(folder, device=None, dtype=None):
    """``(model, tokenizer, AccelConfig, AccelState)`` from a checkpoint folder; restores the RNG states."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / STATE_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"'{folder}' is not an Adapt-Accel checkpoint (format {meta.get('format')!r})")
    model, tok = load_model(folder / "model", device=device, dtype=dtype, progress=None)
    state = AccelState.from_dict(meta["state"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if state.python_rng:
        v, st, g = state.python_rng
        random.setstate((v, tuple(st), g))
    return model, tok, AccelConfig.from_dict(meta["config"]), state


# ---------------------------------------------------------------------- cancel support


def _snapshot(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu")


def _restore(model: nn.Module, snap: nn.Module) -> None:
    """Put the snapshot's shapes and weights back into ``model`` in place."""
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    for layer, old in zip(adapter.layers(model), adapter.layers(snap), strict=True):
        for role, mod in adapter.attn_linears(old).items():
            adapter.set_attn_linear(layer, role, copy.deepcopy(mod).to(device))
        for role, mod in adapter.mlp_linears(old).items():
            adapter.set_mlp_linear(layer, role, copy.deepcopy(mod).to(device))
    model.load_state_dict(snap.state_dict())
    apply_patch(model, {}, adapter)  # syncs the config with the shapes
    setattr(model, ORIGIN_ATTR, copy.deepcopy(getattr(snap, ORIGIN_ATTR)))


# ---------------------------------------------------------------------- the loop


def _evaluate(model, tok, cfg: AccelConfig, acc, final: bool = False) -> dict | None:
    """WikiText-2 (by default) test perplexity on the main process; other ranks get the same dict."""
    result = None
    if acc.is_main_process:
        mt = cfg.final_eval_max_tokens if final and cfg.final_eval_max_tokens is not None else cfg.eval_max_tokens
        result = perplexity(model, tok, cfg.eval_dataset, cfg.eval_split, window=cfg.eval_window, max_tokens=mt)
    return _broadcast(acc, result)


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
    calibration_text: str | None = None,
) -> Iterator[dict]:
    """Run Adapt-Accel on ``model`` in place, yielding events (JSON-friendly dicts):

    * ``start``: ``plan`` (per stage target, token share, steps), ``params``, ``data``, ``initial``
      (perplexity of the starting model);
    * ``prune_step``: ``stage``, ``record`` (a :class:`StepRecord` dict: importance, sparsity, widths —
      the heatmap columns); only on the main process;
    * ``pruned``: ``stage``, ``params``, ``fraction``, ``widths``, ``sparsity``, ``perplexity``, ``steps``;
    * ``train_step``: progress of :func:`iter_train` (``stage``, step, loss, lr, tokens/s, ETA);
    * ``trained``: ``stage``, ``losses``, ``lrs``, ``tokens``, ``tokens_per_s``, ``perplexity``;
    * ``checkpoint``: ``stage``, ``path`` (when ``out_dir`` is given);
    * ``cancelled``: the model was restored to the last completed stage (``stage``);
    * ``done``: ``report`` (everything above, JSON-serialisable).

    ``resume`` (from :func:`load_checkpoint`, with the checkpoint's model) continues after its last stage.
    With distillation (``config.train.distill_weight > 0``) pass the unpruned ``teacher``. ``calibration_text``
    replaces the shipped calibration corpus (a user's text). An error inside a stage restores the model to the
    end of the last completed stage before it propagates.
    """
    cfg = config or AccelConfig()
    acc = accelerator or make_accelerator(cfg.train.mixed_precision)
    state = copy.deepcopy(resume) if resume is not None else AccelState()
    model.to(acc.device)
    if teacher is not None:
        teacher.to(acc.device)
    origin = origin_of(model)
    original = origin.params["total"]
    start_params = (state.stages[0]["start_params"] if state.stages else count_parameters(model)["total"])
    plan = stage_plan(cfg, start_params, original, acc.num_processes)
    data = data or PackedData(tokenizer, cfg.train.data, cfg.train.seq_len, cfg.train.seed, cfg.train.exclude)
    schedule = WSDSchedule(sum(s["steps"] for s in plan), cfg.train.lr, cfg.train.warmup, cfg.train.decay)
    t_run = time.perf_counter()
    if state.initial is None and cfg.eval_initial and not state.stages:
        state.initial = {"params": count_parameters(model)["total"], "perplexity": _evaluate(model, tokenizer, cfg, acc)}
    yield {"event": "start", "plan": plan, "params": count_parameters(model), "original_params": original,
           "data": data.describe(), "schedule": schedule.to_dict(), "initial": state.initial,
           "resumed_after_stage": state.completed_stages if resume is not None else None,
           "processes": acc.num_processes, "device": str(acc.device)}

    for st in plan[state.completed_stages:]:
        k = st["stage"]
        snap = _snapshot(model)  # the last completed stage, restored on cancel or error
        try:
            rec: dict = {"stage": k, "start_params": count_parameters(model)["total"], **st}
            t_stage = time.perf_counter()
            cancelled = False
            # ---------------- prune (main process), then every rank applies the same cut
            prune_cfg = copy.deepcopy(cfg.prune)
            prune_cfg.target = st["target_params"]
            prune_cfg.seed = cfg.prune.seed + 1000 * k  # a fresh calibration sample per stage and sub-step
            steps_out = []
            stopped = ""
            tol = max(1, int(0.001 * original))
            if acc.is_main_process and count_parameters(model)["total"] > st["target_params"] + tol:
                pruner = Pruner(model, tokenizer, prune_cfg, keep_history=0, calibration_text=calibration_text)
                if state.sparsity is not None:
                    pruner.sparsity = list(state.sparsity)
                for srec in pruner.iter_run(should_stop):
                    steps_out.append(srec.to_dict())
                    yield {"event": "prune_step", "stage": k, "record": steps_out[-1]}
                stopped = pruner.record.stopped
                state_sparsity = list(pruner.sparsity)
            else:
                state_sparsity = state.sparsity
            shared = _broadcast(acc, {"groups": origin_of(model).kept_groups, "channels": origin_of(model).kept_channels,
                                      "sparsity": state_sparsity, "stopped": stopped})
            if not acc.is_main_process:
                apply_kept_units(model, shared["groups"], shared["channels"])
            if shared["stopped"] == "cancelled":
                cancelled = True
            else:
                state_sparsity = shared["sparsity"]
                params = count_parameters(model)
                ppl = _evaluate(model, tokenizer, cfg, acc)
                rec["prune"] = {"params": params["total"], "fraction": params["total"] / original,
                                "sub_steps": len(steps_out), "steps": steps_out, "perplexity": ppl,
                                "seconds": time.perf_counter() - t_stage,
                                "widths": [w.to_dict() for w in layer_widths(model)], "sparsity": state_sparsity}
                yield {"event": "pruned", "stage": k, "params": params["total"], "fraction": params["total"] / original,
                       "widths": rec["prune"]["widths"], "sparsity": state_sparsity, "perplexity": ppl,
                       "steps": steps_out}
                # ---------------- train on the stage's token share (optimiser state reset)
                train_state = copy.deepcopy(state.train)
                done = None
                losses_before = len(train_state.losses)
                for ev in iter_train(model, tokenizer, st["tokens"], cfg.train, accelerator=acc, data=data,
                                     teacher=teacher, schedule=schedule, state=train_state, should_stop=should_stop,
                                     stage=k):
                    if ev["event"] == "train_step":
                        yield ev
                    else:
                        done = ev
                cancelled = done["cancelled"]
            if cancelled:
                _restore(model, snap)
                yield {"event": "cancelled", "stage": state.completed_stages,
                       "message": f"cancelled during stage {k}: the model is back at the end of stage "
                                  f"{state.completed_stages}"}
                return
            optimizer_state = done.pop("optimizer_state")
            ppl_after = _evaluate(model, tokenizer, cfg, acc, final=(k == plan[-1]["stage"]))
            rec["train"] = {"steps": done["steps"], "tokens": done["tokens"], "seconds": done["seconds"],
                            "tokens_per_s": done["tokens_per_s"], "mean_loss": done["mean_loss"],
                            "losses": train_state.losses[losses_before:], "lrs": train_state.lrs[losses_before:],
                            "peak_memory_bytes": done["peak_memory_bytes"], "peak_memory_kind": done["peak_memory_kind"],
                            "perplexity": ppl_after}
            rec["seconds"] = time.perf_counter() - t_stage
            yield {"event": "trained", "stage": k, "losses": rec["train"]["losses"], "lrs": rec["train"]["lrs"],
                   "tokens": done["tokens"], "tokens_per_s": done["tokens_per_s"], "perplexity": ppl_after}
            state.train = train_state
            state.sparsity = state_sparsity
            state.stages.append(rec)
            state.completed_stages = k
        except BaseException:
            # an error (or the consumer closing this generator) mid-stage: back to the last completed stage
            _restore(model, snap)
            raise
        del snap
        if out_dir is not None:
            if acc.is_main_process:
                path = save_checkpoint(Path(out_dir) / "checkpoints" / f"stage_{k:02d}", model, tokenizer, state,
                                       cfg, optimizer_state)
                _prune_old_checkpoints(Path(out_dir) / "checkpoints", cfg.keep_checkpoints)
                yield {"event": "checkpoint", "stage": k, "path": str(path)}
            acc.wait_for_everyone()

    mem, kind = peak_memory(acc.device)
    report = {
        "format": FORMAT, "config": cfg.to_dict(), "plan": plan, "data": data.describe(),
        "schedule": schedule.to_dict(), "original_params": original, "initial": state.initial,
        "stages": state.stages, "final": {"params": count_parameters(model)["total"],
                                          "fraction": count_parameters(model)["total"] / original,
                                          "widths": [w.to_dict() for w in layer_widths(model)],
                                          "perplexity": state.stages[-1]["train"]["perplexity"] if state.stages else None},
        "train_tokens": state.train.tokens_seen, "train_steps": state.train.global_step,
        "seconds_this_run": time.perf_counter() - t_run, "peak_memory_bytes": mem, "peak_memory_kind": kind,
        "processes": acc.num_processes, "device": str(acc.device), "resumed": resume is not None,
    }
    yield {"event": "done", "report": report}


def _prune_old_checkpoints(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("stage_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for p in done[: max(0, len(done) - max(1, keep))]:
        shutil.rmtree(p, ignore_errors=True)


def run_accel(model: nn.Module, tokenizer, config: AccelConfig | None = None, **kwargs) -> dict:
    """Run :func:`iter_accel` to the end and return its report (``{"cancelled": ...}`` if cancelled)."""
    last = {}
    for ev in iter_accel(model, tokenizer, config, **kwargs):
        last = ev
    return last.get("report", last)


__all__ = ["AccelConfig", "AccelState", "Origin", "apply_kept_units", "iter_accel", "latest_checkpoint",
           "load_checkpoint", "run_accel", "save_checkpoint", "stage_plan", "token_shares"]
