"""The command line, ``python -m pruner …`` / ``adapt-pruner …``: one module per sub-command; ``main`` builds the
parser."""

from pruner.cli.main import main, main_exit

__all__ = ["main", "main_exit"]
