"""K discrete tasks shown as few-shot demonstrations: task identification from a prompt (issue 5).

A *task* is a map f: {0 .. n_in-1} -> {0 .. n_out-1}. The family is all n_out^n_in such maps; pretraining
uses a pool of K distinct maps drawn uniformly from it (a function of ``data.seed``, like the regression
pool of Raventós et al. 2023). Each sequence picks one pool task uniformly and shows demonstrations

    x_1 f(x_1) x_2 f(x_2) ... ,   x_i ~ U{0 .. n_in-1} i.i.d. (with replacement),

as tokens: input x is token x, output y is token n_in + y (disjoint ranges; tokens >= n_in + n_out are never
used). Because inputs repeat, two strategies help: *identify* the task among the K known ones (each pair
rules out the tasks that disagree with it), and *look up* an input shown earlier in the prompt. The loss
counts the output positions only (``Batch.loss_mask``): the target at the position of x_i is f(x_i), predicted
from x_i and the i earlier pairs, so one sequence trains and measures every number of demonstrations
k = 0 .. n-1 at once (n = ceil((seq_len + 1) / 2) pairs; inputs are unpredictable and never counted).

**Unseen tasks** (fresh maps of the same family, never in the pool) come from a separate fixed stream,
:meth:`DiscreteTasksSource.sample` with ``unseen=True``, for the probe only.

**Ideal observers** (exact, uniform prior), for a query x_q after k demonstrations D_k:

* over the pool (the Bayes-optimal predictor for seen tasks): p(m | D_k) ∝ [f_m agrees with every pair of
  D_k], p(y | x_q, D_k) = Σ_m p(m | D_k) [f_m(x_q) = y] (:func:`pool_observer`);
* over the whole family (Bayes-optimal for a fresh uniform map): the shown output if x_q is in D_k, else
  uniform over the n_out outputs (:func:`lookup_observer`).

With K tasks and n_out outputs a wrong task survives one fresh pair with probability 1/n_out, so the pool
observer needs about log(K) / log(n_out) demonstrations to single out the task: prompts grow
logarithmically with K for the ideal observer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..config import ModelConfig, SourceConfig, register_source
from ..errors import ConfigError
from .base import SPLIT_STREAM, Batch, Split, check_vocab, stream_rng, task_seq_len
from .markov import combine_seeds

__all__ = [
    "DiscreteTasksConfig",
    "DiscreteTasksSource",
    "accuracy_logprob",
    "lookup_observer",
    "n_pairs",
    "pool_observer",
]

DEFAULT_N_TASKS = 16
DEFAULT_N_OUTPUTS = 4
# The pool is K x n_in bytes and the pool observer works on (batch, K, pairs) arrays.
MAX_TASKS = 1 << 20
# The unseen stream's id next to the splits' (train 0, val 1, probe 2).
_UNSEEN_STREAM = 3


def n_pairs(seq_len: int) -> int:
    """Demonstrations a context of ``seq_len`` positions shows: the (seq_len + 1) tokens hold that many x's."""
    return (int(seq_len) + 2) // 2


@register_source("discrete_tasks")
@dataclass(kw_only=True)
class DiscreteTasksConfig(SourceConfig):
    """``[data] kind = "discrete_tasks"`` (task identification): a pool of n_tasks random maps
    {0..n_inputs-1} -> {0..n_outputs-1} shown as few-shot demonstrations. Resolved to 16 tasks, 4 outputs
    and vocab_size - n_outputs inputs when omitted."""

    # What :meth:`DiscreteTasksSource.latents` knows (a class attribute: not a field, so not in the run id).
    latent_names: ClassVar[tuple[str, ...]] = ("task",)

    vocab_size: int = 64
    n_tasks: int | None = None
    n_inputs: int | None = None
    n_outputs: int | None = None
    # The sequence length the task is laid out for: resolved to model.seq_len.
    seq_len: int | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        check_vocab(self.vocab_size, file)
        self.seq_len = task_seq_len(self.seq_len, model.seq_len, file)
        check_vocab(self.vocab_size, file, at_least=2)
        _resolve(self, model, file)

    def build(self, stream_seed: int) -> DiscreteTasksSource:
        if self.seq_len is None or self.n_tasks is None or self.n_inputs is None or self.n_outputs is None:
            raise ConfigError("needs its seq_len, n_tasks, n_inputs and n_outputs (resolve the config first)",
                              field="data.seq_len")  # fmt: skip
        lang = _language(self.n_tasks, self.n_inputs, self.n_outputs, self.seq_len, self.vocab_size, self.seed)
        return lang.with_stream_seed(stream_seed)


