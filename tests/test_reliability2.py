"""The second reliability round (issue 21), one section per class: saves that fail in other ways, signals, files
that are not ours, outputs that alias inputs, stalls, late checks, Adapt-Accel bookkeeping, inputs that lie, a
library that trusted types, and unclear messages. Each test failed on the code before its fix."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

import pruner
from pruner.cli.main import main
from pruner.errors import OutputError
from pruner.model.structure import count_parameters
from pruner.testing import tiny_model

UNWRITABLE = "/proc/adapt-pruner-test"
MANIFEST = ".adapt-pruner-files.json"  # pruner.io.outputs.MANIFEST (spelled out: the tests also ran on the code before)
PRUNE = ("--n-windows", "4", "--window", "32", "--calibration", "wikitext2")
ACCEL = ("--target", "0.8", "--stages", "2", "--tokens", "256", "--data", "stories", "--seq-len", "32",
         "--n-windows", "4", "--window", "32", "--ppl-windows", "32", "--ppl-max-tokens", "256")


@pytest.fixture(scope="module")
def folder(tiny_llama_folder):
    return tiny_llama_folder


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def leftovers(parent) -> list[str]:
    """Temporary folders a save leaves beside its output when it is cut short."""
    return sorted(p.name for p in parent.iterdir() if ".tmp" in p.name or "-tmp" in p.name or "-old" in p.name)


# ---------------------------------------------------------------- 1. a save failing with any error is rescued


def _fail_once(target: str, exc: BaseException, monkeypatch, when=lambda *a, **k: True):
    """Make ``target`` (module.attr) raise ``exc`` the first time ``when`` holds, then behave as before."""
    import importlib

    mod, attr = target.rsplit(".", 1)
    owner = importlib.import_module(mod)
    real = getattr(owner, attr)
    done = {"n": 0}

    def fake(*a, **k):
        if not done["n"] and when(*a, **k):
            done["n"] += 1
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(owner, attr, fake)


@pytest.mark.parametrize("failure", ["safetensors", "tokenizer"])
def test_a_save_failing_with_any_error_goes_to_the_rescue_folder(folder, tmp_path, capsys, monkeypatch, failure):
    from safetensors import SafetensorError
    from transformers import PreTrainedTokenizerBase

    if failure == "safetensors":  # what a full disk raises inside safetensors
        _fail_once("safetensors.torch.save_file", SafetensorError("Error while serializing: I/O error: No space left "
                                                                  "on device (os error 28)"), monkeypatch)
    else:  # the tokenizer library raises a bare Exception
        real = PreTrainedTokenizerBase.save_pretrained
        calls = {"n": 0}

        def save_pretrained(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == 1:
                raise Exception("No space left on device (os error 28)")  # noqa: TRY002 - what tokenizers raises
            return real(self, *a, **k)

        monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save_pretrained)
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", tmp_path / "out",
                    "--report", tmp_path / "r.json", "--no-ppl", *PRUNE)
    assert code == 1 and "No space left on device" in err and "instead" in err and "Traceback" not in err
    (rescued,) = tmp_path.glob("adapt-pruner-rescue-model-*")
    model, _ = pruner.load_model(rescued, progress=None)
    assert json.loads((tmp_path / "r.json").read_text())["record"]["final_params"] == count_parameters(model)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_an_accel_checkpoint_on_a_full_disk_keeps_the_stage_and_leaves_no_tmp(folder, tmp_path, capsys,
                                                                                monkeypatch):
    from safetensors import SafetensorError

    _fail_once("safetensors.torch.save_file", SafetensorError("I/O error: No space left on device (os error 28)"),
               monkeypatch, when=lambda state, path, *a, **k: str(path).endswith("optimizer.safetensors"))
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, "accel", "--model", folder, *ACCEL, "--out", tmp_path / "run")
    assert code == 1 and "could not be written" in one_error_line(err) and "No space left" in err
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    model, _ = pruner.load_model(tmp_path / "run" / "model", progress=None)  # the end of stage 1 is kept
    assert count_parameters(model)["total"] < count_parameters(tiny_model("llama"))["total"]


def test_an_export_failing_with_a_writers_own_error_is_one_line(folder, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    _fail_once("safetensors.torch.save_file", SafetensorError("I/O error: No space left on device (os error 28)"),
               monkeypatch)
    code, err = cli(capsys, "export", "--model", folder, "--format", "hf", "--out", tmp_path / "exp", "--no-verify")
    assert code == 1 and "No space left" in one_error_line(err) and "unchanged" in err
    assert not (tmp_path / "exp").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- 2. SIGTERM is Ctrl-C; a save is never cut short


class Killed(Exception):
    """Raised by the test's own SIGTERM handler: a command that does not handle SIGTERM lets it through."""


