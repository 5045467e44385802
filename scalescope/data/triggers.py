"""A Markov chain with in-context trigger -> target pairs (Bietti et al. 2023, "Birth of a Transformer: A
Memory Viewpoint", sec. 3): data on which induction heads pay off while most tokens follow fixed bigrams.

A language is a sparse random first-order Markov chain P(. | x) over V tokens (as
:class:`~scalescope.data.markov.MarkovSource`) plus K *trigger* tokens q_1 .. q_K, both fixed by the data
seed. Each sequence draws its own *targets* o_1 .. o_K, uniform over the vocabulary and independent, and
then

    x_0 ~ pi (the chain's stationary distribution),   x_{t+1} = o_k if x_t = q_k,  else x_{t+1} ~ P(. | x_t).

The target that follows a trigger is the same everywhere in one sequence and unknown before its first
appearance, so predicting it takes in-context copying: find the trigger's earlier occurrence and copy the
token after it (an induction head).

**Exact per-sequence baseline.** The Bayes-optimal predictor that knows the language (the chain and the
triggers) but not the sequence's targets has loss, at each target x_{t+1}:

* -log P(x_{t+1} | x_t) after a non-trigger token;
* log V after the first occurrence of a trigger in the sequence (its target is still uniform);
* 0 after every later occurrence (the target is known).

:meth:`MarkovTriggersSource.ideal_loss` gives it per position for any tokens; its expectation per position
(:meth:`ideal_loss_by_position`) and the mean, ``entropy_rate``, are Monte Carlo averages over a fixed
sample, stated with their standard error.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..config import ModelConfig, SourceConfig, positive, register_source
from ..errors import ConfigError
from .base import Batch, Split, check_support, check_vocab, stream_rng, task_seq_len
from .markov import MarkovSource, combine_seeds, sample_rows

# Sequences in the fixed Monte Carlo sample behind the expected ideal loss.
IDEAL_SAMPLE = 4096


class MarkovTriggersSource:
    """A first-order Markov chain whose K trigger tokens are followed by per-sequence targets (module doc)."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        n_triggers: int = 1,
        support: int | None = None,
        concentration: float = 0.5,
        *,
        seed: int = 0,
        stream_seed: int = 0,
    ) -> None:
        if not 1 <= n_triggers < vocab_size:
            raise ConfigError(
                f"n_triggers must be in [1, vocab_size - 1] = [1, {vocab_size - 1}], got {n_triggers}",
                field="data.n_triggers",
            )
        self.chain = MarkovSource(vocab_size, 1, support, concentration, seed=seed)
        self.vocab_size, self.seq_len = int(vocab_size), int(seq_len)
        self.n_triggers, self.seed, self.stream_seed = int(n_triggers), int(seed), int(stream_seed)
        rng = np.random.default_rng([int(seed), 0x7219])
        self.triggers = np.sort(rng.choice(vocab_size, size=n_triggers, replace=False))
        self.trigger_index = np.full(vocab_size, -1, dtype=np.int64)
        self.trigger_index[self.triggers] = np.arange(n_triggers)
        curve, err = self._ideal_estimate(self.seq_len)
        self._ideal_cache = {self.seq_len: (curve, err)}
        self.entropy_rate = float(curve.mean())
        self.entropy_rate_error = float(err)

    def with_stream_seed(self, stream_seed: int) -> MarkovTriggersSource:
        other = copy.copy(self)
        other.stream_seed = int(stream_seed)
        return other

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to prepare."""

    def sample(self, rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
        """(batch_size, length) tokens: the chain, with each trigger followed by its sequence's target."""
        c = self.chain
        targets = rng.integers(0, self.vocab_size, size=(batch_size, self.n_triggers))
        out = np.empty((batch_size, length), dtype=np.int64)
        state = np.searchsorted(c.pi_cdf, rng.random(batch_size), side="right")
        state = np.minimum(state, c.n_states - 1).astype(np.int64)
        out[:, 0] = state
        rows = np.arange(batch_size)
        for t in range(1, length):
            idx = sample_rows(c.cdf, c.last_positive, state, rng.random(batch_size))
            tok = c.next_tokens[state, idx].astype(np.int64)
            k = self.trigger_index[state]
            tok = np.where(k >= 0, targets[rows, np.maximum(k, 0)], tok)
            out[:, t] = tok
            state = tok
        return out

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
        return Batch.from_tokens(self.sample(rng, batch_size, seq_len + 1))

    def ideal_loss(self, tokens: np.ndarray) -> np.ndarray:
        """(B, L - 1) loss of the Bayes-optimal predictor (module doc) on each target of (B, L) tokens."""
        tokens = np.asarray(tokens, dtype=np.int64)
        B, L = tokens.shape
        with np.errstate(divide="ignore"):
            chain = -self.chain.log_prob(tokens)  # (B, L - 1): -log P(x_{t+1} | x_t)
        k = self.trigger_index[tokens[:, :-1]]  # trigger id at each input position, -1 if none
        seen = np.zeros((B, self.n_triggers), dtype=bool)
        out = chain.copy()
        rows = np.arange(B)
        for t in range(L - 1):
            trig = k[:, t] >= 0
            kk = np.maximum(k[:, t], 0)
            first = trig & ~seen[rows, kk]
            out[:, t] = np.where(trig, np.where(first, math.log(self.vocab_size), 0.0), chain[:, t])
            seen[rows[trig], kk[trig]] = True
        return out

    def _ideal_estimate(self, seq_len: int) -> tuple[np.ndarray, float]:
        rng = np.random.default_rng([self.seed, 0x1DEA1, seq_len])
        loss = self.ideal_loss(self.sample(rng, IDEAL_SAMPLE, seq_len + 1))
        # Sequences are independent, positions within one are not: the error is over sequence means.
        return loss.mean(axis=0), float(loss.mean(axis=1).std(ddof=1) / math.sqrt(IDEAL_SAMPLE))

    def ideal_loss_by_position(self, seq_len: int) -> np.ndarray:
        """(seq_len,) expected Bayes-optimal loss at each input position (Monte Carlo, fixed sample of
        ``IDEAL_SAMPLE`` sequences); used by the ``icl`` instrument's ``ideal_score``."""
        if seq_len not in self._ideal_cache:
            self._ideal_cache[seq_len] = self._ideal_estimate(seq_len)
        return self._ideal_cache[seq_len][0]

    def describe(self) -> dict:
        return {
            "kind": "markov_triggers",
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "n_triggers": self.n_triggers,
            "triggers": self.triggers.tolist(),
            "support": self.chain.support,
            "concentration": self.chain.concentration,
            "seed": self.seed,
            "chain_entropy_rate": self.chain.entropy_rate,
            "entropy_rate": self.entropy_rate,
            "entropy_rate_error": self.entropy_rate_error,
            "note": "entropy_rate: mean Bayes-optimal loss per target (chain and triggers known, targets "
            f"not), a Monte Carlo average over {IDEAL_SAMPLE} sequences with its standard error",
        }


