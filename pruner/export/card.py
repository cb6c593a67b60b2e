"""Model cards (README.md in the Hugging Face Hub format) for exported models.

YAML front matter (license, base_model, tags, library_name, pipeline_tag), then: where the model came from,
how it was pruned (method and settings from the pruning record), a per-layer widths table, parameter counts,
and the evaluation results of the report it came with (perplexities with dataset / split / window; zero-shot
tasks with acc or acc_norm).
"""

from __future__ import annotations

import json

from pruner.methods import REGISTRY

REPO_URL = "Adapt-Pruner Studio"  # named, not linked: the project has no public address yet
METHOD_NAMES = {m: cls.summary for m, cls in REGISTRY.items()}  # how a card names the method
_RECORD_SETTINGS = ("target", "method", "criterion", "amplitude", "step", "max_sparsity", "multiple",
                    "calibration", "n_windows", "window", "seed")


def _yaml_front_matter(meta: dict) -> str:
    lines = ["---"]
    for key, val in meta.items():
        if val is None:
            continue
        if isinstance(val, list):
            lines.append(f"{key}:")
            lines.extend(f"- {json.dumps(v)}" for v in val)
        else:
            lines.append(f"{key}: {json.dumps(val) if isinstance(val, str) and ':' in val else val}")
    lines.append("---")
    return "\n".join(lines)


