"""Adapt-Pruner Studio: watch a language model shrink, step by step (Gradio UI; wiring only).

    python app.py [--model default] [--host 127.0.0.1] [--port 7860]

All computation lives in ``pruner`` (a :class:`~pruner.session.StudioSession` holds one browser session's state)
and every figure is a pure function in ``visualizations``. Works as a Hugging Face Space (``app_file: app.py``),
including ZeroGPU: when the ``spaces`` package is importable, GPU work is wrapped with ``spaces.GPU``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr

import visualizations as viz
from pruner.data import CORPORA, CORPUS_DESCRIPTIONS
from pruner.io import load_model
from pruner.session import UPLOADED, SessionError, StudioSession, StudioSettings

try:  # ZeroGPU Spaces: GPU work must run inside functions decorated with spaces.GPU
    import spaces

    gpu = spaces.GPU(duration=120)
    gpu_long = spaces.GPU(duration=600)  # training and Adapt-Accel
except ImportError:  # anywhere else: nothing to wrap

    def gpu(fn):
        return fn

    gpu_long = gpu


log = logging.getLogger("studio")
HERE = Path(__file__).resolve().parent
CSS = (HERE / "assets" / "studio.css").read_text() if (HERE / "assets" / "studio.css").is_file() else ""
PROMPT = "The capital of France is"
HEAVY = dict(concurrency_id="model", concurrency_limit=1)  # one model-heavy task at a time, server-wide
LIGHT = dict(concurrency_id="preview", concurrency_limit=4)

INTRO = """# ✂️ Adapt-Pruner Studio
Prune a small language model **layer by layer, adaptively** ([Adapt-Pruner, arXiv 2502.03460](https://arxiv.org/abs/2502.03460)):
measure how much every decoder layer changes its input, give unimportant layers more sparsity, remove whole
attention groups and MLP channels in small steps, and watch perplexity and generations as the model shrinks."""

EXPLAIN_LAYER = """**Layer importance** I_l = −mean cos(x_in, x_out): the cosine between the hidden state entering a decoder
block and the one leaving it, averaged over all calibration tokens. A block that barely turns its input
(cos ≈ 1) can lose more; one that changes it a lot is important. Each column is one measurement, taken before
a step on a fresh calibration sample — watch the first and last layers stay on top."""

EXPLAIN_UNITS = """**Unit importance** decides *which* units of a layer go. First-order Taylor: Σ |W ⊙ ∂L/∂W| over all weights
of a unit (L = the language-model loss on the calibration batch). An attention unit is a whole **KV group**: one
key/value head with the query heads that share it (grouped-query attention), so removing groups keeps the
attention computation intact. Colours are relative to the layer's mean; channels are ranked, so the right end
of each row is what the next step removes."""

EXPLAIN_ALLOC = """**Allocation rule** per step: s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max), with Ĩ the layer importance
normalised to mean 0 and range [−1, 1]. Every step adds Δ on average; important layers (Ĩ > 0) get less, the
rest more. A = 0 is the uniform baseline. Attention moves in whole KV groups (⅓ of a layer for 3 KV heads), so
groups are handed to the layers furthest into their next group. Right of the dashed line: the preview of the
remaining steps with today's importance (the real run re-measures before every step)."""

EXPLAIN_ARCH = """**Remaining width** of every layer: KV groups (each with its query heads) and MLP channels kept, grey =
removed. Hidden size, embeddings and the number of layers never change."""

EXPLAIN_EVAL = """After every step: parameters, a **quick perplexity** (its corpus, split, window and token count are printed
with it; a short sample, so compare it only with itself), generation speed and a greedy continuation of your
prompt next to the original model's."""


EXPLAIN_TRAIN = """**Recovery training** fine-tunes the pruned model (AdamW, one warmup–stable–decay learning-rate schedule per
round, gradient clipping 1.0) on the shipped corpora (wiki, c4, stories; paragraphs overlapping the WikiText-2
test set are removed, so the quick perplexity stays honest). Optional distillation mixes in the KL divergence to
the original model's predictions. **Adapt-Accel** (the paper's recipe) prunes a share of the parameters per
stage and trains in between, with more tokens for later stages (share 2k/(N(N+1))); the trajectory shows every
stage going up (pruned) and down (trained). Cancel keeps the last completed stage."""

# ---------------------------------------------------------------------------------------------- views
def _settings(target, amplitude, step, criterion, method, custom, corpus, upload, n_windows, window, seed,
              ppl_tokens, new_tokens) -> StudioSettings:
    """The UI's control values as :class:`StudioSettings` (percentages → fractions)."""
    text = None
    if corpus == UPLOADED:
        if not upload:
            raise SessionError("Choose a text file to upload, or pick a shipped corpus for calibration")
        try:
            text = Path(upload).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SessionError(f"The uploaded file is not readable UTF-8 text ({exc})") from exc
    values = None
    if custom is not None and len(custom):
        try:
            values = [float(v) / 100 for v in custom.iloc[:, -1]]
        except (TypeError, ValueError) as exc:
            raise SessionError("The custom table must hold numbers (final sparsity in %)") from exc
    return StudioSettings(target=target / 100, amplitude=amplitude, step=step / 100, criterion=criterion,
                          method=method, custom=values, calibration=corpus, calibration_text=text,
                          n_windows=int(n_windows), window=int(window), seed=int(seed or 0),
                          ppl_tokens=int(ppl_tokens), max_new_tokens=int(new_tokens))


def _train_settings(settings: StudioSettings, tokens, lr, distill, stages, accel_tokens) -> StudioSettings:
    """Add the training controls' values to the settings."""
    try:
        lr = float(lr)
    except (TypeError, ValueError) as exc:
        raise SessionError(f"The learning rate must be a number, got {lr!r}") from exc
    return replace(settings, train_tokens=int(tokens), lr=lr, distill=float(distill), stages=int(stages),
                   accel_tokens=int(accel_tokens))


def _loss_figure(s: StudioSession):
    log_ = s.train_log
    return viz.loss_curve(list(range(1, len(log_.losses) + 1)), log_.losses,
                          stage_starts=[i + 1 for i in log_.starts], stage_labels=log_.labels)


def _alloc_figure(s: StudioSession, settings: StudioSettings | None):
    alloc, attn, mlp = s.sparsity_history()
    note = ""
    try:
        p = s.preview(settings)
        alloc, attn, mlp = alloc + p.allocated, attn + p.attention, mlp + p.mlp
        n_plan = len(p.params)
        note = (f"Plan: **{s.steps_taken} taken + {n_plan} more step(s)** to "
                f"{(p.params[-1] if p.params else 0) / 1e6:.2f} M parameters"
                + ("" if p.reached or not p.params else " (target not reachable)")
                + ("  \n" + "; ".join(p.notes) if p.notes else ""))
    except SessionError as exc:
        note = str(exc)
    labels = [str(k + 1) for k in range(len(attn))]
    fig = viz.allocated_sparsity_heatmap(attn, mlp, labels, n_done=s.steps_taken, allocated=alloc)
    return fig, note


def _views(s: StudioSession | None, settings: StudioSettings | None = None) -> dict:
    """Every figure and text of the page, from the session's state."""
    if s is None:
        return {status: "Loading the model …"}
    labels, cols = s.importance_columns()
    imp = s.shown_importance
    unit = (viz.unit_importance_heatmap(imp.group_scores, imp.channel_scores, criterion=imp.criterion,
                                        note=f"measured before step {s.shown_step}")
            if imp is not None else viz.unit_importance_heatmap([], []))
    planned, plan_note = _alloc_figure(s, settings)
    traj = s.trajectory
    base = s.baseline
    ev = s.last_eval
    out = {
        summary: s.summary_markdown(),
        layer_fig: viz.layer_importance_heatmap(cols, labels),
        unit_fig: unit,
        alloc_fig: planned,
        alloc_md: plan_note,
        arch_fig: viz.architecture_figure(s.original_widths(), s.current_widths()),
        traj_fig: viz.trajectory_figure([p.params for p in traj], [p.perplexity for p in traj], s.trajectory_label(),
                                        [p.params for p in base] or None, [p.perplexity for p in base] or None,
                                        steps=[p.step for p in traj], recovery=s.recovery,
                                        accel_start=(s.accel_start.params, s.accel_start.perplexity)
                                        if s.accel_start else None),
        loss_fig: _loss_figure(s),
        train_cost: s.train_cost_markdown(settings),
        metrics: ev.summary() if ev else "No evaluation yet: take a step or press “Evaluate now”.",
        gen_orig: ev.original_generation if ev else "",
        gen_pruned: ev.generation if ev else "",
        cost: s.cost_markdown(settings),
    }
    return out


def _need(s: StudioSession | None) -> StudioSession:
    if s is None:
        raise SessionError("The model is still loading; try again in a moment")
    return s


def _fail(exc: Exception) -> str:
    """A readable message for the page (the traceback goes to the server log only)."""
    if isinstance(exc, SessionError | ValueError | FileExistsError):
        msg = str(exc)
    else:
        log.exception("studio handler failed")
        msg = f"{type(exc).__name__}: {exc}"
    gr.Warning(msg)
    return f"⚠️ {msg}"


# ---------------------------------------------------------------------------------------------- handlers
STARTUP: dict = {}  # the startup model, loaded once and shared read-only by all sessions (copied per session)


def start_session():
    """A new browser session: a private copy of the startup model."""
    try:
        if "model" not in STARTUP:
            STARTUP["model"], STARTUP["tok"] = load_model(STARTUP.get("source", "default"), progress=None)
        s = StudioSession.from_shared(STARTUP["model"], STARTUP["tok"], name=STARTUP.get("source", "default"))
    except Exception as exc:  # noqa: BLE001 - shown to the user
        return {status: _fail(exc)}
    return {state: s, status: "Ready. Press **Measure importance** to begin.", **_views(s)}


@gpu
def load_handler(source):
    try:
        s = StudioSession.load(source.strip() or "default")
    except Exception as exc:  # noqa: BLE001
        return {status: _fail(exc)}
    return {state: s, status: f"Loaded **{source}**.", **_views(s)}


def preview_handler(s, *controls):
    if s is None:
        return {}
    try:
        settings = _settings(*controls)
        fig, note = _alloc_figure(s, settings)
        return {alloc_fig: fig, alloc_md: note, cost: s.cost_markdown(settings)}
    except Exception as exc:  # noqa: BLE001
        return {alloc_md: _fail(exc)}


def steps_to_budget(s, n_steps, target):
    """Set Δ so that about ``n_steps`` steps reach the target."""
    if s is None:
        return gr.update()
    try:
        return gr.update(value=round(100 * s.budget_for_steps(int(n_steps), target / 100), 2))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return gr.update()


@gpu
def measure_handler(s, *controls):
    if s is None:
        yield {status: "The model is still loading."}
        return
    try:
        settings = _settings(*controls)
        s.configure(settings)
        sec, _ = s.estimate_seconds()
        yield {status: f"Measuring importance on {s.calibration_tokens():,} tokens (≈ {sec:.0f} s) …"}
        imp = s.measure()
        yield {status: f"Measured in {imp.seconds:.1f} s on {imp.tokens:,} tokens"
                       + (f" (calibration loss {imp.loss:.3f})." if imp.loss is not None else "."),
               **_views(s, settings)}
    except Exception as exc:  # noqa: BLE001
        yield {status: _fail(exc)}


@gpu
def step_handler(s, prompt, *controls):
    if s is None:
        yield {status: "The model is still loading."}
        return
    try:
        settings = _settings(*controls)
        s.configure(settings)
        if not s.has_current_importance():
            sec, _ = s.estimate_seconds()
            yield {status: f"Step {s.steps_taken + 1}: measuring importance (≈ {sec:.0f} s) …"}
        rec = s.step()
        yield {status: f"Step {rec.index + 1} cut: {rec.params_total / 1e6:.2f} M parameters; evaluating …",
               **_views(s, settings)}
        s.quick_eval(prompt)
        yield {status: f"Step {rec.index + 1} done: {rec.params_total / 1e6:.2f} M parameters "
                       f"({rec.fraction_of_original:.1%} of the original).", **_views(s, settings)}
    except Exception as exc:  # noqa: BLE001
        yield {status: _fail(exc), **(_views(s, None) if s is not None else {})}


@gpu
def run_handler(s, prompt, every, *controls):
    if s is None:
        yield {status: "The model is still loading."}
        return
    try:
        settings = _settings(*controls)
        for p in s.run_to_target(settings, prompt=prompt, evaluate_every=int(every)):
            yield {status: p.message, **(_views(s, settings) if p.record is not None or p.done else {})}
    except Exception as exc:  # noqa: BLE001
        yield {status: _fail(exc), **(_views(s, None) if s is not None else {})}


def _stream(s: StudioSession, updates, settings: StudioSettings, every: float = 0.5):
    """Page updates for a stream of :class:`Progress`: the loss curve alone for training steps (at most one
    update per ``every`` seconds), everything otherwise."""
    last = 0.0
    for p in updates:
        if p.kind == "train_step":
            now = time.monotonic()
            if now - last >= every:
                last = now
                yield {status: p.message, loss_fig: _loss_figure(s)}
        else:
            yield {status: p.message, **_views(s, settings)}


def _training(s, values, start):
    """Shared body of the Train and Adapt-Accel handlers: settings from the controls, then the stream."""
    if s is None:
        yield {status: "The model is still loading."}
        return
    try:
        settings = _train_settings(_settings(*values[5:]), *values[:5])
        yield from _stream(s, start(settings), settings)
    except Exception as exc:  # noqa: BLE001
        yield {status: _fail(exc), **_views(s, None)}


@gpu_long
def train_handler(s, prompt, *values):
    yield from _training(s, values, lambda st: s.train(settings=st, prompt=prompt))


@gpu_long
def accel_handler(s, prompt, *values):
    yield from _training(s, values, lambda st: s.run_accel(st, prompt=prompt))


def cancel_handler(s):
    if s is not None:
        s.cancel()
    return {status: "Cancelling after the current stage … (the model stays intact)"}


def undo_handler(s):
    try:
        _need(s)
        rec = s.undo()
        return {status: f"Undid step {rec.index + 1}.", **_views(s)}
    except Exception as exc:  # noqa: BLE001
        return {status: _fail(exc)}


def reset_handler(s):
    try:
        _need(s)
        s.reset()
        return {status: "Back to the original model.", **_views(s)}
    except Exception as exc:  # noqa: BLE001
        return {status: _fail(exc)}


@gpu
def eval_handler(s, prompt, *controls):
    try:
        _need(s)
        s.settings = _settings(*controls)
        yield {status: "Evaluating …"}
        s.quick_eval(prompt)
        yield {status: "Evaluated.", **_views(s)}
    except Exception as exc:  # noqa: BLE001
        yield {status: _fail(exc)}


@gpu
def baseline_handler(s, *controls):
    try:
        _need(s)
        settings = _settings(*controls)
        for p in s.run_uniform_baseline(settings):
            yield {status: p.message, **_views(s, settings)}
    except Exception as exc:  # noqa: BLE001
        yield {status: _fail(exc)}


def export_handler(s):
    try:
        _need(s)
        path = s.export_zip()
        return {zip_file: str(path), report_file: str(s.export_report(path.parent)),
                status: f"Saved the pruned model ({path.stat().st_size / 1e6:.1f} MB zip) and the report."}
    except Exception as exc:  # noqa: BLE001
        return {status: _fail(exc)}


def train_cost_handler(s, *values):
    if s is None:
        return {}
    try:
        return {train_cost: s.train_cost_markdown(_train_settings(_settings(*values[5:]), *values[:5]))}
    except Exception as exc:  # noqa: BLE001
        return {train_cost: _fail(exc)}


def custom_table(s):
    """Per-layer final sparsity (%) for a custom schedule, pre-filled with the adaptive plan's last column."""
    import pandas as pd

    if s is None:
        return gr.update()
    try:
        vals = s.final_sparsity_plan()
    except SessionError as exc:
        _fail(exc)
        return gr.update()
    return pd.DataFrame({"layer": list(range(len(vals))), "final sparsity %": [round(100 * v, 1) for v in vals]})


@gpu
def zero_shot_handler(s, tasks, limit, full, with_original, with_baseline):
    try:
        _need(s)
        limit = None if full else int(limit)
        yield {status: f"Zero-shot evaluation on {', '.join(tasks)} "
                       f"({'all' if limit is None else limit} examples each) …"}
        table = None
        for msg, table in s.iter_zero_shot(tasks, limit, with_original=with_original,
                                           with_baseline=with_baseline):
            yield {status: msg, **({zs_table: table.round(3), zs_fig: viz.accuracy_bars(table.to_dict("records"))}
                                   if table is not None else {})}
        yield {status: "Zero-shot evaluation done." if table is not None else "Nothing evaluated."}
    except Exception as exc:  # noqa: BLE001
        yield {status: _fail(exc)}


# ---------------------------------------------------------------------------------------------- layout
with gr.Blocks(title="Adapt-Pruner Studio") as demo:
    state = gr.State(None)  # a StudioSession per browser tab, created by demo.load
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=330, elem_classes="controls"):
            status = gr.Markdown("Loading the model …", elem_id="status", elem_classes="status-box")
            summary = gr.Markdown(elem_id="summary")
            with gr.Accordion("Model", open=False):
                source = gr.Textbox("default", label="Model", info="“default” (SmolLM2-135M-Instruct), a local "
                                    "folder, a pruned folder, a .gguf file or a hub id")
                load_btn = gr.Button("Load model")
            with gr.Accordion("Calibration data", open=False):
                corpus = gr.Dropdown([*CORPORA, UPLOADED], value="wiki", label="Corpus",
                                     info="; ".join(f"{k}: {v}" for k, v in CORPUS_DESCRIPTIONS.items()))
                upload = gr.File(label="Text file (for “uploaded file”)", file_types=[".txt", ".md"],
                                 type="filepath")
                with gr.Row():
                    n_windows = gr.Slider(2, 128, 16, step=1, label="windows", elem_id="n-windows")
                    window = gr.Slider(32, 512, 128, step=32, label="window length (tokens)")
                seed = gr.Number(0, label="seed", precision=0)
            cost = gr.Markdown(elem_id="cost")
            gr.Markdown("### Schedule")
            target = gr.Slider(30, 99, 80, step=1, label="target size (% of the original parameters)",
                               elem_id="target")
            amplitude = gr.Slider(0, 0.1, 0.02, step=0.005, label="amplitude A", elem_id="amplitude",
                                  info="how strongly importance shifts sparsity between layers (0 = uniform)")
            with gr.Row():
                step = gr.Slider(0.5, 10, 2, step=0.25, label="budget per step Δ (%)", elem_id="step")
                n_steps = gr.Slider(1, 60, 12, step=1, label="…or number of steps", info="sets Δ")
            with gr.Row():
                criterion = gr.Radio(["taylor", "magnitude", "activation"], value="taylor", label="unit criterion")
                method = gr.Radio(["adaptive", "uniform", "custom"], value="adaptive", label="allocation")
            with gr.Accordion("Custom schedule (final sparsity per layer)", open=False):
                custom = gr.Dataframe(headers=["layer", "final sparsity %"], datatype=["number", "number"],
                                      interactive=True, label="edit the last column; used when allocation = custom")
                fill_custom = gr.Button("Fill from the adaptive plan", size="sm")
            with gr.Row():
                measure_btn = gr.Button("Measure importance", variant="primary", elem_id="measure", min_width=60)
                step_btn = gr.Button("Prune one step", variant="primary", elem_id="step-btn", min_width=60)
            with gr.Row():
                run_btn = gr.Button("Run to target", elem_id="run", min_width=60)
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", min_width=60)
            with gr.Row():
                undo_btn = gr.Button("Undo step", size="sm", elem_id="undo", min_width=60)
                reset_btn = gr.Button("Reset", size="sm", elem_id="reset", min_width=60)
                baseline_btn = gr.Button("Uniform baseline", size="sm", elem_id="baseline", min_width=60)
            with gr.Accordion("Quick evaluation", open=False):
                prompt = gr.Textbox(PROMPT, label="prompt", elem_id="prompt")
                with gr.Row():
                    ppl_tokens = gr.Slider(256, 8192, 2048, step=256, label="perplexity tokens",
                                           info="WikiText-2 test, 256-token windows")
                    new_tokens = gr.Slider(4, 64, 24, step=4, label="generated tokens")
                every = gr.Slider(1, 10, 1, step=1, label="during a run, evaluate every n-th step")
                eval_btn = gr.Button("Evaluate now", size="sm")
            with gr.Accordion("Recovery training · Adapt-Accel", open=False, elem_id="train-box"):
                with gr.Row():
                    train_tokens = gr.Slider(1024, 262_144, 16_384, step=1024, label="tokens per Train round",
                                             elem_id="train-tokens")
                    lr = gr.Dropdown(["3e-5", "1e-4", "3e-4", "1e-3"], value="1e-4", label="peak learning rate",
                                     allow_custom_value=True)
                distill = gr.Slider(0, 1, 0, step=0.05, label="distillation weight",
                                    info="0 = language-model loss only; 1 = KL to the original model only")
                train_cost = gr.Markdown(elem_id="train-cost")
                train_btn = gr.Button("Train", elem_id="train-btn")
                with gr.Row():
                    stages = gr.Slider(1, 12, 5, step=1, label="Adapt-Accel stages", elem_id="stages")
                    accel_tokens = gr.Slider(4096, 1_048_576, 32_768, step=4096, label="Adapt-Accel tokens (all stages)",
                                             elem_id="accel-tokens")
                accel_btn = gr.Button("Run Adapt-Accel", variant="primary", elem_id="accel-btn")
                gr.Markdown("Adapt-Accel prunes from the current size to the **target** above, with the schedule's "
                            "amplitude, criterion and calibration.", elem_classes="explain")
        with gr.Column(scale=3):
            with gr.Tabs():
                with gr.Tab("Studio"):
                    with gr.Row():
                        with gr.Column():
                            layer_fig = gr.Plot(elem_id="layer-heatmap", show_label=False)
                            gr.Markdown(EXPLAIN_LAYER, elem_classes="explain")
                        with gr.Column():
                            unit_fig = gr.Plot(elem_id="unit-heatmap", show_label=False)
                            gr.Markdown(EXPLAIN_UNITS, elem_classes="explain")
                    with gr.Row():
                        with gr.Column():
                            alloc_fig = gr.Plot(elem_id="alloc-heatmap", show_label=False)
                            alloc_md = gr.Markdown(elem_id="alloc-note")
                            gr.Markdown(EXPLAIN_ALLOC, elem_classes="explain")
                        with gr.Column():
                            traj_fig = gr.Plot(elem_id="trajectory", show_label=False)
                            metrics = gr.Markdown(elem_id="metrics")
                            gr.Markdown(EXPLAIN_EVAL, elem_classes="explain")
                    with gr.Row():
                        gen_orig = gr.Textbox(label="original model", lines=3, interactive=False, elem_id="gen-orig")
                        gen_pruned = gr.Textbox(label="pruned model", lines=3, interactive=False,
                                                elem_id="gen-pruned")
                    with gr.Row():
                        with gr.Column():
                            loss_fig = gr.Plot(elem_id="loss-curve", show_label=False)
                        with gr.Column():
                            gr.Markdown(EXPLAIN_TRAIN, elem_classes="explain")
                with gr.Tab("Architecture"):
                    arch_fig = gr.Plot(elem_id="arch", show_label=False)
                    gr.Markdown(EXPLAIN_ARCH, elem_classes="explain")
                with gr.Tab("Evaluate", visible=StudioSession.zero_shot_available()):
                    gr.Markdown("Zero-shot multiple-choice accuracy on a fixed sample of each task (acc_norm where "
                                "the task defines it, else acc). Slow on a CPU: start with few examples.")
                    with gr.Row():
                        zs_tasks = gr.CheckboxGroup(StudioSession.zero_shot_tasks(), value=["arc_easy", "piqa"],
                                                    label="tasks")
                        with gr.Column(min_width=200):
                            zs_limit = gr.Slider(10, 500, 50, step=10, label="examples per task (quick)",
                                                 info="a seeded sample: the same examples every time")
                            zs_full = gr.Checkbox(False, label="full data instead (every example; hours on a CPU)")
                        with gr.Column(min_width=160):
                            zs_orig = gr.Checkbox(True, label="also the original model")
                            zs_base = gr.Checkbox(True, label="also the uniform baseline (once it has run)")
                    zs_btn = gr.Button("Evaluate zero-shot", elem_id="zs-btn")
                    zs_fig = gr.Plot(elem_id="zs-bars", show_label=False)
                    zs_table = gr.Dataframe(label="results", interactive=False, elem_id="zs-table")
                with gr.Tab("Export"):
                    gr.Markdown("Download the pruned model (a folder that `pruner.load_model` and this studio load "
                                "back) and the run's report (settings, every step's importance, allocation and "
                                "widths, the trajectory).")
                    export_btn = gr.Button("Prepare downloads")
                    with gr.Row():
                        zip_file = gr.File(label="pruned model (zip)", interactive=False)
                        report_file = gr.File(label="report (JSON)", interactive=False)

    controls = [target, amplitude, step, criterion, method, custom, corpus, upload, n_windows, window, seed,
                ppl_tokens, new_tokens]
    train_controls = [train_tokens, lr, distill, stages, accel_tokens]
    everything = [state, status, summary, layer_fig, unit_fig, alloc_fig, alloc_md, arch_fig, traj_fig, metrics,
                  gen_orig, gen_pruned, cost, loss_fig, train_cost]

    demo.load(start_session, None, everything, **HEAVY)
    load_btn.click(load_handler, [source], everything, **HEAVY)
    measure_btn.click(measure_handler, [state, *controls], everything, **HEAVY)
    step_btn.click(step_handler, [state, prompt, *controls], everything, **HEAVY)
    run_btn.click(run_handler, [state, prompt, every, *controls], everything, **HEAVY)
    cancel_btn.click(cancel_handler, [state], [status], concurrency_limit=None)
    undo_btn.click(undo_handler, [state], everything, **HEAVY)
    reset_btn.click(reset_handler, [state], everything, **HEAVY)
    eval_btn.click(eval_handler, [state, prompt, *controls], everything, **HEAVY)
    baseline_btn.click(baseline_handler, [state, *controls], everything, **HEAVY)
    export_btn.click(export_handler, [state], [status, zip_file, report_file], **HEAVY)
    train_btn.click(train_handler, [state, prompt, *train_controls, *controls], everything, **HEAVY)
    accel_btn.click(accel_handler, [state, prompt, *train_controls, *controls], everything, **HEAVY)
    zs_btn.click(zero_shot_handler, [state, zs_tasks, zs_limit, zs_full, zs_orig, zs_base], [status, zs_table, zs_fig], **HEAVY)
    fill_custom.click(custom_table, [state], [custom], **LIGHT)
    n_steps.release(steps_to_budget, [state, n_steps, target], [step], **LIGHT)
    for c in (target, amplitude, step, n_windows, window):
        c.release(preview_handler, [state, *controls], [alloc_fig, alloc_md, cost], **LIGHT)
    for c in (criterion, method, corpus, custom):
        c.change(preview_handler, [state, *controls], [alloc_fig, alloc_md, cost], **LIGHT)
    for c in (train_tokens, stages, accel_tokens, target, step, n_windows, window):
        c.release(train_cost_handler, [state, *train_controls, *controls], [train_cost], **LIGHT)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Adapt-Pruner Studio (Gradio)")
    p.add_argument("--model", default=os.environ.get("STUDIO_MODEL", "default"),
                   help="startup model: 'default', a folder, a .gguf file or a hub id")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    STARTUP["source"] = args.model
    STARTUP["model"], STARTUP["tok"] = load_model(args.model, progress=log.info)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, css=CSS, show_error=False)


if __name__ == "__main__":
    main()
