"""Slurm executor through submitit: each run is one task of a Slurm job array.

submitit is an optional extra (``pip install 'scalescope[slurm]'``): this module imports it, so only
:func:`scalescope.executors.make_slurm_executor` (or an explicit import) loads it, never the package.

The job's callable is :class:`RunJob`, a ``submitit.helpers.Checkpointable`` whose ``__call__(spec)`` runs
:func:`~scalescope.executors.base.execute` (the same worker as every executor: it takes the run's lock and
resumes from the run's own checkpoint). When Slurm preempts a job or its time limit nears, submitit sends
it ``SIGUSR2``, calls :meth:`RunJob.checkpoint` and requeues the job (at most ``max_requeues`` times for a
time-out; a preemption does not count); the requeued job calls ``execute`` again and resumes from the last
checkpoint on disk (the one in flight is lost: at most ``train.checkpoint_every`` steps).

Array: the lab submits one spec at a time, so :meth:`SlurmExecutor.submit` only queues it; the monitor
thread sends what has queued up as one job array (``executor.batch()``) once no submit has come for
:data:`BATCH_WINDOW_S`. Slurm's ``%N`` array throttle is ``array_parallelism``; with ``cluster="local"``
(submitit's local executor, one process per job on this machine, for tests and laptops) the monitor
itself keeps at most ``array_parallelism`` jobs running.

A job that ends without a result (killed, node failure, out of memory) is submitted again, at most
``max_requeues`` times per run, and resumes from its checkpoint; then the run's failure is written for it
(the one write an executor makes into a run directory, see :mod:`scalescope.rundir`), once the dead job's
lock has gone stale. A job whose callable raised (scalescope not importable on the node, say) fails its run
at once: a retry would only repeat it.

Shared filesystem: the store, the job folder and the Python environment (``sys.executable`` of the driver
runs the job) must be visible at the same paths on every node.
"""

from __future__ import annotations

import difflib
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import DelayedSubmission, FailedJobError

from ..errors import ConfigError
from ..rundir import ENDED_STATES, RunDir
from ..runlock import RunLock
from ..train import Outcome
from .base import ELSEWHERE, RunSpec, execute, unrecorded

__all__ = ["CLUSTERS", "RunJob", "SlurmExecutor", "check_options"]

CLUSTERS = ("slurm", "local", "debug")

# How long the monitor waits after the last submit before it sends the queued specs as one array: the lab
# submits a whole sweep in a tight loop (microseconds apart), and a resubmission arrives alone; a third of a
# second costs nothing next to a Slurm queue, and keeps a 1000-run sweep one array instead of 1000 jobs.
BATCH_WINDOW_S = 0.3
# How often the monitor looks at its jobs: a stat of each job's result file (submitit asks sacct itself, at
# most about once a minute for the whole array), cheap even for thousands of runs.
POLL_S = 0.5
# How long a finished local job may take to show its result file before it counts as dead. The file is
# renamed into place before the job's process exits, so on a local disk it is there at once; submitit's
# own 15 s wait is for network filesystems and stays in force on a real cluster.
LOCAL_RESULT_WAIT_S = 1
# How long shutdown(cancel=True) waits for cancelled jobs to release their run locks; a local job stops
# within about a second (SIGINT, then SIGKILL after 1 s); on Slurm scancel is asynchronous and we do not wait.
CANCEL_WAIT_S = 10.0

