"""Checkpoints: the only module that knows what a checkpoint holds (its keys), for training and offline probes.

Two kinds of file, both written atomically (see :func:`scalescope.rundir.atomic_write_bytes`); where they
live in a run directory is :class:`scalescope.rundir.RunDir`'s business (``checkpoint_path``,
``weights_path(step)``), not this module's:

- the full training state (:class:`TrainState`), enough to resume a run bitwise: the model, the optimizer,
  every RNG, the step (the learning-rate schedule and the data position are pure functions of it, see
  ``schedule.py`` and ``data/base.py``), the running train-loss accumulators and the length of
  ``metrics.jsonl`` when it was taken;
- the model's weights alone (a ``state_dict``), kept at every evaluation when ``train.keep_weights`` is set.

On disk a full checkpoint is ``torch.save`` of a plain dict whose keys are :class:`TrainState`'s field
names, in field order: the format of v0.1 stores, which therefore still resume and load.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .rundir import atomic_write_bytes

__all__ = [
    "TrainState",
    "load_checkpoint",
    "load_weights",
    "restore_rng_state",
    "rng_state",
    "save_checkpoint",
    "save_weights",
]


@dataclass
class TrainState:
    """Everything a training run carries from one step to the next. Field order is the on-disk key order."""

    model: dict[str, Any]  # the model's state_dict
    optimizer: dict[str, Any]  # the optimizer's state_dict
    rng: dict[str, Any]  # see rng_state()
    step: int  # optimizer steps taken
    last_eval: int  # the step of the last evaluation (-1: none yet)
    loss_sum: float  # train loss summed since the last evaluation ...
    loss_n: int  # ... over this many steps
    wall: float  # wall-clock seconds of the run so far
    train_time_since: float  # seconds spent in optimizer steps since the last evaluation ...
    tokens_since: int  # ... and the tokens they consumed (the tokens/s metric)
    ref_loss: float | None  # the first validation loss: the divergence test's reference
    n_evals: int  # evaluations done (instruments run every k-th one)
    gnorm_last: float  # gradient norm of the last step
    metrics_size: int  # bytes of metrics.jsonl covered by this state; resume truncates the rest


def rng_state() -> dict[str, Any]:
    """Every random generator training touches: torch (and CUDA's, when there is one), NumPy, Python."""
    s: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def restore_rng_state(s: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` captured (CUDA's only where both the checkpoint and this machine have it)."""
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_checkpoint(path: str | Path, state: TrainState) -> None:
    """Write the full training state to ``path`` atomically (a killed process leaves the old one)."""
    # A plain dict, not the dataclass: the file stays loadable without scalescope's classes, as in v0.1.
    # (Not dataclasses.asdict: it deep-copies every tensor of the model and optimizer.)
    _save(Path(path), {f.name: getattr(state, f.name) for f in fields(TrainState)})


def load_checkpoint(path: str | Path) -> TrainState:
    """The full training state at ``path``, every tensor on the CPU."""
    # weights_only=False: the state holds NumPy's and Python's RNG states, which torch's restricted
    # unpickler refuses. This trusts the file (unpickling can run code); the run directory is written by
    # scalescope itself. Narrowing that trust is a later change, and this is the one place to make it.
    raw = torch.load(Path(path), map_location="cpu", weights_only=False)
    return TrainState(**{f.name: raw[f.name] for f in fields(TrainState)})


def save_weights(path: str | Path, state_dict: dict[str, Any]) -> None:
    """Write a model's weights (its ``state_dict``) to ``path`` atomically."""
    _save(Path(path), state_dict)


def load_weights(path: str | Path) -> dict[str, Any]:
    """A model's weights written by :func:`save_weights`, on the CPU (tensors only: ``weights_only=True``)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
