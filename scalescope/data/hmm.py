"""A random hidden Markov model over V tokens, with a Monte-Carlo bracket on its entropy rate.

Hidden states S_t follow a Markov chain A (rows ~ Dirichlet(transition_concentration)) started from
its stationary distribution, so the token process X_t (emitted from S_t with ``support`` allowed
tokens, probabilities ~ Dirichlet(concentration)) is stationary.

A function of a Markov chain has no closed-form entropy rate, but Cover & Thomas (*Elements of
Information Theory*, 2nd ed., Lemma 4.5.1 and Thm 4.5.1) sandwich it:

    H(X_n | X_{n-1}, ..., X_2, S_1)  <=  H(X)  <=  H(X_n | X_{n-1}, ..., X_1),

the lower side increasing and the upper side decreasing in n, both to H(X). Each conditional entropy
is the expected -log p(x_n | ...) under the normalized forward filter (Rabiner 1989), started from pi
for the upper bound and from the true S_1 for the lower one; we estimate both by Monte Carlo.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..config import ModelConfig, SourceConfig, positive, register_source
from ..errors import ConfigError
from .base import Batch, Split, check_support, stream_rng
from .markov import (
    choose_without_replacement,
    combine_seeds,
    row_entropy,
    sample_rows,
    sparse_cdf,
)

# Separates the entropy Monte Carlo's random numbers from the language's and the batches'.
_ENTROPY_STREAM = 0x454E54


def stationary_dense(a: np.ndarray) -> tuple[np.ndarray, float]:
    """A stationary distribution of the row-stochastic matrix ``a``, and ||pi A - pi||_1.

    Solves the linear system pi (A - I) = 0, sum(pi) = 1 (least squares). If the chain is reducible
    that system has many solutions and the one returned may not be a distribution; then fall back
    to the limit of the lazy chain ((A + I) / 2)^(2^60) from the uniform start (repeated squaring),
    which is always a stationary distribution.
    """
    n = a.shape[0]
    system = np.vstack([a.T - np.eye(n), np.ones((1, n))])
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    pi = np.linalg.lstsq(system, rhs, rcond=None)[0]
    if pi.min() < -1e-12 or np.abs(pi @ a - pi).sum() > 1e-10:
        m = 0.5 * (a + np.eye(n))
        for _ in range(60):
            m = m @ m
            m /= m.sum(axis=1, keepdims=True)
        pi = np.full(n, 1.0 / n) @ m
    pi = np.clip(pi, 0.0, None)
    pi /= pi.sum()
    return pi, float(np.abs(pi @ a - pi).sum())


class HMMSource:
    """Tokens from a random HMM; ``entropy_rate`` is the midpoint of a Monte-Carlo sandwich.

    We report the midpoint of the estimated bounds, not the upper one: the true rate lies between
    them, so the midpoint's worst-case error is half the gap, and ``entropy_rate_error`` (half the
    estimated gap + its standard error + 2 standard errors of the midpoint) covers the truth at ~95%
    or better. The upper estimate (an upper bound on the loss of a perfect model with context
    ``entropy_length / 2``) and the lower one are in ``describe()``. For the default languages the
    filter forgets its start within a few dozen tokens, so the gap is ~0 and the error is Monte Carlo.
    """

    entropy_rate: float
    entropy_rate_error: float

    def __init__(
        self,
        vocab_size: int,
        n_hidden: int = 16,
        support: int | None = None,
        concentration: float = 0.5,
        transition_concentration: float = 0.3,
        seed: int = 0,
        stream_seed: int = 0,
        *,
        entropy_sequences: int = 8192,
        entropy_length: int = 128,
    ) -> None:
        s = vocab_size if support is None else int(support)
        if not 1 <= s <= vocab_size:
            raise ConfigError(f"support must be in [1, {vocab_size}], got {support}", field="data.support")
        self.vocab_size = int(vocab_size)
        self.n_hidden = int(n_hidden)
        self.support = support
        self.concentration = float(concentration)
        self.transition_concentration = float(transition_concentration)
        self.seed = int(seed)
        self.stream_seed = int(stream_seed)

        rng = np.random.default_rng(seed)
        self.transition = rng.dirichlet(np.full(n_hidden, float(transition_concentration)), size=n_hidden)
        self.emit_tokens = choose_without_replacement(rng, n_hidden, vocab_size, s).astype(np.int32)
        self.emit_probs = rng.dirichlet(np.full(s, float(concentration)), size=n_hidden)
        # Dense emission matrix for the filter: emission[h, x] = p(x | h).
        self.emission = np.zeros((n_hidden, vocab_size))
        np.put_along_axis(self.emission, self.emit_tokens.astype(np.int64), self.emit_probs, axis=1)
        self.trans_cdf, self.trans_last = sparse_cdf(self.transition)
        self.emit_cdf, self.emit_last = sparse_cdf(self.emit_probs)
        self.pi, self.stationary_residual = stationary_dense(self.transition)
        self.pi_cdf = np.cumsum(self.pi)
        self.pi_cdf /= self.pi_cdf[-1]
        self._estimate_entropy(entropy_sequences, entropy_length)

    def with_stream_seed(self, stream_seed: int) -> HMMSource:
        """The same language with another sampling stream; shares all tables (cheap)."""
        other = copy.copy(self)
        other.stream_seed = int(stream_seed)
        return other

    # ------------------------------------------------------------------------------------------------
    # Sampling and the forward filter.

    def sample_with_states(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, hidden states), both (batch_size, length) int64, from the stationary process."""
        tokens = np.empty((batch_size, length), dtype=np.int64)
        states = np.empty((batch_size, length), dtype=np.int64)
        h = np.searchsorted(self.pi_cdf, rng.random(batch_size), side="right")
        h = np.minimum(h, self.n_hidden - 1)
        for t in range(length):
            if t:
                h = sample_rows(self.trans_cdf, self.trans_last, h, rng.random(batch_size))
            j = sample_rows(self.emit_cdf, self.emit_last, h, rng.random(batch_size))
            states[:, t] = h
            tokens[:, t] = self.emit_tokens[h, j]
        return tokens, states

    def sample(self, rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
        return self.sample_with_states(rng, batch_size, length)[0]

    def _initial_prediction(self, b: int, start: np.ndarray | None) -> np.ndarray:
        """p(S_1 | nothing): pi, or the one-hot true S_1 (which conditions on it, for the lower bound)."""
        if start is None:
            return np.broadcast_to(self.pi, (b, self.n_hidden)).copy()
        pred = np.zeros((b, self.n_hidden))
        pred[np.arange(b), np.asarray(start)] = 1.0
        return pred

    def log_prob(self, tokens: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """log p(x_t | x_<t) for every t, shape (B, L), by the normalized forward filter.

        The predictive distribution of S_t given x_<t starts at pi (or at the one-hot hidden state
        ``start[b]``, which conditions on S_1); then p(x_t | x_<t) = sum_h pred(h) B[h, x_t], the
        posterior is pred * B[:, x_t] / p(x_t | x_<t), and the next prediction is posterior @ A
        (Rabiner 1989, the scaled forward recursion). One (B, H) @ (H, H) product per position.
        A token no hidden state can emit gets -inf and leaves the filter unconditioned.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        b, length = tokens.shape
        pred = self._initial_prediction(b, start)
        emission_t = np.ascontiguousarray(self.emission.T)  # row x is p(x | .): one gather per step
        out = np.empty((b, length))
        with np.errstate(divide="ignore", invalid="ignore"):
            for t in range(length):
                joint = pred * emission_t[tokens[:, t]]
                p = joint.sum(axis=1)
                out[:, t] = np.log(p)
                # An impossible token (-inf) carries no usable evidence: keep the prior, not NaNs.
                posterior = np.where(p[:, None] > 0, joint / p[:, None], pred)
                pred = posterior @ self.transition
        return out

    def predictive_entropy(self, tokens: np.ndarray, start: np.ndarray | None = None, first: int = 0) -> np.ndarray:
        """H(p(. | x_<t)) for t >= ``first``: the entropy of the filter's next-token distribution.

        Its expectation over histories is H(X_t | X_<t) (or H(X_t | X_<t, S_1) with ``start``), the
        same as that of -log p(x_t | x_<t), but without the variance of drawing x_t itself
        (conditional Monte Carlo / Rao-Blackwellization). Shape (B, L - first).
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        b, length = tokens.shape
        pred = self._initial_prediction(b, start)
        emission_t = np.ascontiguousarray(self.emission.T)
        out = np.empty((b, length - first))
        for t in range(length):
            if t >= first:
                out[:, t - first] = row_entropy(pred @ self.emission)
            joint = pred * emission_t[tokens[:, t]]
            pred = (joint / joint.sum(axis=1, keepdims=True)) @ self.transition
        return out

    def _estimate_entropy(self, n_seq: int, length: int) -> None:
        """Monte-Carlo bracket on the entropy rate (Cover & Thomas Thm 4.5.1), deterministic in seed.

        Upper bound: by stationarity each H(X_t | X_<t) is an upper bound on H(X), and they decrease
        in t, so their average over the tail positions t in [n/2, n) is one too -- with far less
        variance than position n alone. Lower bound: likewise each H(X_t | X_<t, S_1) <= H(X), so the
        tail average of the filter started at the true S_1 is a lower bound. Each term is estimated
        by the predictive entropy (see :meth:`predictive_entropy`), on the same sequences for both
        bounds, so the gap between them is measured far more precisely than either level.
        """
        rng = np.random.default_rng([self.seed, _ENTROPY_STREAM])
        tokens, states = self.sample_with_states(rng, n_seq, length)
        first = length // 2
        upper = self.predictive_entropy(tokens, first=first).mean(axis=1)
        lower = self.predictive_entropy(tokens, start=states[:, 0], first=first).mean(axis=1)

        # Sequences are independent, so the standard error of a mean over them is std / sqrt(n_seq).
        def se(x: np.ndarray) -> float:
            return float(x.std(ddof=1) / np.sqrt(n_seq))

        self.entropy_upper, self.entropy_lower = float(upper.mean()), float(lower.mean())
        self.entropy_upper_se, self.entropy_lower_se = se(upper), se(lower)
        self.entropy_mc_se = se(0.5 * (upper + lower))
        self.entropy_gap = max(self.entropy_upper - self.entropy_lower, 0.0)
        self.entropy_sequences, self.entropy_length = n_seq, length
        self.entropy_rate = 0.5 * (self.entropy_upper + self.entropy_lower)
        # With U, L the true bounds and M = (U + L) / 2: |H - M_hat| <= (U - L) / 2 + |M - M_hat|, and
        # (U - L) / 2 <= gap_hat / 2 + se(gap) at ~2 sigma; |M - M_hat| <= 2 se(M_hat) at ~95%.
        self.entropy_rate_error = 0.5 * self.entropy_gap + se(upper - lower) + 2.0 * self.entropy_mc_se

    # ------------------------------------------------------------------------------------------------
    # The Source interface.

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to do: the model is built in the constructor."""

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        """Batch ``index`` of ``split``: (B, T+1) stationary tokens from a per-(split, index) stream."""
        rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
        return Batch.from_tokens(self.sample(rng, batch_size, seq_len + 1))

    def latents(self, split: Split, index: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """What generated the sequences of :meth:`batch` (same arguments), per input position, (B, T) int64:
        ``hmm_state``, the hidden state S_t that emitted input token t (the same random numbers as
        :meth:`batch`, so the same sequences)."""
        rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
        return {"hmm_state": self.sample_with_states(rng, batch_size, seq_len + 1)[1][:, :seq_len]}

    def describe(self) -> dict:
        return {
            "kind": "hmm",
            "vocab_size": self.vocab_size,
            "n_hidden": self.n_hidden,
            "support": self.support,
            "concentration": self.concentration,
            "transition_concentration": self.transition_concentration,
            "seed": self.seed,
            "entropy_rate": self.entropy_rate,
            "entropy_rate_error": self.entropy_rate_error,
            "entropy_upper": self.entropy_upper,
            "entropy_lower": self.entropy_lower,
            "entropy_upper_se": self.entropy_upper_se,
            "entropy_lower_se": self.entropy_lower_se,
            "entropy_gap": self.entropy_gap,
            "entropy_mc_se": self.entropy_mc_se,
            "entropy_sequences": self.entropy_sequences,
            "entropy_length": self.entropy_length,
            "stationary_residual": self.stationary_residual,
        }


@register_source("hmm")
@dataclass(kw_only=True)
class HMMConfig(SourceConfig):
    """``[data] kind = "hmm"``: a random hidden Markov model (``seed`` picks which one)."""

    # What :meth:`HMMSource.latents` knows (a class attribute: not a field, so not in the run id).
    latent_names: ClassVar[tuple[str, ...]] = ("hmm_state",)

    # Number of token types.
    vocab_size: int = 64
    # Number of hidden states and the Dirichlet concentration of their transition rows.
    n_hidden: int = 16
    transition_concentration: float = 0.3
    # Allowed emissions per hidden state (None: all vocab_size) and their Dirichlet concentration.
    support: int | None = 8
    concentration: float = 0.5

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        for name in ("vocab_size", "n_hidden", "concentration", "transition_concentration"):
            positive(getattr(self, name), f"data.{name}", file)
        positive(self.support, "data.support", file, allow_none=True)
        check_support(self.vocab_size, self.support, file)

    def build(self, stream_seed: int) -> HMMSource:
        lang = _language(
            self.vocab_size,
            self.n_hidden,
            self.support,
            float(self.concentration),
            float(self.transition_concentration),
            self.seed,
        )
        return lang.with_stream_seed(stream_seed)


# The language (and its Monte-Carlo entropy rate) does not depend on the run seed: cached per process.
@lru_cache(maxsize=4)
def _language(
    vocab_size: int,
    n_hidden: int,
    support: int | None,
    concentration: float,
    transition_concentration: float,
    seed: int,
) -> HMMSource:
    return HMMSource(vocab_size, n_hidden, support, concentration, transition_concentration, seed=seed)
