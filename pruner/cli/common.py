"""What the sub-commands share: the model and perplexity arguments, logging to stderr, report files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pruner.data import CORPORA


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_model_args(p: argparse.ArgumentParser, device_map: bool = True) -> None:
    """--model, --device, --dtype; and --device-map for the commands that can run over several devices (not accel,
    which trains data-parallel through `accelerate launch`, nor export, which writes one file set)."""
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct), a folder, a .gguf file or a hub id")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")
    if device_map:
        p.add_argument("--device-map", default=None, metavar="auto",
                       help="spread a model too big for one device over several (accelerate's placement); 'auto'")


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (so '--ppl-max-tokens -5' is refused instead of scoring all but 5)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def window_list(text: str) -> list[int]:
    """argparse type: comma-separated window lengths, each ≥ 2."""
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers (e.g. 128,512), got '{text}'") from None
    if not out or min(out) < 2:
        raise argparse.ArgumentTypeError(f"needs window lengths of at least 2 tokens, got '{text}'")
    return out


def add_ppl_args(p: argparse.ArgumentParser, no_ppl: bool = True) -> None:
    """The ``--ppl-*`` arguments; ``--no-ppl`` only where a command can do without perplexity."""
    p.add_argument("--ppl-dataset", default="wikitext2",
                   help=f"corpus for perplexity: {', '.join(CORPORA)} or a text file")
    p.add_argument("--ppl-split", default="test", help="split for wikitext2 (valid or test)")
    p.add_argument("--ppl-windows", type=window_list, default=[512], help="comma-separated window lengths, e.g. 128,512")
    p.add_argument("--ppl-max-tokens", type=positive_int, default=None, help="score only the first N tokens (default: all)")
    p.add_argument("--ppl-bos", action="store_true", help="put a BOS token in front of every window")
    if no_ppl:
        p.add_argument("--no-ppl", action="store_true", help="skip perplexity")


def ppl_configs(args) -> list:
    """The :class:`~pruner.evaluation.perplexity.PerplexityConfig` of every window the ``--ppl-*`` arguments ask
    for (none with ``--no-ppl``)."""
    from pruner.evaluation.perplexity import PerplexityConfig

    if args.no_ppl:
        return []
    return [PerplexityConfig(args.ppl_dataset, args.ppl_split, w, max_tokens=args.ppl_max_tokens, bos=args.ppl_bos)
            for w in args.ppl_windows]


def perplexities(model, tok, args) -> list[dict]:
    """The perplexities the ``--ppl-*`` arguments ask for (one per window length), logged as they come."""
    from pruner.evaluation.perplexity import format_perplexity

    out = []
    for cfg in ppl_configs(args):
        r = cfg.measure(model, tok)
        log(f"perplexity {format_perplexity(r)} in {r['seconds']:.1f} s")
        out.append(r)
    return out


def write_report(path, data: dict) -> None:
    """Write a report as JSON (the text is made first, so a failure never leaves half a file behind); a report
    inside a folder this project wrote is added to that folder's manifest."""
    from pruner.io.outputs import note_written

    if path:
        text = json.dumps(data, indent=1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        note_written(path)
        log(f"report written to {path}")


def check_finite(model, source) -> None:
    """Refuse a model with NaN or infinite weights (a broken conversion or training run): importance scores and
    perplexities of it mean nothing, and pruning would only report that a step removes nothing."""
    from pruner.errors import ModelLoadError

    bad = [name for name, p in model.named_parameters() if p.device.type != "meta" and not _all_finite(p)]
    if bad:
        raise ModelLoadError(f"'{source}' has NaN or infinite weights ({', '.join(bad[:3])}"
                             f"{' …' if len(bad) > 3 else ''}); it cannot be measured or pruned: load a healthy "
                             "checkpoint")


def _all_finite(p, chunk: int = 1 << 22) -> bool:
    """Every entry finite, read ``chunk`` entries at a time: ``torch.isfinite`` of a whole half-precision
    embedding works on a float32 copy of it (on Qwen2.5-0.5B in bf16 the check alone peaked 0.7 GB above the
    loaded model, the whole prune command's peak)."""
    import torch

    flat = p.detach().reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def check_windows(model, **windows: int) -> None:
    """Refuse windows longer than the model's context (``max_position_embeddings``) before any work."""
    from pruner.errors import ConfigError

    limit = getattr(model.config, "max_position_embeddings", None)
    for name, n in windows.items():
        if limit and n is not None and n > limit:
            raise ConfigError(f"{name} {n:,} is longer than the model's context ({limit:,} tokens, "
                              "max_position_embeddings); choose at most that")


def _why(exc: BaseException) -> str:
    """One line on why a writer failed (any error type: safetensors' and the tokenizers' own included)."""
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def save_or_rescue(model, tok, out, record, force: bool, name: str) -> tuple[str | None, bool]:
    """Save the model to ``out``; when that fails in any way (disk full, the folder vanished, a writer's own
    error), save it to a rescue folder instead and say where. Ctrl-C and SIGTERM wait until the save is done
    (:func:`pruner.cli.signals.pending` then says so). Returns ``(where it was saved or None when no place
    could take it, whether the intended place failed)``."""
    from pruner.cli import signals
    from pruner.io.models import save_pruned
    from pruner.io.outputs import rescue_folders

    with signals.deferred("the save"):
        try:
            save_pruned(model, tok, out, record=record, overwrite=force)
            return str(out), False
        except Exception as exc:  # noqa: BLE001 - any writer's failure ends in the rescue path
            why, place = _why(exc), out
        for rescue in rescue_folders(name):
            log(f"error: saving to '{place}' failed ({why}); saving to '{rescue}' instead")
            try:
                save_pruned(model, tok, rescue, record=record)
                return str(rescue), True
            except Exception as exc:  # noqa: BLE001
                why, place = _why(exc), rescue
        log(f"error: saving to '{place}' failed ({why}) and no rescue folder could take the model: it was not "
            "saved")
        return None, True


def write_report_or_rescue(path, data: dict, name: str) -> tuple[str | None, bool]:
    """Write the report; on any failure write it to a rescue file and say where (Ctrl-C waits until it is
    written)."""
    from pruner.cli import signals
    from pruner.io.outputs import rescue_folders

    if not path:
        return None, False
    with signals.deferred("the report"):
        try:
            write_report(path, data)
            return str(path), False
        except Exception as exc:  # noqa: BLE001
            why, place = _why(exc), path
        for rescue in rescue_folders(name):
            rescue = rescue.with_suffix(".json")
            log(f"error: writing the report to '{place}' failed ({why}); writing '{rescue}' instead")
            try:
                write_report(rescue, data)
                return str(rescue), True
            except Exception as exc:  # noqa: BLE001
                why, place = _why(exc), rescue
        log(f"error: writing the report to '{place}' failed ({why}) and no rescue file could take it")
        return None, True
