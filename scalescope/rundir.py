"""One run directory, written by exactly one process (its worker).

Layout::

    <store>/runs/<id>/
        config.json      the resolved run config (its hash is <id>)
        meta.json        versions, hardware, parameter counts, FLOPs per token, entropy rate
        status           {"state": pending|running|finished|diverged|failed, "step", "tokens", ...}
        metrics.jsonl    append-only, one row per metric per evaluation
        checkpoints/     latest.pt (full state for resume); step_XXXXXXX.pt (weights, if kept)
        artifacts/       <instrument>/step_XXXXXXX.npy

Every file except ``metrics.jsonl`` is replaced atomically (write a temporary file, fsync, rename), so
a process killed at any instant leaves either the old or the new version. ``metrics.jsonl`` is only
appended; the checkpoint records its length, and resume truncates anything written after it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STATES = ("pending", "running", "finished", "diverged", "failed")
DONE_STATES = ("finished", "diverged")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


@dataclass
class RunDir:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "latest.pt"

    def weights_path(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step:07d}.pt"

    def artifact_path(self, name: str, step: int) -> Path:
        safe = name.replace("/", "_").replace(":", "_")
        return self.path / "artifacts" / safe / f"step_{step:07d}.npy"

    # --- status -------------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "status").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "pending"}

    def write_status(self, state: str, **fields: Any) -> None:
        assert state in STATES, state
        atomic_write_json(self.path / "status", {"state": state, "updated": time.time(), **fields})

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
    def save_artifact(self, name: str, step: int, array: np.ndarray) -> Path:
        import io

        p = self.artifact_path(name, step)
        buf = io.BytesIO()
        np.save(buf, np.asarray(array))
        atomic_write_bytes(p, buf.getvalue())
        return p
