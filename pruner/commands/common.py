"""What the sub-commands share: the model and perplexity arguments, logging to stderr, report files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import CORPORA


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct), a folder, a .gguf file or a hub id")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")


def add_ppl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ppl-dataset", default="wikitext2",
                   help=f"corpus for perplexity: {', '.join(CORPORA)} or a text file")
    p.add_argument("--ppl-split", default="test", help="split for wikitext2 (valid or test)")
    p.add_argument("--ppl-windows", default="512", help="comma-separated window lengths, e.g. 128,512")
    p.add_argument("--ppl-max-tokens", type=int, default=None, help="score only the first N tokens (default: all)")
    p.add_argument("--ppl-bos", action="store_true", help="put a BOS token in front of every window")
    p.add_argument("--no-ppl", action="store_true", help="skip perplexity")


def perplexities(model, tok, args) -> list[dict]:
    """The perplexities the ``--ppl-*`` arguments ask for (one per window length), logged as they come."""
    from ..perplexity import format_perplexity, perplexity

    out = []
    if args.no_ppl:
        return out
    for w in [int(x) for x in str(args.ppl_windows).split(",") if x.strip()]:
        r = perplexity(model, tok, args.ppl_dataset, args.ppl_split, window=w, max_tokens=args.ppl_max_tokens,
                       bos=args.ppl_bos)
        log(f"perplexity {format_perplexity(r)} in {r['seconds']:.1f} s")
        out.append(r)
    return out


def write_report(path, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1))
        log(f"report written to {path}")
