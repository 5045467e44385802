"""In-context linear regression (Garg et al. 2022, "What Can Transformers Learn In-Context? A Case Study
of Simple Function Classes"), with an optional finite pool of pretraining tasks (Raventós et al. 2023).

Each sequence is one task w and k = ceil(T / 2) points (T = seq_len):

    x_i ~ N(0, I_d),   w ~ N(0, I_d) (fresh per sequence, or uniform over a fixed pool of M tasks),
    y_i = w·x_i + noise_std · ε_i,   ε_i ~ N(0, 1).

Layout (float tokens of width d + 1, read in by the model's linear embedding): position 2i holds
(x_i, 0), position 2i + 1 holds (0, y_i). The target at position 2i is y_i — the model predicts each label
from its input and all earlier (x, y) pairs, so one sequence trains every prefix k = 0 .. K-1 — and
``loss_mask`` marks exactly those positions. Targets at label positions are 0 and masked out.

Curriculum (optional, Garg et al. 2022 sec. 3): with ``curriculum_steps`` = S, train batch i < S uses only the
first d_i = min(d, 1 + ⌊d·i / S⌋) coordinates of x (the rest are 0) and counts the loss on the first
min(K, 2·d_i + 1) points only. Validation and probe batches always use the full task.

``vocab_size`` is 1: in float-input mode it is the width of the model's read-out (a scalar prediction).
The loss is the squared error; E[y²] = d (+ noise_std²), so errors are reported normalized by d.

Ideal predictors (``BASELINES``, below): exact per-prompt baselines a trained model is compared with.
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

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, SourceConfig, register_source
from ..errors import ConfigError
from .base import Batch, Split, stream_rng, task_seq_len


def n_points(seq_len: int) -> int:
    """(x, y) pairs a context of ``seq_len`` positions holds: x's sit at the even positions."""
    return (int(seq_len) + 1) // 2


