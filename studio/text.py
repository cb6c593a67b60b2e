"""Every explanation the studio's page shows, in one place (the library holds no page text)."""

INTRO = """# ✂️ Adapt-Pruner Studio
Prune a small language model **layer by layer, adaptively** ([Adapt-Pruner, arXiv 2502.03460](https://arxiv.org/abs/2502.03460)):
measure how much every decoder layer changes its input, give unimportant layers more sparsity, remove whole
attention groups and MLP channels in small steps, and watch perplexity and generations as the model shrinks."""

EXPLAIN_LAYER = """**Layer importance** 1 − mean cos(x_in, x_out): the cosine between the hidden state entering a decoder
block and the one leaving it, averaged over all calibration tokens, shown so that **0 means the layer does
nothing** to its input (the paper's I_l = −cos ranks the layers the same way). A block that barely turns its input
(near 0) can lose more; one that changes it a lot is important. Each column is one measurement, taken before
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

# ---------------------------------------------------------------------- the guided tour (the Learn tab)

TOUR_INTRO = ("**Learn: the idea in five steps, on the model loaded on the left.** Each step has one button and one "
              "picture; the schedule settings on the left (target, Δ, calibration) are the ones used. Steps 1–4 "
              "change nothing; step 5 prunes the session's model (Undo and Reset on the left take it back).")

#: (title, explanation, the button's label) of every step, in order.
TOUR_STEPS = (
    ("What layer importance measures",
     "A decoder layer takes a hidden state x_in and hands on x_out (after both residual adds). If x_out points the "
     "same way as x_in, the layer hardly did anything. The studio measures **1 − cos(x_in, x_out)**, averaged over "
     "all calibration tokens: **0 = the layer does nothing** to its input, larger = it changes it more and matters "
     "more. (The paper writes I_l = −cos; it ranks the layers the same way.) Press the button: the red bar is the "
     "most important layer, the blue one the least.",
     "Measure layer importance"),
    ("How A shifts sparsity",
     "Every step adds Δ to each layer's sparsity and moves it by −A·Ĩ_l: s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max), where "
     "Ĩ is the importance normalised to mean 0 and range [−1, 1]. **A = 0 prunes every layer alike** (uniform). A "
     "larger A takes more from unimportant layers and spares the important ones. Press the button to plan the "
     "same target twice — once with A = 0, once with a large A — and compare the final sparsity per layer. "
     "Nothing is cut: these are the library's own plans. (The default A = 0.02 shifts only a little; the effect "
     "grows with A and with the number of steps.)",
     "Plan with A = 0 and a large A"),
    ("What a unit is",
     "Inside a layer the pruner removes whole **units**, so the smaller layer is still an ordinary layer. In "
     "attention a unit is a **KV group**: one key/value head together with the query heads that share it "
     "(grouped-query attention). In the MLP a unit is one **channel**: a row of gate_proj and up_proj and the "
     "matching column of down_proj. Each unit gets a score — first-order Taylor Σ|W ⊙ ∂L/∂W|, how much the loss "
     "would feel its weights gone — and the lowest-scoring units go first. Pick a layer and press the button.",
     "Show the units of this layer"),
    ("Why attention may go from an important layer",
     "A layer's sparsity sets its **budget**: how many parameters it gives up this step. The *score* policy meets "
     "the budget by removing the units with the **lowest score per parameter**, KV groups and MLP channels ranked "
     "together. A KV group holds many parameters (several heads' rows in q, k, v and columns in o), so even a "
     "useful group can have a low score *per parameter* and fall under the budget — in an important layer too, "
     "whose budget is small but not zero. Important layers still lose **fewer parameters**; what they lose may be "
     "attention. Press the button: the plan on screen, its next step, in the most important layer that loses a KV "
     "group (when none does: the most important layer the step cuts).",
     "Rank the units on the plan"),
    ("What the trajectory shows",
     "**This step prunes the session's model**: two steps with the settings on the left, each followed by the quick "
     "evaluation (Undo on the left takes a step back, Reset returns to the original). The trajectory plots "
     "perplexity (log scale) against parameters, the original on the left: every point is one step. A flat stretch "
     "means the step removed units the model did not need; a steep rise means it cut into something that mattered. "
     "**Uniform baseline** (left) overlays A = 0 on the same plot, and **Train** shows how much training wins "
     "back.",
     "Prune two steps and evaluate"),
)
TOUR_POSITION = "**Step {k} of {n}: {title}**"
TOUR_PRESS = "Press “{action}”."
TOUR_NEEDS_IMPORTANCE = ("⚠️ This step needs the importance of the model as it is now ({why}). Go to **step 1** and "
                         "press “Measure layer importance” (or **Measure importance** on the left), then come back.")
TOUR_NO_MEASUREMENT = "nothing has been measured yet"
TOUR_MODEL_CHANGED = "the model or the calibration settings changed since the last measurement"
TOUR_LAYERS_ONLY = ("⚠️ The allocation on the left ({method}) measures whole layers only, without unit scores: choose "
                    "adaptive, then measure again (step 1).")
TOUR_BASELINE_PLAN = "The allocation on the left is a one-shot baseline ({method}); this plan uses adaptive instead."
TOUR_AT_TARGET = "⚠️ The model is already at the target: lower the target on the left to prune further."

PROMPT = "The capital of France is"
READY = "Ready. Press **Measure importance** to begin."
LOADING = "Loading the model …"
NO_EVAL = "No evaluation yet: take a step or press “Evaluate now”."
NO_EVAL_ORIGINAL = ("No evaluation yet of the original model as it is again, whose quick perplexity is {ppl:.2f} (the "
                    "trajectory's first point): take a step or press “Evaluate now”.")
NO_EVAL_NOW = "No evaluation of the model as it is now (after step {step}): press “Evaluate now”."

# ---------------------------------------------------------------------- the methods (docs/methods.md)

#: Two lines per method: what it does, and how it differs from Adapt-Pruner.
METHOD_EXPLAIN = {
    "adaptive": ("Re-measures layer importance before every small sub-step and gives important layers less sparsity "
                 "(s_l ← clip(s_l + Δ − A·Ĩ_l, 0, s_max)); removes KV groups and MLP channels by your unit criterion.",
                 "This is Adapt-Pruner, the reference the others are compared with."),
    "uniform": ("The same sub-steps with A = 0: every layer gets the same sparsity.",
                "Adapt-Pruner without the layer importance: the adaptive part switched off."),
    "custom": ("Your own final sparsity per layer (the custom table), reached in sub-steps.",
               "The per-layer shares come from you, not from measured importance."),
    "llm-pruner": ("First-order Taylor scores of KV groups and MLP channels; one ratio for every layer inside a window, "
                   "the first and last layers left whole.",
                   "One uniform ratio, fixed untouched layers and one shot instead of re-measured adaptive sub-steps."),
    "flap": ("Scores the inputs of o_proj / down_proj by how much they fluctuate across tokens, standardises them and "
             "cuts the whole model with one global threshold; a bias puts back the removed channels' mean output.",
             "Layer shares come from one global unit ranking instead of layer importance; the bias repairs the cut "
             "without training."),
    "shortgpt": ("Measures each layer's block influence (1 − cos of its input and output) and deletes the layers that "
                 "change their input least.",
                 "Removes whole layers instead of thinning all of them: fewer layers (faster decoding), no unit scores."),
    "wanda-sp": ("Structured Wanda: a unit's |weights| × the norm of its input activations; every layer loses the "
                 "same share.",
                 "A uniform ratio (no layer importance) with a forward-only score, in one shot."),
    "slicegpt": ("Folds the norms into the next layers, rotates the residual stream by a PCA of the calibration "
                 "activations and cuts its least-used directions: every layer gets a narrower hidden width.",
                 "Shrinks the embedding dimension instead of heads and channels; on tied-embedding models it must untie "
                 "the head first, so it needs a deeper slice for the same size."),
    "sensitivity": ("Measures each layer's loss increase when 25/50/75 % of its units (or the whole block) go, then "
                    "gives each layer the sparsity that keeps the summed increase lowest at the target, in one step.",
                    "An oracle beside the paper's cheap −cos heuristic: measured damage decides the shares, not "
                    "layer importance."),
}
_OWN_SCORE = {"llm-pruner": "first-order Taylor", "flap": "fluctuation (WIFV)", "wanda-sp": "structured Wanda",
              "shortgpt": "block influence of whole layers, no unit scores",
              "slicegpt": "PCA of the residual stream, no unit scores"}


def baseline_note(method: str) -> str:
    """What the schedule controls mean for a baseline (they are not silently ignored)."""
    return (f"ℹ️ **{method}** is a one-shot baseline with its own score (**{_OWN_SCORE[method]}**) and its own split "
            "between layers and between attention and MLP: the *unit criterion*, *amplitude A* and *budget per step "
            "Δ* do not apply to it. It reaches the target in one step; Adapt-Accel does not run it (prune, then Train).")


def methods_markdown(methods=None) -> str:
    """The two-line explanation of every method, as a Markdown list."""
    return "\n".join(f"* **{m}** — {what}  \n  *Versus Adapt-Pruner:* {diff}"
                     for m, (what, diff) in METHOD_EXPLAIN.items() if methods is None or m in methods)


EXPLAIN_COMPARE = """**Compare methods.** Each chosen method prunes its own copy of the *original* model to the schedule's
**target**, with the same calibration data (corpus, windows, seed) and the same quick perplexity after every
sub-step; the working model on the other tabs is never touched. One copy exists at a time: it is measured, saved
as a zip and freed before the next method starts. **Cancel** stops the method in progress (it is dropped) and keeps
the finished ones; a method that fails is reported in the table and the others still run."""

EXPLAIN_COMPARE_WIDTHS = ("**Remaining width per layer**, one column per method: the share of each layer's KV groups "
                          "(attention) and MLP channels that a method kept (✕: the whole layer removed). The "
                          "**difference** view subtracts Adapt-Pruner's (adaptive) share: red where a method keeps "
                          "less than Adapt-Pruner, blue where it keeps more.")
COMPARE_NO_RESULTS = "No comparison yet: choose methods and press **Run comparison**."

ACCEL_BASELINE = ("Adapt-Accel prunes with the incremental rule (adaptive or uniform sub-steps between training "
                  "stages); **{method}** is a one-shot baseline. Switch the allocation to adaptive or uniform — or "
                  "prune with {method} (Run to target) and then press Train.")

COMPARE_CAPTION = ("**Target {target:.0%}** of the original's {params:,} parameters for every method; calibration "
                   "{corpus}, {n_windows} × {window} tokens, seed {seed}. **Quick perplexity**: {ppl} (the same for "
                   "every model). **Zero-shot avg**: {zero_shot}. **tokens/s**: greedy generation of {new_tokens} "
                   "tokens after the prompt, batch 1, on {device}, the faster of two runs (noisy on a busy machine). **prune s**: "
                   "measuring and cutting only, without the evaluation.")
COMPARE_ZERO_SHOT = "the mean of acc_norm / acc (each task's metric, as in the Evaluate tab) over {tasks}, {limit} seeded examples each"
COMPARE_NO_ZERO_SHOT = "not measured (choose tasks to add it)"

METHOD_RADIO_INFO = ("adaptive, uniform, custom: the rule above, in sub-steps; llm-pruner, flap, shortgpt, wanda-sp: "
                     "the paper's baselines, one step each with their own unit score (the “Compare methods” tab "
                     "explains them)")

# ---------------------------------------------------------------------- the schedule panel's inputs and plan

INPUT_KEPT = " Kept {value}."
INPUT_EMPTY = "Type a {label} between {low} and {high}."
INPUT_NOT_A_NUMBER = "The {label} must be a number."
TARGET_FRACTION = ("{value} looks like a fraction: the target here is in % of the original parameters (type {percent} "
                   "for {percent} %).")
TARGET_NOTHING = ("A target of {value} would remove every parameter: the target is the size to keep, {low}–{high} of "
                  "the original.")
TARGET_GROW = "A target of {value} would grow the model: pruning can only shrink it, to at most {high} of the original."
INPUT_RANGE = "The {label} must lie between {low} and {high}; {value} is outside."
INPUT_WHOLE = "The {label} must be a whole number, not {value}."
STEPS_CLAMPED = ("{n} step(s) would need Δ = {want:.2f} %, outside the slider's {low:g}–{high:g} %: Δ is set to "
                 "{delta:g} %, and the plan shows how many steps that takes.")
CUSTOM_EMPTY = ("The custom allocation needs a final sparsity for every layer: open “Custom schedule (final sparsity per "
                "layer)”, press “Fill from the adaptive plan” and edit the last column (in %).")
CUSTOM_CELL = "Layer {layer}'s final sparsity in the custom table must be a number from 0 to below 100 (%), not {value!s}."
PLAN_COMPUTING = "⏳ Computing the plan for {label} …"
PLAN_FOR = "Plan for **{label}**"

# ---------------------------------------------------------------------- what Cancel kept
EVAL_CANCELLED = ("Evaluation cancelled: nothing was measured. The model is untouched: {steps} step(s), "
                  "{params:.2f} M parameters.")
NO_GENERATION = "The generation was skipped: Cancel came during this step's evaluation (the perplexity was finished)."
PROMPT_CAPPED = ("The prompt has {n:,} tokens: only its last {kept:,} are used, so that prompt and continuation fit the "
                 "model's context of {context:,} tokens.")
RUN_CANCELLED = ("Cancelled {when}. This run kept {kept} step(s){which}: the model has {params:.2f} M parameters "
                 "({fraction:.1%} of the original), {total} step(s) in all.")
CANCELLING = ("Cancelling at the next safe point … (a step is cut whole or not at all; the status then says exactly "
              "which steps were kept)")
RESET_CONFIRM = ("**Reset to the original model?** Every step, the training and the undo history of this session are "
                 "dropped.")
COMPARE_PICK = "Pick at least one method to compare."
COMPARE_COST = ("**Estimate**: {n} method(s) to {target:g} % ≈ **{minutes:.1f} min** without zero-shot ({per}; each "
                "sub-step measures importance and a quick perplexity; rates: {source}).")
EXPORT_DTYPE_INFO = ("bfloat16: half the size of float32 with its range (the default); float16: half the size, "
                     "for GPUs without bfloat16; float32: exact, twice the size")

# ---------------------------------------------------------------------- the Explore tab (studio/explore.py)
EXPLAIN_EXPLORE = """**Explore: what a schedule will cost, before anything is cut.** Every point of a sweep is the plan the
schedule panel would make for those settings (the same planner), evaluated **as if** its final widths had been
cut: the removed KV groups and MLP channels are masked for one perplexity pass (ShortGPT's layers skipped, FLAP's
bias compensation applied), then the masks are removed. **The model is never changed** — no step, no copy, the
undo history untouched. The number is a *prediction*: a one-shot estimate with today's importance; a real
incremental run re-measures between sub-steps and can do better. Calibration, criterion and (unless you list
values here) Δ come from the schedule panel on the left. **Importance**: a sweep uses the importance the panel
measured for the model now; if there is none (or a method scores with its own criterion), the sweep measures it
first — the estimate says so and includes its time — and the schedule panel then uses that measurement too."""

EXPLAIN_SENSITIVITY = """**Sensitivity — the oracle beside the heuristic.** For every layer and level (25 / 50 / 75 % of its
prunable parameters, lowest-score units first, and the whole block skipped), the increase of the calibration
loss when *only that layer* is pruned (masked). Beside it, the paper's cheap layer importance 1 − cos. Spearman's
ρ near +1: the layers the heuristic calls important are the ones whose pruning costs most; near 0 or negative:
the heuristic and the measurement disagree. The scan ranks units by the schedule panel's criterion (a baseline's
own score when a baseline is chosen there)."""

EXPLORE_TARGETS_INFO = "in % of the original parameters, comma-separated (e.g. 90, 80, 70)"
EXPLORE_AMPLITUDES_INFO = "comma-separated, 0–0.1 (only adaptive uses A)"
EXPLORE_STEPS_INFO = "Δ in %, comma-separated; empty: the schedule panel's Δ (only the sub-step methods use Δ)"
EXPLORE_NOTHING = "Tick at least one method, or the sensitivity scan."
EXPLORE_NO_TARGET = "Type at least one target size (in %, e.g. 90, 80, 70)."
EXPLORE_NOT_A_NUMBER = "Every {label} must be a number; “{value}” is not."
EXPLORE_ESTIMATE = ("**Estimate**: {what} ≈ **{seconds:.0f} s** ({minutes:.1f} min); predicted perplexity on {sample}")
EXPLORE_MEASURES = "; includes measuring {what} first (no importance for it on this model yet)."
EXPLORE_MEASURED = "; the importance it needs is measured already."
EXPLORE_TOO_LARGE = ("⚠️ A sweep estimated at {seconds:.0f} s is more than this page runs at once ({limit:.0f} min): "
                     "untick methods, list fewer targets or amplitudes, or lower the evaluation tokens.")
EXPLORE_STARTED = "Sweep of {n} point(s), ≈ {seconds:.0f} s …"
EXPLORE_MEASURING = " (measuring importance first)"
EXPLORE_POINT = "Sweep {k}/{n}: {label}: {result}."
EXPLORE_CANCELLED = "Sweep cancelled: {k} of {n} point(s) finished and kept. The model is unchanged."
EXPLORE_DONE = "Sweep done: {k} point(s){scan}. The model is unchanged."
EXPLORE_KEPT = "Cancelled: {k} of {n} point(s) finished; they are kept."
EXPLORE_STALE = ("⚠️ The model has changed since this sweep (now {model}): its predictions are for the model it ran "
                 "on; sweep again for the model now.")
EXPLORE_NO_RESULTS = "No sweep yet: choose methods and sizes, check the estimate, press **Run sweep**."
EXPLORE_CAPTION = ("{k} of {n} point(s), swept on the model with {model}. **Predicted perplexity** on {sample} (the "
                   "model as it was then: {baseline}); a one-shot estimate with that model's importance.")
EXPLORE_PICK = "Pick a sweep point (one with a result) first."
EXPLORE_USED = ("Sent **{label}** to the schedule panel: the sliders moved and the allocation preview redraws for "
                "these settings.")
PREDICTED_ON = "predicted perplexity: {sample}"
SCAN_STARTED = ("Sensitivity scan: {layers} layers × {levels} levels (a forward from the pruned layer on, over the "
                "first {tokens:,} calibration tokens) …")
SCAN_CANCELLED = "Sensitivity scan cancelled: no table was kept. The model is unchanged."
SCAN_NONE = "No sensitivity scan yet: tick “sensitivity scan” and run."
SCAN_CAPTION = ("Measured on the model with {model}: units ranked by {criterion}; calibration {corpus}, {tokens:,} "
                "tokens, base loss {base:.4f}, {seconds:.1f} s. **Spearman ρ** with the layer importance per level: {rho}.")
WHATIF_NONE = ("**What-if perplexity**: press the button for the predicted perplexity of the plan on screen "
               "(nothing is cut).")
WHATIF_RESULT = ("**What-if for {label}**: predicted perplexity **{ppl}** at {fraction:.1%} of the parameters "
                 "({steps} planned sub-step(s)); the model now: {base}. {note}.")
WHATIF_STALE = ("**What-if for {label}** (predicted perplexity {ppl}) was for the model before its last change; "
                "press the button again for the model as it is now.")
WHATIF_CANCELLED = "Cancelled: nothing was predicted; the model is unchanged."
WHATIF_RUNNING = "⏳ Predicting the perplexity of the plan for {label} (masked, nothing cut) …"
