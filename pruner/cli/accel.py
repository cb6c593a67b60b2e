"""``python -m pruner accel``: Adapt-Accel (incremental prune ↔ train) from the command line.

Examples::

    python -m pruner accel --model default --target 0.7 --stages 6 --tokens 200000 \\
        --out runs/accel70 --report runs/accel70.json
    python -m pruner accel --out runs/accel70 --resume          # continue after the last completed stage
    accelerate launch --num_processes 2 -m pruner accel ...      # DDP (gloo on CPU, nccl on GPUs)
"""

from __future__ import annotations

import time
from pathlib import Path

from pruner.cli import signals
from pruner.cli.common import (
    add_model_args,
    add_ppl_args,
    check_windows,
    log,
    positive_int,
    save_or_rescue,
    write_report_or_rescue,
)
from pruner.config import CRITERIA, INCREMENTAL_METHODS, PruneConfig
from pruner.errors import OutputError
from pruner.evaluation.perplexity import PerplexityConfig
from pruner.io.outputs import check_no_alias, check_output_file, check_output_folder
from pruner.training.accel import (
    TOKEN_SCHEDULES,
    AccelCancelled,
    AccelConfig,
    AccelDone,
    AccelStart,
    CheckpointSaved,
    PruneStep,
    StagePruned,
    StageTrained,
    TrainStep,
)
from pruner.training.accel_config import MODES
from pruner.training.checkpoints import CheckpointWriteError
from pruner.training.train import MIXED_PRECISION, TrainConfig

P, T, A = PruneConfig, TrainConfig, AccelConfig  # the defaults live on the configs' fields


def register(sub) -> None:
    a = sub.add_parser("accel", help="Adapt-Accel: prune in stages with recovery training in between")
    add_model_args(a, device_map=False)
    a.set_defaults(dtype="float32")  # trained in fp32 (+ bf16 autocast on CUDA), not in bf16 weights
    a.add_argument("--target", type=float, default=A.target, help="fraction of the original parameters to keep, or a count")
    a.add_argument("--stages", type=int, default=A.stages, help="N prune → train stages")
    a.add_argument("--tokens", type=int, default=A.tokens, help="total training tokens over all stages")
    a.add_argument("--mode", choices=MODES, default=A.mode,
                   help="oneshot: prune to the target first, then train on all tokens (baseline)")
    a.add_argument("--token-schedule", choices=TOKEN_SCHEDULES, default=A.token_schedule,
                   help="stage k's token share: 2k/(N(N+1)) (linear) or 1/N")
    g = a.add_argument_group("pruning (each stage)")
    g.add_argument("--method", choices=INCREMENTAL_METHODS, default=P.method)
    g.add_argument("--criterion", choices=CRITERIA, default=P.criterion)
    g.add_argument("--amplitude", type=float, default=P.amplitude)
    g.add_argument("--step", type=float, default=P.step, help="Δ: mean sparsity added per pruning sub-step")
    g.add_argument("--calibration", default=P.calibration, help="calibration corpus of the pruner")
    g.add_argument("--n-windows", type=positive_int, default=P.n_windows)
    g.add_argument("--window", type=positive_int, default=P.window)
    t = a.add_argument_group("training (each stage)")
    t.add_argument("--data", default=T.data,
                   help="comma-separated training corpora, text files or hf:NAME[:CONFIG[:SPLIT]] (needs a hub)")
    t.add_argument("--lr", type=float, default=T.lr, help="peak learning rate of the WSD schedule")
    t.add_argument("--seq-len", type=positive_int, default=T.seq_len)
    t.add_argument("--batch-size", type=positive_int, default=T.batch_size, help="sequences per step and process")
    t.add_argument("--grad-accum", type=positive_int, default=T.grad_accum)
    t.add_argument("--distill", type=float, default=T.distill_weight, help="weight of the KL distillation from the unpruned model")
    t.add_argument("--temperature", type=float, default=T.temperature)
    t.add_argument("--mixed-precision", default=T.mixed_precision, choices=MIXED_PRECISION)
    t.add_argument("--seed", type=int, default=T.seed)
    a.add_argument("--out", default=None, help="folder for the per-stage checkpoints and the final model")
    a.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    a.add_argument("--keep-checkpoints", type=positive_int, default=A.keep_checkpoints)
    a.add_argument("--report", default=None, help="JSON file for the per-stage record")
    add_ppl_args(a, no_ppl=False)  # every stage is evaluated: the record needs its perplexities
    a.set_defaults(ppl_max_tokens=A().eval.max_tokens)
    a.add_argument("--final-ppl-max-tokens", type=positive_int, default=None,
                   help="tokens for the last evaluation (default: --ppl-max-tokens)")
    a.set_defaults(func=run)


