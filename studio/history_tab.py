"""The History tab: every run of the session in a table and a scatter of measured perplexity against parameters,
a run's per-layer widths and "Load its settings" (into the schedule sliders, whose preview then redraws), the
history as CSV and JSON, uploading a history to continue, and session files (settings, history and optionally
the model in one zip; an exported model zip loads the same way). Logic in :mod:`studio.history` and
:mod:`studio.sessionfile`; figures in :mod:`visualizations.history`."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from pruner import format_perplexity
from pruner.data import CORPORA
from pruner.explore import Experiment
from visualizations.history import run_widths, runs_scatter

from . import history, sessionfile
from .handlers import fail
from .inputs import InputProblem, check
from .settings import UPLOADED, StudioSettings
from .views import compare_views, page_views
from .workspace import SessionError

EXPLAIN = ("Every real run of this session — a step, a run to the target, each method of a comparison, the uniform "
           "baseline, a Train round, Adapt-Accel — with its settings, size, the quick perplexity measured on its "
           "result (its settings in the run's details) and its time. Select a run to see the widths it reached, or "
           "to load its settings into the schedule sliders. Download the history as CSV and JSON; upload one "
           "(either format) to continue: its runs join this session's, none doubled.")
EXPLAIN_SESSION = ("**Session file**: the settings and the history (and, ticked, the working model with its "
                   "pruning record) in one zip. Loading it puts the settings back, merges the history and makes its "
                   "model the working model. An **exported model zip** (Export tab) loads the same way: its model "
                   "and pruning record, and the settings it was pruned with. A file that cannot be used changes "
                   "nothing and says why.")
NO_RUNS = "No runs yet: prune, compare or train, and every run appears here."
COLUMNS = ["#", "kind", "method", "target %", "A", "Δ %", "parameters", "% of original", "quick perplexity",
           "predicted", "seconds", "notes", "created", "id"]


def layout(page) -> None:
    """The tab's components (inside ``gr.Tab("History")``)."""
    gr.Markdown(EXPLAIN, elem_classes="explain")
    page.hist_fig = gr.Plot(elem_id="hist-scatter", show_label=False)
    page.hist_table = gr.Dataframe(headers=COLUMNS, label="runs", interactive=False, elem_id="hist-table")
    with gr.Row():
        page.hist_pick = gr.Dropdown([], value=None, label="run", elem_id="hist-pick", scale=3,
                                     info="its widths and details below")
        page.hist_load = gr.Button("Load its settings", elem_id="hist-load", scale=1, min_width=120)
    page.hist_detail = gr.Markdown(elem_id="hist-detail")
    page.hist_widths = gr.Plot(elem_id="hist-widths", show_label=False)
    with gr.Row():
        with gr.Column():
            page.hist_export = gr.Button("Download the history (CSV and JSON)", elem_id="hist-export", size="sm")
            page.hist_files = gr.File(label="history", file_count="multiple", interactive=False, elem_id="hist-files")
        page.hist_upload = gr.File(label="Upload a history (.json or .csv) to continue", type="filepath",
                                   file_types=[".json", ".csv"], elem_id="hist-upload")
    page.hist_note = gr.Markdown(elem_id="hist-note")
    gr.Markdown(EXPLAIN_SESSION, elem_classes="explain")
    with gr.Row():
        with gr.Column():
            page.sess_model = gr.Checkbox(False, label="include the working model", elem_id="sess-model")
            page.sess_save = gr.Button("Save session", elem_id="sess-save", size="sm")
            page.sess_file = gr.File(label="session file", interactive=False, elem_id="sess-file")
        page.sess_upload = gr.File(label="Load a session file or an exported model zip", type="filepath",
                                   file_types=[".zip"], elem_id="sess-upload")