# sbatch's long options (Slurm 23.02 - 24.05). An unknown name is refused here, with the nearest known
# one, rather than by sbatch after the sweep has been planned; the ones scalescope or submitit set
# themselves have options of their own (see RESERVED).
SBATCH_OPTIONS = frozenset(
    """
    account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint container
    container-id contiguous core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot
    dependency distribution error exclude exclusive export export-file extra extra-node-info get-user-env gid
    gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint hold ignore-pbs
    input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu
    mem-per-gpu mincpus network nice no-kill no-requeue nodefile nodelist nodes ntasks ntasks-per-core
    ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output overcommit oversubscribe parsable
    partition power prefer priority profile propagate qos quiet reboot requeue reservation resv-ports segment
    signal sockets-per-node spread-job switches test-only thread-spec threads-per-core time time-min tmp
    tres-bind tres-per-task uid use-min-nodes verbose wait wait-all-nodes wckey wrap x11
    """.split()
)
# sbatch options with a dedicated executor option, or that submitit must control (its log files, the
# array, the signal that triggers checkpointing, one task per job).
RESERVED = {
    "partition": "partition",
    "time": "time_min",
    "cpus-per-task": "cpus_per_run",
    "gpus-per-node": "gpus_per_run",
    "mem": "mem_gb",
    "array": "array_parallelism",
    "job-name": None,
    "output": None,
    "error": None,
    "open-mode": None,
    "signal": None,
    "nodes": None,
    "ntasks-per-node": None,
    "wrap": None,
    "parsable": None,
    "wait": None,
    "test-only": None,
}


@dataclass(frozen=True)
class SlurmOptions:
    cluster: str = "slurm"
    partition: str | None = None
    time_min: int = 60
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    mem_gb: float | None = None
    array_parallelism: int | None = None
    sbatch_options: tuple[tuple[str, Any], ...] = ()
    max_requeues: int = 3


def _int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"expected an integer >= {lo}, got {value!r}", field=f"executor.{name}")
    return value


def check_options(
    cluster: str = "slurm",
    partition: str | None = None,
    time_min: int = 60,
    cpus_per_run: int = 1,
    gpus_per_run: int = 0,
    mem_gb: float | None = None,
    array_parallelism: int | None = None,
    sbatch_options: dict[str, Any] | None = None,
    max_requeues: int = 3,
) -> SlurmOptions:
    """The options, checked: a bad one raises a one-line :class:`ConfigError` naming ``executor.<name>``."""
    if cluster not in CLUSTERS:
        raise ConfigError(
            f"unknown cluster {cluster!r}; expected one of {', '.join(CLUSTERS)}", field="executor.cluster"
        )
    if partition is not None and (not isinstance(partition, str) or not partition.strip()):
        raise ConfigError(f"expected a partition name, got {partition!r}", field="executor.partition")
    _int("time_min", time_min, 1)
    _int("cpus_per_run", cpus_per_run, 1)
    _int("gpus_per_run", gpus_per_run, 0)
    if array_parallelism is not None:
        _int("array_parallelism", array_parallelism, 1)
    _int("max_requeues", max_requeues, 0)
    if mem_gb is not None and (isinstance(mem_gb, bool) or not isinstance(mem_gb, (int, float)) or not mem_gb > 0):
        raise ConfigError(f"expected a positive number of GB, got {mem_gb!r}", field="executor.mem_gb")
    extra: list[tuple[str, Any]] = []
    if sbatch_options is not None and not isinstance(sbatch_options, dict):
        raise ConfigError(
            f"expected a table of sbatch options, got {sbatch_options!r}", field="executor.sbatch_options"
        )
    for key, value in (sbatch_options or {}).items():
        name = str(key).lstrip("-").replace("_", "-")
        where = f"executor.sbatch_options.{key}"
        if name in RESERVED:
            own = RESERVED[name]
            why = f"use executor.{own} instead" if own else "submitit sets it itself"
            raise ConfigError(f"sbatch option --{name} cannot be given here: {why}", field=where)
        if name not in SBATCH_OPTIONS:
            near = difflib.get_close_matches(name, SBATCH_OPTIONS, n=1)
            hint = f" (did you mean --{near[0]}?)" if near else ""
            raise ConfigError(f"sbatch has no option --{name}{hint}", field=where)
        if value is False or value is None or not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"expected a string, a number or true (a bare flag), got {value!r}", field=where)
        extra.append((name.replace("-", "_"), value))  # submitit writes `_` as `-`
    if cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise ConfigError(
            "no Slurm on this machine (sbatch/srun not on PATH); run from a Slurm login node, or try the "
            "executor locally with cluster 'local' (--slurm-cluster local)",
            field="executor.cluster",
        )
    return SlurmOptions(
        cluster,
        partition,
        time_min,
        cpus_per_run,
        gpus_per_run,
        None if mem_gb is None else float(mem_gb),
        array_parallelism,
        tuple(extra),
        max_requeues,
    )


