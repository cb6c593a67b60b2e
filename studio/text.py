"""Every explanation the studio's page shows, in one place (the library holds no page text)."""

INTRO = """# ✂️ Adapt-Pruner Studio
Prune a small language model **layer by layer, adaptively** ([Adapt-Pruner, arXiv 2502.03460](https://arxiv.org/abs/2502.03460)):
measure how much every decoder layer changes its input, give unimportant layers more sparsity, remove whole
attention groups and MLP channels in small steps, and watch perplexity and generations as the model shrinks."""

EXPLAIN_LAYER = """**Layer importance** I_l = −mean cos(x_in, x_out): the cosine between the hidden state entering a decoder
block and the one leaving it, averaged over all calibration tokens. A block that barely turns its input
(cos ≈ 1) can lose more; one that changes it a lot is important. Each column is one measurement, taken before
a step on a fresh calibration sample — watch the first and last layers stay on top."""

EXPLAIN_UNITS = """**Unit importance** decides *which* units of a layer go. First-order Taylor: Σ |W ⊙ ∂L/∂W| over all weights
of a unit (L = the language-model loss on the calibration batch). An attention unit is a whole **KV group**: one
key/value head with the query heads that share it (grouped-query attention), so removing groups keeps the
attention computation intact. Colours are relative to the layer's mean; channels are ranked, so the right end
of each row is what the next step removes."""

EXPLAIN_ALLOC = """**Allocation rule** per step: s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max), with Ĩ the layer importance
normalised to mean 0 and range [−1, 1]. Every step adds Δ on average; important layers (Ĩ > 0) get less, the
rest more. A = 0 is the uniform baseline. Each layer meets its budget by removing its units of lowest score per
parameter, KV groups and MLP channels ranked together (the *score* policy; *proportional* gives attention and
MLP the same share). Right of the dashed line: the plan to the target. Its first column is exactly the step
“Prune one step” takes with the importance on screen; later columns reuse today's scores (the real run
re-measures before every step)."""

EXPLAIN_ARCH = """**Remaining width** of every layer: KV groups (each with its query heads) and MLP channels kept, grey =
removed. Hidden size, embeddings and the number of layers never change."""

EXPLAIN_EVAL = """After every step: parameters, a **quick perplexity** (its corpus, split, window and token count are printed
with it; a short sample, so compare it only with itself), generation speed and a greedy continuation of your
prompt next to the original model's."""


EXPLAIN_TRAIN = """**Recovery training** fine-tunes the pruned model (AdamW, one warmup–stable–decay learning-rate schedule per
round, gradient clipping 1.0) on the shipped corpora (wiki, c4, stories; paragraphs overlapping the WikiText-2
test set are removed, so the quick perplexity stays honest). Optional distillation mixes in the KL divergence to
the original model's predictions. **Adapt-Accel** (the paper's recipe) prunes a share of the parameters per
stage and trains in between, with more tokens for later stages (share 2k/(N(N+1))); the trajectory shows every
stage going up (pruned) and down (trained). Cancel keeps the last completed stage."""

EXPLAIN_ZERO_SHOT = ("Zero-shot multiple-choice accuracy on a fixed sample of each task (acc_norm where the task "
                     "defines it, else acc). Slow on a CPU: start with few examples.")

EXPLAIN_EXPORT = ("Download the pruned model (a folder that `pruner.load_model` and this studio load back) and the "
                  "run's report (settings, every step's importance, allocation and widths, the trajectory).")

EXPLAIN_ACCEL_TARGET = ("Adapt-Accel prunes from the current size to the **target** above, with the schedule's "
                        "amplitude, criterion and calibration.")

PROMPT = "The capital of France is"
READY = "Ready. Press **Measure importance** to begin."
LOADING = "Loading the model …"
NO_EVAL = "No evaluation yet: take a step or press “Evaluate now”."
