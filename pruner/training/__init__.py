"""Training between and after pruning steps: recovery training (``train``) on decontaminated data (``data``),
Adapt-Accel's prune→train stages (``accel``, ``accel_config``), their typed events (``events``) and checkpoints
(``checkpoints``)."""
