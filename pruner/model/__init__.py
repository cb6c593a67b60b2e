"""The model layer: where a decoder layer's prunable parts live per architecture (``adapters``), widths, parameter
counts and the origin of every kept unit (``structure``), the surgery that removes units or whole layers
(``structure``, ``depth``, ``slicing``) and its undo at the cost of what was removed (``undo``), the widths and
origin records (``origin``), empty models with per-layer widths (``skeleton``), and the per-layer
config and modelling classes an export ships as remote code (``remote_code``). Nothing here decides *what* to cut."""