# ---------------------------------------------------------------------- what the tab shows
def table(h):
    import pandas as pd

    rows = []
    for i, (e, r) in enumerate(zip(h.experiments, h.rows(), strict=True)):
        rows.append({"#": i + 1, "kind": e.kind, "method": r["method"], "target %": _pct(r["target"]),
                     "A": r["amplitude"], "Δ %": _pct(r["step"]), "parameters": e.params,
                     "% of original": round(100 * e.fraction, 2), "quick perplexity": _round(e.measured_ppl),
                     "predicted": _round(e.predicted_ppl), "seconds": round(e.seconds, 1), "notes": e.notes,
                     "created": e.created, "id": e.id})
    return pd.DataFrame(rows, columns=COLUMNS)


def _pct(v):
    return None if v is None or isinstance(v, bool) or not isinstance(v, int | float) else round(100 * v, 2)


def _round(v):
    return None if v is None else round(v, 2)


def label(i: int, e: Experiment) -> str:
    ppl = f" · perplexity {e.measured_ppl:.2f}" if e.measured_ppl is not None else ""
    return f"#{i + 1} · {e.kind} · {e.settings.get('method', '?')} · {e.params / 1e6:.3f} M{ppl}"


def describe(e: Experiment) -> str:
    """A run's details in a few lines: what, settings, size, perplexity with its settings, time."""
    st = e.settings
    cal = st.get("calibration")
    cal = cal if isinstance(cal, str) else f"uploaded '{(cal or {}).get('file', '?')}'"
    lines = [f"**{e.kind}** · {e.notes or '—'} · {e.created} UTC · id `{e.id}` · model {e.model or '?'}",
             f"{e.params:,} parameters ({e.fraction:.1%} of the original) · {e.seconds:.1f} s",
             f"settings: target {_pct(st.get('target'))} % · method {st.get('method')} · criterion "
             f"{st.get('criterion')} · A = {st.get('amplitude')} · Δ = {_pct(st.get('step'))} % · attention "
             f"{st.get('attention')} · calibration {cal} {st.get('n_windows')} × {st.get('window')}, seed "
             f"{st.get('seed')}"]
    studio = st.get("studio") or {}
    if e.kind in ("train", "accel") and studio.get("train"):
        t = studio["train"]
        lines.append(f"training: lr {t.get('lr')}, distillation weight {t.get('distill_weight')}, "
                     + (f"{studio.get('train_tokens'):,} tokens a round" if e.kind == "train" else
                        f"{studio.get('stages')} stages, {studio.get('accel_tokens'):,} tokens"))
    for what, d in (("measured", e.measured), ("predicted", e.predicted)):
        if d:
            lines.append(f"{what} perplexity **{d['perplexity']:.2f}** ({yardstick(d) or 'settings not recorded'})")
    return "  \n".join(lines)


def yardstick(d: dict) -> str:
    """What a perplexity was measured on ("wikitext2 test, 256-token windows, no BOS, 2,048 tokens"), from its
    result dict; "" when the dict does not say."""
    try:
        text = format_perplexity(d)
    except (KeyError, TypeError, ValueError):
        return ""
    return text[text.find("(") + 1:text.rfind(")")] if "(" in text else ""


def views(page, s) -> dict:
    """The table, the scatter and the run picker from the session's history."""
    h = s.work.history
    s.history_shown = _key(h)
    how = {yardstick(e.measured) for e in h.experiments if e.measured}
    note = ("" if not how else f"quick perplexity: {how.pop()}" if len(how) == 1 else
            "quick perplexity measured with different settings: each run's details name them")
    choices = [(label(i, e), e.id) for i, e in enumerate(h.experiments)]
    return {page.hist_fig: runs_scatter(h.rows(), note), page.hist_table: table(h),
            page.hist_pick: gr.update(choices=choices)}


def _key(h) -> tuple:
    return len(h), sum(e.measured is not None for e in h.experiments)


def lr_text(lr: float) -> str:
    """The learning rate as the page's dropdown writes it ("1e-4"), exactly."""
    short = f"{lr:.0e}".replace("e-0", "e-")
    return short if float(short) == lr else f"{lr:g}"


