"""In-context linear regression: normalized squared error against the number of in-context examples, for
the model and for every exact baseline (Garg et al. 2022, fig. 2; Raventós et al. 2023).

For a prompt with k in-context pairs (x_1, y_1) .. (x_k, y_k) and a query x_{k+1}, the normalized error is
(ŷ − y_{k+1})² / d, averaged over prompts; E[y²] = d for w, x ~ N(0, I_d), so predicting 0 scores 1
(plus noise_std² / d). One sequence of the probe stream gives every k = 0 .. K−1 at once (the model predicts
y_{k+1} at the position of x_{k+1}). The baselines (``scalescope.data.regression``) see exactly the same prompts:
min-norm least squares, ridge (the Bayes-optimal posterior mean for a fresh Gaussian w), the posterior mean
over the source's finite task pool (when it has one), 3-nearest-neighbours and averaging.

Results: ``error_by_k/<name>`` arrays (K,) as artifacts, and scalars at k = 2d (or the largest k available):
``error_at_2d/<name>``, with ``k_2d`` the k used, and ``error_mean/<name>`` (the mean over k = 1 .. K−1).

With a finite task pool (Raventós et al. 2023) the same curves are also measured on *fresh* tasks
w ~ N(0, I_d) that the pool never held (``fresh/...``; the pool posterior still uses the training pool): a model
that memorized its few tasks follows the pool posterior there and fails; one that learned to regress follows
ridge. Small pools give the first, large pools the second (their fig. 1), and the fresh-task error against M
shows where the crossover lies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.regression import BASELINES
from ..errors import ConfigError
from ..offline import check_batch_options, load_run
from .registry import Option, ProbeContext, register, requires_data_kind

__all__ = ["error_by_k", "probe_run"]

# Probe-stream indices of these batches: away from the small indices other instruments use.
_STREAM = 1 << 28
_FRESH = 1 << 20  # fresh-task prompts: a disjoint range of the same probe stream


def _check_source(source: Any) -> None:
    if not hasattr(source, "sample") or not hasattr(source, "dim"):
        raise ConfigError(
            "icl_regression needs a linear_regression source (data.kind = 'linear_regression')",
            field="instruments.icl_regression",
        )


@torch.no_grad()
def error_by_k(
    model: torch.nn.Module,
    source: Any,
    *,
    seq_len: int,
    n_batches: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    baselines: tuple[str, ...] | None = None,
    fresh_tasks: bool = False,
) -> dict[str, np.ndarray]:
    """Normalized squared error (K,) against k = 0 .. K−1 in-context examples, for ``"model"`` and each
    baseline, over ``n_batches`` probe batches of the regression source (``fresh_tasks``: prompts whose w is
    drawn fresh from N(0, I_d) instead of from the source's task pool; the baselines keep the pool)."""
    _check_source(source)
    d, noise, pool = source.dim, source.noise_std, source.pool
    names = [n for n in (baselines or tuple(BASELINES)) if n != "pool_posterior" or pool is not None]
    sq: dict[str, list[np.ndarray]] = {n: [] for n in ["model", *names]}
    prompts, offset = source, _STREAM
    if fresh_tasks:
        prompts, offset = source.without_pool(), _STREAM + _FRESH
    for i in range(n_batches):
        b = prompts.batch("probe", offset + i, batch_size, seq_len).to(device)
        xs, ys, _ = prompts.sample("probe", offset + i, batch_size, seq_len)
        pred = model(b.inputs)[..., 0].float().cpu().numpy()[:, 0::2]  # (B, K) predictions at the x's
        K = pred.shape[1]
        xs, ys = xs[:, :K], ys[:, :K]
        sq["model"].append((pred - ys) ** 2)
        for n in names:
            f = BASELINES[n]
            p = np.array([[f(xs[j, :k], ys[j, :k], xs[j, k], noise, pool) for k in range(K)] for j in range(len(ys))])
            sq[n].append((p - ys) ** 2)
    return {n: np.concatenate(v).mean(axis=0) / d for n, v in sq.items()}


def summary(curves: dict[str, np.ndarray], dim: int, prefix: str = "") -> dict[str, float]:
    K = len(curves["model"])
    k = min(2 * dim, K - 1)
    out: dict[str, float] = {"k_2d": float(k)}
    for n, c in curves.items():
        out[f"{prefix}error_at_2d/{n}"] = float(c[k])
        out[f"{prefix}error_mean/{n}"] = float(np.mean(c[1:])) if K > 1 else float(c[0])
    return out


def _measure(model: torch.nn.Module, source: Any, **kw: Any) -> dict[str, Any]:
    """Curves and scalars (prefix-free keys for the source's own tasks, ``fresh/`` ones with a task pool)."""
    out: dict[str, Any] = {}
    for prefix, fresh in [("", False), ("fresh/", True)][: 1 + (source.pool is not None)]:
        curves = error_by_k(model, source, fresh_tasks=fresh, **kw)
        out.update({f"{prefix}error_by_k/{n}": c for n, c in curves.items()})
        out.update(summary(curves, source.dim, prefix))
    return out


@register(
    "icl_regression",
    options={
        "n_batches": Option(int, ge=1),
        "baselines": Option(list, item=str, choices=tuple(BASELINES), optional=True),
    },
)
def make(n_batches: int = 2, baselines: list[str] | None = None) -> Any:
    """Error against k for the model and the baselines (options: ``n_batches`` probe batches, ``baselines``
    a subset of least_squares, ridge, pool_posterior, nearest_3, averaging)."""
    if not isinstance(n_batches, int) or n_batches < 1:
        raise ConfigError(
            f"expected a positive integer, got {n_batches!r}", field="instruments.icl_regression.n_batches"
        )
    for n in baselines or ():
        if n not in BASELINES:
            raise ConfigError(
                f"unknown baseline {n!r}; known: {', '.join(BASELINES)}", field="instruments.icl_regression.baselines"
            )
    chosen = None if baselines is None else tuple(baselines)

    def probe(ctx: ProbeContext) -> dict[str, Any]:
        _check_source(ctx.source)
        return _measure(
            ctx.model,
            ctx.source,
            seq_len=ctx.seq_len,
            n_batches=n_batches,
            batch_size=ctx.batch_size,
            device=ctx.device,
            baselines=chosen,
        )

    return requires_data_kind(probe, "linear_regression", "icl_regression")


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe icl-regression``).


