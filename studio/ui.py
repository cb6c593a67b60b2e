"""The page: its layout and which handler each control calls. Nothing is built at import time:
:func:`build_demo` makes a fresh ``gr.Blocks`` (one per call, so tests and the Space entry point each get
their own) around a shared startup model.

On a ZeroGPU Space the model work runs inside ``spaces.GPU``; elsewhere nothing is wrapped.
"""

from __future__ import annotations

from importlib import resources
from types import SimpleNamespace

import gradio as gr

from pruner.config import CRITERIA, METHODS
from pruner.data import CORPORA, CORPUS_DESCRIPTIONS
from pruner.explore.whatif import EvalSample

from . import history_tab, text
from .compare import DEFAULT_METHODS
from .explore import DEFAULT_METHODS as EXPLORE_METHODS
from .explore import SweepRequest
from .explore_page import ExploreHandlers
from .export import DEFAULT_DTYPE, DTYPES
from .handlers import Handlers, SharedModel, model_choices
from .inputs import BOUNDS, DELTA_STEP, FreeSlider
from .memory_fit import fit_note
from .pool import SessionPool
from .quality import Quality
from .settings import UPLOADED, StudioSettings
from .tour import STEPS, position
from .tour_handlers import TourHandlers

try:  # ZeroGPU Spaces: GPU work must run inside functions decorated with spaces.GPU
    import spaces

    gpu = spaces.GPU(duration=120)
    gpu_long = spaces.GPU(duration=600)  # training and Adapt-Accel
except ImportError:  # anywhere else: nothing to wrap

    def gpu(fn):
        return fn

    gpu_long = gpu

CSS = resources.files("studio").joinpath("studio.css").read_text(encoding="utf-8")
HEAVY = dict(concurrency_id="model", concurrency_limit=1)  # one model-heavy task at a time, server-wide
LIGHT = dict(concurrency_id="preview", concurrency_limit=4)
D = StudioSettings()  # the studio's defaults


def build_demo(model=None, tokenizer=None, source: str = "default", pool: SessionPool | None = None,
               load_error: str | None = None) -> gr.Blocks:
    """The studio as a ``gr.Blocks``. ``model``/``tokenizer``: the startup model, shared read-only by every
    browser session (each prunes a private copy); when None it is loaded from ``source`` on the first visit
    (``load_error``: it already failed, and every visitor is told why). ``pool`` bounds the visitors' memory
    (see :mod:`studio.pool`)."""
    shared = SharedModel(source, model, tokenizer, load_error)
    pool = pool or SessionPool()
    with gr.Blocks(title="Adapt-Pruner Studio") as demo:
        page = SimpleNamespace(state=gr.State(None))  # a StudioSession per browser tab, created by demo.load
        gr.Markdown(text.INTRO)
        with gr.Row(elem_classes="main-row"):
            with gr.Column(scale=1, min_width=330, elem_classes="controls"):
                _controls(page)
            with gr.Column(scale=3):
                _tabs(page)
        _wire(demo, page, Handlers(page, shared, pool))
    demo.studio_pool = pool  # for tests and the visitors benchmark
    return demo


