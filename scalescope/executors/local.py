"""Local executor: one process per run, at most ``workers`` at a time, ``cores // workers`` threads each.

Why processes and not threads, and one thread per run by default: on a 2-core CPU two single-thread
runs give ~1.94x one run, while one two-thread run gives ~1.7x and collapses when another process is
busy (measured, see DESIGN.md). Why a process per run rather than a pool: a run that crashes the
interpreter (segfault, OOM kill) then takes down only itself.

A worker sends its :class:`~scalescope.train.Outcome` back through a pipe as it exits (that is how the
driver learns of a run held elsewhere, or of a failure the worker could not write down). A worker that
died without sending one could not record its failure either, so :func:`dead_worker_outcome` records it for it,
the executor's one write into a run directory (see :mod:`scalescope.rundir` on who writes what).

No hang: the monitor thread turns every error it meets into a ``failed`` outcome of the run concerned,
and if the thread itself fails, every pending future gets that exception and later submits fail at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

from ..rundir import ENDED_STATES, RunDir
from ..runlock import HOST, RunLock
from ..train import Outcome
from .base import ELSEWHERE, RunSpec, execute, unrecorded


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the driver dies, so a killed sweep leaves no orphan
    writing into a run directory that a restarted sweep is about to resume."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(spec: RunSpec, conn: Connection) -> None:
    _die_with_parent()
    if spec.gpu is not None:  # before anything touches CUDA (it initialises lazily): this run sees one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpu(spec.gpu)
    out = execute(spec)
    if out.error and len(out.error) > 4000:  # an outcome must fit the pipe's buffer (64 KiB on Linux)
        out.error = out.error[:4000] + " ..."
    conn.send(out)
    conn.close()


def visible_gpu(index: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` entry of the ``index``-th GPU this process sees (the driver may itself
    have been limited to some GPUs: ``CUDA_VISIBLE_DEVICES=2,3`` makes index 0 GPU 2)."""
    seen = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return seen[index] if index < len(seen) else str(index)


def default_workers(gpus: int = 0, runs_per_gpu: int = 1) -> int:
    """One run per core on the CPU; ``runs_per_gpu`` runs per GPU when there are GPUs."""
    if gpus:
        return gpus * runs_per_gpu
    return max(1, os.cpu_count() or 1)