def probe_run(
    run_dir: str | Path, step: int | None = None, *, n_batches: int = 4, batch_size: int | None = None
) -> dict[str, Any]:
    """Error against k for the model of a stored run at ``step`` (default: latest) and every baseline."""
    check_batch_options(n_batches, batch_size)
    run = load_run(run_dir, step, attention=None)
    _check_source(run.source)
    ctx = ProbeContext.of_run(run, batch_size)
    with torch.random.fork_rng(devices=[]):
        m = _measure(
            run.model,
            run.source,
            seq_len=ctx.seq_len,
            n_batches=n_batches,
            batch_size=ctx.batch_size,
            device=run.device,
        )
    src: Any = run.source  # a LinearRegressionSource (checked above)
    out: dict[str, Any] = {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "dim": src.dim,
        "noise_std": src.noise_std,
        "task_pool": None if src.pool is None else len(src.pool),
        "sequences": n_batches * ctx.batch_size,
    }
    out.update({k: v for k, v in m.items() if "error_by_k/" not in k})
    for prefix in ("", "fresh/"):
        curves = {k.split("/")[-1]: v for k, v in m.items() if k.startswith(prefix + "error_by_k/")}
        if curves:
            out[prefix.replace("/", "_") + "error_by_k"] = {n: [float(x) for x in c] for n, c in curves.items()}
    return out
