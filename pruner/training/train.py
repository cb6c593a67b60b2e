"""Recovery training of a (pruned) model: full fine-tuning with AdamW through ``accelerate``.

One code path runs on one CPU, one GPU, or several GPUs / nodes (DDP via ``accelerate launch``, or FSDP with
``--config_file pruner/resources/accelerate/fsdp.yaml``: :mod:`pruner.training.sharded`):

* **optimiser**: AdamW, a fresh state per call (Adapt-Accel resets it at every stage), gradient clipping;
* **learning rate**: one warmup–stable–decay schedule (:class:`WSDSchedule`: 5 % linear warm-up, constant,
  linear decay to 0 over the last 10 %) that can span several calls (``TrainState.global_step``);
* **loss**: the causal-LM loss, optionally mixed with logit distillation from a teacher (the unpruned model):
  ``(1 − w)·LM + w·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``;
* **precision**: bf16 autocast on CUDA (``mixed_precision="auto"``), fp32 on CPU;
* **data**: :class:`PackedData` packs shipped corpora, text files or a streamed Hugging Face dataset into
  fixed-length sequences, after removing every paragraph that shares a 13-word sequence with the evaluation
  set (WikiText-2 test), so training and evaluation text never overlap. The data position is a single integer
  (sequences consumed), which makes resuming exact.

Studio / notebook use (a generator of typed progress events)::

    for ev in iter_train(model, tok, tokens=65_536, config=TrainConfig(lr=1e-4)):
        if isinstance(ev, TrainStep):
            print(ev.step, ev.loss, ev.tokens_per_s)
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pruner.errors import ConfigError
from pruner.runtime.memory import peak_memory
from pruner.training.data import PackedData
from pruner.training.sharded import full, gather_into, is_sharded, working_copy

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")

# ---------------------------------------------------------------------- settings


@dataclass
class TrainConfig:
    """Recovery-training settings. Defaults follow docs/method.md (peak LR 2e-5, WSD 5 % / 10 %, clip 1.0)."""

    lr: float = 2e-5  # peak learning rate
    warmup: float = 0.05  # share of all steps spent warming up linearly
    decay: float = 0.10  # share of all steps at the end, decaying linearly to 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seq_len: int = 256
    batch_size: int = 4  # sequences per optimiser step and process (before accumulation)
    grad_accum: int = 1
    data: str = "wiki,c4,stories"  # comma-separated corpora / text files / hf:NAME[:CONFIG[:SPLIT]]
    exclude: str = "wikitext2:test"  # evaluation text that training data must not overlap ("" to skip)
    seed: int = 0
    distill_weight: float = 0.0  # w: 0 = LM loss only, 1 = distillation only
    temperature: float = 2.0  # T of the distillation KL
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, none on CPU) | no | bf16 | fp16

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"The learning rate must be a positive number, got {self.lr}")
        if self.seq_len < 2 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("Training needs sequences of ≥ 2 tokens, a batch size ≥ 1 and grad_accum ≥ 1")
        if not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"The distillation weight must lie in [0, 1], got {self.distill_weight}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"Unknown mixed precision '{self.mixed_precision}': use one of {', '.join(MIXED_PRECISION)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.seq_len * self.batch_size * self.grad_accum * world_size

    def steps_for(self, tokens: int, world_size: int = 1) -> int:
        """Optimiser steps that consume ``tokens`` (rounded to the nearest step; ≥ 1 when tokens > 0)."""
        if tokens <= 0:
            return 0
        return max(1, round(tokens / self.tokens_per_step(world_size)))


@dataclass
class WSDSchedule:
    """Warmup–stable–decay: linear warm-up over ``warmup``·T steps, constant, linear decay to 0 over the last
    ``decay``·T steps. ``lr(step)`` takes a 0-based global step."""

    total_steps: int
    peak: float
    warmup: float = 0.05
    decay: float = 0.10

    @property
    def warmup_steps(self) -> int:
        return max(1, math.ceil(self.warmup * self.total_steps)) if self.warmup > 0 else 0

    @property
    def decay_steps(self) -> int:
        return max(1, math.ceil(self.decay * self.total_steps)) if self.decay > 0 else 0

    def lr(self, step: int) -> float:
        t, w, d = self.total_steps, self.warmup_steps, self.decay_steps
        if step < w:
            return self.peak * (step + 1) / w
        if step >= t - d:
            return self.peak * max(0, t - step) / (d + 1)
        return self.peak

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    """Where training stands across calls (stages): the schedule position and the data position."""

    global_step: int = 0
    data_position: int = 0  # sequences consumed (all processes together)
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- accelerate


def make_accelerator(mixed_precision: str = "auto", cpu: bool | None = None):
    """An ``accelerate.Accelerator``; ``auto`` precision is bf16 on CUDA and none elsewhere.

    Under ``accelerate launch`` the process group (DDP, gloo on CPU / nccl on GPU) comes from the launcher.
    """
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if not cpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


# ---------------------------------------------------------------------- loss


def lm_and_distill_loss(logits: torch.Tensor, input_ids: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                        weight: float = 0.0, temperature: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(loss, lm_loss, kd_loss)``: next-token cross-entropy, and (with a teacher) the token-mean
    ``T²·KL(teacher_T ‖ student_T)`` mixed in as ``(1 − weight)·lm + weight·kd``."""
    s = logits[:, :-1].float()
    lm = F.cross_entropy(s.reshape(-1, s.shape[-1]), input_ids[:, 1:].reshape(-1))
    if teacher_logits is None or weight <= 0:
        return lm, lm, None
    t = teacher_logits[:, :-1].float()
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * temperature**2
    return (1 - weight) * lm + weight * kd, lm, kd


