"""One run directory: the only module that spells its file names, and the only door to its files.

Layout::

    <store>/runs/<id>/
        config.json      the resolved run config (its hash is <id>)
        meta.json        versions, hardware, parameter counts, FLOPs per token, entropy rate
        status           {"state": pending|running|finished|diverged|failed, "step", "tokens", ...}
        metrics.jsonl    append-only, one row per metric per evaluation
        error.log        the traceback of a run that failed
        lock             the claim of the one worker that owns the run now (see ``scalescope.runlock``)
        checkpoints/     latest.pt (full state for resume); step_XXXXXXX.pt (weights, if kept)
        artifacts/       <instrument>/step_XXXXXXX.npy

Who writes what, and when (every write is a method of :class:`RunDir`, or goes to a path it hands out):

1. The driver (``Store.add``, before dispatch) creates the directory with ``config.json`` and a
   ``pending`` status (:meth:`RunDir.create`), once; it writes there again only to replace a
   ``config.json`` that can no longer be read (:meth:`RunDir.rewrite_config`: the run id is its hash).
2. The worker (``executors.base.execute`` around ``train.train``) claims the run by creating ``lock``
   atomically (:class:`scalescope.runlock.RunLock`: one worker per run, however many drivers share the
   store) and then owns the directory while it runs: ``meta.json``, ``status``,
   ``metrics.jsonl``, ``artifacts/``, ``error.log`` through the methods below, and ``checkpoints/``
   through :mod:`scalescope.checkpoint` at :attr:`RunDir.checkpoint_path` and :meth:`RunDir.weights_path`.
3. The executor writes a ``failed`` status only for a worker process that died (segfault, OOM kill) and
   so could not write it itself, and only when no live lock of another worker holds the run.

Readers (the store's tables, the report, offline probes) only read.

Every file except ``metrics.jsonl`` is replaced atomically (write a temporary file, fsync, rename), so
a process killed at any instant leaves either the old or the new version (and, at worst, a stale
``.<name>.<random>.tmp`` file: :meth:`RunDir.temp_files`). ``metrics.jsonl`` is only appended; the checkpoint
records its length, and resume truncates anything written after it, but never extends the file (see
:meth:`RunDir.truncate_metrics`). A process killed mid-append can leave half a line at its end:
:meth:`RunDir.scan_metrics` reads such a file row by row and says what is wrong with it.
"""

from __future__ import annotations

import errno
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

from .errors import StoreError
from .faults import ENV, maybe_die, maybe_fail

STATES = ("pending", "running", "finished", "diverged", "failed")
DONE_STATES = ("finished", "diverged")  # a run in one of these is never trained again
ENDED_STATES = (*DONE_STATES, "failed")  # the worker has stopped (a failed run is retried by the next sweep)

_CONFIG, _META, _STATUS, _METRICS, _ERROR_LOG = "config.json", "meta.json", "status", "metrics.jsonl", "error.log"
_CHECKPOINTS, _LATEST, _ARTIFACTS, _CACHE = "checkpoints", "latest.pt", "artifacts", "cache"
_LOCK = "lock"
_TEMP_GLOB = ".*.tmp"  # what atomic_write_bytes's mkstemp names its temporary files
_STEP = re.compile(r"step_(\d+)")


# mkstemp creates files readable by their owner only (0600); a store and a report are shared with
# colleagues, so every file gets the mode an ordinary new file would (0644 under the usual umask 022).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