class LinearRegressionSource:
    """Noisy linear functions presented in context; see the module doc."""

    entropy_rate: float | None = None
    vocab_size: int = 1

    def __init__(
        self,
        dim: int,
        seq_len: int,
        noise_std: float = 0.0,
        task_pool: int | None = None,
        *,
        curriculum_steps: int | None = None,
        seed: int = 0,
        stream_seed: int = 0,
    ):
        self.dim, self.seq_len, self.noise_std = int(dim), int(seq_len), float(noise_std)
        self.curriculum_steps = curriculum_steps
        self.input_dim = self.dim + 1
        self.seed, self.stream_seed = int(seed), int(stream_seed)
        # The pool is part of the task distribution: a function of the data seed, not of the run seed.
        self.pool = (
            None
            if task_pool is None
            else np.random.default_rng([self.seed, 0x5EED]).standard_normal((int(task_pool), self.dim))
        )

    def with_stream_seed(self, stream_seed: int) -> LinearRegressionSource:
        out = copy.copy(self)
        out.stream_seed = int(stream_seed)
        return out

    def without_pool(self) -> LinearRegressionSource:
        """The same source with w drawn fresh from N(0, I_d) for every sequence (tasks outside any pool)."""
        out = copy.copy(self)
        out.pool = None
        return out

    def prepare(self, cache_dir: Path) -> None:
        pass

    def sample(
        self, split: Split, index: int, batch_size: int, seq_len: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xs (B, K, d), ys (B, K), ws (B, d)) of batch ``index`` of ``split``, K = ceil(seq_len / 2)."""
        rng = stream_rng(self.stream_seed, split, index)
        K, d = n_points(seq_len), self.dim
        if self.pool is None:
            ws = rng.standard_normal((batch_size, d))
        else:
            ws = self.pool[rng.integers(0, len(self.pool), size=batch_size)]
        xs = rng.standard_normal((batch_size, K, d))
        d_eff = self.curriculum(split, index)[0]
        if d_eff < d:
            xs[:, :, d_eff:] = 0.0
        ys = np.einsum("bkd,bd->bk", xs, ws)
        if self.noise_std > 0:
            ys = ys + self.noise_std * rng.standard_normal(ys.shape)
        return xs, ys, ws

    def curriculum(self, split: Split, index: int) -> tuple[int, int | None]:
        """(dimensions used, points counted in the loss or None for all) of batch ``index`` of ``split``."""
        S = self.curriculum_steps
        if split != "train" or not S or index >= S:
            return self.dim, None
        d_eff = min(self.dim, 1 + (self.dim * int(index)) // S)
        return d_eff, 2 * d_eff + 1

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        xs, ys, _ = self.sample(split, index, batch_size, seq_len)
        B, K, d = xs.shape
        tok = np.zeros((B, 2 * K, d + 1), dtype=np.float32)
        tok[:, 0::2, :d] = xs
        tok[:, 1::2, d] = ys
        tgt = np.zeros((B, 2 * K), dtype=np.float32)
        tgt[:, 0::2] = ys
        mask = np.zeros((B, 2 * K), dtype=bool)
        mask[:, 0::2] = True
        k_eff = self.curriculum(split, index)[1]
        if k_eff is not None:
            mask[:, 2 * k_eff :] = False
        T = seq_len
        return Batch(torch.from_numpy(tok[:, :T]), torch.from_numpy(tgt[:, :T]), torch.from_numpy(mask[:, :T]))

    def describe(self) -> dict:
        return {
            "kind": "linear_regression",
            "dim": self.dim,
            "n_points": n_points(self.seq_len),
            "noise_std": self.noise_std,
            "task_pool": None if self.pool is None else len(self.pool),
            "curriculum_steps": self.curriculum_steps,
            "input_dim": self.input_dim,
            "error_normalizer": self.dim,
        }


@register_source("linear_regression")
@dataclass(kw_only=True)
class LinearRegressionConfig(SourceConfig):
    """``[data] kind = "linear_regression"`` (in-context regression, Garg et al. 2022): x, w ~ N(0, I_dim),
    y = w·x + noise_std·ε, ceil(seq_len / 2) (x, y) pairs per sequence; w fresh per sequence, or uniform over a
    fixed pool of task_pool tasks (Raventós et al. 2023). The model reads vectors of width dim + 1."""

    vector_tokens = True
    # Resolved to 5 when omitted.
    dim: int | None = None
    noise_std: float = 0.0
    task_pool: int | None = None
    # Train steps of a curriculum over the dimension and the number of points counted (None: none).
    curriculum_steps: int | None = None
    # The sequence length the task is laid out for: resolved to model.seq_len.
    seq_len: int | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        self.seq_len = task_seq_len(self.seq_len, model.seq_len, file)
        if self.dim is None:
            self.dim = 5
        for name in ("dim", "task_pool", "curriculum_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"expected a positive integer, got {v}", file=file, field=f"data.{name}")
        if self.noise_std < 0:
            raise ConfigError(f"expected a number >= 0, got {self.noise_std}", file=file, field="data.noise_std")
        if model.input_dim is not None and model.input_dim != self.dim + 1:
            raise ConfigError(
                f"must equal data.dim + 1 ({self.dim + 1}) or be omitted, got {model.input_dim}",
                file=file,
                field="model.input_dim",
            )
        model.input_dim = self.dim + 1

    def build(self, stream_seed: int) -> LinearRegressionSource:
        if self.seq_len is None or self.dim is None:
            raise ConfigError("needs its seq_len and dim (resolve the config first)", field="data.seq_len")
        return LinearRegressionSource(
            self.dim,
            self.seq_len,
            float(self.noise_std),
            self.task_pool,
            curriculum_steps=self.curriculum_steps,
            seed=self.seed,
            stream_seed=stream_seed,
        )


# --- ideal predictors -------------------------------------------------------------------------------------


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