def config_from_args(args):
    """The :class:`AccelConfig` the arguments describe."""

    window = args.ppl_windows[0]
    return AccelConfig(
        target=args.target, stages=args.stages, tokens=args.tokens, token_schedule=args.token_schedule,
        mode=args.mode,
        prune=PruneConfig(method=args.method, criterion=args.criterion, amplitude=args.amplitude, step=args.step,
                          calibration=args.calibration, n_windows=args.n_windows, window=args.window, seed=args.seed),
        train=TrainConfig(lr=args.lr, seq_len=args.seq_len, batch_size=args.batch_size, grad_accum=args.grad_accum,
                          data=args.data, seed=args.seed, distill_weight=args.distill, temperature=args.temperature,
                          mixed_precision=args.mixed_precision),
        eval=PerplexityConfig(args.ppl_dataset, args.ppl_split, window, max_tokens=args.ppl_max_tokens),
        final_eval_max_tokens=args.final_ppl_max_tokens,
        keep_checkpoints=args.keep_checkpoints,
    )


def _plan_line(ev: AccelStart) -> str:
    plan, d = ev.plan, ev.data
    asked, planned = ev.requested_tokens, sum(s["tokens"] for s in plan)
    rounded = (f" (--tokens {asked:,} rounded to whole optimiser steps)" if asked is not None and asked != planned
               else "")
    return (f"plan: {len(plan)} stage(s) to {plan[-1]['target_fraction']:.1%} of {ev.original_params:,} parameters, "
            f"{planned:,} training tokens{rounded} ({', '.join(str(s['steps']) for s in plan)} steps); "
            f"data {d['sources']}: {d['tokens']:,} tokens, {d['paragraphs_removed_for_overlap']} paragraph(s) removed "
            f"for overlap with {d['excluded_overlap_with']}; {ev.processes} process(es) on {ev.device}")


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(args) -> int:
    from pruner.io.models import load_model, pick_device
    from pruner.training.accel import latest_checkpoint, load_checkpoint
    from pruner.training.train import make_accelerator

    cfg = config_from_args(args)  # settings (target, tokens, …) are checked before anything is loaded
    check_no_alias({"--model": None if args.resume or args.model == "default" else args.model},
                   {"--out": args.out}, {"--report": args.report})
    if args.report:
        check_output_file(args.report, "--report file")
    if args.out and not args.resume:  # a run folder is never replaced: a non-empty one is refused either way
        out = Path(args.out).expanduser()
        if out.is_dir() and any(out.iterdir()):
            raise OutputError(f"The --out folder '{out}' exists and is not empty; choose another folder, or add "
                              "--resume to continue the run in it")
        check_output_folder(out, False, "--out folder")
    device = pick_device(args.device)  # a device this machine lacks is one line, before anything is loaded
    acc = make_accelerator(cfg.train.mixed_precision, cpu=device.type == "cpu")
    say = log if acc.is_main_process else (lambda _m: None)
    resume = None
    if args.resume:
        if not args.out:
            log("error: --resume needs --out (the folder of the interrupted run)")
            return 2
        ckpt = latest_checkpoint(args.out)
        if ckpt is None:
            say(f"no checkpoint in {args.out}: starting from the beginning")
        else:
            model, tok, cfg, resume = load_checkpoint(ckpt, device="cpu", dtype=args.dtype)
            say(f"resuming after stage {resume.completed_stages} from {ckpt} (its settings are used)")
    if resume is None:
        model, tok = load_model(args.model, device="cpu", dtype=args.dtype, progress=say)
    check_windows(model, **{"--window": cfg.prune.window, "--seq-len": cfg.train.seq_len,
                            "--ppl-windows": cfg.eval.window})
    teacher = None
    if cfg.train.distill_weight > 0:
        teacher, _ = load_model(args.model, device="cpu", dtype=args.dtype, progress=say)
    try:
        report = _run_stages(model, tok, cfg, args, acc, teacher, resume, say)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        signals.stopping()
        last = latest_checkpoint(args.out) if args.out else None
        log("interrupted: the model is back at the end of its last completed stage; "
            + (f"continue with `adapt-pruner accel --out {args.out} --resume` (last checkpoint: {last})" if last else
               "no stage had completed" + ("" if args.out else " and no --out was given, so nothing was saved")))
        return 130
    except CheckpointWriteError as exc:  # the stage is complete in memory: keep it somewhere
        log(f"error: {exc}; the run stopped there")
        saved, _ = save_or_rescue(model, tok, Path(args.out) / "model", None, True, "accel-model")
        last = latest_checkpoint(args.out)
        log(("the model at the end of that stage is in " + saved if saved else "that stage's model could not be "
             "saved") + (f"; the last checkpoint written is {last}" if last else ""))
        return 1
    return _save_and_report(model, tok, report, args, acc, say)