# The task pool does not depend on the run seed: cached per process.
@lru_cache(maxsize=4)
def _language(
    n_tasks: int, n_inputs: int, n_outputs: int, seq_len: int, vocab_size: int, seed: int
) -> DiscreteTasksSource:
    return DiscreteTasksSource(n_tasks, n_inputs, n_outputs, seq_len, vocab_size=vocab_size, seed=seed)


def _resolve(d: DiscreteTasksConfig, model: ModelConfig, file: str | None) -> None:
    """Fill in and check the fields (in place): n_outputs defaults to 4, n_inputs to vocab_size - n_outputs,
    n_tasks to 16. One-line errors."""
    if model.seq_len < 3:
        raise ConfigError(
            f"seq_len {model.seq_len} is too short for a demonstration and a query (x_1 y_1 x_2: at least 3)",
            file=file,
            field="model.seq_len",
        )
    if d.n_outputs is None:
        d.n_outputs = DEFAULT_N_OUTPUTS
    if d.n_outputs < 2:
        raise ConfigError(f"expected an integer >= 2, got {d.n_outputs}", file=file, field="data.n_outputs")
    if d.n_inputs is None:
        d.n_inputs = d.vocab_size - d.n_outputs
    if d.n_inputs < 1:
        raise ConfigError(
            f"expected a positive integer (vocab_size {d.vocab_size} leaves no input symbols "
            f"beside n_outputs {d.n_outputs}), got {d.n_inputs}",
            file=file,
            field="data.n_inputs",
        )
    if d.n_inputs + d.n_outputs > d.vocab_size:
        raise ConfigError(
            f"n_inputs + n_outputs = {d.n_inputs + d.n_outputs} symbols exceed vocab_size ({d.vocab_size})",
            file=file,
            field="data.vocab_size",
        )
    if d.n_tasks is None:
        d.n_tasks = DEFAULT_N_TASKS
    if d.n_tasks < 1:
        raise ConfigError(f"expected a positive integer, got {d.n_tasks}", file=file, field="data.n_tasks")
    distinct = _n_maps(d.n_inputs, d.n_outputs)
    if d.n_tasks > min(distinct, MAX_TASKS):
        why = (
            f"only n_outputs**n_inputs = {distinct} distinct maps exist"
            if d.n_tasks > distinct
            else f"at most {MAX_TASKS} tasks are supported"
        )
        raise ConfigError(f"{d.n_tasks} tasks: {why}", file=file, field="data.n_tasks")


def _n_maps(n_in: int, n_out: int) -> int:
    # Exact for small families; capped so the comparison never builds a huge integer.
    return n_out**n_in if n_in * math.log2(n_out) < 62 else 1 << 62


