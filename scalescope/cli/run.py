"""``scalescope run EXPERIMENT --store DIR``: train every run of an experiment (skips finished, resumes the rest)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import add_store, check_positive

__all__ = ["add_parser", "builtin_experiments", "resolve_experiment", "run_and_summarize"]

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


def builtin_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))


def resolve_experiment(arg: str) -> Path:
    """A path to a TOML file, or the name of a built-in experiment (``sgd_vs_adamw``, ...)."""
    p = Path(arg)
    if p.exists() or p.suffix == ".toml" or os.sep in arg:
        return p
    builtin = EXPERIMENTS_DIR / f"{arg}.toml"
    if builtin.is_file():
        return builtin
    raise ConfigError(f"no such file, and not a built-in experiment ({', '.join(builtin_experiments())})", file=arg)


def add_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="train every run of an experiment file (skips finished runs, resumes the rest)")
    r.add_argument(
        "experiment",
        help="experiment TOML file, or a built-in experiment by name: " + ", ".join(builtin_experiments()),
    )
    add_store(r, help="store directory (created if missing)")
    add_workers(r)
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.set_defaults(fn=cmd_run)


def add_workers(p: argparse.ArgumentParser) -> None:
    """The options of every command that trains a sweep: parallelism, and consent to a costly plan."""
    p.add_argument("--workers", type=int, default=None, help="runs trained in parallel (default: one per core)")
    p.add_argument(
        "--yes",
        action="store_true",
        help="train even when a run's estimated time (over 24 h) or memory looks implausible for this machine",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per run (default: cores // workers; use 1 on a machine shared with other jobs)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from ..store import Store
    from ..sweep import load_experiment

    check_positive(args, "workers", "threads")
    exp = load_experiment(resolve_experiment(args.experiment))
    return run_and_summarize(
        exp, Store(args.store), args.workers, quiet=args.quiet, threads=args.threads, assume_yes=args.yes
    )


def run_and_summarize(
    exp: Any,
    store: Any,
    workers: int | None,
    quiet: bool = False,
    threads: int | None = None,
    assume_yes: bool = False,
) -> int:
    """Check the plan against the machine (time and memory; :mod:`scalescope.preflight`), then run the
    experiment with a progress line, then one summary line (and one line per run that did not end)."""
    from ..lab import run_experiment
    from ..preflight import check_experiment

    # Before any run directory exists: a refusal (ConfigError) leaves nothing behind.
    for line in check_experiment(exp, assume_yes=assume_yes, store=store if store.path.exists() else None):
        print(line, file=sys.stderr)

    def header(planned: list[Any]) -> None:
        n, done = len(planned), sum(p.done for p in planned)
        already = f" ({done} already done)" if done else ""
        print(f"experiment {exp.name}: {n} run{'s' * (n != 1)}{already} -> {store.path}/runs", file=sys.stderr)

    outcomes = run_experiment(exp, store, workers=workers, threads=threads, progress=not quiet, on_start=header)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    skipped = sum(o.skipped for o in outcomes)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"done: {summary}" + (f" ({skipped} already done, skipped)" if skipped else ""), file=sys.stderr)
    # Anything but a run that ended (finished, or diverged: a result too) makes the exit code non-zero, so
    # a script or scheduler never takes a sweep with failed or unrecorded runs for a complete one.
    bad = [o for o in outcomes if o.status not in ("finished", "diverged")]
    for o in bad:
        print(f"  run {o.id} {o.status}: {o.error}", file=sys.stderr)
    return 1 if bad else 0
