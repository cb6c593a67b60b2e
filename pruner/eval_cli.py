"""``python -m pruner eval``: evaluate a model (perplexity; the evaluation suite extends this)."""

from __future__ import annotations


def register(sub, add_model_args, add_ppl_args) -> None:
    e = sub.add_parser("eval", help="evaluate a model (perplexity, and zero-shot tasks where available)")
    add_model_args(e)
    e.add_argument("--report", default=None, help="JSON file for the results")
    add_ppl_args(e)
    e.set_defaults(func=run)


def run(args) -> int:
    from .cli import log, perplexities, write_report
    from .io import describe, load_model

    model, tok = load_model(args.model, device=args.device, dtype=args.dtype, progress=log)
    info = describe(model)
    log(f"{args.model}: {info['params']['total']:,} parameters")
    report = {"model": info, "source": str(args.model), "perplexity": perplexities(model, tok, args)}
    write_report(args.report, report)
    return 0
