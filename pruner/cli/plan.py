"""``python -m pruner plan-memory``: what a run needs, per phase, before anything is loaded.

    python -m pruner plan-memory --model llama-3.1-8b --dtype bfloat16 --device cuda:0 --device-memory 24GB
    python -m pruner plan-memory --model runs/smollm-80 --device cpu

Exit code 0 when every phase fits (or the capacity is unknown), 1 when one does not.
"""

from __future__ import annotations

import json

from pruner.cli.common import positive_int
from pruner.config import PruneConfig
from pruner.training.memory_plan import NAMED_SHAPES, model_shape, plan_memory
from pruner.training.train import TrainConfig


def register(sub) -> None:
    p = sub.add_parser("plan-memory", help="predict the memory of loading, importance, surgery and training "
                                           "from a config alone (nothing is loaded)")
    p.add_argument("--model", default="default",
                   help=f"a named shape ({', '.join(NAMED_SHAPES)}), a model folder or a hub id")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (the device does not need to be here)")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16")
    p.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="the device's memory, e.g. 24GB or 80GiB (default: the CUDA device's total, or this "
                        "machine's available memory)")
    p.add_argument("--n-windows", type=positive_int, default=PruneConfig.n_windows)
    p.add_argument("--window", type=positive_int, default=PruneConfig.window)
    p.add_argument("--batch-size", type=positive_int, default=PruneConfig.batch_size)
    p.add_argument("--keep-history", type=int, default=0,
                   help="undo history length (the prune command keeps none, the studio 3)")
    p.add_argument("--seq-len", type=positive_int, default=TrainConfig.seq_len, help="training sequence length")
    p.add_argument("--train-batch-size", type=positive_int, default=TrainConfig.batch_size,
                   help="training sequences per micro-batch and process")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="training processes under FSDP full shard (weights, gradients and AdamW state split)")
    p.add_argument("--distill", action="store_true", help="training with the unpruned model as a teacher")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    prune = PruneConfig(n_windows=args.n_windows, window=args.window, batch_size=args.batch_size)
    train = TrainConfig(seq_len=args.seq_len, batch_size=args.train_batch_size)
    plan = plan_memory(model_shape(args.model), args.dtype, args.device, args.device_memory, prune, train,
                       keep_history=args.keep_history, processes=args.processes, teacher=args.distill)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else "\n".join(plan.lines()))
    return 1 if any(ph.fits is False for ph in plan.phases) else 0
