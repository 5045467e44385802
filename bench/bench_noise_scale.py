"""Overhead of the ``noise_scale`` instrument relative to training-step time (issue 4, item 1: <= 3%).

    .venv/bin/python bench/bench_noise_scale.py            # ~1 minute on 2 cores (one thread)

Measures, interleaved in one process on one thread (medians): a training step (forward/backward over the
batch, clip, AdamW step), the probe without the Hessian (n_micro gradients over the probe batch), and the
probe with B_noise (plus n_micro Hessian-vector products). The overhead of a run of T steps is
(number of evaluations · probe time) / (T · step time), with the Pythia-style schedule of
``scalescope.schedule.eval_steps`` (log-spaced early evaluations included). Copy the tables into
BENCHMARKS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from scalescope.config import ModelConfig, TrainConfig
from scalescope.data.base import Batch
from scalescope.instruments import ProbeContext
from scalescope.instruments.noise_scale import make_noise_scale
from scalescope.model import GPT
from scalescope.schedule import eval_steps
from scalescope.train import accumulate_gradients, make_optimizer


class _RandomSource:
    """Uniform random tokens: the probe's cost does not depend on what the tokens are."""

    vocab_size = 256
    entropy_rate = None

    def batch(self, split, index, batch_size, seq_len):
        g = torch.Generator().manual_seed(hash((split, index)) % (2**31))
        return Batch.from_tokens(torch.randint(0, self.vocab_size, (batch_size, seq_len + 1), generator=g))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-micro", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hessian-batch-size", type=int, default=None, help="default: one micro-batch (as the instrument)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    src = _RandomSource()
    mcfg = ModelConfig(n_layer=args.n_layer, d_model=args.d_model, n_head=4, seq_len=args.seq_len)
    model = GPT(mcfg, src.vocab_size)
    tcfg = TrainConfig(batch_size=args.batch)
    opt = make_optimizer(model, tcfg)
    dev = torch.device("cpu")
    ctx = ProbeContext(
        model=model,
        optimizer=opt,
        source=src,
        step=0,
        seq_len=args.seq_len,
        batch_size=args.batch,
        device=dev,
        train_cfg=tcfg,
    )
    plain = make_noise_scale(n_micro=args.n_micro)
    hess = make_noise_scale(n_micro=args.n_micro, hessian_every=1, hessian_batch_size=args.hessian_batch_size)
    hbs = args.hessian_batch_size or args.batch // args.n_micro

    def step(i: int) -> None:
        model.train()
        accumulate_gradients(model, src.batch("train", i, args.batch, args.seq_len), args.batch, dev, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def probe(p, i: int) -> None:
        model.eval()
        ctx.step = i
        with torch.random.fork_rng():
            p(ctx)
        model.train()

    for i in range(2):  # warm up allocator and kernels
        step(i)
        probe(plain, i)
    probe(hess, 0)
    t_step, t_plain, t_hess = [], [], []
    for r in range(args.repeats):
        for k in range(3):
            t0 = time.perf_counter()
            step(10 + 3 * r + k)
            t_step.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        probe(plain, 100 + r)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        probe(hess, 200 + r)
        t_hess.append(time.perf_counter() - t0)
    ts, tp, th = (statistics.median(x) for x in (t_step, t_plain, t_hess))
    n = sum(p.numel() for p in model.parameters())
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s); model L{args.n_layer} d{args.d_model} T{args.seq_len}, {n / 1e6:.2f}M params, "
        f"batch {args.batch}, probe {args.n_micro} micro-batches of {args.batch // args.n_micro}"
    )
    print()
    print("| what | median s | × step |")
    print("|---|---|---|")
    print(f"| training step (fwd+bwd+clip+AdamW) | {ts:.3f} | 1.00 |")
    print(f"| noise_scale probe, B_simple only | {tp:.3f} | {tp / ts:.2f} |")
    print(f"| noise_scale probe with B_noise ({args.n_micro} HVPs on {hbs} sequences) | {th:.3f} | {th / ts:.2f} |")
    print()
    print("Overhead on training time for a run of T steps (evaluations at steps 0, 1, 2, 4, ..., then every k):")
    print()
    print("| T | eval_every k | evals | B_simple only | + B_noise every 10th eval | + every 5th | + every eval |")
    print("|---|---|---|---|---|---|---|")
    for total in (1000, 5000, 20000):
        for every in (25, 50, 100, 200, 500):
            ne = len(eval_steps(every, total))
            n10, n5 = len(range(0, ne, 10)), len(range(0, ne, 5))
            base = ts * total
            print(
                f"| {total} | {every} | {ne} | {ne * tp / base:.1%} | {(ne * tp + n10 * (th - tp)) / base:.1%} | "
                f"{(ne * tp + n5 * (th - tp)) / base:.1%} | {ne * th / base:.1%} |"
            )


if __name__ == "__main__":
    main()
