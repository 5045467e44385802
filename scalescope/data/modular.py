"""Modular arithmetic as token sequences (issue 15): the grokking task.

Power, Burda, Edwards, Babuschkin and Misra 2022 ("Grokking"); Nanda, Chan, Lieberum, Smith and Steinhardt
2023 ("Progress measures for grokking via mechanistic interpretability", sec. 3): every pair (a, b) of
residues mod a prime p is one example, written as the three tokens ``[a, b, =]`` (``=`` is token p) whose
answer c = a ∘ b mod p is predicted at the ``=`` position; the loss counts that position only. A seeded
``train_fraction`` of the p² pairs is the training set, the rest the validation set; full-batch training
(``train.full_batch = true``) is the published setting.

``[data] kind = "modular"``: ``p`` (a prime), ``op`` ("+", "-" or "*"), ``train_fraction`` in (0, 1).
The vocabulary is p + 1 tokens (``vocab_size`` resolves to it; a smaller one is refused) and the model's
context is three positions (``model.seq_len`` resolves to 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..config import ModelConfig, SourceConfig, register_source
from ..errors import ConfigError
from .dataset import Arrays, FiniteSource, check_fraction

__all__ = ["ModularConfig", "is_prime"]

# p² examples of 3 tokens: p = 1,009 is about a million examples (24 MB of int64).
MAX_P = 1009
SEQ_LEN = 3


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % k for k in range(2, int(n**0.5) + 1))


@register_source("modular")
@dataclass(kw_only=True)
class ModularConfig(SourceConfig):
    """``[data] kind = "modular"``: a ∘ b mod p (see the module doc)."""

    p: int = 113
    op: Literal["+", "-", "*"] = "+"
    train_fraction: float = 0.3
    vocab_size: int | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        if not (isinstance(self.p, int) and is_prime(self.p) and self.p <= MAX_P):
            raise ConfigError(f"expected a prime in [2, {MAX_P}], got {self.p!r}", file=file, field="data.p")
        if self.op not in ("+", "-", "*"):
            raise ConfigError(f"expected '+', '-' or '*', got {self.op!r}", file=file, field="data.op")
        check_fraction(self.train_fraction, "train_fraction", file, open_interval=True)
        n_tr = self.train_size()
        if not 1 <= n_tr < self.p**2:
            raise ConfigError(
                f"train_fraction {self.train_fraction} leaves {n_tr} of {self.p**2} pairs for training; "
                "both splits need at least one",
                file=file,
                field="data.train_fraction",
            )
        need = self.p + 1
        if self.vocab_size is not None and self.vocab_size < need:
            raise ConfigError(
                f"p = {self.p} needs {need} tokens (the residues and '='), got {self.vocab_size}",
                file=file,
                field="data.vocab_size",
            )
        self.vocab_size = self.vocab_size or need
        if model.arch != "gpt":
            raise ConfigError(
                f"modular arithmetic is a token task for model.arch = 'gpt', not {model.arch!r}",
                file=file,
                field="model.arch",
            )
        model.seq_len = SEQ_LEN

    def train_size(self) -> int:
        return int(round(self.p**2 * self.train_fraction))

    def build(self, stream_seed: int) -> FiniteSource:
        p = self.p
        a, b = np.divmod(np.arange(p * p, dtype=np.int64), p)
        c = {"+": a + b, "-": a - b, "*": a * b}[self.op] % p
        x = np.stack([a, b, np.full_like(a, p)], axis=1)  # [a, b, =]
        perm = np.random.default_rng([self.seed, 40]).permutation(p * p)
        n_tr = self.train_size()
        tr, va = perm[:n_tr], perm[n_tr:]
        return FiniteSource(
            Arrays(x[tr], c[tr]),
            Arrays(x[va], c[va]),
            n_classes=p,
            vocab_size=int(self.vocab_size or p + 1),
            stream_seed=stream_seed,
            facts={"p": p, "op": self.op, "train_fraction": self.train_fraction, "chance_acc": 1.0 / p},
        )
