"""Run a set of tasks on a model: :func:`evaluate` (with a results cache per model fingerprint) and
:func:`results_table`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pruner.evaluation.scoring import choice_metrics, encode_pair, loglikelihoods, max_length, mean_stderr
from pruner.evaluation.tasks import (
    FORMAT_VERSION,
    PAPER_TASKS,
    TASKS,
    EvalError,
    load_items,
    resolve_tasks,
    select,
)

AVERAGE_CONVENTION = "plain mean over tasks of acc_norm where the task has it, else acc (the paper's convention)"
AVERAGE_STDERR = "sqrt(sum of the tasks' squared standard errors) / number of tasks (tasks treated as independent)"
NORMALISATION = "log-likelihood divided by the answer's length in characters (lm-evaluation-harness acc_norm)"


def cache_path() -> Path:
    """Folder of the results cache: ``$ADAPT_PRUNER_CACHE/eval`` (default ``~/.cache/adapt-pruner/eval``)."""
    base = Path(os.environ.get("ADAPT_PRUNER_CACHE", Path.home() / ".cache" / "adapt-pruner"))
    return base / "eval"


def fingerprint(model: nn.Module, tokenizer) -> str:
    """A short hash that identifies the model's weights, shapes, dtype and tokenizer.

    Every tensor contributes its name, shape, dtype, sum and a strided sample of up to 4,096 values, so two
    models differing by pruning or training get different fingerprints while hashing stays well under a second.
    """
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].float().cpu()
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{flat.double().sum().item():.10e}".encode())
            h.update(sample.numpy().tobytes())
    probe = "The quick brown fox jumps over the lazy dog. 1234 éà"
    h.update(f"{type(tokenizer).__name__}|{len(tokenizer)}|{tokenizer.encode(probe, add_special_tokens=False)}".encode())
    return h.hexdigest()[:20]


def _cache_key(task: str, limit: int | None, seed: int, max_len: int) -> str:
    return f"{task}|limit={limit}|seed={seed}|maxlen={max_len}|format={FORMAT_VERSION}"


def _load_cache(fp: str) -> dict:
    path = cache_path() / f"{fp}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(fp: str, entries: dict) -> None:
    path = cache_path() / f"{fp}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def _check_model(model: nn.Module, tokenizer) -> None:
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise EvalError("The model cannot be evaluated: it is not a torch module with parameters "
                        "(load one with pruner.load_model)")
    if not hasattr(tokenizer, "encode"):
        raise EvalError("The tokenizer cannot be used: it has no encode() method "
                        "(use the tokenizer returned by pruner.load_model, or ByteTokenizer for tiny test models)")


def evaluate(
    model: nn.Module,
    tokenizer,
    tasks: list[str] | str,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cache: bool = True,
) -> dict:
    """Evaluate ``model`` on ``tasks`` (names from :data:`TASKS`, ``"paper"`` or ``"all"``).

    ``limit``: at most this many examples per task, drawn with ``seed`` (the same ones every time; for MMLU the
    limit applies to all 57 subjects together, sampled uniformly, so subjects keep their proportions).
    ``progress(done, total)`` counts model forward inputs over all tasks; ``should_stop()`` returning True
    raises :class:`~pruner.importance.measure.Cancelled`. Results are cached per model fingerprint (``cache=False``
    to recompute); the batch size does not change any score, so it is not part of the cache key.

    Returns ``{"tasks": {name: {acc, acc_stderr, [acc_norm, acc_norm_stderr], n, metric_used, value, ...}},
    "average": {value, metric, tasks}, "settings": {...}, "seconds": ...}``; LAMBADA also has ``perplexity``.
    """
    names = resolve_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise EvalError(f"limit must be a positive whole number or None (all examples), got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvalError(f"batch_size must be a positive whole number, got {batch_size!r}")
    _check_model(model, tokenizer)
    t0 = time.perf_counter()
    mlen = max_length(model)
    p = next(model.parameters())
    fp = fingerprint(model, tokenizer) if cache else None
    stored = _load_cache(fp) if fp else {}
    results: dict[str, dict] = {}
    todo: list[tuple[str, list]] = []
    for name in names:
        hit = stored.get(_cache_key(name, limit, seed, mlen))
        if hit is not None:
            results[name] = {**hit, "cached": True}
        else:
            todo.append((name, select(load_items(name), limit, seed)))

    # encode every request of every task first, so that one progress bar covers the whole run
    pairs: list[tuple[list[int], list[int]]] = []
    spans: dict[str, list[tuple[int, int]]] = {}
    memo: dict[str, list[int]] = {}
    for name, chosen in todo:
        spans[name] = []
        for _, item in chosen:
            start = len(pairs)
            for ctx, cont in item.requests:
                key = ctx + "\x00" + cont
                if key not in memo:
                    memo[key] = encode_pair(tokenizer, ctx, cont)
                pairs.append(memo[key])
            spans[name].append((start, len(pairs)))
    t_run = time.perf_counter()
    scores = loglikelihoods(model, pairs, batch_size=batch_size, max_len=mlen, progress=progress,
                            should_stop=should_stop) if pairs else []
    run_seconds = time.perf_counter() - t_run
    n_tokens = sum(len(c) + len(x) for c, x in pairs) or 1
    for name, chosen in todo:
        items = [item for _, item in chosen]
        res = _task_result(name, items, [scores[a:b] for a, b in spans[name]])
        res.update(limit=limit, seed=seed, seconds=run_seconds * sum(
            len(pairs[i][0]) + len(pairs[i][1]) for a, b in spans[name] for i in range(a, b)) / n_tokens)
        results[name] = {**res, "cached": False}
        stored[_cache_key(name, limit, seed, mlen)] = res
    if fp and todo:
        _save_cache(fp, stored)
    ordered = {n: results[n] for n in names}
    return {
        "tasks": ordered,
        "average": average(ordered),
        "settings": {"limit": limit, "seed": seed, "batch_size": batch_size, "max_length": mlen,
                     "device": str(p.device), "dtype": str(p.dtype).replace("torch.", ""),
                     "fingerprint": fp, "format_version": FORMAT_VERSION, "acc_norm": NORMALISATION},
        "seconds": time.perf_counter() - t0,
    }


def _task_result(name: str, items: list, scores: list[list[tuple[float, bool]]]) -> dict:
    spec = TASKS[name]
    res: dict = {"task": name, "title": spec.title, "source": spec.source, "shots": spec.shots,
                 "n": len(items), "n_total": spec.size, "prompt": spec.prompt}
    if spec.kind == "lambada":
        lls = [s[0][0] for s in scores]
        res["acc"], res["acc_stderr"] = mean_stderr([float(s[0][1]) for s in scores])
        res["perplexity"] = math.exp(-sum(lls) / len(lls)) if lls else float("nan")
        res["perplexity_note"] = "exp(-mean log-likelihood of the last word per passage), lm-evaluation-harness"
    else:
        accs, norms = [], []
        groups: dict[str, list[float]] = defaultdict(list)
        for item, sc in zip(items, scores, strict=True):
            a, an = choice_metrics([s[0] for s in sc], item.gold, [len(t) for t in item.choice_texts])
            accs.append(a)
            norms.append(an)
            if item.group:
                groups[item.group].append(a)
        res["acc"], res["acc_stderr"] = mean_stderr(accs)
        if spec.has_acc_norm:
            res["acc_norm"], res["acc_norm_stderr"] = mean_stderr(norms)
        if groups:
            res["subjects"] = {g: {"acc": sum(v) / len(v), "n": len(v)} for g, v in sorted(groups.items())}
    res["metric_used"] = "acc_norm" if spec.has_acc_norm else "acc"
    res["value"] = res[res["metric_used"]]
    return res


def average(task_results: dict[str, dict]) -> dict:
    """The paper's average (see :data:`AVERAGE_CONVENTION`) over the given tasks, and over the paper's seven
    zero-shot tasks when all seven are there."""
    vals = {n: r["value"] for n, r in task_results.items()}
    out = {"value": sum(vals.values()) / len(vals) if vals else float("nan"), "metric": AVERAGE_CONVENTION,
           "tasks": list(vals)}
    out["stderr"] = _mean_stderr(task_results.values())
    if out["stderr"] is not None:
        out["stderr_note"] = AVERAGE_STDERR
    if all(t in vals for t in PAPER_TASKS):
        out["paper_seven"] = sum(vals[t] for t in PAPER_TASKS) / len(PAPER_TASKS)
        out["paper_seven_tasks"] = list(PAPER_TASKS)
        out["paper_seven_stderr"] = _mean_stderr(task_results[t] for t in PAPER_TASKS)
    return out


def _mean_stderr(task_results) -> float | None:
    """sqrt(Σ se²) / k: the standard error of a plain mean of k independent task scores (None when a task has
    no standard error)."""
    ses = [r.get(f"{r.get('metric_used')}_stderr") for r in task_results]
    if not ses or any(se is None or se != se for se in ses):
        return None
    return math.sqrt(sum(se * se for se in ses)) / len(ses)


def results_table(results: dict | list[tuple[str, dict]]):
    """A pandas DataFrame with one row per task (and the average), from one :func:`evaluate` result, or a
    column block per model from ``[(label, result), ...]``.

    Columns: task, metric (acc or acc_norm), value, stderr, acc, acc_norm, n, perplexity (LAMBADA), source.
    """
    import pandas as pd

    runs = [("", results)] if isinstance(results, dict) else list(results)
    rows = []
    for label, res in runs:
        for name, r in res["tasks"].items():
            m = r["metric_used"]
            rows.append({"model": label, "task": r.get("title", name), "metric": m, "value": r["value"],
                         "stderr": r.get(f"{m}_stderr"), "acc": r["acc"], "acc_norm": r.get("acc_norm"),
                         "n": r["n"], "perplexity": r.get("perplexity"), "source": r.get("source", "")})
        rows.append({"model": label, "task": "Average", "metric": "acc_norm/acc", "value": res["average"]["value"],
                     "stderr": res["average"].get("stderr"), "acc": None, "acc_norm": None, "n": None, "perplexity": None,
                     "source": AVERAGE_CONVENTION})
    df = pd.DataFrame(rows)
    if len(runs) == 1:
        df = df.drop(columns="model")
    return df
