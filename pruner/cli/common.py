"""What the sub-commands share: the model and perplexity arguments, logging to stderr, report files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pruner.data import CORPORA
from pruner.errors import PrunerError


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


def add_ppl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ppl-dataset", default="wikitext2",
                   help=f"corpus for perplexity: {', '.join(CORPORA)} or a text file")
    p.add_argument("--ppl-split", default="test", help="split for wikitext2 (valid or test)")
    p.add_argument("--ppl-windows", type=window_list, default=[512], help="comma-separated window lengths, e.g. 128,512")
    p.add_argument("--ppl-max-tokens", type=positive_int, default=None, help="score only the first N tokens (default: all)")
    p.add_argument("--ppl-bos", action="store_true", help="put a BOS token in front of every window")
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
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1))
        log(f"report written to {path}")


def check_windows(model, **windows: int) -> None:
    """Refuse windows longer than the model's context (``max_position_embeddings``) before any work."""
    from pruner.errors import ConfigError

    limit = getattr(model.config, "max_position_embeddings", None)
    for name, n in windows.items():
        if limit and n is not None and n > limit:
            raise ConfigError(f"{name} {n:,} is longer than the model's context ({limit:,} tokens, "
                              "max_position_embeddings); choose at most that")


def save_or_rescue(model, tok, out, record, force: bool, name: str) -> tuple[str, bool]:
    """Save the model to ``out``; when that fails (disk full, the folder vanished), save it to a rescue folder
    instead and say where. Returns ``(where it was saved, whether the intended place failed)``."""
    from pruner.io.models import save_pruned
    from pruner.io.outputs import rescue_folder

    try:
        save_pruned(model, tok, out, record=record, overwrite=force)
        return str(out), False
    except (OSError, PrunerError) as exc:
        rescue = rescue_folder(name)
        log(f"error: saving to '{out}' failed ({exc}); saving to '{rescue}' instead")
        save_pruned(model, tok, rescue, record=record)
        return str(rescue), True


def write_report_or_rescue(path, data: dict, name: str) -> tuple[str | None, bool]:
    """Write the report; on failure write it to a rescue file and say where."""
    from pruner.io.outputs import rescue_folder

    if not path:
        return None, False
    try:
        write_report(path, data)
        return str(path), False
    except OSError as exc:
        rescue = rescue_folder(name).with_suffix(".json")
        log(f"error: writing the report to '{path}' failed ({exc.strerror or exc}); writing '{rescue}' instead")
        write_report(rescue, data)
        return str(rescue), True
