"""ShortGPT (Men et al., 2024; ``docs/methods.md``): remove the whole decoder layers of lowest Block Influence
``BI = 1 − cos(x_in, x_out)``; the fewest layers that reach the target, one shot."""

from __future__ import annotations

from collections.abc import Sequence

from pruner.errors import AllocationError, ConfigError
from pruner.methods.allocation import Allocation
from pruner.methods.base import Method, PlannedStep, register
from pruner.model.masking import LayerMask


def block_influence(layer_cos: Sequence[float]) -> list[float]:
    """ShortGPT's Block Influence of every layer: ``BI_l = 1 − mean_t cos(x_in, x_out)``."""
    return [1.0 - c for c in layer_cos]


def plan_depth(layer_cos: Sequence[float], n_remove: int) -> tuple[list[int], dict]:
    """The ``n_remove`` layers of lowest Block Influence (ties: the lower index goes first); at least one layer
    stays. Returns the sorted indices and the decision record."""
    n = len(layer_cos)
    if not 0 <= n_remove < n:
        raise AllocationError(f"Cannot remove {n_remove} of {n} layers: at least one must stay")
    bi = block_influence(layer_cos)
    order = sorted(range(n), key=lambda i: (bi[i], i))
    remove = sorted(order[:n_remove])
    return remove, {"block_influence": bi, "order": order, "removed_layers": remove}


@register
class ShortGPT(Method):
    """Depth pruning: the plan lists the layers to remove (``PlannedStep.remove_layers``)."""

    order = 12
    name = "shortgpt"
    title = "ShortGPT"
    summary = "ShortGPT (Men et al., 2024): the decoder layers of lowest Block Influence removed"
    layers_only = True
    published_calibration = (None, 256, "pg19")  # run_shortgpt.py: all of PG19 validation in 256-token strides

    def smallest_reachable(self, widths):
        return self.fixed_params + min(self.geo.layer_params(w) for w in widths), "ShortGPT keeps one layer"

    def check_model(self) -> None:
        super().check_model()
        if self.geo.rotated:
            raise ConfigError("ShortGPT cannot remove layers of a model SliceGPT rotated: each layer's output basis "
                              "is the next layer's input basis, so no layer can go")

    def resolution(self, widths):
        return max(self.geo.layer_params(w) for w in widths)

    def fractions(self, widths):
        last = len(widths) - 1
        return [n / last for n in range(1, last + 1)] if last else []

    def simulate(self, step, widths, scores):
        """The removed layers skipped: each hands its input on unchanged."""
        return {li: LayerMask(skip=True) for li in step.remove_layers}

    def plan(self, sparsity, widths, scores, fraction=1.0, index=0, units=True):
        """Remove the ``round(f·(L − 1))`` layers of lowest Block Influence."""
        if scores.layer_cos is None:
            raise AllocationError("Measure importance first: ShortGPT ranks layers by their block influence")
        n = round(min(max(fraction, 0.0), 1.0) * (len(widths) - 1))
        remove, decision = plan_depth(scores.layer_cos, n)
        keep = [li for li in range(len(widths)) if li not in set(remove)]
        new, sp = [widths[li] for li in keep], [sparsity[li] for li in keep]
        return PlannedStep(index, fraction, Allocation(sp, list(sp)), new, [], self.params_of(new),
                           method=self.name, remove_layers=remove, decision=decision)