def _controls(page) -> None:
    """The left column: model, calibration, schedule, buttons, quick evaluation, training."""
    page.status = gr.Markdown(text.LOADING, elem_id="status", elem_classes="status-box")
    page.summary = gr.Markdown(elem_id="summary")
    with gr.Accordion("Model", open=False):
        page.source = gr.Dropdown(model_choices(), value="default", allow_custom_value=True, label="Model",
                                  info="“default” (SmolLM2-135M-Instruct), a fetched real model, or type a local "
                                       "folder, a pruned folder, a .gguf file or a hub id")
        page.fit = gr.Markdown(elem_id="fit-note", elem_classes="explain")
        page.load_btn = gr.Button("Load model")
    with gr.Accordion("Calibration data", open=False):
        page.corpus = gr.Dropdown([*CORPORA, UPLOADED], value=D.prune.calibration, label="Corpus",
                                  info="; ".join(f"{k}: {v}" for k, v in CORPUS_DESCRIPTIONS.items()))
        page.upload = gr.File(label="Text file (for “uploaded file”)", file_types=[".txt", ".md"], type="filepath")
        with gr.Row():
            page.n_windows = _slider("n_windows", D.prune.n_windows, 1, label="windows", elem_id="n-windows")
            page.window = _slider("window", D.prune.window, 32, label="window length (tokens)", elem_id="window")
        page.seed = gr.Number(D.prune.seed, label="seed", precision=0)
    page.cost = gr.Markdown(elem_id="cost")
    gr.Markdown("### Schedule")
    page.target = _slider("target", round(100 * D.prune.target), 1, elem_id="target",
                          label="target size (% of the original parameters)")
    page.amplitude = _slider("amplitude", D.prune.amplitude, 0.005, label="amplitude A", elem_id="amplitude",
                             info="how strongly importance shifts sparsity between layers (0 = uniform)")
    with gr.Row():
        page.step = _slider("step", 100 * D.prune.step, DELTA_STEP, label="budget per step Δ (%)", elem_id="step")
        page.n_steps = _slider("n_steps", 12, 1, label="…or number of steps", info="sets Δ; follows the plan",
                               elem_id="n-steps")
    page.input_note = gr.Markdown(elem_id="input-note", elem_classes="input-note")
    with gr.Row():
        page.criterion = gr.Radio(list(CRITERIA), value=D.criterion_choice, label="unit criterion")
        page.method = gr.Radio(list(METHODS), value=D.prune.method, label="allocation / method",
                               info=text.METHOD_RADIO_INFO)
    with gr.Accordion("Custom schedule (final sparsity per layer)", open=False):
        page.custom = gr.Dataframe(headers=["layer", "final sparsity %"], datatype=["number", "number"],
                                   interactive=True, static_columns=[0], label="edit the last column; used when allocation = custom")
        page.fill_custom = gr.Button("Fill from the adaptive plan", size="sm")
    with gr.Row():
        page.measure_btn = gr.Button("Measure importance", variant="primary", elem_id="measure", min_width=60)
        page.step_btn = gr.Button("Prune one step", variant="primary", elem_id="step-btn", min_width=60)
    with gr.Row():
        page.run_btn = gr.Button("Run to target", elem_id="run", min_width=60)
        page.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", min_width=60)
    with gr.Row():
        page.undo_btn = gr.Button("Undo step", size="sm", elem_id="undo", min_width=60)
        page.reset_btn = gr.Button("Reset", size="sm", elem_id="reset", min_width=60)
        page.baseline_btn = gr.Button("Uniform baseline", size="sm", elem_id="baseline", min_width=60)
    with gr.Row(visible=False, elem_id="reset-confirm") as page.reset_row:
        gr.Markdown(text.RESET_CONFIRM)
        page.reset_yes = gr.Button("Yes, reset", size="sm", variant="stop", elem_id="reset-yes", min_width=60)
        page.reset_no = gr.Button("Keep my model", size="sm", elem_id="reset-no", min_width=60)
    with gr.Accordion("Quick evaluation", open=False):
        page.prompt = gr.Textbox(text.PROMPT, label="prompt", elem_id="prompt")
        with gr.Row():
            page.ppl_tokens = gr.Slider(256, 8192, D.quick_ppl.max_tokens, step=256, label="perplexity tokens",
                                        info=f"WikiText-2 test, {D.quick_ppl.window}-token windows")
            page.new_tokens = gr.Slider(4, 64, D.max_new_tokens, step=4, label="generated tokens")
        page.every = gr.Slider(1, 10, 1, step=1, label="during a run, evaluate every n-th step")
        page.eval_btn = gr.Button("Evaluate now", size="sm")
    _training_controls(page)


def _slider(name: str, value: float, step: float, **kw) -> gr.Slider:
    """A checked schedule control: its range from :data:`studio.inputs.BOUNDS`, any typed value passed to the
    handler (which explains a bad one and keeps the last good value)."""
    b = BOUNDS[name]
    return FreeSlider(b.low, b.high, value, step=step, **kw)


