"""Portable Hugging Face export: round trip in an environment that cannot import ``pruner``, safety rules, card."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruner.export import ExportError, check_folder, export_hf, model_card, model_facts, refuse_pickles
from pruner.io.exported import load_exported
from pruner.model.structure import LayerCut, apply_patch, build_cut, layer_widths
from pruner.testing import HIDE_PROJECT, random_windows, tiny_model, uneven_model

ARCHS = ("llama", "qwen2", "mistral")


def uneven(arch: str):
    return uneven_model(arch)


def clean_env(tmp_path) -> dict:
    """An environment without the project on the path (no PYTHONPATH; run from an empty folder; the script
    hides the installed packages too)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    return env


STRANGER = HIDE_PROJECT + r"""
import json, os, sys
try:
    import pruner
    sys.exit("pruner is importable here; the test would prove nothing")
except ImportError:
    pass
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
results = {}
for folder in sys.argv[1:]:
    ref = load_file(folder + ".ref.safetensors")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, use_safetensors=True).eval()
    with torch.no_grad():
        logits = model(ref["ids"]).logits
    prompt = ref["ids"][:1, :6]
    with_cache = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True)
    without = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
    if os.path.exists(folder + "/tokenizer_config.json"):
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        results[folder + ":tokens"] = tok("hello world").input_ids
    results[folder] = {"class": type(model).__name__, "max_diff": float((logits - ref["logits"]).abs().max()),
                       "with_cache": with_cache[0].tolist(), "without_cache": without[0].tolist(),
                       "expected": ref["generated"][0].tolist()}
print(json.dumps(results))
"""


def export_for_a_stranger(models: dict, root, tokenizers: dict) -> dict:
    """Export every model to ``root/<name>`` with its reference logits and cached generation, then load them all in
    one subprocess that cannot import the project (remote code only); returns what that process measured."""
    folders = []
    for name, model in models.items():
        folder = root / name
        export_hf(model, tokenizers.get(name), folder)
        ids = random_windows(2, 20, seed=3)
        with torch.no_grad():
            logits = model(ids).logits
            generated = model.generate(ids[:1, :6], max_new_tokens=10, do_sample=False, use_cache=True)
        save_file({"ids": ids, "logits": logits, "generated": generated}, str(folder) + ".ref.safetensors")
        folders.append(str(folder))
    cwd = root / "cwd"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", STRANGER, *folders], cwd=cwd, env=clean_env(root),
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline(arch: str, method: str, tokenizer):
    """A tiny model pruned to 70 % by one of the baselines (FLAP adds o_proj / down_proj biases, ShortGPT removes
    layers)."""
    import pruner

    cfg = pruner.PruneConfig(target=0.7, method=method, n_windows=4, window=24, batch_size=4, calibration="wikitext2")
    p = pruner.Pruner(tiny_model(arch), tokenizer, cfg)
    p.run()
    return p.model


#: the baselines' models that the stranger loads too: name -> (architecture, method)
BASELINE_MODELS = {"llama-flap": ("llama", "flap"), "qwen2-shortgpt": ("qwen2", "shortgpt")}


@pytest.fixture(scope="module")
def stranger_results(tmp_path_factory, tiny_tokenizer):
    """Export the three architectures (and two baselines' models), then load them all in one subprocess that
    cannot import pruner."""
    root = tmp_path_factory.mktemp("export_hf")
    models = {}
    for arch in (*ARCHS, *BASELINE_MODELS):
        model = uneven(arch) if arch in ARCHS else baseline(*BASELINE_MODELS[arch], tiny_tokenizer)
        models[arch] = model
    out = export_for_a_stranger(models, root, {"llama": tiny_tokenizer})
    assert out[str(root / "llama") + ":tokens"] == tiny_tokenizer("hello world").input_ids
    return {arch: out[str(root / arch)] for arch in (*ARCHS, *BASELINE_MODELS)}, root, models