class RunJob(submitit.helpers.Checkpointable):
    """What a job runs: the worker, with the thread count of the job's CPUs. Checkpointable: on preemption
    or time-out submitit requeues ``checkpoint(spec)``, which is this same call again; the run's own
    checkpoint on disk is what it resumes from, so there is no state to carry."""

    def __call__(self, spec: RunSpec) -> Outcome:
        threads = max(1, spec.threads or 1)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # for anything the run starts
            os.environ[var] = str(threads)
        return execute(replace(spec, threads=threads))  # train() sets torch's thread count from it

    def checkpoint(self, spec: RunSpec) -> DelayedSubmission:
        return DelayedSubmission(self, spec)


@dataclass
class _Item:
    spec: RunSpec
    fut: Future[Outcome]
    job: Any = None  # the submitit job, once submitted
    given_up: str | None = None  # why the run failed, while we wait for its dead job's lock to go stale


class SlurmExecutor:
    """``submit(spec) -> Future[Outcome]`` through submitit. ``folder`` holds the jobs' pickles and logs
    (``STORE/slurm`` by convention; on a cluster it must be on the shared filesystem). Options as in
    :func:`check_options`; ``cluster``: ``"slurm"`` (sbatch), ``"local"`` (processes on this machine) or
    ``"debug"`` (in this process, one run at a time, for a debugger)."""

    def __init__(self, folder: str | Path, *, job_name: str = "scalescope", **options: Any) -> None:
        unknown = sorted(set(options) - set(SlurmOptions.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}; expected {', '.join(SlurmOptions.__dataclass_fields__)}",
                field="executor",
            )
        o = check_options(**options)
        self.options = o
        self.folder = Path(folder)
        # Locally the monitor throttles; submitit's local executor starts every job at once.
        self.parallelism = o.array_parallelism or max(1, (os.cpu_count() or 1) // o.cpus_per_run)
        try:
            self._ex = submitit.AutoExecutor(
                self.folder,
                cluster=o.cluster,
                slurm_max_num_timeout=o.max_requeues,
                local_max_num_timeout=o.max_requeues,
            )
            params: dict[str, Any] = dict(
                name=job_name,
                timeout_min=o.time_min,
                cpus_per_task=o.cpus_per_run,
                gpus_per_node=o.gpus_per_run,
                mem_gb=o.mem_gb,
                slurm_partition=o.partition,
                slurm_additional_parameters=dict(o.sbatch_options) or None,
                # Torch reads OMP_NUM_THREADS when it loads, before the job's callable runs.
                slurm_setup=[f"export OMP_NUM_THREADS={o.cpus_per_run} MKL_NUM_THREADS={o.cpus_per_run}"],
            )
            if o.array_parallelism is not None:
                params["slurm_array_parallelism"] = o.array_parallelism
            self._ex.update_parameters(**params)
        except (OSError, RuntimeError, ValueError, AssertionError, NameError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"submitit refused the options: {first}", field="executor") from None
        self._pending: list[_Item] = []
        self._running: list[_Item] = []
        self._open: list[Future[Outcome]] = []  # submitted and maybe unanswered: failed if the monitor dies
        self._deaths: dict[str, int] = {}  # run dir -> jobs of it that died, over every submit
        self._last_submit = 0.0
        self._lock = threading.Lock()
        self._stop = False
        self._cancelled = False
        self.error: BaseException | None = None  # what killed the monitor thread, if anything did
        self._thread = threading.Thread(target=self._loop, daemon=True, name="slurm-executor")
        self._thread.start()

    # --- the protocol -------------------------------------------------------------------------------
    def submit(self, spec: RunSpec) -> Future[Outcome]:
        spec = replace(spec, threads=self.options.cpus_per_run)
        fut: Future[Outcome] = Future()
        with self._lock:
            if self.error is not None:
                fut.set_exception(RuntimeError(f"the Slurm executor has stopped: {self.error!r}"))
            else:
                self._pending.append(_Item(spec, fut))
                self._open = [f for f in self._open if not f.done()] + [fut]
                self._last_submit = time.time()
        return fut

    def shutdown(self, cancel: bool = False) -> None:
        with self._lock:
            if cancel:
                self._cancelled = True
                for item in self._pending:
                    item.fut.cancel()
                self._pending.clear()
                for item in self._running:
                    self._cancel(item)
        deadline = time.time() + CANCEL_WAIT_S
        while self._thread.is_alive():  # a dead monitor has already failed every future
            with self._lock:
                if not self._pending and not self._running:
                    break
                if cancel and time.time() > deadline:
                    for item in self._running:
                        item.fut.cancel()
                    self._running.clear()
                    break
            time.sleep(0.05)
        self._stop = True
        self._thread.join()

    def _cancel(self, item: _Item) -> None:
        if item.job is None:
            return
        try:
            item.job.cancel(check=False)
        except Exception as e:  # scancel missing or refusing: the job runs on; say so
            print(f"run {_rid(item.spec)}: its job could not be cancelled ({e})", file=sys.stderr)

    # --- the monitor --------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop:
                self._tick()
                time.sleep(POLL_S if self._running else 0.05)
        except BaseException as e:
            with self._lock:
                self.error = e
                pending = self._open  # every future not yet answered, wherever the monitor left its item
                for item in self._running:
                    self._cancel(item)  # orphans would write into runs that the driver now reports failed
                self._running.clear()
                self._pending.clear()
            for fut in pending:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"the Slurm executor's monitor thread failed: {e!r}"))

    def _tick(self) -> None:
        with self._lock:
            running = list(self._running)
        # Outside the lock: a debug job runs here, and a dead job's result may take seconds to be read.
        finished = [(item, self._collect(item)) for item in running if item.given_up or item.job.done()]
        with self._lock:
            for item, out in finished:
                if item not in self._running:  # cancelled by shutdown meanwhile
                    continue
                if out is None:  # still waiting (a dead job's lock), or to be submitted again
                    if item.job is None and not item.given_up:
                        self._running.remove(item)
                        self._pending.append(item)
                    continue
                self._running.remove(item)
                item.fut.set_result(out)
                if out.unwritable:  # the store cannot be written: the queued runs would only fail the same way
                    for queued in self._pending:
                        queued.fut.cancel()
                    self._pending.clear()
            if self._pending and time.time() - self._last_submit >= BATCH_WINDOW_S:
                self._flush()

    def _flush(self) -> None:
        room = len(self._pending)
        if self.options.cluster == "local":
            room = max(0, self.parallelism - sum(1 for item in self._running if item.job is not None))
        batch: list[_Item] = []
        while self._pending and len(batch) < room:
            item = self._pending.pop(0)
            # A run submitted again after its job died is running already; a new one may have been cancelled.
            if not item.fut.running() and not item.fut.set_running_or_notify_cancel():
                continue
            try:
                # A run another live worker holds would only answer "elsewhere" after a job's queueing and
                # start-up: answer it here (the job's own claim stays the one that counts).
                held = RunLock(item.spec.run_dir).held_by_other()
            except Exception as e:  # an unreadable lock, a spec without a run directory: this run fails
                item.fut.set_result(Outcome(_rid(item.spec), "failed", error=f"its lock could not be read: {e}"))
                continue
            if held is not None:
                item.fut.set_result(Outcome(_rid(item.spec), ELSEWHERE, error=f"running elsewhere ({held})"))
                continue
            batch.append(item)
        if not batch:
            return
        try:
            with self._ex.batch():
                jobs = [self._ex.submit(RunJob(), item.spec) for item in batch]
        except Exception as e:  # sbatch refused the array (a partition that does not exist, a quota)
            why = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())[:500] or type(e).__name__
            for item in batch:
                item.fut.set_result(Outcome(_rid(item.spec), "failed", error=f"the job could not be submitted: {why}"))
            return
        for item, job in zip(batch, jobs):
            if self.options.cluster == "local":
                job._results_timeout_s = LOCAL_RESULT_WAIT_S
            item.job = job
            self._running.append(item)

    def _collect(self, item: _Item) -> Outcome | None:
        """The outcome of a finished job; None when the run goes back in the queue (its job died and may be
        retried: ``item.job`` is then None) or when it waits for the dead job's lock to go stale."""
        rd = RunDir(Path(item.spec.run_dir))  # a spec without one never got a job (see _flush)
        if item.given_up:
            return _given_up(rd, item.given_up)
        job = item.job
        try:
            out = job.result()
            if isinstance(out, Outcome):
                return out
            return Outcome(rd.id, "failed", error=f"job {job.job_id} returned {out!r}, not an outcome")
        except FailedJobError as e:  # the callable raised: execute() never does, so the job could not run it
            lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith("-")]
            cause = next(
                (ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1] if lines else ""
            )
            return Outcome(rd.id, "failed", error=f"job {job.job_id} failed: {cause.strip()} (log: {job.paths.stderr})")
        except Exception as e:  # UncompletedJobError: killed, out of memory, node lost, cancelled
            state = _job_state(job)
            why = f"job {job.job_id} ended without a result ({state}: {type(e).__name__})"
        if self._cancelled:  # shutdown(cancel=True) killed it: nothing to retry, nothing to write
            return Outcome(rd.id, "failed", error="cancelled")
        try:
            st = rd.read_status()
        except OSError as e:
            return unrecorded(rd.id, why, e)
        if st.get("state") in ENDED_STATES:  # the run ended; only its job died after that
            return Outcome(rd.id, st["state"], st.get("step", 0), st.get("final_val_loss"), st.get("error"))
        deaths = self._deaths.get(item.spec.run_dir, 0) + 1
        self._deaths[item.spec.run_dir] = deaths
        if deaths <= self.options.max_requeues:
            print(f"run {rd.id}: {why}; submitting it again ({deaths}/{self.options.max_requeues})", file=sys.stderr)
            item.job = None
            return None
        item.given_up = f"{why}, {deaths} times: given up"
        return _given_up(rd, item.given_up)


def _rid(spec: RunSpec) -> str:
    try:
        return RunDir(Path(spec.run_dir)).id
    except Exception:  # only for messages: a malformed spec still gets its failed outcome
        return str(spec.run_dir)


def _job_state(job: Any) -> str:
    try:
        return str(job.state)
    except Exception:  # sacct unreachable: the state is only for the message
        return "state unknown"


def _given_up(rd: RunDir, why: str) -> Outcome | None:
    """Fail a run whose jobs kept dying, once the last one's lock is gone or stale (None until then: the
    lock of a job on another host goes stale only after STALE_S). A live worker that took the run over
    meanwhile keeps it: its outcome is the run's."""
    try:
        st = rd.read_status()
        if st.get("state") in ENDED_STATES:
            return Outcome(rd.id, st["state"], st.get("step", 0), st.get("final_val_loss"), st.get("error"))
        lock = RunLock(rd)
        h = lock.holder()
        if h is not None and not lock.is_stale(h):
            return None
        rd.write_status("failed", error=why, step=st.get("step", 0))
        lock.clear_stale()
    except OSError as e:
        return unrecorded(rd.id, why, e)
    return Outcome(rd.id, "failed", st.get("step", 0), error=why)