# ---------------------------------------------------------------------- progress events


@dataclass
class TrainStep:
    """One optimiser step finished."""

    step: int  # 1-based within this call
    steps: int  # optimiser steps of this call
    global_step: int  # across calls (Adapt-Accel stages)
    total_steps: int  # of the whole schedule
    loss: float  # mean over processes
    lm_loss: float
    kd_loss: float | None
    lr: float
    grad_norm: float | None
    tokens: int  # trained so far in this call
    tokens_per_s: float
    eta_s: float
    stage: int | None = None

    def to_dict(self) -> dict:
        return {"event": "train_step", **asdict(self)}


@dataclass
class TrainDone:
    """The call's training ended (all steps done, or cancelled after ``steps`` steps)."""

    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    mean_loss: float | None
    cancelled: bool
    peak_memory_bytes: int
    peak_memory_kind: str
    optimizer_state: dict = field(repr=False)  # AdamW state as tensors (for a checkpoint)
    stage: int | None = None

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "optimizer_state"}
        return {"event": "train_done", **d}


# ---------------------------------------------------------------------- the training loop


def _unwrap(accelerator, model):
    return accelerator.unwrap_model(model, keep_fp32_wrapper=False)


def iter_train(
    model: nn.Module,
    tokenizer,
    tokens: int,
    config: TrainConfig | None = None,
    *,
    accelerator=None,
    data: PackedData | None = None,
    teacher: nn.Module | None = None,
    schedule: WSDSchedule | None = None,
    state: TrainState | None = None,
    should_stop: Callable[[], bool] | None = None,
    stage: int | None = None,
) -> Iterator[TrainStep | TrainDone]:
    """Train ``model`` in place on ``tokens`` training tokens (all processes together); yields progress.

    Every optimiser step yields a :class:`TrainStep`; the last event is a :class:`TrainDone` whose
    ``optimizer_state`` is the AdamW state as tensors (for a checkpoint). The optimiser is new (state reset) on every call; ``schedule`` and
    ``state`` carry the learning-rate and data positions across calls (a standalone call makes its own WSD
    schedule over its steps). ``should_stop`` is checked before every step; training then ends after the
    last completed step. A teacher must live on the accelerator's device; it is used only when
    ``config.distill_weight > 0``.
    """
    cfg = config or TrainConfig()
    acc = accelerator or make_accelerator(cfg.mixed_precision)
    world = acc.num_processes
    data = data or PackedData(tokenizer, cfg.data, cfg.seq_len, cfg.seed, cfg.exclude)
    if data.seq_len != cfg.seq_len:
        raise ConfigError(f"The data's sequence length {data.seq_len} differs from the config's {cfg.seq_len}")
    steps = cfg.steps_for(tokens, world)
    state = state if state is not None else TrainState()
    schedule = schedule or WSDSchedule(state.global_step + steps, cfg.lr, cfg.warmup, cfg.decay)
    per_step = cfg.tokens_per_step(world)
    use_teacher = teacher is not None and cfg.distill_weight > 0
    if use_teacher:
        teacher.eval().requires_grad_(False)

    low = {p.dtype for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)}
    if low:
        warnings.warn(f"Training weights stored in {low.pop()}: small AdamW updates are lost to rounding. Load the "
                      "model in float32; mixed precision (bf16 autocast on CUDA) keeps the speed.", stacklevel=2)
    sharded = is_sharded(acc)  # FSDP: a sharded copy trains, gathered back whole at the end (training.sharded)
    work = working_copy(model) if sharded else model
    work.train()
    opt = torch.optim.AdamW([p for p in work.parameters() if p.requires_grad], lr=schedule.lr(state.global_step),
                            betas=cfg.betas, weight_decay=cfg.weight_decay)
    wrapped, opt = acc.prepare(work, opt)
    t0 = time.perf_counter()
    done, losses, cancelled = 0, [], False
    try:
        for i in range(steps):
            if should_stop is not None and should_stop():
                cancelled = True
                break
            lr = schedule.lr(state.global_step)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = data.batch(state.data_position, cfg.batch_size * cfg.grad_accum * world)
            loss_sum, lm_sum, kd_sum = _accumulate(acc, wrapped, teacher if use_teacher else None, batch, cfg)
            grad_norm = acc.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
            opt.zero_grad(set_to_none=True)
            # the mean loss over all processes (identical on every rank, so logs and records agree)
            loss_all = acc.reduce(torch.tensor([loss_sum, lm_sum, kd_sum], device=acc.device), "mean").tolist()
            state.global_step += 1
            state.data_position += cfg.batch_size * cfg.grad_accum * world
            state.tokens_seen += per_step
            state.losses.append(loss_all[0])
            state.lrs.append(lr)
            losses.append(loss_all[0])
            done = i + 1
            elapsed = time.perf_counter() - t0
            yield TrainStep(done, steps, state.global_step, schedule.total_steps, loss_all[0], loss_all[1],
                            loss_all[2] if use_teacher else None, lr,
                            float(grad_norm) if grad_norm is not None else None, done * per_step,
                            done * per_step / elapsed, elapsed / done * (steps - done), stage)
    finally:
        optimizer_state = _optimizer_tensors(opt)
        if sharded:
            gather_into(work, model, acc.device)
        else:
            _unwrap(acc, wrapped)
        acc.free_memory()
        del wrapped, opt, work
        model.eval()
    seconds = time.perf_counter() - t0
    mem, kind = peak_memory(acc.device)
    yield TrainDone(done, done * per_step, seconds, done * per_step / seconds if seconds > 0 and done else 0.0,
                    sum(losses) / len(losses) if losses else None, cancelled, mem, kind, optimizer_state, stage)


