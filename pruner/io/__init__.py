"""Reading and writing models: ``load_model`` / ``save_pruned`` / ``describe`` (``models``), the project's file
names and cache folder (``formats``), output folders that lose nothing (``outputs``), and the real models fetched
from the package registry (``shipped``)."""
