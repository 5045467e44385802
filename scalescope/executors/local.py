"""Local executor: one process per run, at most ``workers`` at a time, ``cores // workers`` threads each.

Why processes and not threads, and one thread per run by default: on a 2-core CPU two single-thread
runs give ~1.94x one run, while one two-thread run gives ~1.7x and collapses when another process is
busy (measured, see DESIGN.md). Why a process per run rather than a pool: a run that crashes the
interpreter (segfault, OOM kill) then takes down only itself; its outcome is read from its run dir.

The executor reads a run directory and writes into it only in that case: a worker that died could not
record its failure, so :func:`_outcome` records it for it (see :mod:`scalescope.rundir` on who writes what).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from ..rundir import ENDED_STATES, RunDir
from ..train import Outcome
from .base import RunSpec, execute


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the driver dies, so a killed sweep leaves no orphan
    writing into a run directory that a restarted sweep is about to resume."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(spec: RunSpec) -> None:
    _die_with_parent()
    execute(spec)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class LocalExecutor:
    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None):
        self.workers = max(1, workers or default_workers())
        cores = os.cpu_count() or 1
        self.threads = threads_per_worker or max(1, cores // self.workers)
        self._ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        self._queue: list[tuple[RunSpec, Future[Outcome]]] = []
        self._running: dict[int, tuple[mp.process.BaseProcess, RunSpec, Future[Outcome]]] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, spec: RunSpec) -> Future[Outcome]:
        if spec.threads is None:
            spec = RunSpec(spec.config, spec.run_dir, spec.cache_dir, self.threads)
        fut: Future[Outcome] = Future()
        with self._lock:
            self._queue.append((spec, fut))
        return fut

    def _loop(self) -> None:
        while not self._stop:
            with self._lock:
                for pid, (proc, spec, fut) in list(self._running.items()):
                    if not proc.is_alive():
                        proc.join()
                        del self._running[pid]
                        fut.set_result(_outcome(spec, proc.exitcode))
                while self._queue and len(self._running) < self.workers:
                    spec, fut = self._queue.pop(0)
                    if not fut.set_running_or_notify_cancel():
                        continue
                    proc = self._ctx.Process(target=_worker_main, args=(spec,), daemon=False)
                    proc.start()
                    assert proc.pid is not None  # set by start()
                    self._running[proc.pid] = (proc, spec, fut)
            time.sleep(0.05)

    def shutdown(self, cancel: bool = False) -> None:
        with self._lock:
            if cancel:
                for _, fut in self._queue:
                    fut.cancel()
                self._queue.clear()
                for proc, _, _ in self._running.values():
                    proc.terminate()
        while True:
            with self._lock:
                if not self._queue and not self._running:
                    break
            time.sleep(0.05)
        self._stop = True
        self._thread.join()


def _outcome(spec: RunSpec, exitcode: int | None) -> Outcome:
    """Read the outcome a worker left in its run directory. A worker that exited without recording an end
    died (killed, crashed the interpreter): the executor writes its failure, the one write it makes."""
    rd = RunDir(Path(spec.run_dir))
    st = rd.read_status()
    state = st.get("state", "pending")
    if state in ENDED_STATES:
        return Outcome(rd.id, state, st.get("step", 0), st.get("final_val_loss"), st.get("error") or st.get("reason"))
    why = f"worker process died (exit code {exitcode})"
    rd.write_status("failed", error=why, step=st.get("step", 0))
    return Outcome(rd.id, "failed", st.get("step", 0), error=why)
