"""The one small interface every data source implements.

A source is a *pure function of (split, index)*: batch ``i`` of a split is always the same tokens for the
same source config and seed. That is what makes resume exact (the data position is just the step) and
what gives every model in a sweep the same data order, whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import ConfigError

Split = Literal["train", "val", "probe"]

# Seed offsets so the train, validation and probe streams of one source never share random numbers.
SPLIT_STREAM: dict[str, int] = {"train": 0, "val": 1, "probe": 2}


@dataclass
class Batch:
    """One batch: ``inputs`` go into the model, ``targets`` are what it must predict.

    For token sources ``inputs`` and ``targets`` are int64 tensors of shape (B, T), targets shifted by
    one. Task sources of later issues may carry float inputs; ``loss_mask`` (B, T) marks which target
    positions count in the loss (None: all).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        mask = None if self.loss_mask is None else self.loss_mask.to(device)
        return Batch(self.inputs.to(device), self.targets.to(device), mask)

    @staticmethod
    def from_tokens(tokens: np.ndarray | torch.Tensor) -> Batch:
        """(B, T+1) token ids -> inputs (B, T), targets (B, T)."""
        t = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        return Batch(t[:, :-1].contiguous(), t[:, 1:].contiguous())


@runtime_checkable
class Source(Protocol):
    """What the trainer needs of a data source."""

    vocab_size: int
    # Exact entropy rate in nats/token when the source knows it (synthetic languages), else None.
    entropy_rate: float | None

    def prepare(self, cache_dir: Path) -> None:
        """Do one-time work (tokenize files) in the driver process, before workers start. Idempotent."""
        ...

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        """Batch number ``index`` of ``split``: deterministic in (source config, seed, split, index)."""
        ...

    def describe(self) -> dict:
        """JSON-able facts for the run's meta (entropy rate and its error, sizes, cache paths)."""
        ...

    # Optional: ``fingerprint(self) -> str``, what the data is *now* (after ``prepare``). A checkpoint records
    # it and resume refuses a checkpoint taken on other data. A source whose data lives outside its config
    # (a corpus on disk) must define it as a content hash; without it (:func:`fingerprint_of`) the config's
    # hash stands for the data. It is not a member of this protocol, so sources written before it still satisfy it.


def fingerprint_of(source: Source) -> str | None:
    """The source's data fingerprint: its own ``fingerprint()`` when it has one (a corpus on disk: its content
    hash now), else None: a synthetic source's data are a pure function of its config, whose hash the
    checkpoint records already (hashing ``describe()`` instead would tie resume to derived numbers, e.g. a
    solver's iteration count, that may differ between the machines of one cluster)."""
    own = getattr(source, "fingerprint", None)
    return str(own()) if callable(own) else None


def check_support(vocab_size: int, support: int | None, file: str | None) -> None:
    """A chain or emission table allows ``support`` of ``vocab_size`` tokens per row (None: all of them)."""
    if support is not None and support > vocab_size:
        raise ConfigError(
            f"support ({support}) cannot exceed vocab_size ({vocab_size})", file=file, field="data.support"
        )


def task_seq_len(seq_len: int | None, model_seq_len: int, file: str | None) -> int:
    """A task source lays its sequences out for the model's context: ``data.seq_len`` resolves to
    ``model.seq_len`` and may only repeat it."""
    if seq_len is not None and seq_len != model_seq_len:
        raise ConfigError(
            f"must equal model.seq_len ({model_seq_len}) or be omitted, got {seq_len}", file=file, field="data.seq_len"
        )
    return model_seq_len


def check_vocab(vocab_size: int, file: str | None, *, at_least: int = 1) -> None:
    positive_int = vocab_size >= 1
    if not positive_int:
        raise ConfigError(f"expected a positive number, got {vocab_size!r}", file=file, field="data.vocab_size")
    if vocab_size < at_least:
        raise ConfigError(f"expected an integer >= {at_least}, got {vocab_size}", file=file, field="data.vocab_size")


def stream_rng(seed: int, split: Split, index: int) -> np.random.Generator:
    """A generator for batch ``index`` of ``split``: independent of every other (seed, split, index)."""
    return np.random.default_rng([int(seed), SPLIT_STREAM[split], int(index)])
