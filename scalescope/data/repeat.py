"""Random token sequences whose tail repeats an earlier span: the training data of induction heads.

Each sequence x_0 .. x_{L-1} (L = seq_len + 1) is uniform over the vocabulary V, except that its last
``n`` tokens copy the span x_a .. x_{a+n-1}:

    n ~ U{span_min .. span_max},    a ~ U{0 .. L - 2n},    x_{L-n+i} = x_{a+i}  (0 <= i < n).

Both the span length and the repeat offset L - n - a vary from sequence to sequence (the offset ranges
over n .. L - n), so no head attending at a fixed distance can predict the repeat: only an induction
head (Olsson et al. 2022, "In-context Learning and Induction Heads") — find the earlier occurrence of
the current token, attend to the token after it, copy it — can.

What is known exactly (per target token, nats):

* a target outside the repeat is uniform: its loss is at least log V;
* a target inside the repeat after its first token (x_{L-n+1} .. x_{L-1}, n - 1 of them) is a
  deterministic copy once the repeat is identified: ideal loss 0;
* the Bayes-optimal mean loss lies between ``E[T - n] log V / T`` (the entropy of the tokens given the
  layout) and that plus ``H(n, a) / T`` (the entropy of the layout itself), where T = seq_len.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig, SourceConfig, register_source
from ..errors import ConfigError
from .base import Batch, Split, check_vocab, stream_rng, task_seq_len
from .markov import combine_seeds


def span_range(seq_len: int, span_min: int | None, span_max: int | None, *, file: str | None = None) -> tuple[int, int]:
    """The (span_min, span_max) actually used at ``seq_len``: defaults max(2, L // 4) .. L // 2 with
    L = seq_len + 1. Raises :class:`ConfigError` when the context is too short for the requested spans.
    """
    L = seq_len + 1
    hi = L // 2 if span_max is None else int(span_max)
    lo = min(max(2, L // 4), hi) if span_min is None else int(span_min)
    if L < 4:
        raise ConfigError(
            f"seq_len {seq_len} is too short for a repeated span (at least 3)", file=file, field="model.seq_len"
        )
    if lo < 2:
        raise ConfigError(f"expected an integer >= 2, got {lo}", file=file, field="data.span_min")
    if hi > L // 2:
        raise ConfigError(
            f"span_max ({hi}) cannot exceed (seq_len + 1) // 2 = {L // 2}: the span and its repeat must fit",
            file=file,
            field="data.span_max",
        )
    if lo > hi:
        raise ConfigError(f"span_min ({lo}) exceeds span_max ({hi})", file=file, field="data.span_min")
    return lo, hi


def sample_repeated(
    rng: np.random.Generator, batch_size: int, length: int, vocab_size: int, span_min: int, span_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (B, length), span lengths n (B,), first-occurrence starts a (B,)); see the module doc."""
    tokens = rng.integers(0, vocab_size, size=(batch_size, length), dtype=np.int64)
    n = rng.integers(span_min, span_max + 1, size=batch_size)
    a = rng.integers(0, length - 2 * n + 1)  # a ~ U{0 .. L - 2n}, vectorized over the rows
    j = np.arange(length)[None, :]
    start = (length - n)[:, None]
    # Copied positions read from the first occurrence, which is never itself a copy (a + n <= L - n).
    src = np.where(j >= start, a[:, None] + j - start, j)
    return np.take_along_axis(tokens, src, axis=1), n, a


class RepeatedSpansSource:
    """Uniform random tokens whose last ``n`` tokens repeat an earlier span (see the module doc).

    ``entropy_rate`` is the lower bound E[T - n] log V / T on the Bayes-optimal loss per token at the
    ``seq_len`` given to :meth:`layout_stats` (the first batch's, by default the constructor's);
    ``entropy_rate_error`` is the width H(n, a) / T of the interval that holds the exact value.
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        span_min: int | None = None,
        span_max: int | None = None,
        *,
        seed: int = 0,
        stream_seed: int = 0,
    ) -> None:
        if vocab_size < 2:
            raise ConfigError(f"expected an integer >= 2, got {vocab_size}", field="data.vocab_size")
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self.span_min_opt, self.span_max_opt = span_min, span_max
        self.span_min, self.span_max = span_range(self.seq_len, span_min, span_max)
        self.seed, self.stream_seed = int(seed), int(stream_seed)
        self.entropy_rate, self.entropy_rate_error = self.entropy_bounds(self.seq_len)

    def with_stream_seed(self, stream_seed: int) -> RepeatedSpansSource:
        other = copy.copy(self)
        other.stream_seed = int(stream_seed)
        return other

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to prepare."""

    def _spans(self, seq_len: int) -> tuple[int, int]:
        if seq_len == self.seq_len:
            return self.span_min, self.span_max
        return span_range(seq_len, self.span_min_opt, self.span_max_opt)

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        lo, hi = self._spans(seq_len)
        rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
        tokens, _, _ = sample_repeated(rng, batch_size, seq_len + 1, self.vocab_size, lo, hi)
        return Batch.from_tokens(tokens)

    def entropy_bounds(self, seq_len: int) -> tuple[float, float]:
        """(lower bound on the Bayes-optimal loss per target token, width of the exact interval), nats."""
        lo, hi = self._spans(seq_len)
        L, T = seq_len + 1, seq_len
        ns = np.arange(lo, hi + 1)
        mean_n = float(ns.mean())
        # H(n, a) = H(n) + E_n[H(a | n)], n uniform and a uniform on L - 2n + 1 values.
        h_layout = math.log(len(ns)) + float(np.log(L - 2 * ns + 1).mean())
        return (T - mean_n) * math.log(self.vocab_size) / T, h_layout / T

    def copyable_fraction_by_position(self, seq_len: int) -> np.ndarray:
        """(seq_len,) probability that the target at each input position is a copy (ideal loss 0);
        elsewhere the target is uniform (ideal loss log V). Target t is x_{t+1}, a copy iff n >= T - t + 1."""
        lo, hi = self._spans(seq_len)
        ns = np.arange(lo, hi + 1)
        t = np.arange(seq_len)[:, None]
        return (ns[None, :] >= seq_len - t + 1).mean(axis=1)

    def ideal_loss_by_position(self, seq_len: int) -> np.ndarray:
        """(seq_len,) expected loss at each input position of a perfect induction predictor: uniform (log V)
        except on the repeat after its first token, which it copies exactly (loss 0). This is what an
        ideal induction head achieves once it is sure the repeat has started; used by the ``icl``
        instrument's ``ideal_score``. Its mean is E[T - n + 1] log V / T (the first repeated token is
        counted as unpredictable), between :attr:`entropy_rate` and that plus log V / T."""
        return (1.0 - self.copyable_fraction_by_position(seq_len)) * math.log(self.vocab_size)

    def describe(self) -> dict:
        lo, hi = self.span_min, self.span_max
        T = self.seq_len
        return {
            "kind": "repeated_spans",
            "vocab_size": self.vocab_size,
            "seq_len": T,
            "span_min": lo,
            "span_max": hi,
            "repeat_offset_range": [lo, T + 1 - lo],
            "random_token_entropy": math.log(self.vocab_size),
            "ideal_copy_loss": 0.0,
            "copy_fraction": float((np.arange(lo, hi + 1) - 1).mean() / T),
            "entropy_rate": self.entropy_rate,
            "entropy_rate_upper": self.entropy_rate + self.entropy_rate_error,
            "entropy_rate_error": self.entropy_rate_error,
            "note": "targets outside the repeat are uniform (loss log V); inside it, after its first token, "
            "exact copies (ideal loss 0); entropy_rate is a lower bound, entropy_rate_upper adds "
            "the layout entropy H(n, a) / T",
        }


@register_source("repeated_spans")
@dataclass(kw_only=True)
class RepeatedSpansConfig(SourceConfig):
    """``[data] kind = "repeated_spans"`` (induction, Olsson et al. 2022): uniform random tokens whose last n
    tokens repeat an earlier span, n uniform in [span_min, span_max] (defaults max(2, (seq_len + 1) // 4) and
    (seq_len + 1) // 2), at a random offset."""

    vocab_size: int = 64
    span_min: int | None = None
    span_max: int | None = None
    # The sequence length the task is laid out for: resolved to model.seq_len.
    seq_len: int | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        check_vocab(self.vocab_size, file)
        self.seq_len = task_seq_len(self.seq_len, model.seq_len, file)
        check_vocab(self.vocab_size, file, at_least=2)
        span_range(model.seq_len, self.span_min, self.span_max, file=file)

    def build(self, stream_seed: int) -> RepeatedSpansSource:
        if self.seq_len is None:
            raise ConfigError("needs its seq_len (resolve the config first)", field="data.seq_len")
        return RepeatedSpansSource(
            self.vocab_size, self.seq_len, self.span_min, self.span_max, seed=self.seed, stream_seed=stream_seed
        )
