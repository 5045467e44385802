"""Finite labelled data sets held in memory, and the corruptions of Zhang et al. 2017 (issue 15).

A :class:`FiniteSource` is a :class:`~scalescope.data.base.Source` over fixed train and validation arrays,
so a run is still a pure function of (config, seed): training batch ``i`` is a slice of the stream made of one
seeded permutation of the training set per epoch, so the data position is the step, as for every source.
A batch as large as the training set is the whole set (full-batch training, ``train.full_batch``).

Two layouts:

* **vector** examples (digits, Gaussian mixtures): ``x`` is (n, d) float32; a batch's inputs are (B, 1, d) and
  its targets (B, 1): one example is one "token" of a one-position sequence, so budgets in tokens count
  examples and the trainer's shapes need no special case;
* **token** examples (modular arithmetic): ``x`` is (n, T) int64 token ids; targets are (B, T) with the label
  at the last position, the only position the loss mask counts.

Corruptions (:func:`corrupt`), each a pure function of ``data.seed`` (Zhang, Bengio, Hardt, Recht and Vinyals
2017, "Understanding deep learning requires rethinking generalization", sec. 2):

* ``label_noise = p``: each training label is, with probability p, replaced by a class drawn uniformly (it may
  draw the true class: at p = 1 the labels are independent of the inputs, "random labels"); test labels stay
  true, so test accuracy measures what was learned about the true rule;
* ``inputs = "shuffled_pixels"``: one random permutation of the features, applied to every example (train and
  test): the images' local structure is destroyed, the information is not;
* ``inputs = "random_pixels"``: a different random permutation for each example;
* ``inputs = "gaussian"``: every example replaced by a draw from a Gaussian with the training inputs' mean
  and covariance (labels kept: they are then independent of the inputs).

``random_label_steps = K`` trains the first K steps on fixed random labels (one per example) and then on the
true labels: the pretraining of Liu, Lin, Chen, Wang and Goldstein 2020 ("Bad global minima exist and SGD can
reach them", sec. 3), as one run whose data position is still its step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError
from .base import Batch, Split

__all__ = ["Arrays", "FiniteSource", "InputCorruption", "check_fraction", "corrupt", "split_indices"]

InputCorruption = Literal["clean", "shuffled_pixels", "random_pixels", "gaussian"]

# Random-number streams of one data seed, so that no two corruptions (or the split) share numbers.
_SPLIT, _LABELS, _PIXELS, _GAUSS, _RANDOM_PHASE = 10, 11, 12, 13, 14


@dataclass
class Arrays:
    """One split: inputs ``x`` (n, d) float32 or (n, T) int64, labels ``y`` (n,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> Arrays:
        return Arrays(self.x[idx], self.y[idx])


def check_fraction(value: float, field: str, file: str | None, *, open_interval: bool = False) -> None:
    """A fraction in [0, 1] (or (0, 1) with ``open_interval``): else one line naming ``data.<field>``."""
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not (isinstance(value, (int, float)) and np.isfinite(value) and ok):
        span = "(0, 1)" if open_interval else "[0, 1]"
        raise ConfigError(f"expected a fraction in {span}, got {value!r}", file=file, field=f"data.{field}")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of n examples: one seeded permutation, the first round(n·val_fraction)
    held out (at least one of each)."""
    perm = np.random.default_rng([seed, _SPLIT]).permutation(n)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def corrupt(
    train: Arrays, val: Arrays, n_classes: int, *, label_noise: float, inputs: InputCorruption, seed: int
) -> tuple[Arrays, Arrays]:
    """The corrupted (train, validation) pair (see the module doc); the inputs are vectors (n, d)."""
    rng = np.random.default_rng([seed, _LABELS])
    y = train.y.copy()
    if label_noise > 0:
        hit = rng.random(len(y)) < label_noise
        y[hit] = rng.integers(0, n_classes, size=int(hit.sum()))
    xt, xv = train.x, val.x
    if inputs == "shuffled_pixels":
        perm = np.random.default_rng([seed, _PIXELS]).permutation(xt.shape[1])
        xt, xv = xt[:, perm], xv[:, perm]
    elif inputs == "random_pixels":
        prng = np.random.default_rng([seed, _PIXELS])
        xt = np.take_along_axis(xt, np.argsort(prng.random(xt.shape), axis=1), axis=1)
        xv = np.take_along_axis(xv, np.argsort(prng.random(xv.shape), axis=1), axis=1)
    elif inputs == "gaussian":
        grng = np.random.default_rng([seed, _GAUSS])
        mean = xt.mean(0)
        cov = np.atleast_2d(np.cov(xt, rowvar=False))  # one feature: a 1x1 matrix, not a scalar
        xt = grng.multivariate_normal(mean, cov, size=len(xt), method="eigh")
        xv = grng.multivariate_normal(mean, cov, size=len(xv), method="eigh")
    return Arrays(xt.astype(np.float32), y), Arrays(xv.astype(np.float32), val.y.copy())


class FiniteSource:
    """A source over fixed arrays (see the module doc). ``vocab_size`` is the number of classes for vector
    examples and the token vocabulary for token examples; ``n_classes`` is always the number of labels."""

    entropy_rate: float | None = None
    # The trainer evaluates the whole validation set and the whole training set (train.evaluate).
    finite = True

    def __init__(
        self,
        train: Arrays,
        val: Arrays,
        *,
        n_classes: int,
        vocab_size: int,
        stream_seed: int,
        random_label_steps: int = 0,
        data_seed: int = 0,
        facts: dict | None = None,
    ):
        self.train, self.val = train, val
        self.n_classes, self.vocab_size = int(n_classes), int(vocab_size)
        self.stream_seed = int(stream_seed)
        self.tokens = train.x.dtype.kind in "iu"
        self.random_label_steps = int(random_label_steps)
        # Liu et al.'s pretraining labels: one fixed random class per training example.
        self.random_labels = (
            np.random.default_rng([data_seed, _RANDOM_PHASE]).integers(0, n_classes, size=len(train))
            if random_label_steps
            else None
        )
        self._facts = facts or {}

    @property
    def phase_starts(self) -> tuple[int, ...]:
        """Steps at which the training objective changes (the trainer re-takes its divergence reference)."""
        return (self.random_label_steps,) if self.random_labels is not None else ()

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_val(self) -> int:
        return len(self.val)

    def prepare(self, cache_dir: object) -> None:  # everything is in memory already
        pass

    def train_indices(self, index: int, batch_size: int) -> np.ndarray:
        """Positions index·B .. (index+1)·B - 1 of the stream of per-epoch permutations (all of it when
        B >= n: full batch, in the data's order)."""
        n = self.n_train
        if batch_size >= n:
            return np.arange(n)
        start = index * batch_size
        pos = np.arange(start, start + batch_size)
        epochs = pos // n
        out = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            perm = np.random.default_rng([self.stream_seed, 0, int(e)]).permutation(n)
            sel = epochs == e
            out[sel] = perm[pos[sel] % n]
        return out

    def _labels(self, split: Split, step: int | None) -> np.ndarray:
        """The training labels in force at ``step`` (the random phase of ``random_label_steps``; None: after it)."""
        if split == "train" and self.random_labels is not None and step is not None and step < self.random_label_steps:
            return self.random_labels
        return self.train.y if split == "train" else self.val.y

    def _batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        if not self.tokens:
            inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None, :]  # (B, 1, d)
            return Batch(inputs, torch.from_numpy(y.astype(np.int64))[:, None])  # targets (B, 1)
        ids = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))  # (B, T)
        targets = torch.zeros_like(ids)
        targets[:, -1] = torch.from_numpy(y.astype(np.int64))
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        mask[:, -1] = True  # the loss counts the answer only
        return Batch(ids, targets, mask)

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        """Training batch ``index`` (see :meth:`train_indices`); validation and probe batches cycle through the
        validation set in order."""
        if split == "train":
            idx = self.train_indices(index, batch_size)
            return self._batch(self.train.x[idx], self._labels("train", index)[idx])
        n = self.n_val
        idx = (index * batch_size + np.arange(batch_size)) % n
        return self._batch(self.val.x[idx], self.val.y[idx])

    def full_batches(self, split: Literal["train", "val"], batch_size: int) -> Iterator[tuple[Batch, int]]:
        """The whole split (training labels after any random phase) in chunks of ``batch_size``:
        (batch, its number of examples)."""
        arr = self.train if split == "train" else self.val
        y = self._labels(split, None)
        for i in range(0, len(arr), batch_size):
            sl = slice(i, i + batch_size)
            yield self._batch(arr.x[sl], y[sl]), len(arr.y[sl])

    def full(self, split: Literal["train", "val"], step: int | None = None) -> Batch:
        """The whole split as one batch, with the labels in force at ``step`` (closed-form readouts)."""
        arr = self.train if split == "train" else self.val
        return self._batch(arr.x, self._labels(split, step))

    def describe(self) -> dict:
        return {
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_classes": self.n_classes,
            "layout": "tokens" if self.tokens else "vectors",
            **self._facts,
        }