def _training_controls(page) -> None:
    with gr.Accordion("Recovery training · Adapt-Accel", open=False, elem_id="train-box"):
        with gr.Row():
            page.train_tokens = gr.Slider(1024, 262_144, D.train_tokens, step=1024, label="tokens per Train round",
                                          elem_id="train-tokens")
            page.lr = gr.Dropdown(["3e-5", "1e-4", "3e-4", "1e-3"], value=f"{D.train.lr:.0e}".replace("e-0", "e-"),
                                  label="peak learning rate", allow_custom_value=True)
        page.distill = gr.Slider(0, 1, D.train.distill_weight, step=0.05, label="distillation weight",
                                 info="0 = language-model loss only; 1 = KL to the original model only")
        page.train_cost = gr.Markdown(elem_id="train-cost")
        page.train_btn = gr.Button("Train", elem_id="train-btn")
        with gr.Row():
            page.stages = gr.Slider(1, 12, D.stages, step=1, label="Adapt-Accel stages", elem_id="stages")
            page.accel_tokens = gr.Slider(4096, 1_048_576, D.accel_tokens, step=4096,
                                          label="Adapt-Accel tokens (all stages)", elem_id="accel-tokens")
        page.accel_btn = gr.Button("Run Adapt-Accel", variant="primary", elem_id="accel-btn")
        gr.Markdown(text.EXPLAIN_ACCEL_TARGET, elem_classes="explain")


def _tabs(page) -> None:
    """The right column: the studio's figures, the architecture, zero-shot evaluation, export."""
    with gr.Tabs():
        with gr.Tab("Studio"):
            with gr.Row():
                with gr.Column():
                    page.layer_fig = gr.Plot(elem_id="layer-heatmap", show_label=False)
                    gr.Markdown(text.EXPLAIN_LAYER, elem_classes="explain")
                with gr.Column():
                    page.unit_fig = gr.Plot(elem_id="unit-heatmap", show_label=False)
                    gr.Markdown(text.EXPLAIN_UNITS, elem_classes="explain")
            with gr.Row():
                with gr.Column():
                    page.alloc_fig = gr.Plot(elem_id="alloc-heatmap", show_label=False)
                    page.alloc_md = gr.Markdown(elem_id="alloc-note")
                    with gr.Row():
                        page.whatif_btn = gr.Button("What-if perplexity", size="sm", elem_id="whatif-btn",
                                                    min_width=60, scale=0)
                        page.whatif_md = gr.Markdown(text.WHATIF_NONE, elem_id="whatif-note")
                    gr.Markdown(text.EXPLAIN_ALLOC, elem_classes="explain")
                with gr.Column():
                    page.traj_fig = gr.Plot(elem_id="trajectory", show_label=False)
                    page.metrics = gr.Markdown(elem_id="metrics")
                    gr.Markdown(text.EXPLAIN_EVAL, elem_classes="explain")
            with gr.Row():
                page.gen_orig = gr.Textbox(label="original model", lines=3, interactive=False, elem_id="gen-orig")
                page.gen_pruned = gr.Textbox(label="pruned model", lines=3, interactive=False, elem_id="gen-pruned")
            with gr.Row():
                with gr.Column():
                    page.loss_fig = gr.Plot(elem_id="loss-curve", show_label=False)
                with gr.Column():
                    gr.Markdown(text.EXPLAIN_TRAIN, elem_classes="explain")
        with gr.Tab("Learn", elem_id="learn-tab") as page.learn_tab:
            _learn_tab(page)
        with gr.Tab("Architecture"):
            page.arch_fig = gr.Plot(elem_id="arch", show_label=False)
            gr.Markdown(text.EXPLAIN_ARCH, elem_classes="explain")
        with gr.Tab("Evaluate"):
            gr.Markdown(text.EXPLAIN_ZERO_SHOT)
            with gr.Row():
                page.zs_tasks = gr.CheckboxGroup(Quality.zero_shot_tasks(), value=["arc_easy", "piqa"], label="tasks")
                with gr.Column(min_width=200):
                    page.zs_limit = gr.Slider(10, 500, 50, step=10, label="examples per task (quick)",
                                              info="a seeded sample: the same examples every time")
                    page.zs_full = gr.Checkbox(False, label="full data instead (every example; hours on a CPU)")
                with gr.Column(min_width=160):
                    page.zs_orig = gr.Checkbox(True, label="also the original model")
                    page.zs_base = gr.Checkbox(True, label="also the uniform baseline (once it has run)")
            page.zs_btn = gr.Button("Evaluate zero-shot", elem_id="zs-btn")
            page.zs_fig = gr.Plot(elem_id="zs-bars", show_label=False)
            page.zs_table = gr.Dataframe(label="results", interactive=False, elem_id="zs-table")
        with gr.Tab("Compare methods"):
            _compare_tab(page)
        with gr.Tab("Explore", elem_id="explore-tab") as page.explore_tab:
            _explore_tab(page)
        with gr.Tab("History", elem_id="history-tab") as page.hist_tab:
            history_tab.layout(page)
        with gr.Tab("Export"):
            gr.Markdown(text.EXPLAIN_EXPORT)
            page.export_dtype = gr.Radio(list(DTYPES), value=DEFAULT_DTYPE, label="weights", elem_id="export-dtype",
                                         info=text.EXPORT_DTYPE_INFO)
            page.export_btn = gr.Button("Prepare downloads", elem_id="export-btn")
            with gr.Row():
                page.zip_file = gr.File(label="pruned model (zip)", interactive=False)
                page.report_file = gr.File(label="report (JSON)", interactive=False)


