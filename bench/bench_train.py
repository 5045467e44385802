"""Training throughput table: scalescope vs a plain PyTorch GPT, and the knobs that matter.

    .venv/bin/python bench/bench_train.py            # ~3 minutes on 2 cores

Every row is one `bench_train` call: scalescope's step and the reference's step interleaved in the same
process (medians), with this machine's 1024^3 float32 matmul rate at the same thread count. Copy the
table into BENCHMARKS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from scalescope.throughput import bench_train

SHAPES = [  # (n_layer, d_model, n_head, seq_len, batch): all >= 0.5M parameters
    (4, 128, 4, 128, 32),
    (6, 192, 6, 128, 32),
    (8, 256, 8, 128, 16),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--knobs", action="store_true", help="also: 2 threads, fused AdamW, torch.compile")
    args = ap.parse_args()
    rows = []
    for L, d, h, T, B in SHAPES:
        rows.append(
            (
                f"L{L} d{d} T{T} B{B}",
                "1 thread",
                bench_train(n_layer=L, d_model=d, n_head=h, seq_len=T, batch=B, steps=args.steps, repeats=args.repeats),
            )
        )
    if args.knobs:
        L, d, h, T, B = SHAPES[0]
        base = dict(n_layer=L, d_model=d, n_head=h, seq_len=T, batch=B, steps=args.steps, repeats=args.repeats)
        shape = f"L{L} d{d} T{T} B{B}"
        rows.append((shape, "fused AdamW", bench_train(**base, fused=True)))
        rows.append((shape, "2 threads", bench_train(**base, threads=2)))
        rows.append((shape, "torch.compile", bench_train(**base, compile=True)))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    hdr = ("shape", "knob", "params", "tok/s", "ref tok/s", "ours/ref", "GFLOP/s", "matmul GFLOP/s", "util")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for shape, knob, r in rows:
        print(
            f"| {shape} | {knob} | {r['params_total'] / 1e6:.2f}M | {r['tokens_per_s']:,.0f} | "
            f"{r['reference_tokens_per_s']:,.0f} | {r['speedup_vs_reference']:.2f} | {r['flops_per_s'] / 1e9:.1f} | "
            f"{r['matmul_flops_per_s'] / 1e9:.1f} | {r['utilization']:.0%} |"
        )


if __name__ == "__main__":
    main()
