"""benchmarks/eval_report.py: a model evaluated in two result files (MMLU run later on its own) is one column."""

from __future__ import annotations

import json

import pytest

from benchmarks.eval_report import main, merge


def _task(title: str, value: float) -> dict:
    return {"title": title, "metric_used": "acc", "value": value, "acc_stderr": 0.01, "n": 10, "n_total": 20}


def _file(path, models: dict[str, dict[str, float]], seconds: float) -> None:
    path.write_text(json.dumps({
        "settings": {"tasks": sorted({t for ts in models.values() for t in ts}), "limit": 10, "limit_note": "per task",
                     "seed": 0, "batch_size": 8, "threads": 2, "torch": "x"},
        "models": [{"source": s, "tasks": {t: _task(t.upper(), v) for t, v in ts.items()}, "seconds": seconds}
                   for s, ts in models.items()],
    }))


def test_merge_unions_tasks_and_adds_seconds():
    a = {"source": "default", "tasks": {"boolq": _task("BoolQ", 0.4)}, "seconds": 60, "perplexity": {"p": 1}}
    b = {"source": "default", "tasks": {"mmlu": _task("MMLU", 0.25)}, "seconds": 30}
    c = {"source": "other", "tasks": {"boolq": _task("BoolQ", 0.5)}, "seconds": 10}
    out = merge([a, c, b])
    assert [m["source"] for m in out] == ["default", "other"]
    assert set(out[0]["tasks"]) == {"boolq", "mmlu"} and out[0]["seconds"] == 90 and out[0]["perplexity"] == {"p": 1}
    assert set(a["tasks"]) == {"boolq"}  # the input entries are not modified


def test_report_prints_one_column_per_model_and_dashes_only_where_missing(tmp_path, capsys):
    _file(tmp_path / "a.json", {"default": {"boolq": 0.4, "mmlu": 0.2}, "m1": {"boolq": 0.6}}, 60)
    _file(tmp_path / "b.json", {"m1": {"mmlu": 0.3}, "m2": {"boolq": 0.5}}, 30)
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| task"))
    assert header.count("m1") == 1 and "dense" in header and "m2" in header
    mmlu = next(line for line in out.splitlines() if line.startswith("| MMLU"))
    assert "0.200" in mmlu and "0.300" in mmlu and mmlu.count("—") == 1  # only m2 lacks MMLU
    avg = next(line for line in out.splitlines() if "tasks every model ran" in line)
    assert "average, 1 tasks" in avg and "**0.600**" in avg  # BoolQ only: m2 has no MMLU
    assert "m1 1.5 min" in out  # 60 s + 30 s


def test_eval_suite_measures_efficiency_alone_and_the_report_prefers_the_later_file(tmp_path, tiny_tokenizer, capsys):
    from benchmarks.eval_suite import main as suite
    from pruner.testing import tiny_model

    folders = []
    for name, width in (("dense", 64), ("narrow", 32)):
        d = tmp_path / name
        tiny_model("llama", intermediate_size=width).save_pretrained(d)
        tiny_tokenizer.save_pretrained(d)
        folders.append(str(d))
    out = tmp_path / "eff.json"
    assert suite(["--models", *folders, "--tasks", "none", "--efficiency", "--efficiency-repeats", "1",
                  "--efficiency-runs", "3", "--out", str(out)]) == 0
    run = json.loads(out.read_text())
    assert run["settings"]["tasks"] == [] and [m["tasks"] for m in run["models"]] == [{}, {}]
    first, second = (m["efficiency"] for m in run["models"])
    assert first["settings"]["repeats"] == 1 and first["settings"]["runs"] == 3
    assert second["params"]["total"] < first["params"]["total"]
    for m in run["models"]:  # the reported speed is the median of the three runs
        for key in ("decode_tokens_per_s", "prefill_tokens_per_s"):
            assert len(m["efficiency_runs"][key]) == 3 and m["efficiency"][key] == sorted(m["efficiency_runs"][key])[1]
    assert run["models"][1]["efficiency_vs_first"]["decode_speedup"] == pytest.approx(
        second["decode_tokens_per_s"] / first["decode_tokens_per_s"])
    assert main([str(out)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| narrow"))
    lo, hi = min(run["models"][1]["efficiency_runs"]["decode_tokens_per_s"]), max(
        run["models"][1]["efficiency_runs"]["decode_tokens_per_s"])
    assert f"({lo:.1f}–{hi:.1f})" in row
    merged = merge([{**m, "efficiency": {"old": True}} for m in run["models"]] + run["models"])
    assert [m["efficiency"] for m in merged] == [first, second]
    assert all("seconds" not in m for m in merge(run["models"]))  # measuring speed is not evaluation time
    with pytest.raises(SystemExit):
        suite(["--models", folders[0], "--tasks", "none", "--out", str(out)])
    assert "nothing to measure" in capsys.readouterr().err
