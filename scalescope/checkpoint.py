"""Checkpoints: the only module that knows what a checkpoint holds (its keys), for training and offline probes.

Two kinds of file, both written atomically (see :func:`scalescope.rundir.atomic_write_bytes`); where they
live in a run directory is :class:`scalescope.rundir.RunDir`'s business (``checkpoint_path``,
``weights_path(step)``), not this module's:

- the full training state (:class:`TrainState`), enough to resume a run bitwise: the model, the optimizer,
  every RNG, the step (the learning-rate schedule and the data position are pure functions of it, see
  ``schedule.py`` and ``data/base.py``), the running train-loss accumulators and the length of
  ``metrics.jsonl`` when it was taken; and whose it is (run id, config hash, data fingerprint), which
  resume checks (:func:`mismatch`);
- the model's weights alone (a ``state_dict``), kept at every evaluation when ``train.keep_weights`` is set.

On disk a full checkpoint is ``torch.save`` of a plain dict whose keys are :class:`TrainState`'s field
names, in field order. Every file is read with ``torch.load(weights_only=True)``: tensors and plain
containers only, so no code runs from a store (a store from elsewhere is untrusted input). The RNG states
are therefore stored as tensors and plain numbers (:func:`rng_state`). v0.1 files hold NumPy's and
Python's RNG states as NumPy arrays and tuples; they load with exactly NumPy's array reconstructor, the
ndarray class and ``numpy.dtype`` allowed (building an array runs no user code), and resume as before.
Fields added since v0.1 (run id, config hash, data fingerprint) are None in older files: unknown, so
resume compares only what is known.
"""

from __future__ import annotations

import io
import pickle
import random
import textwrap
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import StoreError
from .rundir import atomic_write_bytes

__all__ = [
    "FORMAT",
    "TrainState",
    "load_checkpoint",
    "load_weights",
    "mismatch",
    "restore_rng_state",
    "rng_state",
    "save_checkpoint",
    "save_weights",
    "verify_checkpoint",
]

FORMAT = 2  # 1 (no "format" key): v0.1, RNG states as NumPy arrays and tuples; 2: plain RNG states + owner