@register_source("markov_triggers")
@dataclass(kw_only=True)
class MarkovTriggersConfig(SourceConfig):
    """``[data] kind = "markov_triggers"`` (induction, Bietti et al. 2023): a first-order Markov chain
    (vocab_size, support, concentration) in which each of n_triggers trigger tokens is followed by a
    per-sequence target token."""

    vocab_size: int = 64
    # The chain is first order; the field exists so that a stored config (order = 1) reads back.
    order: int = 1
    support: int | None = 8
    concentration: float = 0.5
    # Resolved to 1 when omitted.
    n_triggers: int | None = None
    # The sequence length the task is laid out for: resolved to model.seq_len.
    seq_len: int | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        for name in ("vocab_size", "order", "concentration"):
            positive(getattr(self, name), f"data.{name}", file)
        positive(self.support, "data.support", file, allow_none=True)
        check_support(self.vocab_size, self.support, file)
        self.seq_len = task_seq_len(self.seq_len, model.seq_len, file)
        check_vocab(self.vocab_size, file, at_least=2)
        if self.order != 1:
            raise ConfigError(
                f"markov_triggers uses a first-order chain, got order {self.order}", file=file, field="data.order"
            )
        if self.n_triggers is None:
            self.n_triggers = 1
        if not 1 <= self.n_triggers < self.vocab_size:
            raise ConfigError(
                f"expected an integer in [1, vocab_size - 1 = {self.vocab_size - 1}], got {self.n_triggers}",
                file=file,
                field="data.n_triggers",
            )

    def build(self, stream_seed: int) -> MarkovTriggersSource:
        if self.seq_len is None:
            raise ConfigError("needs its seq_len (resolve the config first)", field="data.seq_len")
        lang = _language(
            self.vocab_size, self.seq_len, self.n_triggers or 1, self.support, float(self.concentration), self.seed
        )
        return lang.with_stream_seed(stream_seed)


# The chain and its Monte-Carlo ideal loss do not depend on the run seed: cached per process.
@lru_cache(maxsize=4)
def _language(
    vocab_size: int, seq_len: int, n_triggers: int, support: int | None, concentration: float, seed: int
) -> MarkovTriggersSource:
    return MarkovTriggersSource(vocab_size, seq_len, n_triggers, support, concentration, seed=seed)