def control_values(page, settings: StudioSettings) -> tuple[dict, list[str]]:
    """The schedule, calibration, evaluation and training controls set to ``settings``; a value outside a
    control's range is left as it is and named."""
    p, pc, notes = page, settings.prune, []
    out = {}
    for name, comp, v in (("target", p.target, 100 * pc.target), ("amplitude", p.amplitude, pc.amplitude),
                          ("step", p.step, 100 * pc.step), ("n_windows", p.n_windows, pc.n_windows),
                          ("window", p.window, pc.window)):
        try:
            out[comp] = check(name, round(v, 6))
        except InputProblem as exc:
            notes.append(str(exc))
    out.update({p.criterion: settings.criterion_choice, p.method: pc.method, p.seed: pc.seed,
                p.new_tokens: settings.max_new_tokens, p.train_tokens: settings.train_tokens,
                p.lr: lr_text(settings.train.lr),
                p.distill: settings.train.distill_weight, p.stages: settings.stages,
                p.accel_tokens: settings.accel_tokens})
    if settings.quick_ppl.max_tokens:
        out[p.ppl_tokens] = settings.quick_ppl.max_tokens
    if settings.upload is not None:
        folder = Path(tempfile.mkdtemp(prefix="adapt-pruner-upload-"))
        path = folder / Path(settings.upload.name).name
        path.write_text(settings.upload.text, encoding="utf-8")
        out.update({p.corpus: UPLOADED, p.upload: str(path)})
    elif pc.calibration in CORPORA:
        out[p.corpus] = pc.calibration
    else:
        notes.append(f"the calibration '{pc.calibration}' is not a corpus of the page")
    if pc.custom is not None:
        import pandas as pd

        out[p.custom] = pd.DataFrame({"layer": list(range(len(pc.custom))),
                                      "final sparsity %": [round(100 * v, 2) for v in pc.custom]})
    return out, notes


