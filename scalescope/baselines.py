"""Exact per-prompt baselines for in-context linear regression (Garg et al. 2022, "What Can Transformers
Learn In-Context?"; Raventós et al. 2023, "Pretraining task diversity and the emergence of non-Bayesian
in-context learning").

Each baseline is a pure NumPy function of one prompt: ``xs`` (k, d) in-context inputs, ``ys`` (k,) their
labels, ``x_query`` (d,) -> the predicted label (a float). With k = 0 every baseline predicts the prior mean 0
(the pool posterior mean: the pool's average task).

What is known exactly (x, w ~ N(0, I_d), y = w·x, no noise):

* min-norm least squares recovers the projection of w on the span of the k inputs, so for k < d its squared
  error at a fresh query is ||P⊥ w||², with expectation d - k: normalized by d (E[y²] = d), **1 - k/d**;
  for k >= d it is 0.
* ridge with λ = σ² / τ² (noise variance over prior variance) is the posterior mean of w under the prior
  N(0, τ² I): Bayes-optimal for squared error when w is drawn fresh.
* the posterior mean over a finite pool {w_1..w_M} (uniform prior) is Bayes-optimal when w is drawn from the
  pool: p(m | prompt) ∝ exp(-||y - X w_m||² / 2σ²); with σ = 0 it is uniform over the consistent tasks.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BASELINES",
    "averaging",
    "least_squares",
    "nearest_neighbours",
    "pool_posterior_mean",
    "ridge",
]


def least_squares(xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> float:
    """Minimum-norm least squares: ŵ = X⁺ y (the pseudo-inverse), prediction ŵ·x_query."""
    if len(ys) == 0:
        return 0.0
    w = np.linalg.lstsq(np.asarray(xs, float), np.asarray(ys, float), rcond=None)[0]
    return float(w @ x_query)


def ridge(
    xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, *, noise_std: float = 0.0, prior_std: float = 1.0
) -> float:
    """Posterior mean under w ~ N(0, prior_std² I), y = w·x + N(0, noise_std²):
    ŵ = (XᵀX + λI)⁻¹ Xᵀy with λ = noise_std² / prior_std². With no noise this is min-norm least squares
    (its λ → 0 limit), which is then the exact posterior mean."""
    if len(ys) == 0:
        return 0.0
    X, y = np.asarray(xs, float), np.asarray(ys, float)
    lam = (noise_std / prior_std) ** 2
    if lam == 0.0:
        return least_squares(X, y, x_query)
    d = X.shape[1]
    w = np.linalg.solve(X.T @ X + lam * np.eye(d), X.T @ y)
    return float(w @ x_query)


def pool_posterior_mean(
    xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, pool: np.ndarray, *, noise_std: float = 0.0, tol: float = 1e-8
) -> float:
    """Posterior mean of w·x_query when w is uniform over the rows of ``pool`` (M, d) and
    y = w·x + N(0, noise_std²). With noise_std = 0 the posterior is uniform over the tasks whose residual
    is (within ``tol`` relative) the smallest: the ones consistent with the prompt."""
    W = np.asarray(pool, float)
    preds = W @ np.asarray(x_query, float)
    if len(ys) == 0:
        return float(preds.mean())
    r2 = ((np.asarray(ys, float)[None, :] - W @ np.asarray(xs, float).T) ** 2).sum(axis=1)  # (M,)
    if noise_std > 0:
        logp = -r2 / (2 * noise_std**2)
        p = np.exp(logp - logp.max())
    else:
        p = (r2 <= r2.min() + tol * (1.0 + r2.min())).astype(float)
    return float(p @ preds / p.sum())


def nearest_neighbours(xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, *, n: int = 3) -> float:
    """Mean label of the ``n`` in-context inputs nearest to x_query (Euclidean; all of them when k < n)."""
    if len(ys) == 0:
        return 0.0
    dist = ((np.asarray(xs, float) - np.asarray(x_query, float)) ** 2).sum(axis=1)
    idx = np.argsort(dist, kind="stable")[:n]
    return float(np.asarray(ys, float)[idx].mean())


def averaging(xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> float:
    """Garg et al.'s averaging estimator: ŵ = (1/k) Σ y_i x_i (an unbiased estimate of w when x ~ N(0, I))."""
    if len(ys) == 0:
        return 0.0
    w = (np.asarray(ys, float)[:, None] * np.asarray(xs, float)).mean(axis=0)
    return float(w @ x_query)


# name -> function of (xs, ys, x_query, *, noise_std, pool); pool-free baselines ignore the pool.
BASELINES = {
    "least_squares": lambda xs, ys, xq, noise_std, pool: least_squares(xs, ys, xq),
    "ridge": lambda xs, ys, xq, noise_std, pool: ridge(xs, ys, xq, noise_std=noise_std),
    "pool_posterior": lambda xs, ys, xq, noise_std, pool: (
        float("nan") if pool is None else pool_posterior_mean(xs, ys, xq, pool, noise_std=noise_std)
    ),
    "nearest_3": lambda xs, ys, xq, noise_std, pool: nearest_neighbours(xs, ys, xq, n=3),
    "averaging": lambda xs, ys, xq, noise_std, pool: averaging(xs, ys, xq),
}
