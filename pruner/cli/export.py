"""``python -m pruner export``: write a pruned model as a portable Hugging Face folder or a GGUF file.

Examples::

    python -m pruner export --model runs/smollm-80 --format hf --out exports/smollm-80-hf
    python -m pruner export --model runs/smollm-80 --format gguf --gguf-dtype f16 --out exports/smollm-80-gguf
    python -m pruner export --model runs/smollm-80 --format hf --out exports/x --report runs/smollm-80-eval.json \\
        --push-to-hub me/smollm-80
"""

from __future__ import annotations

import json
from pathlib import Path

from pruner.cli.common import add_model_args, log
from pruner.errors import PrunerError
from pruner.io.outputs import check_no_alias, check_output_folder


def register(sub) -> None:
    e = sub.add_parser("export", help="export a (pruned) model as a portable HF folder or a GGUF file, with a model card")
    add_model_args(e, device_map=False)
    e.add_argument("--format", choices=["hf", "gguf"], required=True,
                   help="hf: folder loadable with AutoModelForCausalLM (trust_remote_code when widths differ); "
                        "gguf: llama.cpp file")
    e.add_argument("--out", required=True, help="output folder (refused if it exists, unless --force)")
    e.add_argument("--gguf-dtype", choices=["f32", "f16", "bf16"], default="f16", help="GGUF weight type (norms stay f32)")
    e.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    e.add_argument("--report", default=None, help="report JSON (prune or eval) whose evaluation results go into the card")
    e.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the export to this Hub model repo")
    e.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    e.add_argument("--no-verify", action="store_true", help="skip reloading the export to compare it with the model")
    e.set_defaults(func=run)


def _load_source(source: str, device, dtype):
    """Load the model to export; refuses pickle-only folders and folders whose weights do not match their config."""
    from pruner.export.common import refuse_pickles
    from pruner.io.exported import check_folder, load_exported
    from pruner.io.models import WIDTHS_FILE, load_model

    path = Path(source).expanduser()
    if path.is_dir():
        refuse_pickles(path)
        if (path / "config.json").is_file() and not (path / WIDTHS_FILE).is_file():
            config = check_folder(path)  # pruned folders are checked against pruned_widths.json by load_model
            if str(config.get("model_type", "")).startswith("adapt_pruned_"):
                model, tok = load_exported(path)
                return model.to(device if device not in (None, "auto") else "cpu"), tok
    return load_model(source, device=device, dtype=dtype, progress=log)


def read_report(path) -> dict:
    """A prune or eval report (JSON) for the model card; a clear error naming the file otherwise."""
    from pruner.export.common import ExportError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"--report '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"--report '{path}' is not a readable JSON report ({exc})") from exc
    if not isinstance(data, dict):
        raise ExportError(f"--report '{path}' is not a report (a JSON object was expected)")
    return data


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def run(args) -> int:
    from pruner.export import export_gguf, export_hf
    from pruner.export.common import ExportError, read_record
    from pruner.export.hub import push_to_hub

    out = check_output_folder(args.out, args.force, "--out folder", "use --force")  # before anything is loaded
    src = Path(args.model).expanduser()
    if src.exists() and _overlaps(src, out):
        raise ExportError(f"--out '{out}' is the model's own folder (or inside or around it): exporting there would "
                          "replace the source, and its pruning record, while it is read; choose another folder")
    check_no_alias({"--report": args.report}, {"--out": args.out}, {})  # a report inside --out would be replaced
    report = read_report(args.report) if args.report else None
    record = read_record(src) if src.is_dir() else None
    if record is None and isinstance(report, dict) and isinstance(report.get("record"), dict):
        record = report["record"]
    model, tok = _load_source(args.model, args.device, args.dtype)
    common = dict(source=args.model, record=record, report=report, force=args.force, verify=not args.no_verify)
    try:
        summary = (export_hf if args.format == "hf" else export_gguf)(
            model, tok, out, **common, **({} if args.format == "hf" else {"dtype": args.gguf_dtype}))
    except PrunerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a writer's own error (safetensors, gguf, a full disk)
        text = (getattr(exc, "strerror", None) or str(exc)).strip()
        log(f"error: writing the export to '{out}' failed ({text.splitlines()[0] if text else type(exc).__name__}); "
            f"nothing half-written was left there and the source '{args.model}' is unchanged")
        return 1
    if args.format == "hf":
        log(f"wrote {out} ({'per-layer widths: adapt_pruned config + remote code' if summary['remote_code'] else 'uniform widths: plain architecture, no remote code'})")
        if "verify" in summary:
            v = summary["verify"]
            log(f"check: reloaded with AutoModelForCausalLM, max |Δlogit| {v['max_abs_logit_diff']:.2e} "
                f"(largest |logit| {v['max_abs_logit']:.1f}, {v['tokens']} tokens, {v['dtype']})")
    else:
        log(f"wrote {summary['path']} (arch {summary['arch']}, {summary['dtype']}, tokenizer {summary['tokenizer']})")
        for note in summary["notes"]:
            log(f"note: {note}")
        if summary.get("verify"):
            v = summary["verify"]
            log(f"check: GGUF read back and rebuilt in float32: greedy next token agrees on {v['agreement']:.0%} of "
                f"{v['prompts']} prompts, max |Δlogit| {v['max_abs_logit_diff']:.3g}")
    print(json.dumps(summary, indent=1))
    if args.push_to_hub:
        try:
            log(f"pushed to {push_to_hub(out, args.push_to_hub, private=args.private)}")
        except ExportError as exc:
            log(f"error: {exc}")
            return 1
    return 0
