"""``scalescope bench train``: training throughput on this machine (see scalescope/throughput.py)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import add_json, check_positive, print_json

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmarks of this machine")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    bt = bsub.add_parser("train", help="training speed against a plain PyTorch GPT and the matmul rate")
    bt.add_argument("--n-layer", type=int, default=4, help="transformer blocks (default 4)")
    bt.add_argument("--d-model", type=int, default=128, help="residual width (default 128)")
    bt.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
    bt.add_argument("--seq-len", type=int, default=128, help="context length in tokens (default 128)")
    bt.add_argument("--batch", type=int, default=32, help="sequences per step (default 32)")
    bt.add_argument("--steps", type=int, default=20, help="timed steps per repeat (default 20)")
    bt.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    bt.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    bt.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    bt.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="arithmetic of the step (train.precision)"
    )
    add_json(bt)
    bt.set_defaults(fn=cmd_bench_train)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from ..device import pick_device
    from ..throughput import bench_train

    check_positive(
        args, "n_layer", "d_model", "n_head", "seq_len", "batch", "steps", "threads", "repeats", allow_none=False
    )
    if args.d_model % args.n_head:
        raise ConfigError(f"d_model ({args.d_model}) must be divisible by n_head ({args.n_head})", field="--d-model")
    try:
        pick_device(args.device)
    except ConfigError as e:
        raise ConfigError(e.message, field="--device") from None
    r = bench_train(
        n_layer=args.n_layer,
        d_model=args.d_model,
        n_head=args.n_head,
        seq_len=args.seq_len,
        batch=args.batch,
        steps=args.steps,
        threads=args.threads,
        repeats=args.repeats,
        device=args.device,
        precision=args.precision,
    )
    if args.json:
        print_json(r)
    else:
        for k, v in r.items():
            print(f"{k:>28}  {v:,.4g}" if isinstance(v, float) else f"{k:>28}  {v}")
    return 0
