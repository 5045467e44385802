"""Cost of one Hessian-vector product against one gradient, on a ~1M-parameter GPT (issue 4, item 3).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_hvp.py            # ~2 minutes on one core
    .venv/bin/python bench/bench_hvp.py --d-model 128 --json          # DESIGN.md's shape

Target: one HVP at most 3x one gradient. Every method runs on the same model, batch and thread count,
interleaved round by round (so a busy neighbour slows all of them alike), and the table gives medians:

- ``grad (math)`` / ``grad (sdpa)``: forward + backward, the yardstick (math attention is the path HVPs
  need; SDPA is the training path);
- ``double-backward, fresh``: build ∇L with create_graph, then one ∇(∇L·v): an HVP paid in full;
- ``double-backward, reused graph``: one more ∇(∇L·v) on the retained graph, what every product after
  the first costs inside Lanczos / Hutch++ / SLQ (scalescope's ``HessianOperator``);
- ``double-backward, batched x K``: K products in one vmapped backward (``is_grads_batched``), per vector;
- ``forward-over-reverse``: ``torch.func.jvp(torch.func.grad(L))``, everything redone per vector
  (what curvlinops' ``HessianLinearOperator`` does);
- ``linearize``: ``torch.func.linearize(grad(L))`` once, then its jvp per vector (primal computation
  cached; tracing cost reported separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from scalescope.config import ModelConfig
from scalescope.instruments.hvp import HessianOperator, Objective
from scalescope.model import GPT


def _timeit(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_hvp(
    n_layer: int = 4,
    d_model: int = 144,
    n_head: int = 4,
    seq_len: int = 128,
    batch: int = 32,
    vocab: int = 256,
    repeats: int = 5,
    batch_k: int = 4,
    linearize: bool = True,
) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len, attention="math")
    model = GPT(cfg, vocab).eval()
    idx = torch.randint(0, vocab, (batch, seq_len))
    tgt = torch.randint(0, vocab, (batch, seq_len))
    obj = Objective(model, idx, tgt)
    n = obj.n
    v = torch.randn(n)
    V = torch.randn(n, batch_k)
    params = obj.params

    def grad_math() -> None:
        torch.autograd.grad(obj.loss(), params)

    def grad_sdpa() -> None:
        for b in model.blocks:
            b.attn.math = False
        try:
            torch.autograd.grad(obj.loss(), params)
        finally:
            for b in model.blocks:
                b.attn.math = True

    def db_fresh() -> None:
        HessianOperator(obj).matvec(v)

    op = HessianOperator(obj)
    op_b = HessianOperator(obj, batched=True)

    def db_reuse() -> None:
        op.matvec(v)

    def db_batched() -> None:
        op_b.matmat(V)

    primals = tuple(p.detach() for p in params)
    tangents = tuple(obj.unflatten(v))

    def f(*ps: torch.Tensor) -> torch.Tensor:
        return obj.loss(list(ps))

    grad_f = torch.func.grad(f, argnums=tuple(range(len(primals))))

    def fwd_rev() -> None:
        torch.func.jvp(grad_f, primals, tangents)

    methods: dict[str, Callable[[], None]] = {
        "grad (math)": grad_math,
        "grad (sdpa)": grad_sdpa,
        "double-backward, fresh": db_fresh,
        "double-backward, reused graph": db_reuse,
        f"double-backward, batched x{batch_k} (per vector)": db_batched,
        "forward-over-reverse": fwd_rev,
    }
    per_vector = {f"double-backward, batched x{batch_k} (per vector)": batch_k}
    lin_setup = None
    if linearize:
        try:
            t0 = time.perf_counter()
            _, jvp_fn = torch.func.linearize(grad_f, *primals)
            lin_setup = time.perf_counter() - t0

            def lin() -> None:
                jvp_fn(*tangents)

            lin()
            methods["linearize (per vector)"] = lin
        except Exception as e:  # pragma: no cover - depends on torch's tracer
            print(f"linearize unavailable: {type(e).__name__}: {e}")
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for k, fn in methods.items():
            times[k].append(_timeit(fn) / per_vector.get(k, 1))
    med = {k: statistics.median(t) for k, t in times.items()}
    base = med["grad (math)"]
    return {
        "shape": f"L{n_layer} d{d_model} T{seq_len} B{batch} V{vocab}",
        "params": n,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "seconds": med,
        "ratio_to_grad_math": {k: t / base for k, t in med.items()},
        "ratio_to_grad_sdpa": {k: t / med["grad (sdpa)"] for k, t in med.items()},
        "linearize_setup_s": lin_setup,
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=144)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-k", type=int, default=4)
    ap.add_argument("--no-linearize", action="store_true")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = bench_hvp(a.n_layer, a.d_model, a.n_head, a.seq_len, a.batch, a.vocab, a.repeats, a.batch_k, not a.no_linearize)
    if a.json:
        print(json.dumps(r, indent=1))
        return
    print(f"{r['shape']}  {r['params']:,} parameters  {r['threads']} thread(s)  torch {r['torch']}")
    print(f"{'method':48s} {'seconds':>9s} {'x grad(math)':>13s} {'x grad(sdpa)':>13s}")
    for k, t in r["seconds"].items():
        print(f"{k:48s} {t:9.4f} {r['ratio_to_grad_math'][k]:13.2f} {r['ratio_to_grad_sdpa'][k]:13.2f}")
    if r["linearize_setup_s"] is not None:
        print(f"(linearize: one-off tracing {r['linearize_setup_s']:.2f} s)")


if __name__ == "__main__":
    main()