def _decode(idx: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """Map indices (m,) -> maps (m, n_in): the base-n_out digits of each index."""
    return ((np.asarray(idx)[:, None] // n_out ** np.arange(n_in)[None, :]) % n_out).astype(np.int64)


def _encode(maps: np.ndarray, n_out: int) -> np.ndarray:
    """Maps (m, n_in) -> their indices (m,) in the family (inverse of :func:`_decode`)."""
    return (np.asarray(maps) * n_out ** np.arange(maps.shape[1])[None, :]).sum(axis=1)


def _distinct_maps(rng: np.random.Generator, k: int, n_in: int, n_out: int) -> np.ndarray:
    """(k, n_in) uint8/int64 array: k distinct maps drawn uniformly without replacement from the family."""
    total = _n_maps(n_in, n_out)
    if total <= 4 * k or total <= 1 << 20:  # small family: draw map indices without replacement, decode
        return _decode(rng.choice(total, size=k, replace=False), n_in, n_out)
    maps = rng.integers(0, n_out, size=(k, n_in))
    while True:  # redraw the (rare) duplicates; total > 4k so each round keeps most rows
        _, first = np.unique(maps, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(k), first)
        if not len(dup):
            return maps
        maps[dup] = rng.integers(0, n_out, size=(len(dup), n_in))


class DiscreteTasksSource:
    """Few-shot demonstrations of one of K random maps; see the module doc."""

    entropy_rate: float | None = None

    def __init__(
        self,
        n_tasks: int,
        n_inputs: int,
        n_outputs: int,
        seq_len: int,
        *,
        vocab_size: int | None = None,
        seed: int = 0,
        stream_seed: int = 0,
    ):
        self.n_tasks, self.n_inputs, self.n_outputs = int(n_tasks), int(n_inputs), int(n_outputs)
        self.vocab_size = int(vocab_size if vocab_size is not None else n_inputs + n_outputs)
        if self.n_inputs + self.n_outputs > self.vocab_size:
            raise ConfigError(f"n_inputs + n_outputs exceed vocab_size ({self.vocab_size})", field="data.vocab_size")
        self.seq_len = int(seq_len)
        self.seed, self.stream_seed = int(seed), int(stream_seed)
        # The pool belongs to the task distribution: a function of the data seed, not of the run seed.
        self.pool = _distinct_maps(
            np.random.default_rng([self.seed, 0x7A5C]), self.n_tasks, self.n_inputs, self.n_outputs
        )
        self._pool_keys = {m.tobytes() for m in self.pool}
        self._family = _n_maps(self.n_inputs, self.n_outputs)
        # Small families: the pool's sorted indices, to draw unseen maps from the complement directly.
        self._pool_sorted = np.sort(_encode(self.pool, self.n_outputs)) if self._family <= 1 << 20 else None
        self.has_unseen = self.n_tasks < self._family

    def with_stream_seed(self, stream_seed: int) -> DiscreteTasksSource:
        out = copy.copy(self)
        out.stream_seed = int(stream_seed)
        return out

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to prepare."""

    def sample(
        self, split: Split, index: int, batch_size: int, seq_len: int, *, unseen: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(xs (B, n), ys (B, n), task index in the pool (B,) or -1 for unseen, maps (B, n_in)) of batch
        ``index``; n = :func:`n_pairs` (seq_len). ``unseen``: fresh maps outside the pool, from a stream of
        their own (the same for every split)."""
        n = n_pairs(seq_len)
        base = combine_seeds(self.seed, self.stream_seed)
        if unseen:
            if not self.has_unseen:
                raise ConfigError(
                    f"all {self.n_tasks} maps of the family are in the pool: no unseen tasks", field="data.n_tasks"
                )
            rng = np.random.default_rng([base, _UNSEEN_STREAM, SPLIT_STREAM[split], int(index)])
            if self._pool_sorted is not None:
                # The j-th index outside the pool is j + #{pool indices p_i with p_i - i <= j}.
                j = rng.integers(0, self._family - self.n_tasks, size=batch_size)
                shift = self._pool_sorted - np.arange(self.n_tasks)
                maps = _decode(j + np.searchsorted(shift, j, side="right"), self.n_inputs, self.n_outputs)
            else:  # a huge family (> 2^20 maps, pool <= 2^20): rejection succeeds at least half the time
                maps = rng.integers(0, self.n_outputs, size=(batch_size, self.n_inputs))
                for i in range(batch_size):
                    while maps[i].tobytes() in self._pool_keys:
                        maps[i] = rng.integers(0, self.n_outputs, size=self.n_inputs)
            task = np.full(batch_size, -1, dtype=np.int64)
        else:
            rng = stream_rng(base, split, index)
            task = rng.integers(0, self.n_tasks, size=batch_size)
            maps = self.pool[task]
        xs = rng.integers(0, self.n_inputs, size=(batch_size, n))
        ys = np.take_along_axis(maps, xs, axis=1)
        return xs, ys, task, maps

    def tokens(self, xs: np.ndarray, ys: np.ndarray, seq_len: int) -> np.ndarray:
        """(B, seq_len + 1) token ids x_1, n_in + y_1, x_2, ...: inputs then outputs shifted by n_in."""
        B, n = xs.shape
        tok = np.empty((B, 2 * n), dtype=np.int64)
        tok[:, 0::2] = xs
        tok[:, 1::2] = self.n_inputs + ys
        return tok[:, : seq_len + 1]

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int, *, unseen: bool = False) -> Batch:
        xs, ys, _, _ = self.sample(split, index, batch_size, seq_len, unseen=unseen)
        b = Batch.from_tokens(self.tokens(xs, ys, seq_len))
        mask = torch.zeros(b.targets.shape, dtype=torch.bool)
        mask[:, 0::2] = True  # target at an input position is that input's output
        b.loss_mask = mask
        return b

    def latents(self, split: Split, index: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """What generated the sequences of :meth:`batch` (same arguments; pool tasks), per input position,
        (B, T) int64: ``task``, the index in the pool of the sequence's task, the same at every position."""
        task = self.sample(split, index, batch_size, seq_len)[2]
        return {"task": np.repeat(task.astype(np.int64)[:, None], seq_len, axis=1)}

    def describe(self) -> dict:
        return {
            "kind": "discrete_tasks",
            "n_tasks": self.n_tasks,
            "n_inputs": self.n_inputs,
            "n_outputs": self.n_outputs,
            "vocab_size": self.vocab_size,
            "n_pairs": n_pairs(self.seq_len),
            "distinct_maps": _n_maps(self.n_inputs, self.n_outputs),
            "chance_accuracy": 1.0 / self.n_outputs,
            "note": "loss on output positions only; ideal observers: pool posterior (seen tasks) and "
            "lookup (unseen tasks), see data/discrete_tasks.py",
        }


# --------------------------------------------------------------------------------------------------------
# Ideal observers. Each returns the predictive distribution (B, n, n_out) of the output at every query
# position k = 0 .. n-1 given the k pairs before it.


def pool_observer(xs: np.ndarray, ys: np.ndarray, pool: np.ndarray, n_outputs: int) -> np.ndarray:
    """Exact posterior predictive over a pool of tasks with a uniform prior (the Bayes-optimal predictor of a
    pool task): p(y | x_k, D_k) = Σ_m p(m | D_k) [f_m(x_k) = y], p(m | D_k) ∝ Π_{i<k} [f_m(x_i) = y_i].

    xs, ys (B, n); pool (K, n_in). If no pool task is consistent (a prompt from outside the pool) the
    prediction falls back to uniform."""
    xs, ys, pool = np.asarray(xs), np.asarray(ys), np.asarray(pool)
    B, n = xs.shape
    pred = pool[:, xs]  # (K, B, n): each task's output at each input
    agree = pred == ys[None]  # (K, B, n)
    alive = np.ones((pool.shape[0], B, n), dtype=np.float64)  # consistent with the pairs before position k
    alive[:, :, 1:] = np.cumprod(agree[:, :, :-1], axis=2)
    out = np.empty((B, n, n_outputs))
    for o in range(n_outputs):
        out[:, :, o] = (alive * (pred == o)).sum(axis=0)
    z = out.sum(axis=2, keepdims=True)
    return np.where(z > 0, out / np.maximum(z, 1e-300), 1.0 / n_outputs)


def lookup_observer(xs: np.ndarray, ys: np.ndarray, n_outputs: int) -> np.ndarray:
    """Exact posterior predictive for a fresh map drawn uniformly from the whole family (every output of
    every input independent and uniform): the output shown for x_k if x_k appeared among the k earlier pairs,
    else uniform over the n_out outputs."""
    xs, ys = np.asarray(xs), np.asarray(ys)
    B, n = xs.shape
    out = np.full((B, n, n_outputs), 1.0 / n_outputs)
    same = (xs[:, :, None] == xs[:, None, :]) & np.tri(n, k=-1, dtype=bool)[None]  # (B, k, i): i < k, x_i = x_k
    seen = same.any(axis=2)
    first = np.argmax(same, axis=2)  # every earlier occurrence of x_k shows the same output
    shown = np.take_along_axis(ys, first, axis=1)
    b, k = np.nonzero(seen)
    out[b, k] = 0.0
    out[b, k, shown[b, k]] = 1.0
    return out


def accuracy_logprob(probs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy (B, n), log-probability of the right output (B, n)) of predictive distributions
    ``probs`` (B, n, n_out). Accuracy is the expected 0-1 score of the argmax with ties broken uniformly
    at random: 1 / (number of tied maxima) when the right output is among them, else 0."""
    p_true = np.take_along_axis(probs, np.asarray(ys)[..., None], axis=2)[..., 0]
    top = probs.max(axis=2, keepdims=True)
    ties = np.isclose(probs, top, rtol=1e-9, atol=1e-12)
    acc = np.where(np.isclose(p_true, top[..., 0], rtol=1e-9, atol=1e-12), 1.0 / ties.sum(axis=2), 0.0)
    with np.errstate(divide="ignore"):
        return acc, np.log(p_true)
