"""One studio session (the state behind one browser tab), usable from a notebook too.

A session is a :class:`~studio.workspace.Workspace` (the working model, the original, the pruner, one task at a
time, undo and reset) and the parts that read it, each in its own module::

    s = StudioSession.load("default")
    s.configure(StudioSettings(target=0.8, n_windows=16))
    s.schedule.measure()                 # importance of the current model (cached until the model changes)
    s.schedule.preview()                 # the whole planned schedule, nothing cut
    s.schedule.step(); s.quality.quick_eval("The capital of France is")
    for update in s.schedule.run_to_target(): print(update.message)
    for update in s.training.run_accel(): ...
    for update in s.compare.run(["adaptive", "flap", "shortgpt"]): ...   # each on a copy of the original
    for message in s.explore.run(settings, SweepRequest(...)): ...        # predicted perplexity, nothing cut
    s.export_zip()

Steps are atomic (the pruner builds the new modules before swapping them in), so a cancel or an error leaves
the model as it was.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pruner import load_model

from . import export, sessionfile
from .compare import Comparison
from .costs import PERPLEXITY, Costs
from .explore import Exploration
from .panel import SchedulePanel
from .quality import Quality
from .schedule import ScheduleControl
from .settings import StudioSettings
from .training import Training
from .workspace import Workspace


class StudioSession:
    """The state of one studio session; see the module docstring."""

    def __init__(self, model: nn.Module, tokenizer, original: nn.Module | None = None, name: str = "model",
                 settings: StudioSettings | None = None, keep_history: int = 3):
        self.work = Workspace(model, tokenizer, original, name, settings, keep_history)
        self.costs = Costs(self.work)
        self.quality = Quality(self.work)
        self.quality.on_ppl = lambda tokens, seconds: self.costs.observe(PERPLEXITY, tokens, seconds)
        self.schedule = ScheduleControl(self.work, self.costs, self.quality)
        self.training = Training(self.work, self.quality, self.schedule, self.costs)
        self.compare = Comparison(self.work, self.quality)
        self.panel = SchedulePanel(self.work.settings)
        self.explore = Exploration(self.work, self.schedule)  # sweeps and what-ifs: nothing cut

    @classmethod
    def load(cls, source: str = "default", device=None, settings: StudioSettings | None = None) -> StudioSession:
        """Load a model (see :func:`pruner.load_model`) and start a session on it."""
        model, tok = load_model(source, device=device, progress=None)
        return cls(model, tok, name=str(source), settings=settings)

    @classmethod
    def from_shared(cls, original: nn.Module, tokenizer, name: str = "model",
                    settings: StudioSettings | None = None) -> StudioSession:
        """A session on a shared ``original`` (never changed): its private working copy is made at the first
        change (see :meth:`Workspace.ensure_private`)."""
        return cls(original, tokenizer, original=original, name=name, settings=settings)

    def close(self, reason: str = "its tab was closed") -> None:
        """Free every model the session holds (the working copy, the uniform baseline, the training data) and the
        comparison's downloads."""
        self.work.close(reason)
        self.compare.close()
        self.explore.close()
        self.quality.baseline_model = None
        self.training._packed = None

    # ------------------------------------------------------------------ the workspace, for short
    @property
    def model(self) -> nn.Module:
        return self.work.model

    @property
    def original(self) -> nn.Module:
        return self.work.original

    @property
    def pruner(self):
        return self.work.pruner

    @property
    def settings(self) -> StudioSettings:
        return self.work.settings

    @property
    def steps_taken(self) -> int:
        return self.work.steps_taken

    @property
    def busy(self) -> bool:
        return self.work.busy

    def configure(self, settings: StudioSettings) -> None:
        self.work.configure(settings)

    def cancel(self) -> None:
        self.work.cancel()

    def undo(self):
        return self.work.undo()

    def reset(self) -> None:
        self.work.reset()

    # ------------------------------------------------------------------ page text and downloads
    def summary_markdown(self) -> str:
        d = self.work.summary()
        kv, heads, ch = d["num_kv_heads"], d["num_heads"], d["intermediate_size"]

        def span(v):
            return f"{min(v)}–{max(v)}" if min(v) != max(v) else f"{v[0]}"

        p, p0 = d["params"]["total"], d["original_params"]
        return (f"**{d['name']}** ({d['model_type']}) on **{d['device']}** ({d['dtype']})  \n"
                f"{d['layers']} layers · hidden {d['hidden_size']} · heads {span(heads)} · KV heads {span(kv)} · "
                f"MLP {span(ch)} channels  \n"
                f"**{p:,} parameters** ({p / 1e6:.2f} M, {p / p0:.1%} of the original {p0 / 1e6:.2f} M) · "
                f"{self.steps_taken} step(s) taken")

    def report(self) -> dict:
        return export.report(self)

    def export_report(self, out_dir: str | Path | None = None) -> Path:
        return export.export_report(self, out_dir)

    def export_zip(self, out_dir: str | Path | None = None, dtype: str = export.DEFAULT_DTYPE) -> Path:
        return export.export_zip(self, out_dir, dtype)

    # ------------------------------------------------------------------ the history and session files
    @property
    def history(self):
        """Every real run of this session (:mod:`studio.history`)."""
        return self.work.history

    def save_session(self, out_dir: str | Path | None = None, with_model: bool = False) -> Path:
        """Settings and history (and optionally the working model) in one zip (:mod:`studio.sessionfile`)."""
        return sessionfile.save_session(self, out_dir, with_model)

    def load_file(self, path: str | Path) -> str:
        """Continue from a session file or an exported model zip; nothing changes when it cannot be used."""
        return sessionfile.load(self, path)