# ---------------------------------------------------------------------- handlers
class HistoryHandlers:
    """The tab's handlers; ``page`` holds the components, ``controls`` / ``train_controls`` are the inputs of
    :func:`studio.handlers.settings_from` and :func:`studio.handlers.with_training` (set by :func:`wire`)."""

    def __init__(self, page):
        self.page = page

    def refresh(self, s):
        """The tab from the session's history (after every change of it: a run recorded, a perplexity added)."""
        if s is None or s.work.closed:
            return gr.skip()
        if getattr(s, "history_shown", None) == _key(s.work.history):
            return gr.skip()
        return views(self.page, s)

    def show(self, s, run_id):
        p = self.page
        if s is None or not run_id:
            return {p.hist_detail: "", p.hist_widths: run_widths([])}
        try:
            e = s.work.history.get(run_id)
        except KeyError:
            return {p.hist_detail: "⚠️ That run is not in this session's history any more."}
        original = s.schedule.layer_map().original
        return {p.hist_detail: describe(e), p.hist_widths: run_widths(e.widths, original, label(
            s.work.history.experiments.index(e), e))}

    def pick_row(self, s, evt: gr.SelectData):
        """A click on a row of the table selects its run."""
        runs = s.work.history.experiments if s is not None else []
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        return gr.update(value=runs[row].id) if isinstance(row, int) and 0 <= row < len(runs) else gr.skip()

    def load_settings(self, s, run_id):
        """Move the controls to a run's settings (the schedule preview then redraws for them)."""
        p = self.page
        if s is None or not run_id:
            return {p.hist_note: "Select a run first."}
        try:
            e = s.work.history.get(run_id)
            settings, notes = history.settings_of(e, s.settings)
        except KeyError:
            return {p.hist_note: "⚠️ That run is not in this session's history any more."}
        except SessionError as exc:
            return {p.hist_note: f"⚠️ {exc}"}
        values, problems = control_values(p, settings)
        i = s.work.history.experiments.index(e) + 1
        msg = (f"Loaded the settings of run #{i} ({e.kind}, {e.settings.get('method')}) into the controls"
               + ("; " + "; ".join(notes + problems) if notes or problems else "") + ".")
        return {**values, p.hist_note: msg, p.status: msg}

    def export(self, s):
        p = self.page
        if s is None:
            return {p.hist_note: "The session is still loading."}
        out = Path(tempfile.mkdtemp(prefix="adapt-pruner-history-"))
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        files = [str(s.work.history.save(out / f"history-{stamp}.{ext}")) for ext in ("csv", "json")]
        return {p.hist_files: files, p.hist_note: f"The history: {len(s.work.history)} run(s), as CSV and JSON."}

    def upload(self, s, path):
        """Merge an uploaded history into the session's; a file that is not one changes nothing."""
        p = self.page
        if s is None or not path:
            return gr.skip()
        try:
            other = history.read_history(path)
        except SessionError as exc:
            return {p.hist_note: fail(exc), p.hist_upload: None}
        new = history.merge(s.work, other)
        return {**views(p, s), p.hist_upload: None,
                p.hist_note: f"Continued from '{Path(path).name}': {len(other)} run(s), {new} new; "
                             f"{len(s.work.history)} in all."}

    def save_session(self, s, with_model):
        p = self.page
        try:
            if s is None:
                raise SessionError("The session is still loading")
            path = sessionfile.save_session(s, with_model=bool(with_model))
        except Exception as exc:  # noqa: BLE001 - shown to the user
            return {p.status: fail(exc)}
        what = "settings, history and the working model" if with_model else "settings and history"
        return {p.sess_file: str(path), p.status: f"Saved the session ({what}; {path.stat().st_size / 1e6:.1f} MB)."}

    def load_session(self, s, path):
        """A session file or an exported model zip: everything the page shows follows it; a file that cannot be
        used changes nothing."""
        p = self.page
        if s is None or not path:
            return gr.skip()
        try:
            msg = sessionfile.load(s, path)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            return {p.status: fail(exc), p.sess_upload: None}
        values, problems = control_values(p, s.settings)
        if problems:
            msg += "  \n" + "; ".join(problems)
        return {**page_views(p, s), **compare_views(p, s), **views(p, s), **values, p.status: msg,
                p.sess_upload: None}


def wire(demo, p, controls: list, train_controls: list, everything: list, compared: list, redraw, light: dict,
         heavy: dict) -> HistoryHandlers:
    """Connect the tab. ``redraw(event)`` chains the schedule panel's check-and-preview after an event (the one of
    :func:`studio.ui._wire_schedule`); ``light`` / ``heavy`` are the queue settings of previews and model work."""
    hh = HistoryHandlers(p)
    hist = [p.hist_fig, p.hist_table, p.hist_pick]
    moved = [c for c in [*controls, *train_controls] if c is not p.state]
    p.hist_tab.select(hh.refresh, [p.state], hist, **light)
    p.status.change(hh.refresh, [p.state], hist, show_progress="hidden", **light)
    p.hist_table.select(hh.pick_row, [p.state], [p.hist_pick], **light)
    p.hist_pick.change(hh.show, [p.state, p.hist_pick], [p.hist_detail, p.hist_widths], **light)
    redraw(p.hist_load.click(hh.load_settings, [p.state, p.hist_pick], [*moved, p.hist_note, p.status], **light))
    p.hist_export.click(hh.export, [p.state], [p.hist_files, p.hist_note], **light)
    p.hist_upload.upload(hh.upload, [p.state, p.hist_upload], [*hist, p.hist_upload, p.hist_note], **light)
    p.sess_save.click(hh.save_session, [p.state, p.sess_model], [p.sess_file, p.status], **heavy)
    redraw(p.sess_upload.upload(hh.load_session, [p.state, p.sess_upload],
                                [*everything, *compared, *hist, *moved, p.sess_upload], **heavy))
    return hh