@pytest.fixture
def sigterm_guard():
    def handler(signum, frame):
        raise Killed(signum)

    old = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, old)


def _signal_at_step(monkeypatch, n: int, how):
    real = pruner.Pruner.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            how()
        return real(self, *a, **k)

    monkeypatch.setattr(pruner.Pruner, "step", step)


def test_sigterm_during_a_prune_is_handled_like_ctrl_c(folder, tmp_path, capsys, monkeypatch, sigterm_guard):
    _signal_at_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.7", "--step", "0.05", "--out",
                    tmp_path / "out", "--no-ppl", *PRUNE)
    assert code == 130 and "continue with" in err and "Traceback" not in err
    record = json.loads((tmp_path / "out" / "pruning_record.json").read_text())
    assert len(record["steps"]) == 1 and record["stopped"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM).__name__ == "handler"  # the command restored the caller's handler


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_save_waits_for_the_save(folder, tmp_path, capsys, monkeypatch, sigterm_guard, sig):
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(*a, **k):
        os.kill(os.getpid(), sig)  # arrives in the middle of writing the model
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", tmp_path / "out",
                    "--report", tmp_path / "r.json", *PRUNE)
    assert code == 130 and "finishing the save first" in err and "Traceback" not in err
    model, _ = pruner.load_model(tmp_path / "out", progress=None)
    assert json.loads((tmp_path / "r.json").read_text())["record"]["final_params"] == count_parameters(model)
    assert leftovers(tmp_path) == []


