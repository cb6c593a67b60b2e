"""Layer and unit importance, measured in one forward(+backward) pass (``measure``), with the lean backward that
keeps its memory near the weights' (``lean``)."""

from pruner.importance.measure import CRITERION_CLASSES, Importance, measure_importance, normalise_importance

__all__ = ["CRITERION_CLASSES", "Importance", "measure_importance", "normalise_importance"]