def _fmt_int(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _widths_table(facts: dict) -> list[str]:
    orig = facts.get("original_widths") or []
    kept = facts.get("kept_layers") if facts.get("removed_layers") else None
    rows = ["| layer | query heads | KV heads | MLP width | of original (heads / MLP) |",
            "|---:|---:|---:|---:|---:|"]
    for i, w in enumerate(facts["widths"]):
        o = orig[i] if i < len(orig) else None
        share = (f"{w['num_heads']}/{o['num_heads']} / {w['intermediate_size'] / o['intermediate_size']:.0%}"
                 if o else "")
        name = f"{i} (was {kept[i]})" if kept else f"{i}"
        rows.append(f"| {name} | {w['num_heads']} | {w['num_kv_heads']} | {w['intermediate_size']} | {share} |")
    return rows


def _what_was_removed(facts: dict, cfg: dict) -> str:
    """One sentence on what pruning removed (and added), from the model's facts and the record's settings."""
    removed = facts.get("removed_layers") or []
    widths = facts["widths"]
    parts = []
    if removed:
        parts.append(f"Whole decoder layers were removed ({len(removed)} of {facts.get('original_layers')}: the "
                     f"original layers {removed}); the remaining layers keep their weights")
    if any(w != o for w, o in zip(widths, facts.get("original_widths") or widths, strict=False)):
        parts.append("Whole key/value head groups and MLP channels were removed, so different layers have different "
                     "widths")
    text = "; ".join(parts) + "." if parts else "Nothing was removed."
    method = REGISTRY.get(cfg.get("method"))
    if method is not None:
        text += method.card_note(cfg)
    return text + (" Hidden size and vocabulary are unchanged." if removed else
                   " Hidden size, vocabulary and layer count are unchanged.")


def _perplexities(report: dict | None) -> list[dict]:
    found = []
    if isinstance(report, dict):
        for key, val in report.items():
            if key == "perplexity" and isinstance(val, list):
                found += [r for r in val if isinstance(r, dict) and "perplexity" in r and "dataset" in r]
            elif isinstance(val, dict):
                found += _perplexities(val)
    return found


def _task_results(report: dict | None) -> dict:
    """The first ``{"tasks": {name: {acc, [acc_norm], metric_used, n}}}`` block found in a report."""
    if not isinstance(report, dict):
        return {}
    tasks = report.get("tasks")
    if isinstance(tasks, dict) and tasks and all(isinstance(v, dict) and "acc" in v for v in tasks.values()):
        return report
    for val in report.values():
        hit = _task_results(val) if isinstance(val, dict) else {}
        if hit:
            return hit
    return {}


def _evaluation_lines(report: dict | None, record: dict | None) -> list[str]:
    lines = []
    ppl = _perplexities(report)
    if ppl:
        lines += ["| dataset | split | window (tokens) | BOS | tokens scored | perplexity |",
                  "|---|---|---:|---|---:|---:|"]
        lines += [f"| {r['dataset']} | {r.get('split') or '-'} | {r.get('window')} | {'yes' if r.get('bos') else 'no'} "
                  f"| {_fmt_int(r.get('tokens_scored'))} | {r['perplexity']:.2f} |" for r in ppl]
        lines.append("")
    res = _task_results(report)
    if res:
        lines += ["| task | metric | value | stderr | examples |", "|---|---|---:|---:|---:|"]
        for name, r in res["tasks"].items():
            metric = r.get("metric_used") or ("acc_norm" if "acc_norm" in r else "acc")
            err = r.get(f"{metric}_stderr")
            lines.append(f"| {name} | {metric} | {r[metric]:.4f} | {'' if err is None else f'{err:.4f}'} | {r.get('n', '')} |")
        avg = res.get("average") or {}
        if "value" in avg:
            lines.append(f"| average | {avg.get('metric', 'mean')} | {avg['value']:.4f} | | |")
        lines.append("")
    if not lines and report is not None:
        lines = ["The report given with this export holds no evaluation results (no perplexity, no zero-shot "
                 "tasks).", ""]
    elif not lines:
        lines = ["No evaluation results were given with this export (pass `--report` with a report JSON of "
                 "`python -m pruner prune` or `python -m pruner eval`).", ""]
    if record and record.get("steps"):
        last = record["steps"][-1]
        if last.get("calibration_loss") is not None:
            cfg = record.get("config", {})
            lines.append(f"Calibration loss at the last pruning sub-step: {last['calibration_loss']:.3f} "
                         f"(causal-LM loss on {cfg.get('n_windows')} × {cfg.get('window')} tokens of "
                         f"'{cfg.get('calibration')}', before that sub-step's cut).")
            lines.append("")
    return lines


def _params_lines(facts: dict, record: dict | None) -> list[str]:
    p, o = facts["params"], facts.get("original_params") or (record or {}).get("original_params") or {}
    lines = ["| | total | decoder layers | other (embeddings, norms, head) |", "|---|---:|---:|---:|",
             f"| this model | {_fmt_int(p['total'])} | {_fmt_int(p['decoder_layers'])} | {_fmt_int(p['other'])} |"]
    if o and o.get("total") != p["total"]:
        lines.append(f"| original | {_fmt_int(o.get('total'))} | {_fmt_int(o.get('decoder_layers'))} | "
                     f"{_fmt_int(o.get('other'))} |")
        lines += ["", f"The model keeps {p['total'] / o['total']:.2%} of the original parameters "
                      f"({p['decoder_layers'] / o['decoder_layers']:.2%} of the decoder-layer parameters)."]
    return lines


def _how_to_load(fmt: str, remote_code: bool, gguf_file: str | None, model_type: str = "llama") -> list[str]:
    if fmt == "gguf":
        run = ["```bash", f"llama-cli -m {gguf_file} -p \"The capital of France is\" -n 16", "```", ""]
        if model_type not in ("llama", "mistral"):
            return [*run, f"The GGUF uses llama.cpp's `{model_type}` architecture."]
        return [*run, "Where layers differ, the GGUF uses llama.cpp's `deci` architecture (Llama with per-layer "
                "widths) with arrays for `deci.attention.head_count`, `deci.attention.head_count_kv` and "
                "`deci.feed_forward_length`; with uniform widths it is plain `llama`."]
    flag = ", trust_remote_code=True" if remote_code else ""
    lines = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f"model = AutoModelForCausalLM.from_pretrained(\"PATH_OR_REPO\", use_safetensors=True{flag})",
             f"tok = AutoTokenizer.from_pretrained(\"PATH_OR_REPO\"{flag})", "```", ""]
    if remote_code:
        lines.append("The layers have different widths, so the folder carries two short files "
                     "(`configuration_adapt_pruned.py`, `modeling_adapt_pruned.py`, needing only torch and "
                     "transformers) that subclass the stock transformers classes and build each layer with its own "
                     "widths; read them before passing `trust_remote_code=True` (transformers 5 reads the config "
                     "when loading the tokenizer too, hence the flag there).")
    else:
        lines.append("All layers have the same widths, so this is a plain transformers architecture: no remote code.")
    return lines


