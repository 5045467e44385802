"""One run directory: the only module that spells its file names, and the only door to its files.

Layout::

    <store>/runs/<id>/
        config.json      the resolved run config (its hash is <id>)
        meta.json        versions, hardware, parameter counts, FLOPs per token, entropy rate
        status           {"state": pending|running|finished|diverged|failed, "step", "tokens", ...}
        metrics.jsonl    append-only, one row per metric per evaluation
        error.log        the traceback of a run that failed
        checkpoints/     latest.pt (full state for resume); step_XXXXXXX.pt (weights, if kept)
        artifacts/       <instrument>/step_XXXXXXX.npy

Who writes what, and when (every write is a method of :class:`RunDir`, or goes to a path it hands out):

1. The driver (``Store.add``, before dispatch) creates the directory with ``config.json`` and a
   ``pending`` status (:meth:`RunDir.create`), once; it never writes there again.
2. The worker (``train.train``) then owns the directory while it runs: ``meta.json``, ``status``,
   ``metrics.jsonl``, ``artifacts/``, ``error.log`` through the methods below, and ``checkpoints/``
   through :mod:`scalescope.checkpoint` at :attr:`RunDir.checkpoint_path` and :meth:`RunDir.weights_path`.
3. The executor writes a ``failed`` status only for a worker process that died (segfault, OOM kill) and
   so could not write it itself; the directory has no other writer by then.

Readers (the store's tables, the report, offline probes) only read.

Every file except ``metrics.jsonl`` is replaced atomically (write a temporary file, fsync, rename), so
a process killed at any instant leaves either the old or the new version. ``metrics.jsonl`` is only
appended; the checkpoint records its length, and resume truncates anything written after it.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STATES = ("pending", "running", "finished", "diverged", "failed")
DONE_STATES = ("finished", "diverged")  # a run in one of these is never trained again
ENDED_STATES = (*DONE_STATES, "failed")  # the worker has stopped (a failed run is retried by the next sweep)

_CONFIG, _META, _STATUS, _METRICS, _ERROR_LOG = "config.json", "meta.json", "status", "metrics.jsonl", "error.log"
_CHECKPOINTS, _LATEST, _ARTIFACTS, _CACHE = "checkpoints", "latest.pt", "artifacts", "cache"
_STEP = re.compile(r"step_(\d+)")


# mkstemp creates files readable by their owner only (0600); a store and a report are shared with
# colleagues, so every file gets the mode an ordinary new file would (0644 under the usual umask 022).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def _finite_or_none(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _step_name(step: int) -> str:
    return f"step_{step:07d}"


def _steps(folder: Path, suffix: str) -> dict[int, Path]:
    """``step_XXXXXXX<suffix>`` files of ``folder`` by step."""
    if not folder.is_dir():
        return {}
    out = {}
    for p in folder.glob(f"step_*{suffix}"):
        m = _STEP.fullmatch(p.name.removesuffix(suffix))
        if m:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


@dataclass
class RunDir:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    # --- paths --------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / _CONFIG

    @property
    def meta_path(self) -> Path:
        return self.path / _META

    @property
    def status_path(self) -> Path:
        return self.path / _STATUS

    @property
    def metrics_path(self) -> Path:
        return self.path / _METRICS

    @property
    def error_log_path(self) -> Path:
        return self.path / _ERROR_LOG

    @property
    def checkpoint_path(self) -> Path:
        """The full training state, for resume (see :mod:`scalescope.checkpoint`)."""
        return self.path / _CHECKPOINTS / _LATEST

    def weights_path(self, step: int) -> Path:
        """The model's weights at ``step`` (kept when ``train.keep_weights`` is set)."""
        return self.path / _CHECKPOINTS / f"{_step_name(step)}.pt"

    def weight_steps(self) -> list[int]:
        """The steps whose weights are kept (:meth:`weights_path`), ascending."""
        return list(_steps(self.path / _CHECKPOINTS, ".pt"))

    @property
    def local_cache_dir(self) -> Path:
        """The data cache of a run trained outside a store (a store shares ``Store.cache_dir``)."""
        return self.path / _CACHE

    def exists(self) -> bool:
        """Whether this is a run directory: its config has been written."""
        return self.config_path.exists()

    # --- config and meta ----------------------------------------------------------------------------
    def create(self, config: dict[str, Any], experiment: str | None = None) -> bool:
        """Create the directory with its config and a pending status, unless it exists. The driver's only
        write, before dispatch. Returns whether it created it."""
        if self.exists():
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, config)
        self.write_status("pending", experiment=experiment)
        return True

    def read_config(self) -> dict[str, Any]:
        """The stored config as written (a dict; ``config.from_dict`` makes it a RunConfig)."""
        return json.loads(self.config_path.read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path, meta)

    def read_meta(self) -> dict[str, Any]:
        """``meta.json``, or ``{}`` before the worker has written it."""
        try:
            return json.loads(self.meta_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_error_log(self, text: str) -> None:
        atomic_write_bytes(self.error_log_path, text.encode())

    # --- status -------------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "pending"}

    def write_status(self, state: str, **fields: Any) -> None:
        """Replace the status; the experiment the driver recorded at creation is carried over."""
        assert state in STATES, state
        if "experiment" not in fields:
            fields["experiment"] = self.read_status().get("experiment")
        atomic_write_json(self.status_path, {"state": state, "updated": time.time(), **fields})

    def is_done(self) -> bool:
        return self.read_status().get("state") in DONE_STATES

    # --- metrics ------------------------------------------------------------------------------------
    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Append rows and flush them to disk (so a later checkpoint's offset covers them)."""
        if not rows:
            return
        text = "".join(
            json.dumps({**r, "value": _finite_or_none(r["value"])}, separators=(",", ":")) + "\n" for r in rows
        )
        with open(self.metrics_path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def metrics_size(self) -> int:
        try:
            return self.metrics_path.stat().st_size
        except FileNotFoundError:
            return 0

    def truncate_metrics(self, size: int) -> None:
        """Drop whatever was appended after a checkpoint (rows that resume will recompute)."""
        if self.metrics_path.exists():
            with open(self.metrics_path, "r+b") as f:
                f.truncate(size)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    # --- artifacts ----------------------------------------------------------------------------------
    def artifact_dir(self, name: str) -> Path:
        """The folder of one artifact's arrays (``/`` and ``:`` in ``name`` become ``_``)."""
        return self.path / _ARTIFACTS / name.replace("/", "_").replace(":", "_")

    def artifact_path(self, name: str, step: int) -> Path:
        return self.artifact_dir(name) / f"{_step_name(step)}.npy"

    def artifact_steps(self, name: str) -> dict[int, Path]:
        """The stored arrays of artifact ``name`` by step, ascending (empty when there are none)."""
        return _steps(self.artifact_dir(name), ".npy")

    def artifact_names(self, prefix: str = "") -> list[str]:
        """Folder names of the stored artifacts whose name starts with ``prefix`` (both as in :meth:`artifact_dir`)."""
        root, start = self.path / _ARTIFACTS, self.artifact_dir(prefix).name if prefix else ""
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if d.is_dir() and d.name.startswith(start))

    def save_artifact(self, name: str, step: int, array: np.ndarray) -> Path:
        p = self.artifact_path(name, step)
        buf = io.BytesIO()
        np.save(buf, np.asarray(array))
        atomic_write_bytes(p, buf.getvalue())
        return p
