"""A sparse random Markov chain of order k over a vocabulary of V tokens, with its exact entropy rate.

The *state* is the last k tokens, read as a base-V number (oldest token most significant), so there
are V**k states and the state after token ``x`` is ``(state * V) % V**k + x``. Every state allows
``support`` next tokens with probabilities drawn from a symmetric Dirichlet.

Sequences start from a state drawn from a stationary distribution pi, so the token process is
stationary and every position t >= k has the same expected loss, the entropy rate (Cover & Thomas,
*Elements of Information Theory*, 2nd ed., Thm 4.2.4 / eq. 4.27):

    H = sum_s pi(s) * H(p(. | s)),    H(p) = -sum_x p(x) log p(x)   [nats/token]

With ``zipf_exponent`` s > 0 every successor probability is tilted by a Zipf weight of the successor's id,
p(x | state) ∝ Dir_x * (x + 1)^(-s), so token x's stationary frequency falls roughly as (x + 1)^(-s): a
heavy-tailed, natural-language-like (Zipf 1949) spread of context frequencies, in which rare contexts are
seen, and learned, later. s = 0 is the untilted chain (the same tables, bit for bit).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from ..config import ModelConfig, SourceConfig, positive, register_source
from ..errors import ConfigError
from .base import Batch, Split, check_support, stream_rng

# Refuse tables bigger than this many (state, next token) entries: each table is 8 bytes per entry.
MAX_TABLE_ENTRIES = 1 << 28


def combine_seeds(seed: int, stream_seed: int) -> int:
    """One non-negative integer seed from (language seed, run seed), injective in practice.

    A hash rather than arithmetic so that negative seeds work and (1, 0) never collides with (0, N).
    """
    digest = hashlib.sha256(f"{int(seed)}:{int(stream_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def choose_without_replacement(rng: np.random.Generator, n: int, vocab: int, k: int) -> np.ndarray:
    """(n, k) int array: each row a uniform random k-subset of range(vocab), rows independent.

    Small k uses Floyd's algorithm vectorized over rows (O(n k^2) work and memory O(n k)); large k
    takes the k smallest of vocab uniform keys per row, in chunks (O(n vocab)). The branch is a
    deterministic function of (vocab, k), so the result is reproducible from the generator.
    """
    if k >= vocab:
        return np.broadcast_to(np.arange(vocab), (n, vocab)).copy()
    if k * k <= 4 * vocab:
        chosen = np.empty((n, k), dtype=np.int64)
        for i, j in enumerate(range(vocab - k, vocab)):
            t = rng.integers(0, j + 1, size=n)
            seen = (chosen[:, :i] == t[:, None]).any(axis=1)
            chosen[:, i] = np.where(seen, j, t)
        return chosen
    out = np.empty((n, k), dtype=np.int64)
    rows = max(1, (1 << 22) // vocab)  # ~32 MB of keys per chunk
    for a in range(0, n, rows):
        keys = rng.random((min(rows, n - a), vocab))
        out[a : a + rows] = np.argpartition(keys, k - 1, axis=1)[:, :k]
    return out


def row_entropy(probs: np.ndarray) -> np.ndarray:
    """-sum_x p log p along the last axis, with 0 log 0 = 0 (Cover & Thomas eq. 2.1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    return -terms.sum(axis=-1)


def sparse_cdf(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise cumulative probabilities and the index of each row's last positive entry.

    Sampling takes the first j with cdf[j] > u, u ~ U[0, 1); a zero-probability entry can only be
    hit by rounding past the end of the row, which the clip to ``last_positive`` prevents.
    """
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    positive = probs > 0
    last_positive = probs.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
    return cdf, last_positive


def sample_rows(cdf: np.ndarray, last_positive: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column index sampled from row ``rows[b]`` of a cdf table with uniform ``u[b]``, for every b."""
    idx = (cdf[rows] <= u[:, None]).sum(axis=1)
    return np.minimum(idx, last_positive[rows])


def stationary_lazy_power(
    next_state: np.ndarray, probs: np.ndarray, *, tol: float = 1e-13, max_iter: int = 100_000
) -> tuple[np.ndarray, float, int]:
    """A stationary distribution of a sparse chain, by power iteration on the lazy chain (P + I) / 2.

    ``next_state[s, j]`` is the state reached from s with probability ``probs[s, j]``. The lazy chain
    has the same stationary distributions as P and is aperiodic, so iterating from the uniform
    distribution converges even when P is periodic; when P is reducible the limit is still *a*
    stationary distribution (a mixture over closed classes), which is all a stationary start needs.
    Stops when the L1 change is below ``tol``. Returns (pi, ||pi P - pi||_1, iterations).
    """
    n, s = probs.shape
    # P as CSR with rows = current state; P.T (a free CSC view) times pi is pi P.
    p = sp.csr_matrix((probs.ravel(), next_state.ravel(), np.arange(0, n * s + 1, s)), shape=(n, n))
    pt = p.T
    pi = np.full(n, 1.0 / n)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        new = 0.5 * (pi + pt @ pi)
        new /= new.sum()  # keep the mass exactly 1 against rounding drift
        change = np.abs(new - pi).sum()
        pi = new
        if change < tol:
            break
    residual = float(np.abs(pt @ pi - pi).sum())
    return pi, residual, iterations


class MarkovSource:
    """Tokens from a sparse random order-k Markov chain; knows its exact entropy rate.

    ``entropy_rate`` (nats/token) is H = sum_s pi(s) H(p(.|s)) (Cover & Thomas eq. 4.27); it equals
    E[-log p(x_t | x_{t-k..t-1})] at every position t >= k because sequences start from pi.
    """

    entropy_rate: float
    entropy_rate_error: float
    zipf_exponent: float = 0.0

    def __init__(
        self,
        vocab_size: int,
        order: int = 1,
        support: int | None = None,
        concentration: float = 0.5,
        seed: int = 0,
        stream_seed: int = 0,
        zipf_exponent: float = 0.0,
    ) -> None:
        n_states = vocab_size**order
        s = vocab_size if support is None else int(support)
        if not 1 <= s <= vocab_size:
            raise ConfigError(f"support must be in [1, {vocab_size}], got {support}", field="data.support")
        if n_states * s > MAX_TABLE_ENTRIES:
            raise ConfigError(
                f"vocab_size**order * support = {n_states * s} transition entries is too many "
                f"(at most {MAX_TABLE_ENTRIES})",
                field="data.order",
            )
        rng = np.random.default_rng(seed)
        next_tokens = choose_without_replacement(rng, n_states, vocab_size, s)
        probs = rng.dirichlet(np.full(s, float(concentration)), size=n_states)
        if zipf_exponent < 0:
            raise ConfigError(f"expected a number >= 0, got {zipf_exponent}", field="data.zipf_exponent")
        if zipf_exponent > 0:  # skipped at 0 so the untilted tables stay bit-identical
            weight = (np.arange(vocab_size, dtype=np.float64) + 1.0) ** (-float(zipf_exponent))
            probs = probs * weight[next_tokens]
            probs /= probs.sum(axis=1, keepdims=True)
        self.zipf_exponent = float(zipf_exponent)
        self._setup(next_tokens, probs, vocab_size, order, support, concentration, seed, stream_seed)

    @classmethod
    def from_transitions(
        cls,
        probs: np.ndarray,
        next_tokens: np.ndarray | None = None,
        *,
        vocab_size: int | None = None,
        order: int = 1,
        seed: int = 0,
        stream_seed: int = 0,
    ) -> MarkovSource:
        """A chain with explicit transitions (for tests and hand-made languages).

        ``probs`` is (V**order, s); ``next_tokens[state, j]`` is the token with probability
        ``probs[state, j]``. Without ``next_tokens``, ``probs`` is the dense (V**order, V) matrix
        p(next token | state).
        """
        probs = np.asarray(probs, dtype=np.float64)
        if next_tokens is None:
            vocab_size = probs.shape[1] if vocab_size is None else vocab_size
            next_tokens = np.broadcast_to(np.arange(probs.shape[1]), probs.shape)
        elif vocab_size is None:
            raise ValueError("vocab_size is needed with explicit next_tokens")
        next_tokens = np.asarray(next_tokens, dtype=np.int64)
        if probs.shape != next_tokens.shape or probs.shape[0] != vocab_size**order:
            raise ValueError(f"probs {probs.shape} / next_tokens {next_tokens.shape} do not match V**order")
        if np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0):
            raise ValueError("each row of probs must be a probability distribution")
        self = cls.__new__(cls)
        self._setup(
            next_tokens.copy(),
            probs / probs.sum(axis=1, keepdims=True),
            vocab_size,
            order,
            probs.shape[1],
            None,
            seed,
            stream_seed,
        )
        return self

    def _setup(
        self,
        next_tokens: np.ndarray,
        probs: np.ndarray,
        vocab_size: int,
        order: int,
        support: int | None,
        concentration: float | None,
        seed: int,
        stream_seed: int,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.order = int(order)
        self.support = support
        self.concentration = None if concentration is None else float(concentration)
        self.seed = int(seed)
        self.stream_seed = int(stream_seed)
        self.n_states = self.vocab_size**self.order
        # Tokens fit in int32; the state arithmetic below is done in int64.
        self.next_tokens = next_tokens.astype(np.int32)
        self.probs = probs
        self.cdf, self.last_positive = sparse_cdf(probs)
        next_state = self._shift(np.arange(self.n_states, dtype=np.int64))[:, None] + next_tokens
        self.pi, self.stationary_residual, self.stationary_iterations = stationary_lazy_power(next_state, probs)
        self.pi_cdf = np.cumsum(self.pi)
        self.pi_cdf /= self.pi_cdf[-1]
        self.state_entropy = row_entropy(probs)
        self.entropy_rate = float(self.pi @ self.state_entropy)
        # |sum_s (pi P - pi)(s) h(s)| <= ||pi P - pi||_1 max_s h(s): how far the expected loss one step
        # after a start from pi can be from the stated rate. (After t steps the bound is t times this.)
        self.entropy_rate_error = float(self.stationary_residual * self.state_entropy.max())

    def with_stream_seed(self, stream_seed: int) -> MarkovSource:
        """The same language with another sampling stream; shares all tables (cheap)."""
        other = copy.copy(self)
        other.stream_seed = int(stream_seed)
        return other

    def _shift(self, state: np.ndarray) -> np.ndarray:
        """Drop the oldest token of each state, making room for the next one."""
        return (state * self.vocab_size) % self.n_states

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to do: the chain is built in the constructor."""

    def sample(self, rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
        """(batch_size, length) int64 tokens of the stationary process.

        The first k tokens are a state drawn from pi; then one position at a time, vectorized over
        the batch: the next token is the first entry of the state's cdf row above a uniform u.
        """
        v, k = self.vocab_size, self.order
        total = max(length, k)
        out = np.empty((batch_size, total), dtype=np.int64)
        state = np.searchsorted(self.pi_cdf, rng.random(batch_size), side="right")
        state = np.minimum(state, self.n_states - 1).astype(np.int64)
        for j in range(k):
            out[:, j] = (state // v ** (k - 1 - j)) % v
        for t in range(k, total):
            idx = sample_rows(self.cdf, self.last_positive, state, rng.random(batch_size))
            tok = self.next_tokens[state, idx].astype(np.int64)
            out[:, t] = tok
            state = self._shift(state) + tok
        return out[:, :length]

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        """Batch ``index`` of ``split``: (B, T+1) stationary tokens from a per-(split, index) stream."""
        rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
        return Batch.from_tokens(self.sample(rng, batch_size, seq_len + 1))

    def latents(self, split: Split, index: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """What generated the sequences of :meth:`batch` (same arguments), per input position, (B, T) int64:

        ``context``: the state that draws the next token, the last k = order tokens x_{t-k+1} .. x_t as one
        integer sum_j x_{t-k+1+j} V^(k-1-j) (for order 1 the input token itself). -1 where t < k - 1: those
        tokens belong to the start state drawn from pi, and no chain row drew what follows them.
        """
        rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
        tokens = self.sample(rng, batch_size, seq_len + 1)[:, :seq_len]
        k, v = self.order, self.vocab_size
        context = np.full(tokens.shape, -1, dtype=np.int64)
        m = seq_len - k + 1
        if m > 0:
            state = np.zeros((batch_size, m), dtype=np.int64)
            for j in range(k):
                state = state * v + tokens[:, j : j + m]
            context[:, k - 1 :] = state
        return {"context": context}

    def log_prob(self, tokens: np.ndarray) -> np.ndarray:
        """log p(x_t | x_{t-k..t-1}) for t >= k: shape (B, L - k) for tokens of shape (B, L).

        A token outside the state's support gets -inf.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        b, length = tokens.shape
        k, v = self.order, self.vocab_size
        m = length - k
        if m <= 0:
            return np.zeros((b, 0))
        state = np.zeros((b, m), dtype=np.int64)
        for j in range(k):
            state = state * v + tokens[:, j : j + m]
        target = tokens[:, k:]
        out = np.empty((b, m))
        # Chunk the (rows, m, s) comparison so memory stays bounded for long or wide inputs.
        rows = max(1, (1 << 23) // max(1, m * self.probs.shape[1]))
        for a in range(0, b, rows):
            st, tg = state[a : a + rows], target[a : a + rows]
            match = self.next_tokens[st] == tg[..., None]
            idx = match.argmax(axis=-1)
            p = np.where(match.any(axis=-1), self.probs[st, idx], 0.0)
            with np.errstate(divide="ignore"):
                out[a : a + rows] = np.log(p)
        return out

    def describe(self) -> dict:
        return {
            "kind": "markov",
            "vocab_size": self.vocab_size,
            "order": self.order,
            "support": self.support,
            "concentration": self.concentration,
            "zipf_exponent": self.zipf_exponent,
            "seed": self.seed,
            "n_states": self.n_states,
            "entropy_rate": self.entropy_rate,
            "entropy_rate_error": self.entropy_rate_error,
            "stationary_residual": self.stationary_residual,
            "stationary_iterations": self.stationary_iterations,
        }


@register_source("markov")
@dataclass(kw_only=True)
class MarkovConfig(SourceConfig):
    """``[data] kind = "markov"``: a sparse random Markov chain (``seed`` picks which one)."""

    # What :meth:`MarkovSource.latents` knows (a class attribute: not a field, so not in the run id).
    latent_names: ClassVar[tuple[str, ...]] = ("context",)

    # Number of token types.
    vocab_size: int = 64
    # How many previous tokens the next one depends on.
    order: int = 1
    # Allowed next tokens per state (None: all vocab_size).
    support: int | None = 8
    # Dirichlet concentration of each next-token distribution.
    concentration: float = 0.5
    # Tilt each successor probability by (token id + 1)^-zipf_exponent: Zipf-like token frequencies.
    # None (the default, left out of the run id) and 0 are the untilted chain.
    zipf_exponent: float | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        for name in ("vocab_size", "order", "concentration"):
            positive(getattr(self, name), f"data.{name}", file)
        if self.zipf_exponent is not None and not self.zipf_exponent >= 0:
            raise ConfigError(
                f"expected a number >= 0, got {self.zipf_exponent}", file=file, field="data.zipf_exponent"
            )
        if self.zipf_exponent == 0:
            self.zipf_exponent = None  # the untilted chain: the same run id as a config without the field
        positive(self.support, "data.support", file, allow_none=True)
        check_support(self.vocab_size, self.support, file)
        if self.vocab_size**self.order > 4_000_000:
            raise ConfigError(
                f"vocab_size**order = {self.vocab_size**self.order} states is too many (at most 4,000,000)",
                file=file,
                field="data.order",
            )

    def build(self, stream_seed: int) -> MarkovSource:
        return _language(
            self.vocab_size,
            self.order,
            self.support,
            float(self.concentration),
            self.seed,
            float(self.zipf_exponent or 0),
        ).with_stream_seed(stream_seed)


# Building a language (tables, stationary distribution, entropy rate) is the expensive part and does not
# depend on the run seed, so it is cached per process; each run gets a cheap view with its own stream seed.
# A few entries only: a large chain holds hundreds of MB.
@lru_cache(maxsize=4)
def _language(
    vocab_size: int, order: int, support: int | None, concentration: float, seed: int, zipf_exponent: float = 0.0
) -> MarkovSource:
    return MarkovSource(vocab_size, order, support, concentration, seed=seed, zipf_exponent=zipf_exponent)
