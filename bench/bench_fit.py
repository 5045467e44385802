"""Benchmark: a Chinchilla-form fit of 245 points with 4,000 bootstrap resamples (issue 3, item 6).

245 is the size of the data Hoffmann et al. 2022 fitted (Besiroglu et al. 2024 reconstructed 245 points).
The target is <= 30 s on 2 cores. Run:

    .venv/bin/python bench/bench_fit.py [--points 245] [--resamples 4000] [--repeats 3]

Prints the median over repeats of the full fit (grid + L-BFGS-B + polish) and of the bootstrap, in wall
and CPU seconds (CPU time exposes contention on a shared machine), and resamples per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import scipy

from scalescope.laws import ChinchillaLaw, chinchilla_loss

# Hoffmann et al. 2022's published Approach-3 fit.
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n runs spread like Hoffmann et al.'s (N 7e7..1.6e10, D 5e9..5e11, log-uniform), 1% log-normal noise."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    loss = chinchilla_loss(N, D, **TRUE) * np.exp(rng.normal(0, 0.01, n))
    return np.column_stack([N, D]), loss


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=245)
    ap.add_argument("--resamples", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    X, y = chinchilla_like(args.points)
    load0 = os.getloadavg()
    rows = []
    for r in range(args.repeats):
        law = ChinchillaLaw(bootstrap=0, random_state=r)
        fit_w, fit_c = _timed(lambda law=law: law.fit(X, y))
        # The bootstrap alone: refit every resample from the full-data solution, as fit() does.
        law.bootstrap = args.resamples
        boot_w, boot_c = _timed(lambda law=law: law._bootstrap_fit(X, y, law.param_vector_))
        rows.append((fit_w, fit_c, boot_w, boot_c, args.resamples / boot_w, law.n_bootstrap_failed_))
        print(
            f"repeat {r}: fit {fit_w:6.2f} s wall ({fit_c:6.2f} cpu)   bootstrap {boot_w:6.2f} s wall "
            f"({boot_c:6.2f} cpu)   {args.resamples / boot_w:7.0f} resamples/s   failed {law.n_bootstrap_failed_}"
        )
    load1 = os.getloadavg()
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print()
    print(f"{args.points} points, {args.resamples} resamples, median of {args.repeats}:")
    print("| fit s (wall) | fit s (cpu) | bootstrap s (wall) | bootstrap s (cpu) | resamples/s | total s (wall) |")
    print("|---|---|---|---|---|---|")
    print(f"| {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} | {med[4]:.0f} | {med[0] + med[2]:.2f} |")
    print()
    print(f"params: { {k: round(v, 4) for k, v in law.params_.items()} }")
    ci = law.ci_
    print(f"95% CI E: {ci['E'][0]:.4f}..{ci['E'][1]:.4f}   alpha: {ci['alpha'][0]:.4f}..{ci['alpha'][1]:.4f}")
    print(
        f"machine: nproc={os.cpu_count()}  load average before {load0[0]:.2f}, after {load1[0]:.2f}  "
        f"python {platform.python_version()}  numpy {np.__version__}  scipy {scipy.__version__}  one process"
    )


if __name__ == "__main__":
    main()
