"""Optional ``--backend lm-eval``: run lm-evaluation-harness's own tasks on the in-memory model.

Needs ``lm-eval`` installed and its dataset hub reachable; the offline suite (:func:`pruner.evaluation.evaluate`)
needs neither.
"""

from __future__ import annotations

from pruner.evaluation.tasks import EvalError, resolve_tasks

HARNESS_NAMES = {"arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "hellaswag": "hellaswag",
                 "openbookqa": "openbookqa", "piqa": "piqa", "winogrande": "winogrande", "social_iqa": "social_iqa",
                 "boolq": "boolq", "mmlu": "mmlu", "lambada": "lambada_openai"}


def evaluate_with_harness(model, tokenizer, tasks, limit: int | None = None, batch_size: int = 8) -> dict:
    """lm-evaluation-harness ``simple_evaluate`` on ``model`` (MMLU 5-shot, the rest zero-shot); returns its
    ``results`` dict keyed by harness task name."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise EvalError("--backend lm-eval needs lm-evaluation-harness (pip install lm-eval) and a reachable "
                        "dataset hub; the default backend works offline") from exc
    names = resolve_tasks(tasks)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out: dict = {}
    for shots, group in ((5, [n for n in names if n == "mmlu"]), (0, [n for n in names if n != "mmlu"])):
        if group:
            res = lm_eval.simple_evaluate(model=lm, tasks=[HARNESS_NAMES[n] for n in group], num_fewshot=shots,
                                          limit=limit)
            out.update(res["results"])
    return out
