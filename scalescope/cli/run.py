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
    add_executor(r)
    r.set_defaults(fn=cmd_run)


# The Slurm executor's options (scalescope.executors.slurm) as they are spelled on the command line.
SLURM_FLAGS = {
    "cluster": "--slurm-cluster",
    "partition": "--slurm-partition",
    "time_min": "--slurm-time",
    "cpus_per_run": "--slurm-cpus",
    "gpus_per_run": "--slurm-gpus",
    "mem_gb": "--slurm-mem",
    "array_parallelism": "--slurm-array-parallelism",
    "sbatch_options": "--slurm-sbatch",
}


def add_executor(p: argparse.ArgumentParser) -> None:
    """Where the runs train: local processes (default), a Ray cluster, or Slurm through submitit."""
    g = p.add_argument_group("executor (README: Running on a cluster)")
    g.add_argument(
        "--executor",
        choices=("local", "ray", "slurm"),
        default=None,
        help="where runs train: local processes (default), a Ray cluster (pip install 'scalescope[ray]') or "
        "Slurm jobs through submitit (pip install 'scalescope[slurm]'); default: the experiment's [executor] "
        "table, whose fields the flags below override",
    )
    g.add_argument(
        "--runs-per-gpu",
        type=int,
        default=None,
        help="local executor with GPUs: runs sharing each GPU, one process each (default 1)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        help="Ray head to send runs to (host:port, auto or ray://...); default $RAY_ADDRESS, else a local Ray "
        "started for this sweep",
    )
    g.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        default=None,
        help="slurm (default): sbatch; local: processes on this machine (testing); debug: in this process, for a "
        "debugger",
    )
    g.add_argument("--slurm-partition", default=None, help="Slurm partition")
    g.add_argument(
        "--slurm-time",
        type=int,
        default=None,
        help="time limit per job in minutes (default 60); a job that runs out is requeued and resumes from its "
        "checkpoint",
    )
    g.add_argument("--slurm-cpus", type=int, default=None, help="CPUs (and torch threads) per run (default 1)")
    g.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per run (default 0)")
    g.add_argument("--slurm-mem", type=float, default=None, help="memory per run in GB")
    g.add_argument("--slurm-array-parallelism", type=int, default=None, help="most runs of the job array at once")
    g.add_argument(
        "--slurm-sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra sbatch option (repeatable); a bare KEY is a flag",
    )


