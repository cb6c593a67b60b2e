"""The pruning loop: the one planner (``planner``: importance → the next sub-step, a schedule to the target) and
the :class:`~pruner.pruning.pruner.Pruner` that measures, plans and cuts in sub-steps, with preview, undo and a
record."""
