"""The evaluation suite: zero-shot / few-shot benchmarks read offline, and efficiency metrics.

    from pruner.evaluation import evaluate, results_table, efficiency, compare
    res = evaluate(model, tok, ["arc_easy", "piqa"], limit=200, batch_size=8, seed=0)
    print(results_table(res))

Importing this package reads no data and loads no model.
"""

from pruner.evaluation.efficiency import compare, efficiency, macs_per_token
from pruner.evaluation.scoring import ByteTokenizer, encode_pair, loglikelihoods
from pruner.evaluation.suite import (
    AVERAGE_CONVENTION,
    NORMALISATION,
    average,
    evaluate,
    fingerprint,
    results_table,
)
from pruner.evaluation.tasks import (
    PAPER_TASKS,
    TASKS,
    EvalError,
    Item,
    TaskSpec,
    load_items,
    resolve_tasks,
    select,
)

__all__ = [
    "compare", "efficiency", "macs_per_token",
    "ByteTokenizer", "encode_pair", "loglikelihoods",
    "AVERAGE_CONVENTION", "NORMALISATION", "average", "evaluate", "fingerprint", "results_table",
    "PAPER_TASKS", "TASKS", "EvalError", "Item", "TaskSpec", "load_items", "resolve_tasks", "select",
]
