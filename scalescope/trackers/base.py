"""What every tracker module shares: the ``[log]`` table, what a tracker is told when it opens, its protocol.

A module of its own so that the tracker modules import it, not the package that imports them (no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# The switches of the [log] table, one per tracker (scalescope.trackers.REGISTRY has the same keys).
TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass(frozen=True)
class LogConfig:
    """The experiment's ``[log]`` table. Observation only: not part of the run id."""

    tensorboard: bool = False  # event files in <run_dir>/tensorboard/
    mlflow: bool = False
    mlflow_uri: str | None = None  # default: the file store <store>/mlruns
    mlflow_experiment: str | None = None  # default: the scalescope experiment name
    wandb: bool = False  # always offline (no network at run time): files under <store>/wandb
    wandb_project: str | None = None  # default: the scalescope experiment name

    def any(self) -> bool:
        return any(getattr(self, name) for name in TRACKERS)


@dataclass(frozen=True)
class Opening:
    """What a tracker is told when it opens: the run, where the store is, and where to resume."""

    run_dir: Path
    run_id: str
    config: dict[str, Any]  # scalescope.config.to_dict output
    experiment: str
    start_step: int | None  # the checkpoint's step on resume; None when the run starts from step 0

    @property
    def store(self) -> Path:
        return self.run_dir.parent.parent  # <store>/runs/<id>


class Tracker(Protocol):
    def log(self, rows: list[dict[str, Any]]) -> None: ...

    def close(self, status: str) -> None: ...


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys (``model.d_model``), the form hyperparameter tables of all three take."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out