def _learn_tab(page) -> None:
    """The guided tour: step k of n, its explanation, one action and one picture, Back / Next."""
    first = STEPS[0]
    page.tour_k = gr.State(0)
    gr.Markdown(text.TOUR_INTRO, elem_classes="explain")
    page.tour_pos = gr.Markdown(position(0), elem_id="tour-pos")
    page.tour_text = gr.Markdown(first.explain, elem_id="tour-text")
    with gr.Row():
        page.tour_layer = gr.Dropdown([], label="layer", visible=False, elem_id="tour-layer", scale=0, min_width=120)
        page.tour_btn = gr.Button(first.action, variant="primary", elem_id="tour-act")
    page.tour_fig = gr.Plot(elem_id="tour-fig", show_label=False)
    page.tour_note = gr.Markdown(text.TOUR_PRESS.format(action=first.action), elem_id="tour-note")
    with gr.Row():
        page.tour_back = gr.Button("← Back", interactive=False, elem_id="tour-back", size="sm")
        page.tour_next = gr.Button("Next →", elem_id="tour-next", size="sm")


def _compare_tab(page) -> None:
    """Several methods to the same target, side by side: trajectories, per-layer widths, a table, downloads."""
    gr.Markdown(text.EXPLAIN_COMPARE, elem_classes="explain")
    with gr.Row():
        page.cmp_methods = gr.CheckboxGroup(list(METHODS), value=list(DEFAULT_METHODS), label="methods",
                                            info="each prunes a copy of the original to the target set on the left",
                                            elem_id="cmp-methods")
        with gr.Column(min_width=260):
            page.cmp_zs_tasks = gr.CheckboxGroup(Quality.zero_shot_tasks(), value=[], elem_id="cmp-zs-tasks",
                                                 label="zero-shot average on (none: skipped)")
            page.cmp_zs_limit = gr.Slider(4, 200, 20, step=4, label="examples per task (seeded)")
    page.cmp_cost = gr.Markdown(elem_id="cmp-cost")
    with gr.Row():
        page.cmp_btn = gr.Button("Run comparison", variant="primary", elem_id="cmp-btn")
        page.cmp_cancel = gr.Button("Cancel", variant="stop", elem_id="cmp-cancel")
    page.cmp_traj = gr.Plot(elem_id="cmp-trajectory", show_label=False)
    with gr.Row():
        page.cmp_widths = gr.Plot(elem_id="cmp-widths", show_label=False)
        page.cmp_diff = gr.Plot(elem_id="cmp-diff", show_label=False)
    gr.Markdown(text.EXPLAIN_COMPARE_WIDTHS, elem_classes="explain")
    page.cmp_table = gr.Dataframe(label="results per method", interactive=False, elem_id="cmp-table")
    page.cmp_note = gr.Markdown(text.COMPARE_NO_RESULTS, elem_id="cmp-note", elem_classes="explain")
    page.cmp_files = gr.File(label="pruned models (one zip per method; load with pruner.load_model)",
                             file_count="multiple", interactive=False, elem_id="cmp-files")
    with gr.Accordion("What each method does", open=False):
        gr.Markdown(text.methods_markdown(), elem_id="cmp-explain")


