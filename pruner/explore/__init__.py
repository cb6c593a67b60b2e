"""The schedule explorer: what a plan will cost before anything is cut (what-if), sweeps over methods and
settings from one importance measurement, the per-layer sensitivity beside the paper's layer importance, and a
history of runs (``docs/explore.md``)."""

from pruner.explore.whatif import ONE_SHOT_NOTE, EvalSample, Explorer, WhatIf, plan_masks, settings_of

__all__ = ["ONE_SHOT_NOTE", "EvalSample", "Explorer", "WhatIf", "plan_masks", "settings_of"]
