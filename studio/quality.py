"""How good the working model is: the quick evaluation after every step (parameters, perplexity with its
settings, tokens/s, side-by-side generations), the perplexity-vs-parameters trajectory, the uniform baseline
pruned on a copy of the original, and zero-shot accuracy of original, pruned and baseline models."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pruner import Cancelled, PrunerError, format_perplexity
from pruner.pruning.pruner import Pruner

from .events import Progress
from .history import copy_widths, record_copy
from .settings import StudioSettings
from .text import EVAL_CANCELLED, NO_GENERATION, PROMPT_CAPPED
from .workspace import SessionError, Workspace


class EvaluationCancelled(SessionError):
    """Cancel stopped a quick evaluation (the model is untouched)."""


@dataclass
class Evaluation:
    """A quick evaluation of the working model."""

    step: int
    params: int
    fraction_of_original: float
    perplexity: dict
    tokens_per_s: float | None
    prompt: str
    generation: str
    original_generation: str
    original_perplexity: dict
    note: str = ""  # what was left out or shortened (a cancelled generation, a prompt capped to the context)

    def summary(self) -> str:
        speed = (f"{self.tokens_per_s:.1f} tokens/s (greedy generation)" if self.tokens_per_s is not None
                 else "no generation")
        return (f"step {self.step} · {self.params / 1e6:.2f} M parameters ({self.fraction_of_original:.1%} of the "
                f"original) · perplexity {format_perplexity(self.perplexity)} · {speed} · original: perplexity "
                f"{self.original_perplexity['perplexity']:.2f}" + (f"  \n{self.note}" if self.note else ""))


@dataclass
class TrajectoryPoint:
    step: int
    params: int
    perplexity: float

    def to_dict(self) -> dict:
        return asdict(self)


class Quality:
    """Quick evaluation, trajectory, uniform baseline and zero-shot accuracy of one session."""

    def __init__(self, work: Workspace):
        self.work = work
        self._original_eval: dict[tuple, tuple[dict, str]] = {}
        self._original_ppl: dict = {}  # the original's quick perplexity per PerplexityConfig
        self._yardstick_listeners = []
        self.on_ppl = None  # (tokens, seconds) of every quick perplexity: the session's costs learn from it
        self.clear()
        work.on_change(self._changed)

    def clear(self) -> None:
        self.trajectory: list[TrajectoryPoint] = []
        self.baseline: list[TrajectoryPoint] = []
        self.baseline_model: nn.Module | None = None  # the uniform baseline's pruned copy (for zero-shot)
        self.last_eval: Evaluation | None = None
        self.by_step: dict[int, Evaluation] = {}  # the last evaluation of the model as it was after each step
        self.yardstick = self.work.settings.quick_ppl.describe()  # the settings every trajectory point was measured with

    def on_new_yardstick(self, fn) -> None:
        """Call ``fn()`` when the quick-perplexity settings change (points measured before are not comparable)."""
        self._yardstick_listeners.append(fn)

    def _changed(self, change: str) -> None:
        if change in ("reset", "load"):  # nothing measured on the model before holds
            self.clear()
        elif change == "undo":  # back to the model of an earlier step: its evaluation, if it had one, holds again
            n = self.work.steps_taken
            self.trajectory = [p for p in self.trajectory if p.step <= n]
            self.by_step = {k: ev for k, ev in self.by_step.items() if k <= n}
            self.last_eval = self.by_step.get(n)
        elif change == "train":  # the steps' models before the training are gone (its undo history is cleared)
            self.by_step = {}

    def _check_yardstick(self, s: StudioSettings) -> None:
        if self.yardstick != s.quick_ppl.describe():  # a new yardstick: start over
            self.trajectory, self.baseline, self.by_step = [], [], {}
            self.yardstick = s.quick_ppl.describe()
            for fn in self._yardstick_listeners:
                fn()

    def label(self) -> str:
        return f"quick perplexity: {self.work.settings.quick_ppl.describe()}"

    # ------------------------------------------------------------------ quick evaluation
    def quick_eval(self, prompt: str, settings: StudioSettings | None = None,
                   with_generation: bool = True) -> Evaluation:
        """Parameters, quick perplexity (settings in the result), tokens/s and greedy generations, side by side.
        Cancel stops it (nothing is recorded; the model is untouched either way)."""
        if settings is not None:
            self.work.configure(settings)
        with self.work.task():
            try:
                return self.evaluate_now(prompt, with_generation=with_generation)
            except EvaluationCancelled as exc:
                w = self.work
                raise EvaluationCancelled(EVAL_CANCELLED.format(steps=w.steps_taken, params=w.params() / 1e6)) from exc

    def ppl(self, model: nn.Module, settings: StudioSettings | None = None) -> dict:
        """The quick perplexity of ``model`` with the session's settings (or ``settings``)."""
        s = settings or self.work.settings
        t0 = time.perf_counter()
        out = s.quick_ppl.measure(model, self.work.tokenizer, should_stop=self.work.should_stop)
        if self.on_ppl is not None:
            self.on_ppl(int(out.get("tokens") or s.quick_ppl.max_tokens or 0), time.perf_counter() - t0)
        return out

    def capped_prompt(self, prompt: str, settings: StudioSettings | None = None) -> tuple[list[int], str]:
        """The prompt's token ids, its end capped so that prompt and continuation fit the model's context, and a
        note when it was capped."""
        tok, s = self.work.tokenizer, settings or self.work.settings
        ids = tok(prompt)["input_ids"]
        context = int(getattr(self.work.model.config, "max_position_embeddings", 0) or 0)
        room = context - int(s.max_new_tokens) if context else len(ids)
        if len(ids) <= room:
            return ids, ""
        return ids[-max(room, 1):], PROMPT_CAPPED.format(n=len(ids), kept=max(room, 1), context=context)

    @torch.no_grad()
    def generate(self, model: nn.Module, prompt: str, settings: StudioSettings | None = None) -> tuple[str, float]:
        """A greedy continuation of ``prompt`` (``max_new_tokens`` of the session's settings or of ``settings``;
        the prompt's last tokens that fit the context) and its tokens/s. Cancel stops it after the current token
        (:class:`pruner.Cancelled`)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        stop = self.work.should_stop

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return bool(stop())

        tok = self.work.tokenizer
        ids, _ = self.capped_prompt(prompt, settings)
        enc = {"input_ids": torch.tensor([ids], device=next(model.parameters()).device)}
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
        t0 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=(settings or self.work.settings).max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([_Cancel()]))
        if stop():
            raise Cancelled("cancelled during the generation")
        dt = time.perf_counter() - t0
        new = out[0, enc["input_ids"].shape[1]:]
        return tok.decode(new, skip_special_tokens=True), new.numel() / max(dt, 1e-9)

    def _original_reference(self, prompt: str, with_generation: bool = True) -> tuple[dict, str]:
        """The original model's quick perplexity and greedy continuation (cached per setting and prompt)."""
        s = self.work.settings
        key = (s.quick_ppl, prompt, s.max_new_tokens)
        if key not in self._original_eval:
            ppl = self._original_ppl.get(s.quick_ppl) or self.ppl(self.work.original)
            self._original_ppl[s.quick_ppl] = ppl
            if not with_generation:
                return ppl, ""
            self._original_eval[key] = (ppl, self.generate(self.work.original, prompt)[0])
        return self._original_eval[key]

    def evaluate_now(self, prompt: str, track: bool = True, with_generation: bool = True) -> Evaluation:
        """The quick evaluation inside a running task. ``track=False``: not a pruning-trajectory point (after
        training, whose effect the recovery points show). ``with_generation=False``: the perplexity alone (after a
        cancel, so that a kept step still gets its trajectory point). Cancel raises :class:`EvaluationCancelled`."""
        work = self.work
        if not prompt or not prompt.strip():
            raise SessionError("Type a prompt for the side-by-side generation")
        note = self.capped_prompt(prompt)[1]
        try:
            ref_ppl, ref_gen = self._original_reference(prompt, with_generation)
            ppl = self.ppl(work.model)
            gen, tps = self.generate(work.model, prompt) if with_generation else ("", None)
        except Cancelled as exc:
            raise EvaluationCancelled(f"Cancelled during the quick evaluation of step {work.steps_taken}") from exc
        if not with_generation:
            note = (note + "  \n" if note else "") + NO_GENERATION
        params = work.params()
        ev = Evaluation(work.steps_taken, params, params / work.original_total, ppl, tps, prompt, gen, ref_gen, ref_ppl,
                        note)
        self._check_yardstick(work.settings)
        self.last_eval = self.by_step[ev.step] = ev
        work.evaluated(ppl)  # the last run recorded on this model gets its quick perplexity
        if not track:
            return ev
        if not self.trajectory:
            self.trajectory.append(TrajectoryPoint(0, work.original_total, ref_ppl["perplexity"]))
        self.trajectory = [p for p in self.trajectory if p.step != ev.step or ev.step == 0]
        if ev.step > 0:
            self.trajectory.append(TrajectoryPoint(ev.step, params, ppl["perplexity"]))
        self.trajectory.sort(key=lambda p: p.step)
        return ev

    # ------------------------------------------------------------------ uniform baseline
    def run_uniform_baseline(self, settings: StudioSettings | None = None) -> Iterator[Progress]:
        """Prune a copy of the original with the uniform allocation (A = 0) to the same target, with the same
        quick perplexity after every sub-step; the result overlays the trajectory. The working model is untouched."""
        work = self.work
        s = settings or work.settings
        with work.task():
            try:
                model = copy.deepcopy(work.original).eval()
                # from the settings, not the pruner's config: a baseline chosen there has put its own criterion in
                # that config, and the uniform baseline uses the criterion of the radio
                cfg = s.with_method("uniform", custom=None).prune
                pruner = Pruner(model, work.tokenizer, cfg, keep_history=0, calibration_text=s.upload)
                work.configure(s)
                ref = self.ppl(work.original)
                self._check_yardstick(s)
                points = [TrajectoryPoint(0, pruner.origin.params["total"], ref["perplexity"])]
                self.baseline, self.baseline_model = list(points), None
                yield Progress("Uniform baseline: pruning a copy of the original with A = 0 …")
                for rec in pruner.iter_run(should_stop=work.should_stop):
                    ppl = self.ppl(model)
                    points.append(TrajectoryPoint(rec.index + 1, rec.params_total, ppl["perplexity"]))
                    self.baseline = list(points)
                    yield Progress(f"Uniform baseline step {rec.index + 1}: {rec.params_total / 1e6:.2f} M "
                                   f"parameters, perplexity {ppl['perplexity']:.2f}", rec)
                msg = "cancelled" if pruner.record.stopped else "done"
                if not pruner.record.stopped:  # kept for the zero-shot comparison (dense vs pruned vs uniform)
                    self.baseline_model = model.eval()
                    record_copy(work, s, pruner.record, copy_widths(pruner), ppl if len(points) > 1 else None,
                                "uniform baseline (Studio tab)")
                yield Progress(f"Uniform baseline {msg}: {len(points) - 1} step(s).", done=True)
            except (PrunerError, Cancelled) as exc:
                raise SessionError(f"Uniform baseline stopped: {exc}") from exc

    # ------------------------------------------------------------------ zero-shot evaluation
    @staticmethod
    def zero_shot_tasks() -> list[str]:
        from pruner.evaluation import TASKS

        return list(TASKS)

    def iter_zero_shot(self, tasks: list[str], limit: int | None, with_original: bool = True,
                       with_baseline: bool = True, batch_size: int = 8, seed: int = 0) -> Iterator[tuple[str, object]]:
        """Zero-shot accuracy of the working model, then (optionally) the original and the uniform baseline's
        pruned copy, on the same ``limit`` examples per task (None: every example). Yields ``(message, table)``
        after each model; the table (acc or acc_norm named per row) holds every model so far."""
        from pruner.evaluation import EvalError, evaluate, results_table

        work = self.work
        if not tasks:
            raise SessionError("Pick at least one task")
        with work.task():
            try:
                models = [(f"pruned ({work.steps_taken} steps)", work.model)]
                if with_original:
                    models.insert(0, ("original", work.original))
                if with_baseline and self.baseline_model is not None:
                    models.append(("uniform baseline", self.baseline_model))
                runs = []
                for label, model in models:
                    yield f"Zero-shot: evaluating the {label} model on {', '.join(tasks)} …", (
                        results_table(runs) if runs else None)
                    runs.append((label, evaluate(model, work.tokenizer, list(tasks), limit, batch_size, seed,
                                                 should_stop=work.should_stop)))
                yield f"Zero-shot: {len(runs)} model(s) evaluated.", results_table(runs)
            except Cancelled as exc:
                raise SessionError("Zero-shot evaluation cancelled") from exc
            except EvalError as exc:
                raise SessionError(str(exc)) from exc

    def zero_shot(self, tasks: list[str], limit: int, with_original: bool = True, batch_size: int = 8, seed: int = 0,
                  with_baseline: bool = True):
        """The final table of :meth:`iter_zero_shot`."""
        out = None
        for _, table in self.iter_zero_shot(tasks, limit, with_original, with_baseline, batch_size, seed):
            out = table
        return out