def _accumulate(acc, wrapped, teacher, batch: torch.Tensor, cfg: TrainConfig) -> tuple[float, float, float]:
    """Forward and backward of one optimiser step's batch in ``grad_accum`` micro-batches (gradients summed,
    synchronised across processes on the last one); returns this process's (loss, LM loss, KD loss)."""
    world = acc.num_processes
    loss_sum = lm_sum = kd_sum = 0.0
    for a in range(cfg.grad_accum):
        # this process's micro-batch: rows [rank, rank + world, ...] of the accumulation slice
        mb = batch[a * cfg.batch_size * world : (a + 1) * cfg.batch_size * world][acc.process_index :: world]
        mb = mb.to(acc.device)
        sync = acc.no_sync(wrapped) if a < cfg.grad_accum - 1 else contextlib.nullcontext()
        with sync:
            with acc.autocast():
                logits = wrapped(input_ids=mb, use_cache=False).logits
                t_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(input_ids=mb, use_cache=False).logits
            loss, lm, kd = lm_and_distill_loss(logits, mb, t_logits, cfg.distill_weight, cfg.temperature)
            acc.backward(loss / cfg.grad_accum)
        loss_sum += loss.item() / cfg.grad_accum
        lm_sum += lm.item() / cfg.grad_accum
        kd_sum += (kd.item() if kd is not None else 0.0) / cfg.grad_accum
    return loss_sum, lm_sum, kd_sum


def _optimizer_tensors(opt) -> dict[str, torch.Tensor]:
    """AdamW state as a flat ``{"<param index>.<key>": tensor}`` dict (safetensors-ready, no pickle)."""
    out = {}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = full(v) if torch.is_tensor(v) else torch.tensor(v)  # FSDP: the whole state, gathered
            out[f"{idx}.{k}"] = t.detach().to("cpu").contiguous()
    return out


def train(model: nn.Module, tokenizer, tokens: int, config: TrainConfig | None = None, **kwargs) -> dict:
    """Run :func:`iter_train` to the end; returns its :class:`TrainDone` as a dict plus the loss curve."""
    curve = []
    last = None
    for ev in iter_train(model, tokenizer, tokens, config, **kwargs):
        if isinstance(ev, TrainStep):
            curve.append(ev.loss)
        else:
            last = ev
    return {**last.to_dict(), "optimizer_state": last.optimizer_state, "losses": curve}
