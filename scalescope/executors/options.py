"""The ``[executor]`` table of an experiment file: where its runs train, and how.

```toml
[executor]
kind = "slurm"            # local (default) | ray | slurm
partition = "gpu"
time_min = 120
gpus_per_run = 1
sbatch_options = { account = "my-lab" }
```

The table is not part of any run's identity (where a run trains is not what it is). Command-line flags
override it field by field (``--executor``, ``--ray-address``, ``--slurm-*``, ``--workers``, ``--threads``,
``--runs-per-gpu``); a ``--executor`` of another kind than the table's sets the table aside. This module only
parses and checks the table's shape (keys, types, which kind a key belongs to) at load time, without
importing Ray or submitit; each executor's factory checks the values it alone understands (a Slurm option
sbatch lacks, an unreachable Ray head) before any run directory is written.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

KINDS = ("local", "ray", "slurm")

# Each key of the table -> (the kinds it applies to, its type, what to call that type, its least value).
_INT, _NUM = ((int,), "an integer"), ((int, float), "a number")
_STR, _TABLE = ((str,), "a string"), ((dict,), "a table")
KEYS: dict[str, tuple[tuple[str, ...], tuple[tuple[type, ...], str], float | None]] = {
    "workers": (("local",), _INT, 1),  # runs trained at once (default: one per core, or GPUs x runs_per_gpu)
    "threads": (("local", "ray"), _INT, 1),  # torch threads per run (Ray: num_cpus per task)
    "runs_per_gpu": (("local",), _INT, 1),  # runs sharing one GPU, each in its own process
    "address": (("ray",), _STR, None),  # a Ray head: host:port, auto or ray://...
    "max_retries": (("ray",), _INT, 0),
    "cluster": (("slurm",), _STR, None),
    "partition": (("slurm",), _STR, None),
    "time_min": (("slurm",), _INT, 1),
    "cpus_per_run": (("slurm",), _INT, 1),
    "gpus_per_run": (("slurm", "ray"), _NUM, 0),
    "mem_gb": (("slurm",), _NUM, None),  # checked (> 0) by the Slurm executor
    "array_parallelism": (("slurm",), _INT, 1),
    "sbatch_options": (("slurm",), _TABLE, None),
    "max_requeues": (("slurm",), _INT, 0),
}


@dataclass(frozen=True)
class ExecutorTable:
    """A parsed ``[executor]`` table: its kind and its other keys as given (checked for shape)."""

    kind: str = "local"
    options: dict[str, Any] = field(default_factory=dict)
    file: str | None = None


def parse_executor(raw: Any, file: str | None) -> ExecutorTable:
    """The ``[executor]`` table, or a one-line :class:`ConfigError` naming ``executor.<key>`` and the file."""
    if raw is None:
        return ExecutorTable(file=file)
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a table, got {raw!r}", file=file, field="executor")
    kind = raw.get("kind", "local")
    if kind not in KINDS:
        raise ConfigError(
            f"expected one of {', '.join(map(repr, KINDS))}, got {kind!r}", file=file, field="executor.kind"
        )
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "kind":
            continue
        where = f"executor.{key}"
        if key not in KEYS:
            near = difflib.get_close_matches(key, [*KEYS, "kind"], n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: kind, {', '.join(KEYS)}"
            raise ConfigError(f"unknown key{hint}", file=file, field=where)
        kinds, (types, what), least = KEYS[key]
        if kind not in kinds:
            raise ConfigError(
                f"only applies to kind = {' or '.join(map(repr, kinds))}, not {kind!r}", file=file, field=where
            )
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"expected {what}, got {value!r}", file=file, field=where)
        if least is not None and isinstance(value, (int, float)) and value < least:
            raise ConfigError(f"expected a number >= {least}, got {value!r}", file=file, field=where)
        options[key] = value
    return ExecutorTable(kind, options, file)