# A write that fails with one of these means the store itself cannot be written (disk or quota full,
# read-only, permission lost): every other run would fail the same way, so the sweep stops (lab.py).
UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def is_unwritable(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says the store cannot be written (:data:`UNWRITABLE_ERRNOS`)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in UNWRITABLE_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` with the file it was writing, when the OS did not say (a failed write() names none)."""
    return err if err.filename else OSError(err.errno, err.strerror, str(path))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    maybe_fail(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        maybe_die()
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:
            raise _naming(e, path) from e
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json_object(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(the JSON object in path, None)``, or ``(None, what is wrong)``: "missing", "not JSON (...)", ...
    Readers that must survive a damaged store use this instead of letting one file's error escape."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    if not data.strip():
        return None, "empty"
    nul = data.count(b"\0")
    if nul:
        return None, f"holds {nul} NUL bytes"
    obj, why = _parse_json(data)
    if why is not None:
        return None, why
    if not isinstance(obj, dict):
        return None, f"not a JSON object (a {type(obj).__name__})"
    return obj, None


def _parse_json(data: bytes, *, one_line: bool = False) -> tuple[Any, str | None]:
    """``(the JSON value of data, None)`` or ``(None, what is wrong)``, for the readers of a damaged store."""
    try:
        return json.loads(data), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if one_line else f"line {e.lineno} column {e.colno}"
        return None, f"not JSON ({e.msg} at {at})"


# The columns of a metrics row and the JSON types each accepts (None: a missing or non-finite value).
METRIC_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "tokens": (int,),
    "flops": (int, float),
    "wall_s": (int, float),
    "metric": (str,),
    "value": (int, float),
}
_REQUIRED = ("step", "metric")  # a row without these cannot be placed in the metrics table


def _metrics_row(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """One line of ``metrics.jsonl`` as a row, or ``(None, what is wrong)``."""
    row, why = _parse_json(line, one_line=True)
    if why is not None:
        return None, why
    if not isinstance(row, dict):
        return None, "not a JSON object"
    for key, types in METRIC_FIELDS.items():
        v = row.get(key)
        if v is None:
            if key in _REQUIRED:
                return None, f"no {key!r}"
        elif isinstance(v, bool) or not isinstance(v, types):
            return None, f"{key!r} is {v!r}"
    return {k: row.get(k) for k in METRIC_FIELDS}, None


@dataclass
class MetricsScan:
    """What :meth:`RunDir.scan_metrics` found in ``metrics.jsonl``: the rows it could read and what is wrong."""

    rows: list[dict[str, Any]]
    bad_lines: list[tuple[int, str]]  # (1-based line number, what is wrong), torn tail excluded
    torn_at: int | None  # byte offset of an unterminated last line (a write cut off by a crash), else None
    nul_bytes: int  # NUL bytes in the file (padding): stripped before parsing, reported
    nul_lines: list[int]  # the lines that held them

    @property
    def clean(self) -> bool:
        return not self.bad_lines and self.torn_at is None and not self.nul_bytes

    def problems(self, *, torn_is_expected: bool = False) -> list[str]:
        """What is wrong, in words, without the file's name (empty when clean). ``torn_is_expected``: leave out
        a torn last line (the run is being written right now: its last append may be in flight)."""
        out = []
        if self.torn_at is not None and not torn_is_expected:
            out.append(f"the last line is cut off at byte {self.torn_at} (a write interrupted by a crash)")
        if self.nul_bytes:
            where = ", ".join(map(str, self.nul_lines[:3])) + (" ..." if len(self.nul_lines) > 3 else "")
            out.append(f"{self.nul_bytes} NUL bytes at line {where} (padding)")
        if self.bad_lines:
            n, why = self.bad_lines[0]
            more = f" and {len(self.bad_lines) - 1} more bad lines" if len(self.bad_lines) > 1 else ""
            out.append(f"line {n} is {why if why.startswith('not') else 'bad: ' + why}{more}")
        return out


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
    def lock_path(self) -> Path:
        """The run lock: the claim of the one worker that may write here (owned by ``scalescope.runlock``)."""
        return self.path / _LOCK

    def temp_files(self) -> list[Path]:
        """Temporary files of atomic writes (:func:`atomic_write_bytes`) anywhere in the run directory: left
        behind by a process killed mid-write, or in flight now while a worker runs."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.rglob(_TEMP_GLOB) if p.is_file())

    def aside_path(self, path: Path) -> Path:
        """Where ``scalescope check --repair`` moves a damaged file of this run (``latest.pt.bad``), so that
        the next worker does not use it and the evidence is kept."""
        return path.with_name(path.name + ".bad")

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
        # Two drivers may create one run at the same moment; the second must not reset a status the first
        # one's worker has already moved on (the config they write is the same, its hash is the id).
        if not self.status_path.exists():
            self.write_status("pending", experiment=experiment)
        return True

    def rewrite_config(self, config: dict[str, Any]) -> None:
        """Replace a damaged ``config.json`` with the config whose hash is this run's id (``Store.add``)."""
        atomic_write_json(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        """The stored config as written (a dict; ``config.from_dict`` makes it a RunConfig). Raises
        :class:`StoreError` naming the file when it is missing or unreadable."""
        cfg, why = read_json_object(self.config_path)
        if cfg is None:
            raise StoreError(f"{self.config_path}: {why}")
        return cfg

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path, meta)

    def read_meta(self) -> dict[str, Any]:
        """``meta.json``, or ``{}`` before the worker has written it (or when it is unreadable: see
        :func:`read_json_object` for a reader that must tell the two apart)."""
        return read_json_object(self.meta_path)[0] or {}

    def write_error_log(self, text: str) -> None:
        atomic_write_bytes(self.error_log_path, text.encode())

    # --- status -------------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        """The status; ``pending`` when there is none or it is unreadable, so that the next sweep trains
        (resumes) the run and writes a good one."""
        return read_json_object(self.status_path)[0] or {"state": "pending"}

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
        try:
            self._append(text)
        except OSError as e:
            if e.filename:
                raise
            raise _naming(e, self.metrics_path) from e

    def _append(self, text: str) -> None:
        maybe_fail(self.metrics_path)
        with open(self.metrics_path, "a") as f:
            if os.environ.get(ENV):  # fault injection only: half the rows reach the disk, then the process dies
                f.write(text[: len(text) // 2])
                f.flush()
                maybe_die()
                f.write(text[len(text) // 2 :])
            else:
                f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def metrics_size(self) -> int:
        try:
            return self.metrics_path.stat().st_size
        except FileNotFoundError:
            return 0

    def truncate_metrics(self, size: int) -> bool:
        """Drop whatever was appended after a checkpoint (rows that resume will recompute). Returns False, and
        leaves the file as it is, when it is shorter than ``size``: rows the checkpoint covered are gone, so
        resuming from it would leave a hole (the caller restarts the run instead). Never extends the file:
        ``truncate()`` beyond the end pads it with NUL bytes, which no reader can parse."""
        have = self.metrics_size()
        if have < size:
            return False
        if have > size:
            with open(self.metrics_path, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
        return True

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every readable row (a damaged line is skipped; :meth:`scan_metrics` says which and why)."""
        return self.scan_metrics().rows

    def last_metric_row(self, metric: str, *, block: int = 1 << 16) -> dict[str, Any] | None:
        """The last readable row of ``metric``, read from the end of ``metrics.jsonl`` a block at a time: a
        finished run's last evaluation is in its last few rows, so checking "done" for every run of a large
        store (each ``scalescope run`` does) reads kilobytes, not every row. None when there is none."""
        try:
            f = open(self.metrics_path, "rb")
        except FileNotFoundError:
            return None
        with f:
            end = f.seek(0, os.SEEK_END)
            pos, tail = end, b""
            while pos > 0:
                pos = max(0, pos - block)
                f.seek(pos)
                tail = f.read(end - pos)
                lines = tail.split(b"\n")
                # The first piece may be cut mid-line unless the block reached the start of the file.
                for line in reversed(lines if pos == 0 else lines[1:]):
                    row = _metrics_row(line)[0] if line.strip() else None
                    if row is not None and row.get("metric") == metric:
                        return row
                block *= 2
        return None

    @staticmethod
    def parse_metrics_line(line: bytes) -> dict[str, Any] | None:
        """One line of ``metrics.jsonl`` as a row, or None when it is not one."""
        return _metrics_row(line)[0]

    def scan_metrics(self) -> MetricsScan:
        """Read ``metrics.jsonl`` line by line, keeping every good row and recording what is wrong with the
        rest: lines that are not JSON or not a metrics row, NUL bytes (stripped first, so a row written
        after NUL padding is kept), and an unterminated last line (a torn append: never a row, since the
        writer always ends a row with a newline and resume recomputes it)."""
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            data = b""
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: b"" unless the last write was cut off
        torn_at = len(data) - len(tail) if tail else None
        rows: list[dict[str, Any]] = []
        bad: list[tuple[int, str]] = []
        nul_bytes, nul_lines = 0, []
        for n, line in enumerate(lines, 1):
            if b"\0" in line:
                nul_bytes += line.count(b"\0")
                nul_lines.append(n)
                line = line.replace(b"\0", b"")
            if not line.strip():
                continue
            row, why = _metrics_row(line)
            if row is None:
                bad.append((n, why or "bad"))
            else:
                rows.append(row)
        if tail and b"\0" in tail:
            nul_bytes += tail.count(b"\0")
            nul_lines.append(len(lines) + 1)
            if not tail.strip(b"\0"):  # nothing but padding: not a torn row
                torn_at = None
        return MetricsScan(rows, bad, torn_at, nul_bytes, nul_lines)

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
