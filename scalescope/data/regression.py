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
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from scalescope.data.base import Batch, Split, stream_rng


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