def model_card(facts: dict, *, fmt: str, source: str, base_model: str | None = None, record: dict | None = None,
               report: dict | None = None, remote_code: bool = False, verify: dict | None = None,
               gguf_file: str | None = None, license: str | None = None) -> str:
    """The README.md text of an export. ``facts`` comes from :func:`pruner.export.common.model_facts`."""
    arch = facts["model_type"]
    cfg = (record or {}).get("config", {})
    tags = ["adapt-pruner", "pruned", "structured-pruning", arch, "text-generation"] + (["gguf"] if fmt == "gguf" else [])
    meta = {"license": license or ("apache-2.0" if base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" else "other"),
            "base_model": base_model, "tags": tags, "library_name": "transformers" if fmt == "hf" else "gguf",
            "pipeline_tag": "text-generation"}
    p, o = facts["params"], facts.get("original_params") or {}
    title = f"{(base_model or source).split(' ')[0].rstrip('/').split('/')[-1]} pruned to {p['total'] / 1e6:.1f}M parameters"
    lines = [_yaml_front_matter(meta), "", f"# {title}", "",
             f"A structurally pruned `{arch}` model made with {REPO_URL} (layer-wise adaptive structural pruning, "
             f"Adapt-Pruner, arXiv 2502.03460). {_what_was_removed(facts, cfg)}", "",
             "## Source", "", f"- Source model: {source}"]
    if o.get("total"):
        lines.append(f"- Original parameters: {_fmt_int(o['total'])}")
    lines.append(f"- Format: {'Hugging Face folder (safetensors)' if fmt == 'hf' else 'GGUF ' + (gguf_file or '')}")
    lines += ["", "## Method and settings", ""]
    if cfg:
        lines.append(f"- Method: {METHOD_NAMES.get(cfg.get('method'), cfg.get('method'))}")
        lines += [f"- {k}: `{cfg[k]}`" for k in _RECORD_SETTINGS if k in cfg and k != "method"]
        steps = record.get("steps") or []
        lines.append(f"- Sub-steps: {len(steps)}; time {record.get('seconds_total', 0):.1f} s on {record.get('device') or '?'}"
                     + (f"; stopped: {record['stopped']}" if record.get("stopped") else ""))
        lines.append("- No training after pruning is recorded here: expect quality below the source model until "
                     "the model is trained (Adapt-Pruner's results include recovery training).")
    else:
        lines.append("No pruning record was given with this export.")
    lines += ["", "## Parameters", "", *_params_lines(facts, record), "",
              "## Per-layer widths", "", f"Head dimension {facts['head_dim']}, hidden size {facts['hidden_size']}.", "",
              *_widths_table(facts), "", "## Evaluation", "", *_evaluation_lines(report, record)]
    if verify and "agreement" in verify:
        lines += [f"Export check: the GGUF, read back and rebuilt in float32, gives the same greedy next token as the "
                  f"in-memory model on {verify['agreement']:.0%} of {verify['prompts']} fixed prompts (max |Δlogit| "
                  f"{verify['max_abs_logit_diff']:.3g}, largest |logit| {verify['max_abs_logit']:.1f}).", ""]
    elif verify:
        lines += [f"Export check: loading this folder with `AutoModelForCausalLM` reproduced the in-memory model "
                  f"with max |Δlogit| {verify['max_abs_logit_diff']:.2e} (largest |logit| "
                  f"{verify['max_abs_logit']:.1f}) over {verify['tokens']} tokens in {verify['dtype']}.", ""]
    lines += ["## How to load", "", *_how_to_load(fmt, remote_code, gguf_file, facts.get("model_type", "llama")), ""]
    return "\n".join(lines)
