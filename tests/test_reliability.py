"""The failure paths a real user hits (issue 14), each a regression test: bad input gets one clear line and exit
code 2 (130 for an interrupt), nothing finished is lost, nothing is left half-done, no pickle is ever loaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import pruner
from pruner.cli.main import main
from pruner.evaluation.perplexity import PerplexityConfig
from pruner.model.adapters import Adapter
from pruner.model.structure import count_parameters, layer_widths
from pruner.testing import tiny_model

UNWRITABLE = "/proc/adapt-pruner-test"  # even root cannot create anything under /proc


@pytest.fixture(scope="module")
def folder(tiny_llama_folder):
    return tiny_llama_folder


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


PRUNE = ("--n-windows", "4", "--window", "32", "--calibration", "wikitext2")


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- 1. pickles are never loaded


def test_pickle_only_folder_and_pickle_files_are_refused(folder, tmp_path, capsys, monkeypatch):
    d = tmp_path / "pickled"
    shutil.copytree(folder, d)
    state = tiny_model("llama").state_dict()
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(pruner.ModelLoadError, match="pickle"):
        pruner.load_model(d, progress=None)
    code, err = cli(capsys, "prune", "--model", d, "--target", "0.97", "--out", tmp_path / "out", "--no-ppl")
    assert code == 2 and "convert" in one_error_line(err) and not (tmp_path / "out").exists()
    for name in ("weights.pt", "weights.pth", "model.ckpt", "pytorch_model.bin"):
        f = tmp_path / name
        f.write_bytes(b"never read")
        with pytest.raises(pruner.ModelLoadError, match="pickle"):
            pruner.load_model(f, progress=None)
    # safetensors next to a pickle: the safetensors are loaded, the pickle is not touched
    both = tmp_path / "both"
    shutil.copytree(folder, both)
    torch.save({}, both / "pytorch_model.bin")
    model, _ = pruner.load_model(both, progress=None)
    assert count_parameters(model) == count_parameters(tiny_model("llama"))


# ---------------------------------------------------------------- 2. outputs checked first, saves never lost


@pytest.mark.parametrize("where,message", [
    ("unwritable", "cannot be written"), ("parent-is-file", "is a file"), ("is-file", "is a file"),
])
def test_bad_output_paths_are_refused_before_any_work(folder, tmp_path, capsys, where, message):
    (tmp_path / "f").write_text("x")
    out = {"unwritable": UNWRITABLE + "/out", "parent-is-file": tmp_path / "f" / "out", "is-file": tmp_path / "f"}[where]
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", out, *PRUNE)
    assert code == 2 and message in one_error_line(err)
    assert "loaded" not in err  # refused before the model was even loaded
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--report", UNWRITABLE + "/r.json", *PRUNE)
    assert code == 2 and "cannot be written" in one_error_line(err) and "loaded" not in err


def test_a_failing_save_goes_to_a_rescue_folder(folder, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def disk_full_once(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_once)
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "r.json"
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", tmp_path / "out",
                    "--report", report, "--no-ppl", *PRUNE)
    assert code == 1 and "No space left on device" in err and "instead" in err
    (rescued,) = tmp_path.glob("adapt-pruner-rescue-model-*")
    model, _ = pruner.load_model(rescued, progress=None)
    assert json.loads(report.read_text())["record"]["final_params"] == count_parameters(model)


def test_ctrl_c_during_the_final_perplexity_keeps_model_and_report(folder, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("pruner.cli.prune.perplexities", interrupted)
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", tmp_path / "out",
                    "--report", tmp_path / "r.json", *PRUNE)
    assert code == 130
    model, _ = pruner.load_model(tmp_path / "out", progress=None)  # a tuple is always true: check what it holds
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["perplexity"] == [] and report["record"]["final_params"] == count_parameters(model)
    assert count_parameters(model)["total"] < count_parameters(tiny_model("llama"))["total"]


# ---------------------------------------------------------------- 3. a step is atomic, swap and bookkeeping


def _failing_after(n: int):
    calls = {"n": 0}
    real = Adapter.set_part

    def setter(self, layer, path, part):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("swap failed (simulated)")
        return real(self, layer, path, part)

    return setter


def _building_fails_at(n: int):
    """The n-th layer's new parts cannot be built (out of memory, simulated): layers before it are already cut."""
    from pruner.model import structure

    calls = {"n": 0}
    real = structure._layer_patch

    def build(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise torch.OutOfMemoryError("out of memory (simulated) building a layer's new parts")
        return real(*a, **k)

    return build


@pytest.mark.parametrize("point", ["4th module swap", "11th module swap", "3rd layer's build", "config sync",
                                   "unit bookkeeping", "record"])
def test_a_failure_anywhere_in_a_step_leaves_the_model_as_it_was(tiny_tokenizer, monkeypatch, point):
    model = tiny_model("llama")
    p = pruner.Pruner(model, tiny_tokenizer, pruner.PruneConfig(target=0.6, n_windows=4, window=32, step=0.2,
                                                                  attention="proportional", calibration="wikitext2"))
    imp = p.measure()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before_logits, before_params = model(ids).logits.detach(), count_parameters(model)
    boom = RuntimeError("failure (simulated)")
    with monkeypatch.context() as m:
        if point.endswith("module swap"):
            m.setattr(Adapter, "set_part", _failing_after(int(point.split("th")[0])))
        elif point == "3rd layer's build":
            m.setattr("pruner.model.structure._layer_patch", _building_fails_at(3))
        elif point == "config sync":
            m.setattr("pruner.model.structure.sync_config", lambda *a, **k: (_ for _ in ()).throw(boom))
        elif point == "unit bookkeeping":
            m.setattr("pruner.pruning.planner.UnitScores.restricted", lambda *a, **k: (_ for _ in ()).throw(boom))
        else:
            m.setattr(pruner.Pruner, "_step_record", lambda *a, **k: (_ for _ in ()).throw(boom))
        with pytest.raises(RuntimeError):  # torch.OutOfMemoryError is one
            p.step(importance=imp)
    assert count_parameters(model) == before_params and p.record.steps == [] and p.undo() is None
    torch.testing.assert_close(model(ids).logits, before_logits, rtol=0, atol=0)
    assert p.origin.kept_channels[0] == list(range(96))
    rec = p.step(importance=imp)  # and the pruner carries on
    assert rec.params_total < before_params["total"] and p.undo() is rec
    torch.testing.assert_close(model(ids).logits, before_logits, rtol=0, atol=0)


# ---------------------------------------------------------------- 4. Ctrl-C during a prune: exit 130


def test_ctrl_c_during_a_prune_exits_130_and_says_how_to_continue(folder, tmp_path, capsys, monkeypatch):
    real = pruner.Pruner.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(pruner.Pruner, "step", step)
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.7", "--step", "0.05", "--out",
                    tmp_path / "out", "--no-ppl", *PRUNE)
    assert code == 130 and "continue with" in err and "target 70.0%" in err
    record = json.loads((tmp_path / "out" / "pruning_record.json").read_text())
    assert len(record["steps"]) == 1 and record["stopped"] == "interrupted"