def test_stranger_loads_flap_biases_and_a_shallower_shortgpt_model(stranger_results):
    """FLAP's o_proj / down_proj biases travel in the remote code; a ShortGPT model is the plain class."""
    results, root, models = stranger_results
    flap, short = results["llama-flap"], results["qwen2-shortgpt"]
    assert flap["class"] == "AdaptPrunedLlamaForCausalLM" and short["class"] == "Qwen2ForCausalLM"
    for r in (flap, short):
        assert r["max_diff"] < 1e-5
        assert r["with_cache"] == r["without_cache"] == r["expected"]
    cfg = json.loads((root / "llama-flap" / "config.json").read_text())
    assert cfg["o_proj_bias_per_layer"] == cfg["down_proj_bias_per_layer"] == [True] * 4
    short_cfg = json.loads((root / "qwen2-shortgpt" / "config.json").read_text())
    assert short_cfg["num_hidden_layers"] == len(short_cfg["layer_types"]) == models["qwen2-shortgpt"].config.num_hidden_layers < 4
    assert not list((root / "qwen2-shortgpt").glob("*.py"))
    model, _ = load_exported(root / "llama-flap")  # back into this project: the stock class with the biases
    ids = random_windows(2, 16, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, models["llama-flap"](ids).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_stranger_loads_same_logits_and_generates(stranger_results, arch):
    results, _, _ = stranger_results
    r = results[arch]
    assert r["class"] == f"AdaptPruned{ {'llama': 'Llama', 'qwen2': 'Qwen2', 'mistral': 'Mistral'}[arch]}ForCausalLM"
    assert r["max_diff"] < 1e-5
    assert r["with_cache"] == r["without_cache"] == r["expected"]


@pytest.mark.parametrize("arch", ARCHS)
def test_config_carries_per_layer_widths(stranger_results, arch):
    _, root, models = stranger_results
    cfg = json.loads((root / arch / "config.json").read_text())
    widths = layer_widths(models[arch])
    assert cfg["model_type"] == f"adapt_pruned_{arch}"
    assert cfg["num_attention_heads_per_layer"] == [w.num_heads for w in widths] == [6, 8, 2, 8]
    assert cfg["num_key_value_heads_per_layer"] == [w.num_kv_heads for w in widths]
    assert cfg["intermediate_size_per_layer"] == [w.intermediate_size for w in widths] == [48, 96, 96, 6]
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert sorted(p.name for p in (root / arch).glob("*.py")) == ["configuration_adapt_pruned.py", "modeling_adapt_pruned.py"]
    assert not [p for p in (root / arch).iterdir() if p.suffix in (".bin", ".pt", ".pkl")]


def test_uniform_widths_export_plain_architecture(tmp_path):
    model = tiny_model("llama")
    apply_patch(model, build_cut(model, {i: LayerCut([1, 3], list(range(64))) for i in range(4)}))
    summary = export_hf(model, None, tmp_path / "out")
    assert summary["remote_code"] is False
    assert not list((tmp_path / "out").glob("*.py"))
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (4, 2, 64)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # no trust_remote_code
    ids = random_windows(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_uniform_widths_the_stock_config_rejects_use_remote_code(tmp_path):
    """6 heads do not divide hidden size 64: the stock Llama config refuses that, the adapt_pruned one does not."""
    model = tiny_model("llama")
    apply_patch(model, build_cut(model, {i: LayerCut([0, 1, 3], list(range(64))) for i in range(4)}))
    summary = export_hf(model, None, tmp_path / "out")
    assert summary["remote_code"] is True and summary["verify"]["max_abs_logit_diff"] < 1e-5


def test_mismatched_folder_is_refused(tmp_path):
    model = uneven("llama")
    export_hf(model, None, tmp_path / "ok", verify=False)
    cfg_path = tmp_path / "ok" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["intermediate_size_per_layer"][1] -= 8
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="do not match config.json"):
        check_folder(tmp_path / "ok")
    with pytest.raises(ExportError, match="do not match"):
        load_exported(tmp_path / "ok")
    from pruner.cli.main import main

    assert main(["export", "--model", str(tmp_path / "ok"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_weights_missing_a_tensor_are_refused(tmp_path):
    export_hf(uneven("qwen2"), None, tmp_path / "ok", verify=False)
    weights = tmp_path / "ok" / "model.safetensors"
    state = load_file(str(weights))
    del state["model.layers.2.self_attn.k_proj.bias"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ExportError, match="missing"):
        check_folder(tmp_path / "ok")


def test_never_overwrites_without_force_and_never_deletes_foreign_files(tmp_path):
    out = tmp_path / "out"
    model = uneven("llama")
    export_hf(model, None, out, verify=False)
    with pytest.raises(FileExistsError, match="--force"):
        export_hf(model, None, out, verify=False)
    export_hf(model, None, out, force=True, verify=False)  # an export of ours: replaced
    assert (out / "config.json").is_file()
    (out / "keep.txt").write_text("mine")
    for force in (False, True):  # a file this project did not write: refused, even with force
        with pytest.raises(FileExistsError, match="did not write"):
            export_hf(model, None, out, force=force, verify=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob("*tmp*"))  # no staging folder left behind


def test_pickle_only_source_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ExportError, match="pickle"):
        refuse_pickles(tmp_path)
    from pruner.cli.main import main

    assert main(["export", "--model", str(tmp_path), "--format", "hf", "--out", str(tmp_path / "x")]) == 2


def test_load_exported_returns_stock_class_with_same_logits(stranger_results):
    _, root, models = stranger_results
    model, _ = load_exported(root / "qwen2")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert layer_widths(model) == layer_widths(models["qwen2"])
    ids = random_windows(2, 16, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, models["qwen2"](ids).logits)


def test_per_layer_config_validation():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from pruner.model.remote_code.configuration_adapt_pruned import AdaptPrunedLlamaConfig

    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                intermediate_size=96, vocab_size=320)
    ok = AdaptPrunedLlamaConfig(**base, num_attention_heads_per_layer=[6, 8], num_key_value_heads_per_layer=[3, 4],
                                intermediate_size_per_layer=[10, 96])
    assert ok.num_attention_heads_per_layer == [6, 8]
    with pytest.raises(StrictDataclassClassValidationError, match="entries"):
        AdaptPrunedLlamaConfig(**base, num_attention_heads_per_layer=[6], num_key_value_heads_per_layer=[3, 4],
                               intermediate_size_per_layer=[10, 96])
    with pytest.raises(StrictDataclassClassValidationError, match="multiple"):
        AdaptPrunedLlamaConfig(**base, num_attention_heads_per_layer=[5, 8], num_key_value_heads_per_layer=[3, 4],
                               intermediate_size_per_layer=[10, 96])


def test_model_card_format(stranger_results):
    _, root, models = stranger_results
    card = (root / "llama" / "README.md").read_text()
    front = card.split("---")[1]
    for key in ("license:", "tags:", "library_name: transformers", "pipeline_tag: text-generation"):
        assert key in front
    assert "| 3 | 8 | 4 | 6 |" in card  # layer 3: 8 heads, 4 KV heads, 6 MLP channels
    assert "trust_remote_code=True" in card
    record = {"config": {"method": "adaptive", "criterion": "taylor", "target": 0.9, "n_windows": 8, "window": 64,
                         "calibration": "wiki"}, "steps": [{"calibration_loss": 3.25}], "seconds_total": 12.0}
    report = {"perplexity": [{"perplexity": 21.5, "dataset": "wikitext2", "split": "test", "window": 512,
                              "bos": False, "tokens_scored": 4096}],
              "zero_shot": {"tasks": {"arc_easy": {"acc": 0.5, "acc_norm": 0.45, "acc_norm_stderr": 0.02,
                                                   "metric_used": "acc_norm", "n": 200}},
                            "average": {"value": 0.45, "metric": "acc_norm where available"}}}
    card = model_card(model_facts(models["llama"]), fmt="hf", source="HuggingFaceTB/SmolLM2-135M-Instruct",
                      base_model="HuggingFaceTB/SmolLM2-135M-Instruct", record=record, report=report)
    assert "license: apache-2.0" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "| wikitext2 | test | 512 | no | 4,096 | 21.50 |" in card
    assert "| arc_easy | acc_norm | 0.4500 | 0.0200 | 200 |" in card
    assert "Adapt-Pruner layer-wise adaptive allocation" in card and "- criterion: `taylor`" in card


def test_push_without_token_says_so(tmp_path, monkeypatch):
    from pruner.export.hub import push_to_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    with pytest.raises(ExportError, match="no Hugging Face token"):
        push_to_hub(tmp_path, "someone/model")


def test_load_model_reads_an_exported_folder_with_the_projects_code(tmp_path, tiny_tokenizer):
    """`pruner.load_model` recognises a portable export (model_type adapt_pruned_*) and loads it."""
    import pruner

    model = uneven("llama")
    out = tmp_path / "exp"
    export_hf(model, tiny_tokenizer, out)
    loaded, _ = pruner.load_model(str(out))
    assert layer_widths(loaded) == layer_widths(model)
    ids = random_windows(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