def _explore_tab(page) -> None:
    """Sweeps of predicted perplexity (nothing cut), the Pareto view, the sensitivity scan, "use these settings"."""
    r = SweepRequest()
    gr.Markdown(text.EXPLAIN_EXPLORE, elem_classes="explain")
    with gr.Row():
        page.exp_methods = gr.CheckboxGroup(list(METHODS), value=list(EXPLORE_METHODS), label="methods",
                                            elem_id="exp-methods")
        with gr.Column(min_width=260):
            page.exp_targets = gr.Textbox(", ".join(f"{100 * t:g}" for t in r.targets), label="target sizes (%)",
                                          info=text.EXPLORE_TARGETS_INFO, elem_id="exp-targets")
            page.exp_amps = gr.Textbox(", ".join(f"{a:g}" for a in r.amplitudes), label="amplitudes A",
                                       info=text.EXPLORE_AMPLITUDES_INFO, elem_id="exp-amps")
            page.exp_steps = gr.Textbox("", label="budgets per step Δ (%)", info=text.EXPLORE_STEPS_INFO,
                                        elem_id="exp-steps")
        with gr.Column(min_width=220):
            page.exp_tokens = gr.Slider(512, 8192, EvalSample.max_tokens, step=512, label="evaluation tokens",
                                        info="WikiText-2 validation (not the calibration text)", elem_id="exp-tokens")
            page.exp_window = gr.Radio([128, 256, 512], value=128, label="evaluation window (tokens)",
                                       elem_id="exp-window")
            page.exp_scan = gr.Checkbox(False, label="sensitivity scan (every layer × 4 levels)", elem_id="exp-scan")
    page.exp_note = gr.Markdown(elem_id="exp-note", elem_classes="input-note")
    page.exp_estimate = gr.Markdown(elem_id="exp-estimate")
    with gr.Row():
        page.exp_btn = gr.Button("Run sweep", variant="primary", elem_id="exp-btn")
        page.exp_cancel = gr.Button("Cancel", variant="stop", elem_id="exp-cancel")
    page.exp_caption = gr.Markdown(text.EXPLORE_NO_RESULTS, elem_id="exp-caption", elem_classes="explain")
    with gr.Row():
        page.exp_curves = gr.Plot(elem_id="exp-curves", show_label=False)
        page.exp_pareto = gr.Plot(elem_id="exp-pareto", show_label=False)
    with gr.Row():
        page.exp_by_a = gr.Plot(elem_id="exp-amplitude", show_label=False)
        with gr.Column():
            with gr.Row():
                page.exp_pick = gr.Dropdown([], label="sweep point (or click a row of the table)", elem_id="exp-pick",
                                    scale=3)
                page.exp_use = gr.Button("Use these settings", elem_id="exp-use", scale=1)
            page.exp_table = gr.Dataframe(label="sweep points", interactive=False, elem_id="exp-table")
    page.exp_sens = gr.Plot(elem_id="exp-sensitivity", show_label=False)
    page.exp_sens_note = gr.Markdown(text.SCAN_NONE, elem_id="exp-sens-note")
    gr.Markdown(text.EXPLAIN_SENSITIVITY, elem_classes="explain")