def test_a_second_ctrl_c_while_stopping_is_one_line_and_the_save_completes(folder, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def first():
        raise KeyboardInterrupt

    _signal_at_step(monkeypatch, 2, first)
    real = safetensors.torch.save_file

    def save_file(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, during the shutdown's save
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.7", "--step", "0.05", "--out",
                    tmp_path / "out", "--no-ppl", *PRUNE)
    assert code == 130 and "Traceback" not in err and "finishing the save first" in err
    assert json.loads((tmp_path / "out" / "pruning_record.json").read_text())["stopped"] == "interrupted"


def test_sigterm_while_an_accel_checkpoint_is_written_finishes_it(folder, tmp_path, capsys, monkeypatch,
                                                                   sigterm_guard):
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(state, path, *a, **k):
        if str(path).endswith("optimizer.safetensors"):
            os.kill(os.getpid(), signal.SIGTERM)  # half-way through the first checkpoint
        return real(state, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    code, err = cli(capsys, "accel", "--model", folder, *ACCEL, "--out", tmp_path / "run")
    assert code == 130 and "finishing the checkpoint first" in err and "--resume" in err and "Traceback" not in err
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["stage_01"] and (ckpts / "stage_01" / "state.json").is_file()


# ---------------------------------------------------------------- 3. --force removes exactly what we wrote


@pytest.mark.parametrize("theirs", ["model/weights.safetensors", "checkpoints/stage_01/x.json", "README.md",
                                    "mine.gguf", "sub/"])
def test_force_removes_only_what_this_project_wrote(folder, tmp_path, capsys, theirs):
    out = tmp_path / "out"
    assert cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", out, "--no-ppl", *PRUNE)[0] == 0
    assert (out / MANIFEST).is_file()
    from pruner.io.outputs import MANIFEST as written

    assert written == MANIFEST
    target = out / theirs
    target.parent.mkdir(parents=True, exist_ok=True)
    if theirs.endswith("/"):
        target.mkdir(exist_ok=True)  # an empty folder of theirs
    else:
        target.write_text("the user's")
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.8", "--out", out, "--force", "--no-ppl", *PRUNE)
    assert code == 2 and "did not write" in one_error_line(err) and theirs.rstrip("/") in err
    assert target.exists() and (theirs.endswith("/") or target.read_text() == "the user's")
    with pytest.raises(OutputError, match="did not write"):
        pruner.save_pruned(tiny_model("llama"), None, out, overwrite=True)
    assert target.exists()


def test_force_keeps_edited_files_and_folders_without_a_manifest(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", out, "--no-ppl", *PRUNE)[0] == 0
    (out / "config.json").write_text((out / "config.json").read_text() + "\n")  # edited by the user since
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.8", "--out", out, "--force", "--no-ppl", *PRUNE)
    assert code == 2 and "config.json" in one_error_line(err)
    plain = tmp_path / "plain"  # the user's own model folder: only names this project also writes, no manifest
    shutil.copytree(folder, plain)
    code, err = cli(capsys, "export", "--model", out, "--format", "hf", "--out", plain, "--force", "--no-verify")
    assert code == 2 and MANIFEST in one_error_line(err)
    assert sorted(p.name for p in plain.iterdir()) == sorted(p.name for p in folder.iterdir())


def test_force_replaces_our_folder_with_the_report_we_wrote_inside(folder, tmp_path, capsys):
    out = tmp_path / "out"
    code, _ = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", out, "--report", out / "report.json",
                  "--no-ppl", *PRUNE)
    assert code == 0 and (out / "report.json").is_file()
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.8", "--out", out, "--force", "--no-ppl", *PRUNE)
    assert code == 0, err  # the report is the project's own, not a file "it did not write"
    assert json.loads((out / "pruning_record.json").read_text())["config"]["target"] == 0.8


def test_export_force_removes_only_what_the_export_wrote(folder, tmp_path, capsys):
    out = tmp_path / "exp"
    assert cli(capsys, "export", "--model", folder, "--format", "hf", "--out", out, "--no-verify")[0] == 0
    (out / "model.gguf").write_text("the user's")
    code, err = cli(capsys, "export", "--model", folder, "--format", "hf", "--out", out, "--force", "--no-verify")
    assert code == 2 and "model.gguf" in one_error_line(err) and (out / "model.gguf").read_text() == "the user's"
    (out / "model.gguf").unlink()
    assert cli(capsys, "export", "--model", folder, "--format", "hf", "--out", out, "--force", "--no-verify")[0] == 0


# ---------------------------------------------------------------- 4./6. outputs aliasing inputs, checked first


def test_outputs_that_alias_the_model_are_refused_before_any_work(folder, tmp_path, capsys):
    src = tmp_path / "src"
    assert cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", src, "--no-ppl", *PRUNE)[0] == 0
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for args in (["--out", src, "--force"], ["--out", src / "inner"], ["--report", src / "config.json"],
                 ["--report", src / "new.json"]):
        code, err = cli(capsys, "prune", "--model", src, "--target", "0.8", *args, "--no-ppl", *PRUNE)
        assert code == 2 and "what this command reads" in one_error_line(err) and "loaded" not in err
    code, err = cli(capsys, "eval", "--model", src, "--report", src / "config.json", "--no-ppl")
    assert code == 2 and "what this command reads" in one_error_line(err)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


@pytest.mark.parametrize("command", ["prune", "accel"])
def test_a_report_equal_to_out_is_refused_before_any_work(folder, tmp_path, capsys, command):
    extra = ("--target", "0.9", "--no-ppl", *PRUNE) if command == "prune" else ACCEL
    code, err = cli(capsys, command, "--model", folder, "--out", tmp_path / "x", "--report", tmp_path / "x", *extra)
    assert code == 2 and "same path" in one_error_line(err) and "loaded" not in err and "plan" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("where", ["folder", "unwritable"])
def test_eval_checks_its_report_before_evaluating(folder, tmp_path, capsys, monkeypatch, where):
    def never(*a, **k):
        raise AssertionError("the model was loaded before --report was checked")

    monkeypatch.setattr("pruner.io.models.load_model", never)
    report = tmp_path if where == "folder" else UNWRITABLE + "/r.json"
    code, err = cli(capsys, "eval", "--model", folder, "--report", report, "--ppl-max-tokens", "64")
    assert code == 2 and ("is a folder" in one_error_line(err) or "cannot be written" in err)


# ---------------------------------------------------------------- 5. a stall keeps what it reached


def test_a_stalled_run_saves_what_it_reached_and_says_why(folder, tmp_path, capsys, monkeypatch):
    real = pruner.Pruner.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # what the planner says when no layer can give more
            raise pruner.AllocationError("This step would remove nothing: every layer is at its floor")
        return real(self, *a, **k)

    monkeypatch.setattr(pruner.Pruner, "step", step)
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.6", "--step", "0.05", "--out",
                    tmp_path / "out", "--report", tmp_path / "r.json", "--no-ppl", *PRUNE)
    assert code == 1 and "would remove nothing" in err and "stopped at" in err and "continue with" in err
    record = json.loads((tmp_path / "out" / "pruning_record.json").read_text())
    assert len(record["steps"]) == 2 and record["stopped"].startswith("stalled:")
    assert json.loads((tmp_path / "r.json").read_text())["record"]["stopped"] == record["stopped"]


# ---------------------------------------------------------------- 7. Adapt-Accel bookkeeping


def test_checkpoints_sort_by_stage_number(tmp_path):
    from pruner.training.checkpoints import latest_checkpoint, prune_old_checkpoints

    root = tmp_path / "checkpoints"
    for k in (9, 99, 100, 101):
        (root / f"stage_{k:02d}").mkdir(parents=True)
        (root / f"stage_{k:02d}" / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "stage_101"
    prune_old_checkpoints(root, 2)
    assert sorted(p.name for p in root.iterdir()) == ["stage_100", "stage_101"]


def test_accel_never_raises_the_token_budget_silently_and_refuses_no_ppl(folder, capsys):
    from pruner.training.accel import AccelConfig, stage_plan

    cfg = AccelConfig(target=0.8, stages=6, tokens=100)  # 100 tokens over six stages of 8 × 512-token steps
    with pytest.raises(pruner.ConfigError, match="less than one optimiser step"):
        stage_plan(cfg, 1000, 1000)
    big = AccelConfig(target=0.8, stages=6, tokens=200_000)
    assert all(s["steps"] >= 1 for s in stage_plan(big, 1000, 1000))
    with pytest.raises(SystemExit) as e:  # accel evaluates every stage: --no-ppl is not one of its options
        main(["accel", "--model", str(folder), "--no-ppl", "--tokens", "0"])
    assert e.value.code == 2 and "--no-ppl" in capsys.readouterr().err


# ---------------------------------------------------------------- 8. inputs that lie


def test_a_checkpoint_without_its_head_is_refused(folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "headless"
    shutil.copytree(folder, d)
    state = load_file(str(d / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(pruner.ModelLoadError, match="lm_head.weight"):
        pruner.load_model(d, progress=None)
    code, err = cli(capsys, "info", "--model", d)
    assert code == 2 and "lm_head.weight" in one_error_line(err)


def test_a_config_that_claims_tied_embeddings_keeps_the_checkpoints_own_head(folder, tmp_path, tiny_tokenizer):
    d = tmp_path / "claims-tied"
    shutil.copytree(folder, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    model, tok = pruner.load_model(d, progress=None)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(model(ids).logits, tiny_model("llama")(ids).logits, rtol=0, atol=1e-5)
    pruner.save_pruned(model, tok, tmp_path / "saved")
    again, _ = pruner.load_model(tmp_path / "saved", progress=None)
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("damage", ["no layers", "a layer without a key", "a width as text", "a list",
                                    "biases not lists", "origin not an object"])
def test_a_damaged_widths_file_is_one_line_naming_it(folder, tmp_path, capsys, damage):
    d = tmp_path / "pruned"
    assert cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", d, "--no-ppl", *PRUNE)[0] == 0
    meta = json.loads((d / "pruned_widths.json").read_text())
    if damage == "no layers":
        del meta["layers"]
    elif damage == "a layer without a key":
        del meta["layers"][1]["num_heads"]
    elif damage == "a width as text":
        meta["layers"][0]["intermediate_size"] = "96"
    elif damage == "a list":
        meta = [meta]
    elif damage == "biases not lists":
        meta["biases"] = 3
    else:
        meta["origin"] = [1, 2]
    (d / "pruned_widths.json").write_text(json.dumps(meta))
    with pytest.raises(pruner.ModelLoadError, match="pruned_widths.json"):
        pruner.load_model(d, progress=None)
    code, err = cli(capsys, "info", "--model", d)
    assert code == 2 and "pruned_widths.json" in one_error_line(err)


# ---------------------------------------------------------------- 9. the library checks types and says why it stopped


@pytest.mark.parametrize("field,value", [("target", "0.8"), ("seed", "0"), ("n_windows", "4"), ("window", 32.0),
                                         ("batch_size", True), ("amplitude", "0.02"), ("remeasure", "no"),
                                         ("max_steps", 0), ("seed", 2**64)])
def test_prune_config_refuses_wrong_types(field, value):
    with pytest.raises(pruner.ConfigError, match=field.replace("_", ".") if field != "max_steps" else "max_steps"):
        pruner.PruneConfig(**{field: value})


def test_pruner_refuses_a_missing_tokenizer_or_a_config_that_is_not_one():
    with pytest.raises(pruner.ConfigError, match="tokenizer"):
        pruner.Pruner(tiny_model("llama"), None, pruner.PruneConfig())
    with pytest.raises(pruner.ConfigError, match="PruneConfig"):
        pruner.Pruner(tiny_model("llama"), lambda t: t, {"target": 0.8})


def _config(**kw):
    return pruner.PruneConfig(**{"n_windows": 4, "window": 32, "calibration": "wikitext2", **kw})


def test_a_run_cut_short_by_max_steps_says_so(tiny_tokenizer):
    p = pruner.Pruner(tiny_model("llama"), tiny_tokenizer, _config(target=0.6, step=0.05, max_steps=1))
    record = p.run()
    assert len(record.steps) == 1 and record.stopped.startswith("max_steps")


def test_a_run_that_cuts_past_its_target_says_so(folder, tiny_tokenizer, tmp_path, capsys, monkeypatch):
    from pruner.pruning.planner import Planner

    def never_shortened(self, sparsity, widths, scores, target, index=0):  # e.g. a large amplitude's last step
        return self.plan(sparsity, widths, scores, 1.0, index)

    monkeypatch.setattr(Planner, "next_step", never_shortened)
    record = pruner.Pruner(tiny_model("llama"), tiny_tokenizer, _config(target=0.95, step=0.2)).run()
    assert record.stopped.startswith("missed")
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.95", "--step", "0.2", "--out", tmp_path / "o",
                    "--no-ppl", *PRUNE)
    assert code == 1 and "missed" in err and "continue with" not in err


# ---------------------------------------------------------------- 10. messages that say what is wrong


def test_messages_name_the_real_cause(folder, tmp_path, capsys, monkeypatch):
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--seed", str(2**64), "--no-ppl", *PRUNE)
    assert code == 2 and "seed" in one_error_line(err) and "Overflow" not in err
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--custom", "0.1,0.2,0.3,0.4", "--no-ppl",
                    *PRUNE)
    assert code == 2 and "--custom" in one_error_line(err) and "--method custom" in err
    with pytest.raises(pruner.ConfigError, match="is a folder"):
        pruner.PruneConfig(calibration=str(tmp_path))
    (tmp_path / "run").mkdir()
    (tmp_path / "run3" / "checkpoints" / "stage_01").mkdir(parents=True)  # an earlier run's folder
    (tmp_path / "run3" / "checkpoints" / "stage_01" / "state.json").write_text("{}")
    code, err = cli(capsys, "accel", "--model", folder, "--out", tmp_path / "run3", *ACCEL)
    assert code == 2 and "--resume" in one_error_line(err) and "overwrite=True" not in err
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, "info", "--model", "run/modle")  # a typo in a local path, not a hub id
    assert code == 2 and "No such model folder" in one_error_line(err) and "hub" not in err


def test_nan_weights_are_named_before_any_measurement(folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "nan"
    shutil.copytree(folder, d)
    state = load_file(str(d / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    code, err = cli(capsys, "prune", "--model", d, "--target", "0.9", "--no-ppl", *PRUNE)
    assert code == 2 and "NaN" in one_error_line(err) and "up_proj" in err and "step   1" not in err


def test_the_finite_check_reads_a_chunk_at_a_time_and_misses_nothing():
    from pruner.cli.common import _all_finite

    for dtype in (torch.float32, torch.bfloat16):
        t = torch.zeros(3, 5, dtype=dtype)
        assert _all_finite(t, chunk=4)
        for bad in (float("nan"), float("inf"), -float("inf")):
            u = t.clone()
            u[2, 4] = bad  # the last entry: in the last, partial chunk
            assert not _all_finite(u, chunk=4) and not _all_finite(u)
