"""The sub-commands of ``python -m pruner`` (``adapt-pruner``), one module each; :mod:`pruner.cli` assembles
them. Every module has ``register(sub)`` (adds its parser) and a ``run(args)`` that returns the exit code."""