def _wire(demo: gr.Blocks, p, h: Handlers) -> None:
    controls = [p.target, p.amplitude, p.step, p.criterion, p.method, p.custom, p.corpus, p.upload, p.n_windows,
                p.window, p.seed, p.ppl_tokens, p.new_tokens]
    train_controls = [p.train_tokens, p.lr, p.distill, p.stages, p.accel_tokens]
    everything = [p.state, p.status, p.summary, p.layer_fig, p.unit_fig, p.alloc_fig, p.alloc_md, p.arch_fig,
                  p.traj_fig, p.metrics, p.gen_orig, p.gen_pruned, p.cost, p.loss_fig, p.train_cost, p.n_steps,
                  p.whatif_md]
    compared = [p.cmp_traj, p.cmp_widths, p.cmp_diff, p.cmp_table, p.cmp_note, p.cmp_files]
    changed = [demo.load(h.start_session, None, everything + compared, **HEAVY)]  # what can change the model's size
    demo.unload(h.close_session)
    changed.append(p.load_btn.click(gpu(h.load), [p.source], [*everything, *compared, p.source], **HEAVY))
    p.source.change(fit_note, [p.source], [p.fit], **LIGHT)  # the memory plan, before anything loads
    demo.load(fit_note, [p.source], [p.fit], **LIGHT)
    p.measure_btn.click(gpu(h.measure), [p.state, *controls], everything, **HEAVY)
    changed.append(p.step_btn.click(gpu(h.step), [p.state, p.prompt, *controls], everything, **HEAVY))
    changed.append(p.run_btn.click(gpu(h.run), [p.state, p.prompt, p.every, *controls], everything, **HEAVY))
    p.cancel_btn.click(h.cancel, [p.state], [p.status], concurrency_limit=None)
    changed.append(p.undo_btn.click(h.undo, [p.state], everything, **HEAVY))
    p.reset_btn.click(lambda: gr.update(visible=True), None, [p.reset_row], queue=False)  # asks first
    p.reset_no.click(lambda: gr.update(visible=False), None, [p.reset_row], queue=False)
    changed.append(p.reset_yes.click(lambda: gr.update(visible=False), None, [p.reset_row], queue=False).then(
        h.reset, [p.state], everything, **HEAVY))
    p.eval_btn.click(gpu(h.evaluate), [p.state, p.prompt, *controls], everything, **HEAVY)
    p.baseline_btn.click(gpu(h.baseline), [p.state, *controls], everything, **HEAVY)
    p.export_btn.click(h.export, [p.state, p.export_dtype], [p.status, p.zip_file, p.report_file], **HEAVY)
    changed.append(p.train_btn.click(gpu_long(h.train), [p.state, p.prompt, *train_controls, *controls], everything,
                                     **HEAVY))
    changed.append(p.accel_btn.click(gpu_long(h.accel), [p.state, p.prompt, *train_controls, *controls], everything,
                                     **HEAVY))
    p.zs_btn.click(gpu(h.zero_shot), [p.state, p.zs_tasks, p.zs_limit, p.zs_full, p.zs_orig, p.zs_base],
                   [p.status, p.zs_table, p.zs_fig], **HEAVY)
    p.cmp_btn.click(gpu_long(h.compare), [p.state, p.cmp_methods, p.cmp_zs_tasks, p.cmp_zs_limit, p.prompt, *controls],
                    [p.status, *compared], **HEAVY)
    p.cmp_cancel.click(h.cancel, [p.state], [p.status], concurrency_limit=None)
    p.fill_custom.click(h.custom_table, [p.state, *controls], [p.custom], **LIGHT)
    redraw = _wire_schedule(p, h, controls)
    _wire_explore(p, h, ExploreHandlers(p), controls, everything)
    changed.append(_wire_tour(p, TourHandlers(p), everything, controls))
    history_tab.wire(demo, p, controls, train_controls, everything, compared, redraw, LIGHT, HEAVY)
    p.cmp_methods.change(h.compare_cost, [p.state, p.cmp_methods, *controls], [p.cmp_cost], **LIGHT)
    for c in (p.target, p.step, p.n_windows, p.window, p.ppl_tokens, p.method, p.criterion):
        c.change(h.compare_cost, [p.state, p.cmp_methods, *controls], [p.cmp_cost], **LIGHT)
    demo.load(h.compare_cost, [p.state, p.cmp_methods, *controls], [p.cmp_cost], **LIGHT)
    # the Train / Adapt-Accel estimate: from every setting it reads, however it changed (typed, dragged, set), and
    # again after anything that changes the model's size (the views leave it alone: they lack the training values)
    for c in (*train_controls, *controls):
        c.change(h.train_cost, [p.state, *train_controls, *controls], [p.train_cost], **LIGHT)
    for event in changed:
        event.then(h.train_cost, [p.state, *train_controls, *controls], [p.train_cost], **LIGHT)


def _wire_tour(p, t: TourHandlers, everything: list, controls: list):
    """Back / Next (light), the step's action (model work: measuring, planning, pruning)."""
    p.learn_tab.select(t.go, [p.state, p.tour_k], t.outputs(), **LIGHT)  # the step again, for the model as it is now
    p.tour_back.click(t.back, [p.state, p.tour_k], t.outputs(), **LIGHT)
    p.tour_next.click(t.next, [p.state, p.tour_k], t.outputs(), **LIGHT)
    return p.tour_btn.click(gpu(t.act), [p.state, p.tour_k, p.tour_layer, p.prompt, *controls],
                            [*everything, p.tour_fig, p.tour_note], **HEAVY)


