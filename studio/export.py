"""Downloads of a session: the run's report (JSON) and the pruned model as a zip of a saved folder."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

from pruner import save_pruned


def target_name(target: float) -> str:
    """The target in a file name, in both units: the page's percent and the records' fraction (``80pct-0.80``)."""
    return f"{round(100 * target)}pct-{target:.2f}"


def report(session) -> dict:
    """The run's report: pruning record, settings, trajectory, baseline, training and the last evaluation."""
    work, quality, training = session.work, session.quality, session.training
    return {
        "model": work.name,
        "settings": work.settings.public(),
        "target": {"percent": round(100 * work.settings.prune.target, 2), "fraction": work.settings.prune.target},
        "quick_perplexity_settings": work.settings.quick_ppl.describe(),
        "record": work.pruner.record.to_dict(),
        "trajectory": [p.to_dict() for p in quality.trajectory],
        "uniform_baseline": [p.to_dict() for p in quality.baseline],
        "recovery_training": [p.to_dict() for p in training.recovery],
        "training_losses": asdict(training.log),
        "adapt_accel": training.accel_report,
        "last_evaluation": asdict(quality.last_eval) if quality.last_eval else None,
    }


def export_report(session, out_dir: str | Path | None = None) -> Path:
    """Write the report JSON and return its path."""
    out = Path(out_dir or tempfile.mkdtemp(prefix="adapt-pruner-"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "adapt_pruner_report.json"
    path.write_text(json.dumps(report(session), indent=1, default=str))
    return path


#: The weight formats a download offers (the page's label → torch dtype name and the file-name tag).
DTYPES = {"bfloat16": ("bfloat16", "bf16"), "float16": ("float16", "fp16"), "float32": ("float32", "fp32")}
DEFAULT_DTYPE = "bfloat16"  # half the size of float32, the range of float32: the default for a zip


def export_zip(session, out_dir: str | Path | None = None, dtype: str = DEFAULT_DTYPE) -> Path:
    """Save the pruned model with :func:`pruner.save_pruned` (its weights in ``dtype``: bfloat16, float16 or
    float32) and zip the folder; returns the zip's path. Another dtype than the model's is written from a copy (the
    working model is not changed)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"Unknown weight format {dtype!r}: use {', '.join(DTYPES)}")
    work = session.work
    with work.task():
        out = Path(out_dir or tempfile.mkdtemp(prefix="adapt-pruner-"))
        target = getattr(torch, DTYPES[dtype][0])
        model = work.model if work.model.dtype == target else copy.deepcopy(work.model).to(target)
        model.config.torch_dtype = target
        try:
            return zip_model(model, work.tokenizer, out, "pruned-model", work.pruner.record, report(session),
                             zip_name=f"pruned-model-target-{target_name(work.settings.prune.target)}"
                                      f"-{DTYPES[dtype][1]}")
        finally:
            if model is not work.model:
                del model


def zip_model(model, tokenizer, out_dir: Path, name: str, record=None, studio_report: dict | None = None,
              zip_name: str | None = None) -> Path:
    """``out_dir/<zip_name or name>.zip``: the folder :func:`pruner.save_pruned` writes (as ``name/``), plus
    ``studio_report.json`` when given; the unzipped folder is removed again."""
    folder = Path(out_dir) / name
    save_pruned(model, tokenizer, folder, record=record, overwrite=True)
    if studio_report is not None:
        (folder / "studio_report.json").write_text(json.dumps(studio_report, indent=1, default=str))
    zpath = Path(out_dir) / f"{zip_name or name}.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(out_dir))
    shutil.rmtree(folder, ignore_errors=True)
    return zpath
