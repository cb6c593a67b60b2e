"""The pruning methods, one module each: Adapt-Pruner's adaptive allocation, its uniform and custom variants, and
the baselines LLM-Pruner, FLAP, ShortGPT, Wanda-sp and SliceGPT (``docs/methods.md``).

Each is a :class:`~pruner.methods.base.Method` registered under its name; :data:`REGISTRY` lists them in the order
of the choice lists and :func:`method_class` finds one. Adding a method is adding a module here and importing it
below.
"""

from pruner.methods import (  # noqa: F401  (register)
    adaptive,
    custom,
    flap,
    llm_pruner,
    sensitivity,
    shortgpt,
    slicegpt,
    uniform,
    wanda_sp,
)
from pruner.methods.base import (
    REGISTRY,
    IncrementalMethod,
    Method,
    PlannedStep,
    UnitScores,
    method_class,
    register,
    top_units,
)

for _name in sorted(REGISTRY, key=lambda n: (REGISTRY[n].order, n)):  # the order of the choice lists
    REGISTRY[_name] = REGISTRY.pop(_name)

__all__ = ["REGISTRY", "IncrementalMethod", "Method", "PlannedStep", "UnitScores", "method_class", "register",
           "top_units"]