# ---------------------------------------------------------------- 5./6./8./9. checked before any work


@pytest.mark.parametrize("args,message", [
    (["--target", "1.5"], "≥ 100 %"),
    (["--target", "0.05"], "emptying a layer"),
    (["--target", "inf"], "finite"),
    (["--target", "0.7", "--tokens", "0"], "positive token budget"),
    (["--target", "0.7", "--tokens", "-5"], "positive token budget"),
    (["--target", "0.7", "--window", "100000"], "longer than the model's context"),
])
def test_accel_validates_like_prune_before_training(folder, tmp_path, capsys, args, message):
    code, err = cli(capsys, "accel", "--model", folder, "--out", tmp_path / "run", "--data", "stories",
                    "--seq-len", "32", *args)
    assert code == 2 and message in one_error_line(err)
    assert "step" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,message", [
    (["--target", "nan"], "finite"),
    (["--target", "0.9", "--custom", "a,b"], "comma-separated"),
    (["--target", "0.9", "--method", "custom", "--custom", "0.1,0.2"], "one final sparsity per layer"),
    (["--target", "0.9", "--multiple", "4096"], "narrowest MLP"),
    (["--target", "0.9", "--window", "100000"], "longer than the model's context"),
    (["--target", "0.9", "--calibration", "/no/such/calibration.txt"], "No such calibration text file"),
    (["--target", "0.9", "--device", "tpu"], "Unknown device 'tpu'"),
])
def test_prune_checks_everything_before_measuring(folder, capsys, args, message):
    code, err = cli(capsys, "prune", "--model", folder, "--no-ppl", *args)
    assert code == 2 and message in one_error_line(err) and "step   1" not in err


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_argument_values_are_refused_by_the_parser(folder, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(folder), "--target", "0.9", "--ppl-max-tokens", value])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["prune", "--model", str(folder), "--target", "0.9", "--ppl-windows", value])
    err = capsys.readouterr().err
    assert "argument --ppl-max-tokens" in err and "argument --ppl-windows" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("command", [["prune", "--target", "0.9"], ["info"], ["eval"], ["export", "--format", "hf"],
                                     ["accel"]])