def make_executor(args: argparse.Namespace, store: Any, table: Any = None) -> Any:
    """The executor that ``args`` and the experiment's ``[executor]`` table (``table``, an
    :class:`~scalescope.executors.options.ExecutorTable`; flags win field by field) ask for. Built before any
    run directory is written, so an unreachable Ray head, a bad Slurm option or GPUs this machine lacks leave
    nothing behind."""
    from ..executors import LocalExecutor, make_ray_executor, make_slurm_executor
    from ..executors.local import cuda_device_count
    from ..executors.options import ExecutorTable

    table = table or ExecutorTable()
    kind = args.executor or table.kind
    if args.executor and table.kind != args.executor and table.options:
        print(
            f"note: {table.file}: the [executor] table (kind {table.kind!r}) is set aside for --executor "
            f"{args.executor}",
            file=sys.stderr,
        )
    opts = dict(table.options) if kind == table.kind else {}

    def flag_error(err: ConfigError, flags: dict[str, str]) -> ConfigError:
        """An executor's error named as the user gave the value: a flag, or the table's key in its file."""
        name = (err.field or "").removeprefix("executor.").split(".")[0]
        if name in flags and getattr(args, flags[name][2:].replace("-", "_"), None) not in (None, []):
            return ConfigError(err.message, field=flags[name])
        from_table = name in opts or args.executor is None  # the table chose this executor (and its defaults)
        return ConfigError(err.message, file=table.file if from_table else None, field=err.field)

    if kind != "ray" and args.ray_address is not None:
        raise ConfigError("only applies with --executor ray", field="--ray-address")
    # Every Slurm option defaults to None (the executor's own default applies), so "given" needs no copy of them.
    given = {name: getattr(args, flag[2:].replace("-", "_")) for name, flag in SLURM_FLAGS.items()}
    given = {k: v for k, v in given.items() if v not in (None, [])}
    if kind != "slurm" and given:
        raise ConfigError("only applies with --executor slurm", field=SLURM_FLAGS[next(iter(given))])
    if kind != "local" and args.runs_per_gpu is not None:
        raise ConfigError("only applies with the local executor", field="--runs-per-gpu")
    # Flags another executor would silently ignore: refused, with the option that does the job there.
    if kind == "slurm" and args.threads is not None:
        raise ConfigError(
            "not used by the Slurm executor: give --slurm-cpus (CPUs and torch threads per run)", field="--threads"
        )
    if kind in ("ray", "slurm") and args.workers is not None:
        instead = "--slurm-array-parallelism" if kind == "slurm" else "the cluster's CPUs (num_cpus = --threads)"
        raise ConfigError(f"not used by the {kind} executor: runs at once are set by {instead}", field="--workers")
    if kind == "ray":
        address = args.ray_address or opts.get("address")
        threads = args.threads or opts.get("threads") or 1
        try:
            return make_ray_executor(
                address,
                threads_per_run=threads,
                num_gpus_per_run=opts.get("gpus_per_run", 0),
                max_retries=opts.get("max_retries", 3),
            )
        except ConfigError as err:
            raise flag_error(err, {"address": "--ray-address", "threads": "--threads"}) from None
    if kind == "slurm":
        options = {**opts, **given}
        if args.slurm_sbatch:  # added to the table's sbatch options, a flag winning per key
            options["sbatch_options"] = {
                **opts.get("sbatch_options", {}),
                **{
                    key.strip(): value.strip() if eq else True
                    for key, eq, value in (item.partition("=") for item in args.slurm_sbatch)
                },
            }
        gpus_asked = options.get("gpus_per_run", 0)
        if options.get("cluster") in ("local", "debug") and gpus_asked and not cuda_device_count():
            flag = "--slurm-gpus" if args.slurm_gpus else "executor.gpus_per_run"
            raise ConfigError(
                "no CUDA GPU on this machine (torch.cuda.is_available() is false), where the local cluster runs",
                file=None if args.slurm_gpus else table.file,
                field=flag,
            )
        try:
            return make_slurm_executor(store.path / "slurm", **options)
        except ConfigError as err:
            raise flag_error(err, SLURM_FLAGS) from None
    runs_per_gpu = args.runs_per_gpu or opts.get("runs_per_gpu")
    gpus = cuda_device_count()
    if runs_per_gpu and not gpus:
        where = ("--runs-per-gpu", None) if args.runs_per_gpu else ("executor.runs_per_gpu", table.file)
        raise ConfigError(
            "no CUDA GPU on this machine (torch.cuda.is_available() is false)", file=where[1], field=where[0]
        )
    workers = args.workers or opts.get("workers")
    threads = args.threads or opts.get("threads")
    if not (runs_per_gpu or gpus or "workers" in opts or "threads" in opts):
        return None  # the plain local executor, made by run_experiment from --workers and --threads
    return LocalExecutor(workers, threads, gpus=gpus, runs_per_gpu=runs_per_gpu or 1)


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
    from ..trackers import check_reachable

    check_positive(args, "workers", "threads", "runs_per_gpu")
    exp = load_experiment(resolve_experiment(args.experiment))
    check_reachable(exp.log, exp.file)
    store = Store(args.store)
    executor = make_executor(args, store, exp.executor)
    try:
        return run_and_summarize(
            exp,
            store,
            args.workers,
            quiet=args.quiet,
            threads=args.threads,
            assume_yes=args.yes,
            executor=executor,
        )
    finally:
        if executor is not None:  # run_experiment shuts down only the executor it made itself
            executor.shutdown()


def run_and_summarize(
    exp: Any,
    store: Any,
    workers: int | None,
    quiet: bool = False,
    threads: int | None = None,
    assume_yes: bool = False,
    executor: Any = None,
) -> int:
    """Check the plan against the machine (time and memory; :mod:`scalescope.preflight`), then run the
    experiment with a progress line, then one summary line (and one line per run that did not end)."""
    from ..executors import LocalExecutor
    from ..lab import run_experiment
    from ..preflight import check_experiment

    # Before any run directory exists: a refusal (ConfigError) leaves nothing behind. Only for runs that train
    # here: this machine's memory, speed and GPUs say nothing about a Ray or Slurm node's.
    if executor is None or isinstance(executor, LocalExecutor):
        for line in check_experiment(exp, assume_yes=assume_yes, store=store if store.path.exists() else None):
            print(line, file=sys.stderr)

    def header(planned: list[Any]) -> None:
        n, done = len(planned), sum(p.done for p in planned)
        already = f" ({done} already done)" if done else ""
        print(f"experiment {exp.name}: {n} run{'s' * (n != 1)}{already} -> {store.path}/runs", file=sys.stderr)
        if done and exp.log.any():
            print(
                f"note: the [log] trackers mirror runs as they train: the {done} already done are not mirrored",
                file=sys.stderr,
            )

    outcomes = run_experiment(
        exp, store, workers=workers, threads=threads, progress=not quiet, on_start=header, executor=executor
    )
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