def _run_stages(model, tok, cfg, args, acc, teacher, resume, say) -> dict | None:
    """Run Adapt-Accel, logging every event; returns the report (None when the run was cancelled)."""
    from pruner.evaluation.perplexity import format_perplexity
    from pruner.training.accel import iter_accel

    t0 = time.perf_counter()
    report, total_steps = None, 1
    guard = lambda: signals.deferred("the checkpoint")  # noqa: E731 - a checkpoint is never cut short
    for ev in iter_accel(model, tok, cfg, out_dir=args.out, accelerator=acc, teacher=teacher, resume=resume,
                         checkpoint_guard=guard):
        if isinstance(ev, AccelStart):
            total_steps = ev.schedule["total_steps"]
            say(_plan_line(ev))
            if ev.initial:
                say(f"start: {ev.initial['params']:,} params, perplexity {format_perplexity(ev.initial['perplexity'])}")
        elif isinstance(ev, PruneStep):
            r = ev.record
            say(f"stage {ev.stage} prune sub-step {r.index + 1}: {r.params_total:,} params "
                f"({r.fraction_of_original:.1%}), importance {r.seconds_importance:.1f} s")
        elif isinstance(ev, StagePruned):
            say(f"stage {ev.stage} pruned: {ev.params:,} params ({ev.fraction:.1%}), "
                f"perplexity {format_perplexity(ev.perplexity)}")
        elif isinstance(ev, TrainStep):
            eta_run = (time.perf_counter() - t0) / max(1, ev.global_step) * (total_steps - ev.global_step)
            say(f"stage {ev.stage} step {ev.step}/{ev.steps} (global {ev.global_step}/{total_steps}): "
                f"loss {ev.loss:.4f}, lr {ev.lr:.2e}, {ev.tokens_per_s:.0f} tokens/s, "
                f"stage ETA {_fmt_time(ev.eta_s)}, run ETA ~{_fmt_time(eta_run)}")
        elif isinstance(ev, StageTrained):
            say(f"stage {ev.stage} trained on {ev.tokens:,} tokens ({ev.tokens_per_s:.0f} tokens/s): "
                f"perplexity {format_perplexity(ev.perplexity)}")
        elif isinstance(ev, CheckpointSaved):
            say(f"checkpoint: {ev.path}")
            if signals.pending():  # Ctrl-C or SIGTERM arrived while it was written: stop here, like Ctrl-C
                raise KeyboardInterrupt
        elif isinstance(ev, AccelCancelled):
            say(ev.message)
        elif isinstance(ev, AccelDone):
            report = ev.report
    return report


def _save_and_report(model, tok, report, args, acc, say) -> int:
    from pruner.evaluation.perplexity import format_perplexity

    if report is None:
        return 1
    if acc.is_main_process:
        saved, rescued = (save_or_rescue(model, tok, Path(args.out) / "model", None, True, "accel-model")
                          if args.out else (None, False))
        if saved:
            say(f"final model saved to {saved}")
        f = report["final"]
        say(f"done: {f['params']:,} parameters ({f['fraction']:.1%}), perplexity {format_perplexity(f['perplexity'])}, "
            f"{report['seconds_this_run']:.0f} s")
        _, report_rescued = write_report_or_rescue(args.report, report, "accel-report")
        return 130 if signals.pending() else 1 if rescued or report_rescued or (args.out and not saved) else 0
    return 0
