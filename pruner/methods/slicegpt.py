"""SliceGPT (Ashkboos et al., ICLR 2024; ``docs/methods.md``): rotate the residual stream with the PCA of calibration
activations and delete its least-used directions — the embedding dimension shrinks, not heads or channels; one
shot, the same width in every layer (the paper's constant slicing, rounded down to a multiple of 8)."""

from __future__ import annotations

from pruner.errors import AllocationError, ConfigError
from pruner.methods.allocation import Allocation
from pruner.methods.base import Method, PlannedStep, register
from pruner.model.rotation import SLICE_MULTIPLE, sliced_width
from pruner.model.structure import Geometry, LayerWidths


def sliced_params(geo: Geometry, widths: list[LayerWidths], fixed_params: int, width: int) -> int:
    """Every parameter of the model once its residual stream is ``width`` wide: the embedding ``V·d``, the untied
    head ``V·D`` (not sliced), per layer the Linears with ``d`` in place of ``D`` where they read or write the stream
    (the last layer writes all ``D``), the two shortcut matrices (``d×d`` and ``d×d_out``) and no norm weights.
    ``geo`` and ``fixed_params`` describe the unrotated model (split q/k/v/o and gate/up/down, two pre-norms)."""
    d, big, n = width, geo.hidden_size, len(widths)
    per_group_w = geo.head_dim * (2 * geo.n_rep + 2)  # q rows + k, v rows + o columns, each D long
    group_b = geo.group_params - per_group_w * big  # q/k/v biases: not along the stream
    channel_b = geo.channel_params - 3 * big  # gate/up biases
    other = geo.layer_other - 2 * big  # what a layer holds besides its Linears and two norms
    total = 0
    for li, w in enumerate(widths):
        out = big if li == n - 1 else d
        total += w.num_kv_heads * (per_group_w * d + group_b)
        total += w.intermediate_size * (2 * d + out + channel_b)
        total += (d if geo.o_bias else 0) + (out if geo.down_bias else 0) + d * d + d * out + other
    vocab = geo.vocab_size * big
    fixed = fixed_params - vocab * (1 if geo.tied_embeddings else 2) - big  # less embedding, head, final norm
    return total + fixed + geo.vocab_size * d + vocab


@register
class SliceGPT(Method):
    """Constant slicing of the residual stream; the plan's ``slice_width`` is what :class:`pruner.Pruner` cuts to
    (:func:`pruner.model.rotation.build_slicing`)."""

    order = 14
    name = "slicegpt"
    title = "SliceGPT"
    summary = "SliceGPT (Ashkboos et al., ICLR 2024): residual stream rotated by PCA and sliced to a narrower width"
    layers_only = True  # nothing to score: the importance pass measures the layers only
    repeatable = False
    measured_by_the_cut = ("embedding_variance_kept", "variance_kept", "attention_variance_kept")
    published_calibration = (128, 2048, "wikitext2")  # run_slicegpt.py: --cal-nsamples 128 --cal-max-seqlen 2048

    @classmethod
    def card_note(cls, config: dict) -> str:
        return (" The residual stream was rotated by PCA and sliced (SliceGPT): every layer adds its residual through "
                "two shortcut matrices and its norms normalise by the original hidden width, so loading needs the "
                "remote code (trust_remote_code=True).")

    def check_model(self) -> None:
        super().check_model()
        if not self.geo.rotatable:
            raise ConfigError("SliceGPT supports Llama/SmolLM, Mistral and Qwen2 (pre-norm RMSNorm blocks with "
                              "separate q/k/v and gate/up Linears); this architecture is not supported yet")

    @property
    def sliced(self) -> bool:
        """The model's residual stream is already rotated and sliced (SliceGPT slices once)."""
        return self.geo.rotated

    @property
    def floor_text(self) -> str:
        return f"a residual width of {SLICE_MULTIPLE}"

    def width_for(self, fraction: float) -> int:
        """The kept residual width when the slicing fraction is ``fraction``."""
        return sliced_width(self.geo.hidden_size, fraction)

    def params_at(self, widths, width: int) -> int:
        return sliced_params(self.geo, list(widths), self.fixed_params, width)

    def resolution(self, widths):
        big = self.geo.hidden_size
        return self.params_at(widths, big) - self.params_at(widths, big - SLICE_MULTIPLE)  # the widest slice

    def smallest_reachable(self, widths):
        if self.sliced:
            return self.params_of(widths), "the residual stream already sliced (SliceGPT slices once)"
        return self.params_at(widths, self.width_for(1.0)), f"SliceGPT keeps {self.floor_text}"

    def plan(self, sparsity, widths, scores, fraction=1.0, index=0, units=True):
        """Slice the residual stream by ``fraction`` (the slicing fraction itself): width ``int((1 − f)·D)`` rounded
        down to a multiple of 8, the same in every layer."""
        if self.sliced:
            raise AllocationError("This model's residual stream is already rotated and sliced (SliceGPT slices once)")
        fraction = min(max(fraction, 0.0), 1.0)
        d, big = self.width_for(fraction), self.geo.hidden_size
        params, before = self.params_at(widths, d), self.params_of(widths)
        decision = {"slicing": 1.0 - d / big, "residual_width": d, "hidden_size": big,
                    "residual_widths": [d] * len(widths), "params_share": params / before,
                    "shortcut_params": sum(d * d + d * (big if li == len(widths) - 1 else d)
                                           for li in range(len(widths)))}
        sp = list(sparsity)
        return PlannedStep(index, fraction, Allocation(sp, list(sp)), list(widths), [], params, method=self.name,
                           slice_width=d, decision=decision)

    def simulate(self, step, widths, scores):
        """Not by masks: SliceGPT rotates the residual stream by the PCA its cut computes, which no mask of the
        unrotated model reproduces; measure it by pruning a copy (``adapt-pruner prune``, the Compare tab)."""
        raise ConfigError("A what-if of SliceGPT needs its rotation, which only the cut computes: prune a copy "
                          "with --method slicegpt (or in the Compare tab) to measure it")
