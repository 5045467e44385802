"""Multitask sparse parity: a language of Zipf-distributed skills ("quanta"), issue 14.

Michaud, Liu, Girit and Tegmark 2023, "The Quantization Model of Neural Scaling" (arXiv 2303.13506, sec. 3).
There are ``n_skills`` skills; skill k (k = 1 .. n_skills) is used with probability

    p_k = k^-(alpha+1) / Σ_j j^-(alpha+1)                                    (Zipf, their eq. 2)

and is the parity of its own fixed subset S_k of ``bits_per_skill`` of the ``n_bits`` input bits (the subsets
are distinct, a function of ``data.seed``). One sequence is one example, as tokens::

    [b_1, .., b_n, skill token 2 + k - 1, answer],   b_i ~ U{0, 1},   answer = (Σ_{i in S_k} b_i mod 2) XOR noise

bits and answers are tokens 0 and 1; noise ~ Bernoulli(``label_noise`` = ε). The skill token comes last, right
before the answer, so the position that predicts the answer holds the skill itself: its embedding can query the
skill's bits in one attention layer (with the skill token first, a model must first move it to the answer's
position; in /tmp/quanta_explore/LOG.md that layout learned many times slower). The loss counts the answer only
(``Batch.loss_mask``), so the exact irreducible loss per counted token is the binary entropy H(ε) in nats
(:attr:`QuantaSource.entropy_rate`), whatever the skill. Positions past the answer (a model context longer
than n_bits + 1) are padding (token 0, never counted; causal attention keeps them from the answer).

``skill_code = "digits"`` writes skill k instead as ``n_digits`` digit tokens in base b = ceil(n_skills^(1/n_digits))
(tokens 2 .. 2 + b - 1; each skill gets a distinct code, a random function of ``data.seed``)::

    [b_1, .., b_n, digit_1, .., digit_m, answer]

No token then stands for one skill, so which bits a skill reads cannot live in an embedding: the map
code -> subset is a lookup of n_skills facts of ~ log2 C(n_bits, k) bits each that must be stored in the
network's weights (the MLP of a small transformer; about 2 bits per parameter at best, Allen-Zhu and Li 2024,
"Physics of Language Models 3.3"), so model size limits how many skills are learned. Subsets need not be
distinct here (two skills may read the same bits: they are still two facts to store); with more skills than
subsets they are dealt out evenly.

The quantization model predicts, when skills are learned in order of frequency and each costs the same:
L(N) - E ∝ N^-alpha (capacity-limited) and L(D) - E ∝ D^-alpha/(alpha+1) (data-limited), sec. 2 of the paper.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import ModelConfig, SourceConfig, register_source
from ..errors import ConfigError
from .base import Batch, Split, check_vocab, stream_rng, task_seq_len
from .markov import combine_seeds

__all__ = ["QuantaConfig", "QuantaSource", "binary_entropy", "zipf_probs"]

# Tokens 0 and 1 are the bits (and the answer); skill k (0-based here) is token FIRST_SKILL_TOKEN + k.
FIRST_SKILL_TOKEN = 2
# The skill_batch stream's id next to the splits' (train 0, val 1, probe 2): probe examples of chosen skills.
_SKILL_STREAM = 4
# Enumerate all k-subsets (then draw without replacement) below this many; above it, rejection is cheap.
_ENUMERATE_BELOW = 1 << 20
MAX_SKILLS = 1 << 16


def zipf_probs(n_skills: int, alpha: float) -> np.ndarray:
    """p_k ∝ k^-(alpha+1), k = 1 .. n_skills (float64, sums to 1, strictly decreasing)."""
    w = np.arange(1, int(n_skills) + 1, dtype=np.float64) ** -(float(alpha) + 1.0)
    return w / w.sum()


def binary_entropy(eps: float) -> float:
    """H(ε) = -ε ln ε - (1-ε) ln(1-ε) in nats (0 at ε = 0)."""
    e = float(eps)
    return 0.0 if e <= 0.0 else -(e * math.log(e) + (1.0 - e) * math.log1p(-e))


@register_source("quanta")
@dataclass(kw_only=True)
class QuantaConfig(SourceConfig):
    """``[data] kind = "quanta"``: multitask sparse parity with Zipf skill frequencies (see the module doc).
    vocab_size resolves to n_skills + 2 (``skill_code = "token"``) or base + 2 (``"digits"``)."""

    n_skills: int = 64
    alpha: float = 0.4
    n_bits: int = 16
    bits_per_skill: int = 3
    label_noise: float = 0.05
    # "token": one token per skill (its embedding can hold the skill); "digits": n_digits digit tokens.
    skill_code: Literal["token", "digits"] = "token"
    n_digits: int = 2
    vocab_size: int | None = None
    # The sequence length the task is laid out for: resolved to model.seq_len.
    seq_len: int | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        self.seq_len = task_seq_len(self.seq_len, model.seq_len, file)
        _resolve(self, model, file)

    def build(self, stream_seed: int) -> QuantaSource:
        if self.vocab_size is None:
            raise ConfigError("needs its vocab_size (resolve the config first)", field="data.vocab_size")
        lang = _language(
            self.n_skills,
            self.alpha,
            self.n_bits,
            self.bits_per_skill,
            self.label_noise,
            self.vocab_size,
            self.seed,
            self.skill_code,
            self.n_digits,
        )
        return lang.with_stream_seed(stream_seed)


def _resolve(d: QuantaConfig, model: ModelConfig, file: str | None) -> None:
    """Check the fields against each other and the model (one-line errors); fill in vocab_size."""

    def bad(field: str, msg: str) -> ConfigError:
        return ConfigError(msg, file=file, field=f"data.{field}")

    if not isinstance(d.alpha, (int, float)) or not d.alpha > 0 or not math.isfinite(d.alpha):
        raise bad("alpha", f"the Zipf exponent must be > 0 (p_k ∝ k^-(alpha+1)), got {d.alpha!r}")
    if d.n_bits < 1:
        raise bad("n_bits", f"expected a positive integer, got {d.n_bits}")
    if not 1 <= d.bits_per_skill <= d.n_bits:
        raise bad("bits_per_skill", f"expected an integer in [1, n_bits = {d.n_bits}], got {d.bits_per_skill}")
    if not 0.0 <= d.label_noise < 0.5:
        raise bad("label_noise", f"expected a probability in [0, 0.5), got {d.label_noise!r}")
    if not 1 <= d.n_skills <= MAX_SKILLS:
        raise bad("n_skills", f"expected an integer in [1, {MAX_SKILLS}], got {d.n_skills}")
    if d.skill_code not in ("token", "digits"):
        raise bad("skill_code", f"expected 'token' or 'digits', got {d.skill_code!r}")
    digits = d.skill_code == "digits"
    if digits and not 1 <= d.n_digits <= 8:
        raise bad("n_digits", f"expected an integer in [1, 8], got {d.n_digits}")
    subsets = math.comb(d.n_bits, d.bits_per_skill)
    if not digits and d.n_skills > subsets:
        raise bad(
            "n_skills",
            f"{d.n_skills} skills need distinct bit subsets, but only C({d.n_bits}, {d.bits_per_skill}) = "
            f"{subsets} exist",
        )
    code = digit_base(d.n_skills, d.n_digits) if digits else d.n_skills
    need = code + FIRST_SKILL_TOKEN
    if d.vocab_size is None:
        d.vocab_size = need
    check_vocab(d.vocab_size, file)
    if d.vocab_size < need:
        what = f"base {code} digits" if digits else "one per skill"
        raise bad("vocab_size", f"{d.n_skills} skills need {need} tokens (2 bits + {what}), got {d.vocab_size}")
    m = d.n_digits if digits else 1
    if model.seq_len < d.n_bits + m:
        raise ConfigError(
            f"{model.seq_len} is shorter than a sequence: {d.n_bits} bits + {m} skill token(s) need "
            f"{d.n_bits + m} positions before the answer",
            file=file,
            field="model.seq_len",
        )


# The language does not depend on the run seed: cached per process.
@lru_cache(maxsize=4)
def _language(
    n_skills: int,
    alpha: float,
    n_bits: int,
    bits_per_skill: int,
    label_noise: float,
    vocab_size: int,
    seed: int,
    skill_code: str = "token",
    n_digits: int = 2,
) -> QuantaSource:
    return QuantaSource(
        n_skills,
        alpha,
        n_bits,
        bits_per_skill,
        label_noise=label_noise,
        vocab_size=vocab_size,
        seed=seed,
        skill_code=skill_code,
        n_digits=n_digits,
    )


def digit_base(n_skills: int, n_digits: int) -> int:
    """The smallest base b with b^n_digits >= n_skills (at least 2)."""
    b = max(2, math.ceil(n_skills ** (1.0 / n_digits)))
    while (b - 1) ** n_digits >= n_skills and b > 2:  # float rounding may overshoot by one
        b -= 1
    while b**n_digits < n_skills:
        b += 1
    return b


def _dealt_subsets(rng: np.random.Generator, n_skills: int, n_bits: int, k: int) -> np.ndarray:
    """(n_skills, k) sorted bit indices, repeats allowed: for k = 1 each bit is dealt to n_skills / n_bits skills
    (a random balanced assignment); for k > 1, independent uniform k-subsets."""
    if k == 1:
        reps = np.tile(np.arange(n_bits, dtype=np.int64), -(-n_skills // n_bits))[:n_skills]
        return rng.permutation(reps)[:, None]
    return np.sort(np.stack([rng.choice(n_bits, size=k, replace=False) for _ in range(n_skills)]), axis=1)


def _distinct_subsets(rng: np.random.Generator, n_skills: int, n_bits: int, k: int) -> np.ndarray:
    """(n_skills, k) sorted bit indices: n_skills distinct k-subsets of range(n_bits), uniformly at random."""
    total = math.comb(n_bits, k)
    if total <= _ENUMERATE_BELOW:
        allsets = np.array(list(combinations(range(n_bits), k)), dtype=np.int64).reshape(total, k)
        return allsets[rng.choice(total, size=n_skills, replace=False)]
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < n_skills:  # total > 2^20 >= 16 n_skills: nearly every draw is new
        s = tuple(sorted(int(i) for i in rng.choice(n_bits, size=k, replace=False)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return np.array(out, dtype=np.int64)


class QuantaSource:
    """Multitask sparse parity with Zipf skill frequencies; see the module doc."""

    def __init__(
        self,
        n_skills: int,
        alpha: float,
        n_bits: int,
        bits_per_skill: int,
        *,
        label_noise: float = 0.0,
        vocab_size: int | None = None,
        seed: int = 0,
        stream_seed: int = 0,
        skill_code: str = "token",
        n_digits: int = 2,
    ):
        self.n_skills, self.alpha = int(n_skills), float(alpha)
        self.n_bits, self.bits_per_skill = int(n_bits), int(bits_per_skill)
        self.label_noise = float(label_noise)
        if skill_code not in ("token", "digits"):
            raise ConfigError(f"expected 'token' or 'digits', got {skill_code!r}", field="data.skill_code")
        self.skill_code = skill_code
        digits = skill_code == "digits"
        self.n_digits = int(n_digits) if digits else 1
        # Code tokens after the two bit tokens: one per skill, or the digits of a base-`base` numeral.
        self.base = digit_base(self.n_skills, self.n_digits) if digits else self.n_skills
        need = self.base + FIRST_SKILL_TOKEN
        self.vocab_size = int(vocab_size if vocab_size is not None else need)
        if self.vocab_size < need:
            raise ConfigError(f"{n_skills} skills need vocab_size >= {need}", field="data.vocab_size")
        if not digits and self.n_skills > math.comb(self.n_bits, self.bits_per_skill):
            raise ConfigError(
                f"{n_skills} skills need distinct bit subsets: only C({n_bits}, {bits_per_skill}) exist",
                field="data.n_skills",
            )
        self.seed, self.stream_seed = int(seed), int(stream_seed)
        self.skill_probs = zipf_probs(self.n_skills, self.alpha)
        self._cdf = np.cumsum(self.skill_probs)
        # The subsets (and codes) belong to the language: a function of the data seed, not of the run seed.
        rng = np.random.default_rng([self.seed, 0x9A7A])
        if digits and self.n_skills > math.comb(self.n_bits, self.bits_per_skill):
            self.subsets = _dealt_subsets(rng, self.n_skills, self.n_bits, self.bits_per_skill)
        else:
            self.subsets = _distinct_subsets(rng, self.n_skills, self.n_bits, self.bits_per_skill)
        # (n_skills, n_digits) code tokens of each skill. Digits: distinct random codes, so a skill's frequency
        # rank cannot be read off its digits (no shortcut shared by the frequent skills).
        if digits:
            code = np.random.default_rng([self.seed, 0xC0DE]).choice(self.base**self.n_digits, self.n_skills, False)
            place = self.base ** np.arange(self.n_digits - 1, -1, -1)  # most significant digit first
            self.codes = FIRST_SKILL_TOKEN + (code[:, None] // place) % self.base
        else:
            self.codes = FIRST_SKILL_TOKEN + np.arange(self.n_skills, dtype=np.int64)[:, None]
        # (n_skills, n_bits) 0/1 masks: a skill's parity is (bits @ mask) mod 2.
        self.masks = np.zeros((self.n_skills, self.n_bits), dtype=np.int64)
        np.put_along_axis(self.masks, self.subsets, 1, axis=1)
        self.entropy_rate: float | None = binary_entropy(self.label_noise)

    def with_stream_seed(self, stream_seed: int) -> QuantaSource:
        out = copy.copy(self)
        out.stream_seed = int(stream_seed)
        return out

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to prepare."""

    @property
    def seq_len_needed(self) -> int:
        """Model positions one example needs: n_bits bits and the skill's code (the answer is the last target)."""
        return self.n_bits + self.n_digits

    @property
    def answer_pos(self) -> int:
        """The position whose target is the answer: the last token of the skill's code."""
        return self.n_bits + self.n_digits - 1

    def sample(self, split: Split, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(skills (B,) 0-based, bits (B, n_bits), noisy answers (B,)) of batch ``index`` of ``split``."""
        rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
        skills = np.minimum(np.searchsorted(self._cdf, rng.random(batch_size), side="right"), self.n_skills - 1)
        bits = rng.integers(0, 2, size=(batch_size, self.n_bits))
        flip = rng.random(batch_size) < self.label_noise
        return skills, bits, self.parity(skills, bits) ^ flip.astype(np.int64)

    def parity(self, skills: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """The clean answer (B,) of each skill (0-based, (B,)) on its bits (B, n_bits)."""
        return (np.einsum("bn,bn->b", np.asarray(bits), self.masks[np.asarray(skills)]) % 2).astype(np.int64)

    def tokens(self, skills: np.ndarray, bits: np.ndarray, answers: np.ndarray, seq_len: int) -> Batch:
        """The batch of these examples laid out for a context of ``seq_len`` >= n_bits + 1 positions."""
        if seq_len < self.seq_len_needed:
            raise ConfigError(
                f"{seq_len} is shorter than a sequence (n_bits + code = {self.seq_len_needed})", field="model.seq_len"
            )
        B, a = len(skills), self.answer_pos
        tok = np.zeros((B, seq_len + 1), dtype=np.int64)  # zeros past the answer: padding, never counted
        tok[:, : self.n_bits] = bits
        tok[:, self.n_bits : a + 1] = self.codes[np.asarray(skills)]
        tok[:, a + 1] = answers
        b = Batch.from_tokens(tok)
        mask = torch.zeros(b.targets.shape, dtype=torch.bool)
        mask[:, a] = True  # the target at the code's last position is the answer
        b.loss_mask = mask
        return b

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        skills, bits, answers = self.sample(split, index, batch_size)
        return self.tokens(skills, bits, answers, seq_len)

    def skill_batch(self, skills: np.ndarray, index: int, seq_len: int) -> Batch:
        """Fixed probe examples of the given skills (0-based, one row each), from a stream of their own
        (separate from train, val and probe; independent of the run seed, so every run of a sweep is probed
        on the same examples). Targets are the *clean* answers: a probe scores the rule, and takes the label
        noise into account exactly (see instruments/quanta.py)."""
        skills = np.asarray(skills, dtype=np.int64)
        rng = np.random.default_rng([self.seed, _SKILL_STREAM, int(index)])
        bits = rng.integers(0, 2, size=(len(skills), self.n_bits))
        return self.tokens(skills, bits, self.parity(skills, bits), seq_len)

    def describe(self) -> dict:
        return {
            "kind": "quanta",
            "n_skills": self.n_skills,
            "alpha": self.alpha,
            "n_bits": self.n_bits,
            "bits_per_skill": self.bits_per_skill,
            "label_noise": self.label_noise,
            "skill_code": self.skill_code,
            "n_digits": self.n_digits,
            "vocab_size": self.vocab_size,
            "entropy_rate": self.entropy_rate,
            # The quantization model's exponents (Michaud et al. 2023, sec. 2).
            "alpha_N": self.alpha,
            "alpha_D": self.alpha / (self.alpha + 1.0),
            "p_first": float(self.skill_probs[0]),
            "p_last": float(self.skill_probs[-1]),
            "note": "loss on the answer only (one per sequence); entropy_rate = H(label_noise) in nats",
        }
