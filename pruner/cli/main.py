"""Command line: ``python -m pruner {prune,info,eval,export,accel,fetch,plan-memory,explore} ...`` (installed: ``adapt-pruner ...``).

Each sub-command lives in its own module under :mod:`pruner.cli.main`; this module only assembles the parser
and turns the library's errors (:class:`pruner.PrunerError`) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse

import torch

from pruner.cli import accel, evaluate, explore, export, fetch, plan, prune, signals  # noqa: F401  (the sub-commands)
from pruner.cli.common import log
from pruner.errors import PrunerError

COMMANDS = (prune, evaluate, export, accel, fetch, plan, explore)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="adapt-pruner",
                                 description="Adapt-Pruner: layer-wise adaptive structural pruning "
                                             "(also: python -m pruner)")
    sub = ap.add_subparsers(dest="command", required=True)
    for mod in COMMANDS:
        mod.register(sub)
    return ap


def main(argv=None) -> int:
    """Run one sub-command; its errors become one line on stderr (exit 2), Ctrl-C and SIGTERM exit 130."""
    args = build_parser().parse_args(argv)
    with signals.handled():
        try:
            if getattr(args, "scan_tokens", None) is not None:  # the sensitivity scan's token budget
                from pruner.importance.sensitivity import scan_budget

                with scan_budget(args.scan_tokens):
                    return args.func(args)
            return args.func(args)
        except (PrunerError, FileExistsError, ValueError) as exc:
            log(f"error: {exc}")
            return 2
        except KeyboardInterrupt:
            signals.stopping()
            log("interrupted: nothing more was written (whatever was saved before the interrupt is complete)")
            return 130
        except (MemoryError, torch.OutOfMemoryError) as exc:
            log(f"error: out of memory ({exc or type(exc).__name__}); reduce the batch size, the number or length "
                "of windows or sequences, load in bfloat16 (--dtype bfloat16), or use a device with more memory")
            return 2


def main_exit() -> None:
    """The ``adapt-pruner`` console script (and ``python -m pruner``): once the command has returned, a late
    Ctrl-C or SIGTERM during the interpreter's shutdown is ignored instead of printing a traceback."""
    code = main()
    signals.ignore_from_now()
    raise SystemExit(code)