# What a v0.1 checkpoint's NumPy RNG state needs from the restricted unpickler: the ndarray reconstructor
# (under NumPy 2's and NumPy 1's module name), the ndarray class and dtype. None of them runs user code.
# (NumPy 2 pickles e.g. numpy.dtypes.UInt32DType too: the numeric dtype classes are allowed; not the object
# dtype, so no array of arbitrary Python objects is built.)
_NUMPY_GLOBALS: list[Any] = [np.ndarray, np.dtype, *sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefd"}, key=str)]
try:
    from numpy._core.multiarray import _reconstruct

    _NUMPY_GLOBALS += [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct")]
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

    _NUMPY_GLOBALS += [_reconstruct, (_reconstruct, "numpy._core.multiarray._reconstruct")]


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
    # Whose state this is (None: unknown, a file written before they were recorded). Resume refuses a
    # checkpoint whose known owner differs from the run resuming it (see mismatch()).
    run_id: str | None = None  # the run directory's name
    config_hash: str | None = None  # config.run_id of the config it was trained with
    data_fingerprint: str | None = None  # the data source's fingerprint (a corpus's content hash)


def rng_state() -> dict[str, Any]:
    """Every random generator training touches: torch (and CUDA's, when there is one), NumPy, Python,
    as tensors and plain numbers (what ``torch.load(weights_only=True)`` reads back)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    s: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # MT19937's 624 uint32 words fit int64 exactly (torch's uint32 support is partial).
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        # Python's Mersenne Twister: 624 uint32 words plus the index (625 ints < 2**32).
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def restore_rng_state(s: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` captured, or a v0.1 checkpoint's states (NumPy's and Python's own
    tuples); CUDA's only where both the checkpoint and this machine have it."""
    torch.set_rng_state(s["torch"])
    npst = s["numpy"]
    if isinstance(npst, dict):
        key = npst["key"].numpy().astype(np.uint32)
        npst = (npst["bit_generator"], key, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    np.random.set_state(npst)
    pyst = s["python"]
    if isinstance(pyst, dict):
        pyst = (pyst["version"], tuple(int(x) for x in pyst["state"].tolist()), pyst["gauss_next"])
    random.setstate(pyst)
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; any failure is a one-line StoreError naming the file."""
    try:
        # torch warns about weights_only on some refusals; our StoreError below says it in one line.
        with torch.serialization.safe_globals(_NUMPY_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The restricted unpickler met something other than tensors and plain containers: a file that
        # would run code (or name classes) when unpickled. Never fall back to weights_only=False.
        first = str(e).strip().splitlines()
        why = next((ln.strip() for ln in first if "GLOBAL" in ln or "but got" in ln), first[0] if first else "")
        raise StoreError(
            f"{path}: refusing to load this {what}: it is not tensors and plain data only, and unpickling it could "
            f"run code ({textwrap.shorten(why, 160)}); if scalescope did not write it, delete it (the run then "
            "restarts from step 0)"
        ) from None
    except FileNotFoundError:
        raise StoreError(f"{path}: no such {what}") from None
    except Exception as e:  # noqa: BLE001 - a zero-byte, truncated or foreign file: one line naming it
        size = path.stat().st_size if path.exists() else 0
        msg = textwrap.shorten(str(e).strip().splitlines()[0], 160) if str(e).strip() else type(e).__name__
        raise StoreError(
            f"{path}: unreadable {what} ({size} bytes; {type(e).__name__}: {msg}); "
            "delete it to restart the run from step 0"
        ) from None


def save_checkpoint(path: str | Path, state: TrainState) -> None:
    """Write the full training state to ``path`` atomically (a killed process leaves the old one)."""
    # A plain dict, not the dataclass: the file stays loadable without scalescope's classes, as in v0.1.
    # (Not dataclasses.asdict: it deep-copies every tensor of the model and optimizer.)
    _save(Path(path), {"format": FORMAT, **{f.name: getattr(state, f.name) for f in fields(TrainState)}})


def load_checkpoint(path: str | Path) -> TrainState:
    """The full training state at ``path``, every tensor on the CPU. Raises :class:`StoreError` (naming the
    file) for a file that is unreadable, is not a checkpoint, or is not plain data (see :func:`_load`)."""
    p = Path(path)
    raw = _load(p, "checkpoint")
    required = [f.name for f in fields(TrainState) if f.default is not None]  # the v0.1 keys
    missing = [k for k in required if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise StoreError(f"{p}: not a scalescope checkpoint (missing {', '.join(missing[:4])})")
    return TrainState(**{f.name: raw.get(f.name) for f in fields(TrainState)})


def mismatch(
    state: TrainState, *, run_id: str | None, config_hash: str | None = None, data_fingerprint: str | None = None
) -> str | None:
    """What differs between the owner a checkpoint records and the run about to use it (None: nothing
    known differs). Fields unknown on either side (None) are not compared."""
    diffs = []
    for name, mine, expected in (
        ("run id", state.run_id, run_id),
        ("config hash", state.config_hash, config_hash),
        ("data fingerprint", state.data_fingerprint, data_fingerprint),
    ):
        if mine is not None and expected is not None and mine != expected:
            diffs.append(f"{name} {mine} (this run: {expected})")
    return "; ".join(diffs) or None


def verify_checkpoint(path: str | Path, run_id: str) -> str | None:
    """None when the checkpoint at ``path`` loads safely (``weights_only=True``) and belongs to run
    ``run_id`` (or does not say whose it is: a v0.1 file); else the problem, in one line naming the file."""
    try:
        state = load_checkpoint(path)
    except StoreError as e:
        return str(e)
    diff = mismatch(state, run_id=run_id)
    return f"{path}: checkpoint of another run: {diff}" if diff else None


def save_weights(path: str | Path, state_dict: dict[str, Any]) -> None:
    """Write a model's weights (its ``state_dict``) to ``path`` atomically."""
    _save(Path(path), state_dict)


def load_weights(path: str | Path) -> dict[str, Any]:
    """A model's weights written by :func:`save_weights`, on the CPU (tensors only: ``weights_only=True``)."""
    return _load(Path(path), "weights file")
