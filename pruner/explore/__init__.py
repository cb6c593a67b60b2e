"""The schedule explorer: what a plan will cost before anything is cut (what-if), sweeps over methods and
settings from one importance measurement per criterion, the per-layer sensitivity beside the paper's layer
importance, and a history of runs (``docs/explore.md``).

    from pruner.explore import Explorer, run_sweep, sweep_grid
    ex = Explorer(pruner)                       # a pruning session: its model, tokenizer and settings
    ex.what_if(config=PruneConfig(target=0.7)).describe()
    run_sweep(ex, sweep_grid(pruner.config, methods=["adaptive", "flap"], targets=[0.9, 0.8])).table()
    ex.sensitivity().correlation               # Spearman's ρ with the layer importance, per level
"""

from pruner.explore.history import KINDS, Experiment, History
from pruner.explore.sweep import (
    Sweep,
    SweepPoint,
    SweepTooLarge,
    estimate_seconds,
    iter_sweep,
    run_sweep,
    sweep_grid,
)
from pruner.explore.whatif import (
    ONE_SHOT_NOTE,
    EvalSample,
    Explorer,
    SensitivityReport,
    WhatIf,
    plan_masks,
    settings_of,
)

__all__ = ["KINDS", "Experiment", "History", "Sweep", "SweepPoint", "SweepTooLarge", "estimate_seconds",
           "iter_sweep", "run_sweep", "sweep_grid", "ONE_SHOT_NOTE", "EvalSample", "Explorer", "SensitivityReport",
           "WhatIf", "plan_masks", "settings_of"]