def cuda_device_count() -> int:
    """GPUs this process could use; 0 without CUDA. ``device_count`` does not create a CUDA context, so the
    driver stays free of one (its workers are fresh spawned processes anyway)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def least_loaded_gpu(gpus: int, busy: list[int | None]) -> int:
    """The GPU with the fewest running runs (the lowest index among equals), for the next run to start."""
    return min(range(gpus), key=lambda g: (busy.count(g), g))


class LocalExecutor:
    """One process per run, at most ``workers`` at once. With GPUs (``gpus``, default: all CUDA devices),
    each run that may use CUDA (``train.device`` auto or cuda) gets the least busy one, ``runs_per_gpu`` at
    most at a time by default: small models leave most of a GPU idle, and several processes fill it where
    one cannot (separate CUDA contexts, so the runs stay independent and bitwise reproducible)."""

    def __init__(
        self,
        workers: int | None = None,
        threads_per_worker: int | None = None,
        *,
        gpus: int | None = None,
        runs_per_gpu: int = 1,
    ):
        self.gpus = cuda_device_count() if gpus is None else gpus
        self.workers = max(1, workers or default_workers(self.gpus, runs_per_gpu))
        cores = os.cpu_count() or 1
        self.threads = threads_per_worker or max(1, cores // self.workers)
        self._ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        self._queue: list[tuple[RunSpec, Future[Outcome]]] = []
        self._running: list[tuple[mp.process.BaseProcess, Connection, RunSpec, Future[Outcome]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self.error: BaseException | None = None  # what killed the monitor thread, if anything did
        self._thread = threading.Thread(target=self._loop, daemon=True, name="local-executor")
        self._thread.start()

    def submit(self, spec: RunSpec) -> Future[Outcome]:
        if spec.threads is None:
            spec = replace(spec, threads=self.threads)
        fut: Future[Outcome] = Future()
        with self._lock:
            if self.error is not None:
                fut.set_exception(RuntimeError(f"the local executor has stopped: {self.error!r}"))
            else:
                self._queue.append((spec, fut))
        return fut

    def _loop(self) -> None:
        try:
            while not self._stop:
                with self._lock:
                    self._tick()
                time.sleep(0.05)
        except BaseException as e:
            with self._lock:
                self.error = e
                pending = [fut for *_, fut in self._running] + [fut for _, fut in self._queue]
                for proc, *_ in self._running:
                    proc.kill()  # orphans would write into runs that the driver now reports failed
                    proc.join(timeout=5)
                self._running.clear()
                self._queue.clear()
            for fut in pending:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"the local executor's monitor thread failed: {e!r}"))

    def _tick(self) -> None:
        for item in [r for r in self._running if not r[0].is_alive()]:
            proc, conn, spec, fut = item
            proc.join()
            out = _received(conn, spec, proc)  # before removing it: if this raised, _loop fails its future
            self._running.remove(item)
            fut.set_result(out)
            if out.unwritable:  # the store cannot be written: starting the queued runs would only fail them
                for _, queued in self._queue:
                    queued.cancel()
                self._queue.clear()
        while self._queue and len(self._running) < self.workers:
            spec, fut = self._queue.pop(0)
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                # A run another live worker holds would only answer "elsewhere" after seconds of start-up:
                # answer it here (the worker's own claim stays the one that counts).
                held = RunLock(spec.run_dir).held_by_other()
                if held is not None:
                    fut.set_result(
                        Outcome(RunDir(Path(spec.run_dir)).id, ELSEWHERE, error=f"running elsewhere ({held})")
                    )
                    continue
                if self.gpus and spec.gpu is None and spec.config.train.device != "cpu":
                    spec = replace(spec, gpu=least_loaded_gpu(self.gpus, [s.gpu for _, _, s, _ in self._running]))
                recv, send = self._ctx.Pipe(duplex=False)
                proc = self._ctx.Process(target=_worker_main, args=(spec, send), daemon=False)
                proc.start()
                send.close()  # the child has its copy; ours must go so that recv sees EOF if it dies
            except Exception as e:  # cannot fork (out of memory, process limit), unreadable lock: this run fails
                fut.set_result(Outcome(RunDir(Path(spec.run_dir)).id, "failed", error=f"worker not started: {e}"))
                continue
            self._running.append((proc, recv, spec, fut))

    def shutdown(self, cancel: bool = False) -> None:
        with self._lock:
            if cancel:
                for _, fut in self._queue:
                    fut.cancel()
                self._queue.clear()
                for proc, *_ in self._running:
                    proc.terminate()
        while self._thread.is_alive():  # a dead monitor has already failed every future
            with self._lock:
                if not self._queue and not self._running:
                    break
            time.sleep(0.05)
        self._stop = True
        self._thread.join()


def _received(conn: Connection, spec: RunSpec, proc: mp.process.BaseProcess) -> Outcome:
    """The outcome the worker sent, or, for a worker that died first, the one :func:`dead_worker_outcome` reads."""
    try:
        if conn.poll():
            out = conn.recv()
            if isinstance(out, Outcome):
                return out
    except Exception:  # nothing, or half a message: the worker died while sending
        pass
    finally:
        conn.close()
    try:
        return dead_worker_outcome(spec, proc.exitcode, proc.pid)
    except Exception as e:  # a run directory we cannot even read must not stop the monitor
        return Outcome(RunDir(Path(spec.run_dir)).id, "failed", error=f"worker process died; {e!r}")


def dead_worker_outcome(spec: RunSpec, exitcode: int | None, pid: int | None = None) -> Outcome:
    """Read the outcome a worker that died left in its run directory. One that died without recording an
    end (killed, crashed the interpreter) could not write its failure: the executor writes it, unless
    another live worker holds the run's lock (then the run is theirs, and it is running elsewhere)."""
    rd = RunDir(Path(spec.run_dir))
    st = rd.read_status()
    state = st.get("state", "pending")
    if state in ENDED_STATES:
        return Outcome(rd.id, state, st.get("step", 0), st.get("final_val_loss"), st.get("error") or st.get("reason"))
    lock = RunLock(rd)
    holder = lock.holder()
    if holder is not None and not (holder.host == HOST and holder.pid == pid) and not lock.is_stale(holder):
        return Outcome(rd.id, ELSEWHERE, error=f"running elsewhere ({holder})")
    why = f"worker process died (exit code {exitcode})"
    try:
        rd.write_status("failed", error=why, step=st.get("step", 0))
    except OSError as e:
        return unrecorded(rd.id, why, e)
    try:
        lock.clear_stale()  # the dead worker's lock; left there, the next worker takes it over anyway
    except OSError:
        pass
    return Outcome(rd.id, "failed", st.get("step", 0), error=why)
