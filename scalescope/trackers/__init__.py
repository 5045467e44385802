"""Optional mirrors of each run's metrics in TensorBoard, MLflow and Weights & Biases: the experiment's ``[log]`` table.

The store (``metrics.jsonl``) stays the source of truth; a mirror only observes. So the ``[log]`` table is not part of
the run id, and a tracker that fails (cannot open, raises mid-run) never fails the run: :class:`Mirror` prints one
warning on stderr, records it in :attr:`Mirror.warnings` and drops that tracker for the rest of the run.

Each tracker is one module here and one line in :data:`REGISTRY`; its library is imported only when the tracker is on,
never at ``import scalescope``. A module defines ``open(log: LogConfig, ctx: Opening) -> Tracker``.

Resume: ``start_step`` is the step of the checkpoint the run resumed from (None: the run starts from step 0, fresh or
restarted). A resumed run appends only rows at steps after it, the same rule as ``metrics.jsonl`` (train.py truncates
the file to the checkpoint's offset), and each tracker drops or skips what an earlier attempt mirrored after that step:
TensorBoard purges those steps (``purge_step``), MLflow and W&B skip the steps of each metric they already hold.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import unknown_key
from ..errors import ConfigError
from .base import LogConfig, Opening, Tracker, flatten

__all__ = ["REGISTRY", "LogConfig", "Mirror", "Opening", "Tracker", "flatten", "open_trackers", "parse_log"]


def _tensorboard(log: LogConfig, ctx: Opening) -> Tracker:
    from . import tensorboard

    return tensorboard.open(log, ctx)


def _mlflow(log: LogConfig, ctx: Opening) -> Tracker:
    from . import mlflow

    return mlflow.open(log, ctx)


def _wandb(log: LogConfig, ctx: Opening) -> Tracker:
    from . import wandb

    return wandb.open(log, ctx)


@dataclass(frozen=True)
class _Entry:
    opener: Callable[[LogConfig, Opening], Tracker]  # imports the tracker's module (and its library) only now
    package: str  # the import name that must be installed
    extra: str  # pip install 'scalescope[<extra>]'


# One line per tracker; the key is its switch in [log]. Plain imports inside the openers (not importlib by
# name), so the static import graph (tests/test_architecture.py) sees every edge.
REGISTRY: dict[str, _Entry] = {
    "tensorboard": _Entry(_tensorboard, "tensorboard", "tensorboard"),
    "mlflow": _Entry(_mlflow, "mlflow", "mlflow"),
    "wandb": _Entry(_wandb, "wandb", "wandb"),
}


def parse_log(raw: Any, file: str | None) -> LogConfig:
    """The ``[log]`` table (None when absent) as a :class:`LogConfig`; ConfigError names ``log.<key>``."""
    if raw is None:
        return LogConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a table, got {raw!r}", file=file, field="log")
    names = [f.name for f in fields(LogConfig)]
    for key, value in raw.items():
        if key not in names:
            raise unknown_key(key, names, f"log.{key}", file)
        if key in REGISTRY:
            if not isinstance(value, bool):
                raise ConfigError(f"expected true or false, got {value!r}", file=file, field=f"log.{key}")
        elif not (value is None or isinstance(value, str)) or value == "":
            raise ConfigError(f"expected a non-empty string, got {value!r}", file=file, field=f"log.{key}")
    log = LogConfig(**raw)
    for key, switch in (("mlflow_uri", "mlflow"), ("mlflow_experiment", "mlflow"), ("wandb_project", "wandb")):
        if getattr(log, key) is not None and not getattr(log, switch):
            raise ConfigError(f"only applies with log.{switch} = true", file=file, field=f"log.{key}")
    for name, entry in REGISTRY.items():
        if getattr(log, name) and importlib.util.find_spec(entry.package) is None:
            raise ConfigError(
                f"needs the {entry.package} package: pip install 'scalescope[{entry.extra}]'",
                file=file,
                field=f"log.{name}",
            )
    return log


class Mirror:
    """The trackers of one run. A tracker that raises is dropped with one warning; the run goes on."""

    def __init__(self, run_id: str, trackers: dict[str, Tracker] | None = None, warnings: list[str] | None = None):
        self.run_id = run_id
        self.trackers: dict[str, Tracker] = dict(trackers or {})
        self.warnings: list[str] = list(warnings or [])

    def log(self, rows: list[dict[str, Any]]) -> None:
        """Mirror rows as train.py appends them to metrics.jsonl (step, tokens, flops, wall_s, metric, value)."""
        if rows:
            for name, tracker in list(self.trackers.items()):
                self._call(name, tracker.log, rows)

    def close(self, status: str) -> None:
        """End every tracker's run with the run's final state: finished, diverged or failed."""
        for name, tracker in list(self.trackers.items()):
            self._call(name, tracker.close, status)
        self.trackers.clear()

    def _call(self, name: str, method: Any, arg: Any) -> None:
        try:
            method(arg)
        except Exception as e:  # a mirror never fails the run: metrics.jsonl already holds these rows
            self.trackers.pop(name, None)
            self.warnings.append(_warn(name, self.run_id, e))


def _warn(name: str, run_id: str, e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    msg = f"log.{name}: disabled for run {run_id} after {type(e).__name__}: {first} (metrics.jsonl is unaffected)"
    print(f"warning: {msg}", file=sys.stderr, flush=True)
    return msg


def open_trackers(
    log: LogConfig,
    run_dir: Path,
    run_id: str,
    config: dict[str, Any],
    *,
    experiment: str,
    start_step: int | None,
    history: list[dict[str, Any]] | None = None,
) -> Mirror:
    """Open the trackers ``log`` turns on for one run; a :class:`Mirror` that does nothing when none is.

    ``start_step``: the step of the checkpoint the run resumes from, or None when it starts from step 0.
    A tracker that cannot open is left out with one warning (see :class:`Mirror`). ``history``: the rows
    metrics.jsonl already holds (up to ``start_step``), mirrored first, so that a tracker switched on for a run
    already under way, or one whose earlier attempt died before it flushed (W&B's service loses what it had
    not written when its process is killed), still holds every step: TensorBoard rebuilds its view from them,
    MLflow and W&B skip the steps they already hold.
    """
    ctx = Opening(Path(run_dir), run_id, config, experiment, start_step)
    trackers: dict[str, Tracker] = {}
    warnings: list[str] = []
    for name, entry in REGISTRY.items():
        if not getattr(log, name):
            continue
        try:
            trackers[name] = entry.opener(log, ctx)
        except Exception as e:
            warnings.append(_warn(name, run_id, e))
    mirror = Mirror(run_id, trackers, warnings)
    mirror.log(history or [])
    return mirror


def check_reachable(log: LogConfig, file: str | None) -> None:
    """Raise a one-line :class:`ConfigError` when ``log.mlflow_uri`` names an HTTP server that does not answer:
    MLflow's client would retry for minutes at every run's start (measured: 4 min 23 s for one 30-step run)
    before the tracker gives up. Called once by the driver, before any run starts."""
    from urllib.parse import urlparse

    uri = log.mlflow_uri if log.mlflow else None
    if not uri:
        return
    u = urlparse(uri)
    if u.scheme not in ("http", "https"):
        return
    import socket

    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname or "127.0.0.1", port), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"no MLflow server answers at {uri} ({e.strerror or e}); start one or leave mlflow_uri out for a local "
            "file store",
            file=file,
            field="log.mlflow_uri",
        ) from None
