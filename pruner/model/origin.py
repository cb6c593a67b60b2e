"""What a decoder layer is wide (:class:`LayerWidths`) and which original units and layers a pruned model still
has (:class:`Origin`, kept on the model under :data:`ORIGIN_ATTR`; :func:`pruner.model.structure.origin_of` reads
or creates it). Plain data, JSON-serialisable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerWidths:
    """The width of one decoder layer."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Origin:
    """What the model looked like before any pruning, and which original units each layer still has.

    Every list has one entry per *current* layer: its original widths, and the original indices of its kept units;
    ``kept_layers`` gives each current layer's original index (layers removed by depth pruning are missing) and
    ``n_layers`` the original depth.
    """

    widths: list[LayerWidths]
    params: dict
    kept_groups: list[list[int]]
    kept_channels: list[list[int]]
    kept_layers: list[int] | None = None  # None: no layer removed
    n_layers: int | None = None

    def __post_init__(self) -> None:
        if self.kept_layers is None:
            self.kept_layers = list(range(len(self.widths)))
        if self.n_layers is None:
            self.n_layers = len(self.widths)

    @property
    def removed_layers(self) -> list[int]:
        """Original indices of the layers that depth pruning removed."""
        return sorted(set(range(self.n_layers)) - set(self.kept_layers))

    def copy(self) -> Origin:
        return Origin(list(self.widths), dict(self.params), [list(g) for g in self.kept_groups],
                      [list(c) for c in self.kept_channels], list(self.kept_layers), self.n_layers)

    def without_layers(self, remove: Sequence[int]) -> Origin:
        """The origin after removing the current layers ``remove``."""
        keep = [i for i in range(len(self.widths)) if i not in set(remove)]
        return Origin([self.widths[i] for i in keep], dict(self.params), [list(self.kept_groups[i]) for i in keep],
                      [list(self.kept_channels[i]) for i in keep], [self.kept_layers[i] for i in keep], self.n_layers)

    def to_dict(self) -> dict:
        return {
            "widths": [w.to_dict() for w in self.widths],
            "params": self.params,
            "kept_groups": self.kept_groups,
            "kept_channels": self.kept_channels,
            "kept_layers": self.kept_layers,
            "n_layers": self.n_layers,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Origin:
        return cls([LayerWidths(**w) for w in d["widths"]], d["params"], d["kept_groups"], d["kept_channels"],
                   d.get("kept_layers"), d.get("n_layers"))


ORIGIN_ATTR = "_adapt_pruner_origin"