def test_a_missing_cuda_device_is_one_line_on_every_command(folder, tmp_path, capsys, command):
    extra = ["--out", tmp_path / "x"] if command[0] in ("export", "accel", "prune") else []
    code, err = cli(capsys, *command, "--model", folder, "--device", "cuda", *extra)
    assert code == 2 and "CUDA is not available" in one_error_line(err)


def test_corrupt_or_incomplete_folders_name_the_cause(folder, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text("{not json")
    code, err = cli(capsys, "info", "--model", bad)
    assert code == 2 and "config.json" in one_error_line(err) and "not valid JSON" in err and "hub" not in err
    notok = tmp_path / "notok"
    notok.mkdir()
    shutil.copy(folder / "config.json", notok)
    shutil.copy(folder / "model.safetensors", notok)
    code, err = cli(capsys, "info", "--model", notok)
    assert code == 2 and "no tokenizer files" in one_error_line(err) and "sentencepiece" not in err


def test_export_reports_and_outputs_are_checked_first(folder, tmp_path, capsys):
    code, err = cli(capsys, "export", "--model", folder, "--format", "hf", "--out", tmp_path / "x",
                    "--report", tmp_path / "missing.json")
    assert code == 2 and "does not exist" in one_error_line(err)
    (tmp_path / "bad.json").write_text("[1, 2")
    code, err = cli(capsys, "export", "--model", folder, "--format", "hf", "--out", tmp_path / "x",
                    "--report", tmp_path / "bad.json")
    assert code == 2 and "bad.json" in one_error_line(err)
    code, err = cli(capsys, "export", "--model", folder, "--format", "hf", "--out", UNWRITABLE + "/x")
    assert code == 2 and "cannot be written" in one_error_line(err)


def test_damaged_checkpoints_name_the_file(tmp_path, tiny_tokenizer, capsys):
    from pruner.config import PruneConfig
    from pruner.training.accel import AccelConfig, run_accel
    from pruner.training.train import TrainConfig, make_accelerator

    cfg = AccelConfig(target=0.8, stages=2, tokens=4 * 64, eval=PerplexityConfig(window=64, max_tokens=256), eval_initial=False,
                      prune=PruneConfig(n_windows=4, window=32, step=0.1, calibration="stories"),
                      train=TrainConfig(lr=3e-3, seq_len=32, batch_size=2, data="stories"))
    run_accel(tiny_model("llama", perturb=False, tie_word_embeddings=True), tiny_tokenizer, cfg,
              out_dir=tmp_path / "run", accelerator=make_accelerator("no", cpu=True))
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("stage_*")
    rng = ckpt / "rng.safetensors"
    rng.write_bytes(rng.read_bytes()[:20])
    code, err = cli(capsys, "accel", "--out", tmp_path / "run", "--resume")
    assert code == 2 and "rng.safetensors" in one_error_line(err) and "damaged" in err
    (ckpt / "state.json").write_text("{")
    code, err = cli(capsys, "accel", "--out", tmp_path / "run", "--resume")
    assert code == 2 and "state.json" in one_error_line(err)


def test_ctrl_c_in_accel_exits_130_and_says_how_to_resume(folder, tmp_path, capsys, monkeypatch):
    import pruner.training.accel

    def interrupted(*a, **k):
        raise KeyboardInterrupt
        yield  # a generator, like iter_train

    monkeypatch.setattr(pruner.training.accel, "iter_train", interrupted)
    code, err = cli(capsys, "accel", "--model", folder, "--target", "0.8", "--stages", "2", "--tokens", "256",
                    "--data", "stories", "--seq-len", "32", "--n-windows", "4", "--window", "32",
                    "--ppl-windows", "32", "--ppl-max-tokens", "256", "--out", tmp_path / "run")
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_out_of_memory_is_one_line_and_changes_nothing(tiny_tokenizer, folder, capsys, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model = tiny_model("llama")
    flags = [p.requires_grad for p in model.parameters()]
    monkeypatch.setattr("pruner.importance.measure._forward_backward", oom)
    p = pruner.Pruner(model, tiny_tokenizer, pruner.PruneConfig(n_windows=4, window=32, calibration="wikitext2"))
    with pytest.raises(pruner.PrunerError, match="batch size"):
        p.step()
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    assert layer_widths(model) == layer_widths(tiny_model("llama"))
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--no-ppl", *PRUNE)
    assert code == 2 and "Out of memory" in one_error_line(err) and "--batch-size" in err


def test_a_huge_calibration_file_is_read_only_as_far_as_needed(tiny_tokenizer, tmp_path, monkeypatch):
    from pruner import data

    big = tmp_path / "big.txt"
    with open(big, "w") as f:
        for _ in range(2_000):
            f.write("The history of the region is long and varied. " * 100 + "\n")  # ~9.6 MB
    seen = []
    real = data.tokenize_corpus

    def spy(tok, source, split="test", detokenize=False, text=None):
        seen.append(len(text) if text is not None else None)
        return real(tok, source, split, detokenize, text=text)

    monkeypatch.setattr(data, "tokenize_corpus", spy)
    w = data.calibration_windows(tiny_tokenizer, str(big), n_windows=4, window=32)
    assert w.shape == (4, 32) and seen and max(seen) <= data.CALIBRATION_CHARS < big.stat().st_size


# ---------------------------------------------------------------- 10. --force never deletes a user's files


def test_force_never_deletes_foreign_files_and_export_never_overwrites_its_source(folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", out, "--force", *PRUNE)
    assert code == 2 and "did not write" in one_error_line(err) and (out / "notes.txt").read_text() == "mine"
    saved = tmp_path / "saved"
    code, _ = cli(capsys, "prune", "--model", folder, "--target", "0.9", "--out", saved, "--no-ppl", *PRUNE)
    assert code == 0
    code, _ = cli(capsys, "prune", "--model", folder, "--target", "0.8", "--out", saved, "--force", "--no-ppl", *PRUNE)
    assert code == 0  # a folder this project wrote: replaced with --force
    record = (saved / "pruning_record.json").read_text()
    code, err = cli(capsys, "export", "--model", saved, "--format", "hf", "--out", saved, "--force")
    assert code == 2 and "own folder" in one_error_line(err)
    assert (saved / "pruning_record.json").read_text() == record