def _wire_schedule(p, h: Handlers, controls: list):
    """The schedule panel: every edit is checked and marks the plot as recomputing (at once, outside the queue),
    then the plan for exactly the settings on screen is drawn unless a newer edit superseded it. Returns
    ``redraw(event)``, which chains the same check and preview after another event that moved the controls."""
    edit_out = [p.target, p.amplitude, p.step, p.n_windows, p.window, p.input_note, p.alloc_md, p.alloc_fig]
    preview_out = [p.alloc_fig, p.alloc_md, p.cost, p.n_steps]
    quick = dict(queue=False, show_progress="hidden")
    # a preview asked for while another is pending runs after it, on the values then on screen ("always_last";
    # Gradio's default for a chained step drops it, and the plot would stay marked as recomputing)
    drawn = dict(show_progress="hidden", trigger_mode="always_last", **LIGHT)
    for c in (p.target, p.amplitude, p.step, p.n_windows, p.window):
        c.release(h.edited, [p.state, *controls], edit_out, **quick).then(
            h.preview, [p.state, *controls], preview_out, **drawn)
        # a slider stepped by the arrow keys sends "input" and never "release": the plan follows every move
        # ("always_last": the last position is planned even when it arrives while an earlier one is computing)
        c.input(h.nudged, [p.state, *controls], edit_out, trigger_mode="always_last", **quick).then(
            h.preview, [p.state, *controls], preview_out, **drawn)
    for c in (p.criterion, p.method, p.corpus, p.custom):
        c.change(h.edited, [p.state, *controls], edit_out, **quick).then(
            h.preview, [p.state, *controls], preview_out, **drawn)
    p.n_steps.release(h.steps_to_budget, [p.state, p.n_steps, *controls], [*edit_out, p.n_steps], **quick).then(
        h.preview, [p.state, *controls], preview_out, **drawn)

    def redraw(event):
        return event.then(h.edited, [p.state, *controls], edit_out, **quick).then(
            h.preview, [p.state, *controls], preview_out, **drawn)

    return redraw


def _wire_explore(p, main: Handlers, h: ExploreHandlers, controls: list, everything: list) -> None:
    """The Explore tab: the estimate before running (on opening the tab and on every change of its controls), the
    streamed sweep and its Cancel, "use these settings" into the schedule panel (whose preview then redraws), and
    the What-if button beside the allocation preview. A sweep or a what-if may measure the importance the panel's
    plan needs: they end by redrawing the page (``everything``)."""
    request = [p.state, p.exp_methods, p.exp_targets, p.exp_amps, p.exp_steps, p.exp_scan, p.exp_tokens, p.exp_window,
               *controls]
    shown = [p.exp_curves, p.exp_pareto, p.exp_by_a, p.exp_table, p.exp_caption, p.exp_pick, p.exp_sens,
             p.exp_sens_note]
    estimate_out = [p.exp_note, p.exp_estimate]
    p.explore_tab.select(h.show, [p.state], shown, **LIGHT).then(h.estimate, request, estimate_out, **HEAVY)
    for c in (p.exp_methods, p.exp_scan, p.exp_window):
        c.change(h.estimate, request, estimate_out, **HEAVY)
    for c in (p.exp_targets, p.exp_amps, p.exp_steps):
        c.blur(h.estimate, request, estimate_out, **HEAVY)
        c.submit(h.estimate, request, estimate_out, **HEAVY)
    p.exp_tokens.release(h.estimate, request, estimate_out, **HEAVY)
    p.exp_tokens.input(h.estimate, request, estimate_out, trigger_mode="always_last", **HEAVY)  # the arrow keys
    run_out = [*estimate_out, *shown, *everything]  # everything holds the status box
    p.exp_btn.click(gpu(h.run), request, run_out, **HEAVY)
    p.exp_cancel.click(main.cancel, [p.state], [p.status], concurrency_limit=None)
    p.exp_table.select(h.pick_row, [p.state], [p.exp_pick], queue=False)
    edit_out = [p.target, p.amplitude, p.step, p.n_windows, p.window, p.input_note, p.alloc_md, p.alloc_fig]
    p.exp_use.click(h.use, [p.state, p.exp_pick], [p.target, p.amplitude, p.step, p.method, p.exp_note],
                    queue=False).then(
        main.edited, [p.state, *controls], edit_out, queue=False, show_progress="hidden").then(
        main.preview, [p.state, *controls], [p.alloc_fig, p.alloc_md, p.cost, p.n_steps],
        show_progress="hidden", trigger_mode="always_last", **LIGHT)
    p.whatif_btn.click(gpu(h.what_if), [p.state, *controls], everything, **HEAVY)
