"""Expanding an experiment file into run configs.

The ``[sweep]`` table maps dotted config paths to lists of values; the runs are the grid product of
its axes. An axis can zip several paths, written as a parenthesised key whose values are lists::

    [sweep]
    "(model.n_layer, model.d_model, model.n_head)" = [[2, 64, 4], [4, 128, 4]]
    "train.tokens" = [1_000_000, 4_000_000]
    seed = [0, 1]

gives 2 x 2 x 2 = 8 runs.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C
from .executors.options import ExecutorTable, parse_executor
from .model import flops_per_token
from .schedule import budget_steps, check_warmup
from .trackers import LogConfig, parse_log


@dataclass
class Experiment:
    name: str
    file: str | None
    runs: list[C.RunConfig]
    # The [executor] table (where the runs train; command-line flags override it) and the [log] table
    # (metric mirrors to trackers): how the experiment is run and watched, not part of any run id.
    executor: ExecutorTable = field(default_factory=ExecutorTable)
    log: LogConfig = field(default_factory=LogConfig)


def _parse_axis(key: str, values: Any, file: str | None) -> tuple[list[str], list[tuple]]:
    where = f"sweep.{key}" if not key.startswith("(") else f'sweep."{key}"'
    if not isinstance(values, list) or not values:
        raise C.ConfigError(f"expected a non-empty list of values, got {values!r}", file=file, field=where)
    if key.startswith("(") and key.endswith(")"):
        paths = [p.strip() for p in key[1:-1].split(",") if p.strip()]
        rows = []
        for v in values:
            if not isinstance(v, list) or len(v) != len(paths):
                raise C.ConfigError(
                    f"each value must be a list of {len(paths)} items (one per path), got {v!r}",
                    file=file,
                    field=where,
                )
            rows.append(tuple(v))
        return paths, rows
    return [key], [(v,) for v in values]


def _set_path(raw: dict, path: str, value: Any, file: str | None) -> None:
    parts = path.split(".")
    valid_top = ("data", "model", "train", "instruments", "seed")
    if parts[0] not in valid_top:
        raise C.unknown_key(parts[0], list(valid_top), f"sweep.{path}", file)
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise C.ConfigError("is not a table", file=file, field=f"sweep.{path}")
    node[parts[-1]] = value


def expand(raw: dict[str, Any], file: str | None = None) -> list[C.RunConfig]:
    """Run configs of an experiment dict (as read from TOML), validated, in sweep order."""
    base = {k: v for k, v in raw.items() if k not in C.EXPERIMENT_ONLY}
    sweep = raw.get("sweep", {})
    if not isinstance(sweep, dict):
        raise C.ConfigError(f"expected a table, got {sweep!r}", file=file, field="sweep")
    axes = [_parse_axis(k, v, file) for k, v in sweep.items()]
    runs = []
    for combo in itertools.product(*[rows for _, rows in axes]):
        r = copy.deepcopy(base)
        for (paths, _), values in zip(axes, combo):
            for path, value in zip(paths, values):
                _set_path(r, path, value, file)
        try:
            cfg = C.from_dict(r, file)
            steps = run_steps(cfg)
            check_warmup(cfg.train, steps, file)
            _check_phases(cfg, steps, file)
            runs.append(cfg)
        except C.ConfigError as e:
            # Name the sweep when the bad value came from it.
            swept = {p for paths, _ in axes for p in paths}
            if e.field in swept:
                raise C.ConfigError(str(e).split(f"{e.field}: ", 1)[-1], file=file, field=f"sweep.{e.field}") from None
            raise
    _check_instruments(runs, file)
    seen: dict[str, int] = {}
    unique: list[C.RunConfig] = []
    for cfg in runs:  # identical configs (e.g. a swept field that another overrides) run once
        rid = C.run_id(cfg)
        if rid not in seen:
            seen[rid] = len(unique)
            unique.append(cfg)
    return unique


def _check_phases(cfg: C.RunConfig, steps: int, file: str | None) -> None:
    """A random-label phase (data.random_label_steps) must end before the run does, or the run never trains on
    the true labels it is compared on."""
    k = int(getattr(cfg.data, "random_label_steps", 0) or 0)
    if k >= steps:
        raise C.ConfigError(
            f"{k} steps on random labels leave none of the run's {steps} steps for the true labels",
            file=file,
            field="data.random_label_steps",
        )


def run_steps(cfg: C.RunConfig) -> int:
    """The run's length in optimizer steps, known before its data are prepared: a ``train.flops`` budget
    divides by 6N + 12 L T d per token, where N is the non-embedding count, so the vocabulary does not enter
    (any vocab_size gives the same steps as :func:`scalescope.lab.plan`)."""
    return budget_steps(cfg, flops_per_token(cfg.model, vocab_size=1))


# The tables that make an experiment; a file with none of them (empty, only comments, or only ``name`` and
# ``seed``) would silently train the default config.
CONFIG_TABLES = ("data", "model", "train", "instruments", "sweep")


def _check_instruments(runs: list[C.RunConfig], file: str | None) -> None:
    """Each run's instruments against its config (unknown names, bad options, a source an instrument cannot
    measure, positions past the context), so that such a mistake is one line before any run starts."""
    from . import instruments

    for cfg in runs:
        try:
            instruments.check(cfg)
        except C.ConfigError as e:
            raise C.ConfigError(e.message, file=file, field=e.field) from None


def load_experiment(path: str | Path) -> Experiment:
    """The experiment a TOML file describes; every mistake found without training is a :class:`ConfigError`."""
    raw = C.load_toml(path)
    if not any(k in raw for k in CONFIG_TABLES):
        raise C.ConfigError("empty experiment: expected at least a [model], [data] or [train] table", file=path)
    name = raw.get("name", Path(path).stem)
    if not isinstance(name, str):
        raise C.ConfigError(f"expected a string, got {name!r}", file=path, field="name")
    executor = parse_executor(raw.get("executor"), str(path))
    log = parse_log(raw.get("log"), str(path))
    return Experiment(name, str(path), expand(raw, str(path)), executor, log)
