"""The executor protocol: a run spec, the worker that trains it, and what an executor must offer.

A :class:`RunSpec` is plain picklable data, and the worker (:func:`execute`) is a pure function of it that
writes only the spec's run directory, so a Ray task or a Slurm job can run the same spec unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import RunConfig
from ..rundir import RunDir, is_unwritable
from ..runlock import RunLock
from ..trackers import LogConfig
from ..train import Outcome, done_outcome, train

# The status of an Outcome whose run another worker holds (see scalescope.runlock): not trained here, and
# nothing written; the driver waits for that worker instead.
ELSEWHERE = "elsewhere"


@dataclass(frozen=True)
class RunSpec:
    config: RunConfig
    run_dir: str
    cache_dir: str
    threads: int | None = None
    # Which of the machine's GPUs the run trains on (an index into the GPUs this process sees); set by the
    # local executor when several runs share the GPUs (runs_per_gpu). None: the device train.device picks.
    gpu: int | None = None
    # The experiment's [log] table (scalescope.trackers.LogConfig): metric mirrors to TensorBoard, MLflow,
    # W&B. Observation only: not part of the run's identity. None: no mirrors.
    log: LogConfig | None = None
    experiment: str = ""


class Executor(Protocol):
    def submit(self, spec: RunSpec) -> Future[Outcome]: ...

    def shutdown(self, cancel: bool = False) -> None: ...


def execute(spec: RunSpec) -> Outcome:
    """The worker: train the spec's run (or resume it, or skip it if done) while holding its lock.

    Safe in any process, and never raises (but for KeyboardInterrupt): a run another worker holds comes
    back as ``Outcome(id, "elsewhere")`` with the run directory untouched, and a failure that could not
    even be recorded in the run directory (disk full, permission lost) comes back as ``failed`` and is
    reported on stderr with the reason.
    """
    rd = RunDir(Path(spec.run_dir))
    try:
        done, _ = done_outcome(spec.config, rd)
        if done is not None:  # nothing to write, so no lock to take
            return done
        lock = RunLock(rd)
        if not lock.acquire():
            return Outcome(rd.id, ELSEWHERE, error=f"running elsewhere ({lock.holder()})")
    except OSError as e:
        return unrecorded(rd.id, "the run could not be claimed", e)
    try:
        return _train(spec, rd, lock.confirm)
    finally:
        if lock.lost:  # stalled past STALE_S and another worker took the run over: it stopped writing then
            print(f"run {rd.id}: its lock was taken over by another worker; this one stopped", file=sys.stderr)
        try:
            lock.release()
        except OSError as e:  # a lock left behind goes stale and is taken over: say so, do not fail
            print(f"run {rd.id}: its lock could not be removed ({e.strerror or e})", file=sys.stderr)


def _train(spec: RunSpec, rd: RunDir, guard: Callable[[], None]) -> Outcome:
    try:
        return train(
            spec.config,
            spec.run_dir,
            cache_dir=spec.cache_dir,
            threads=spec.threads,
            guard=guard,
            log=spec.log,
            experiment=spec.experiment,
        )
    except Exception as e:  # train() records every failure; this one it could not write
        cause = e.__context__
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "the run failed"
        return unrecorded(rd.id, what, e)


def unrecorded(run_id: str, what: str, err: BaseException) -> Outcome:
    """A failed outcome for a run whose status could not be written, reported on stderr at once (the
    status file may still say ``running``; the terminal is the only place left to tell)."""
    why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    where = f" ({err.filename})" if isinstance(err, OSError) and err.filename else ""
    msg = f"{what}; its status could not be written: {type(err).__name__}: {why}{where}"
    print(f"run {run_id}: status could not be written{where}: {why}", file=sys.stderr, flush=True)
    return Outcome(run_id, "failed", error=msg, unwritable=is_unwritable(err))
