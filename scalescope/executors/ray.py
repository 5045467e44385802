"""Ray executor: one Ray task per run, on a Ray cluster (``address``) or a local Ray started for the sweep.

Ray is an optional extra (``pip install 'scalescope[ray]'``): this module imports it, so only
:func:`scalescope.executors.make_executor` (or an explicit import) loads it, never the package itself.
(Inside a package, ``import ray`` is absolute: this module's name does not shadow the library.)

Each task runs :func:`~scalescope.executors.base.execute`, the same worker as the local executor, with
``num_cpus`` = threads per run. Inside the task torch's thread count (and ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` for anything the run starts) is set from the CPUs Ray assigned: Ray's own default
of one OpenMP thread per worker would otherwise silently decide it. ``meta.json`` records the count and
the node's hostname.

A worker process that dies (SIGKILL, OOM) is retried by Ray up to ``max_retries`` times. The retried task
finds the dead worker's run lock: on the same host a dead pid makes it stale at once, on another host
after :data:`scalescope.runlock.STALE_S`, and until then the task answers ``elsewhere`` and the driver
(:func:`scalescope.lab.run_experiment`) waits and resubmits. The run then resumes from its checkpoint.
Every node must see the store at the same path (a shared filesystem) and have scalescope installed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from ..errors import ConfigError
from ..rundir import RunDir
from ..train import Outcome
from .base import RunSpec, execute
from .local import dead_worker_outcome

__all__ = ["RayExecutor"]

# How long ``shutdown(cancel=True)`` waits for cancelled tasks to release their run locks before it
# disconnects: a run left locked by a live worker would otherwise wait out STALE_S before a new sweep
# could take it over. A task stops at its next Python bytecode, so a few seconds is plenty.
CANCEL_WAIT_S = 10.0
# How long we try a TCP connection to the head before calling an address unreachable: a head on the
# same network answers within milliseconds; Ray's own connect would retry for about a minute first.
CONNECT_TIMEOUT_S = 5.0

# One driver connection per process (ray.init is process-wide): the executors that share one we opened
# count themselves here, and the last one to shut down closes it. A connection the caller opened
# (ray.init before us) is theirs, and left open.
_conn_lock = threading.Lock()
_users = 0


def _run_task(spec: RunSpec) -> Outcome:
    """The body of the Ray task: threads from Ray's assignment, then the ordinary worker."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    threads = max(1, int(cpus)) if cpus else max(1, spec.threads or 1)  # a fractional CPU still runs 1
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return execute(replace(spec, threads=threads))


_remote_run: Any = None


def _remote() -> Any:
    global _remote_run
    if _remote_run is None:
        # Worker death is retried (max_retries, per submit); an exception is not: execute() never raises,
        # so one that escapes is a bug that a retry would only repeat.
        _remote_run = ray.remote(retry_exceptions=False)(_run_task)
    return _remote_run


def _check_reachable(address: str) -> None:
    """Raise a one-line ConfigError unless ``host:port`` accepts a TCP connection (other address forms,
    ``auto`` and ``ray://``, are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({e.strerror or e}); start one with `ray start --head` "
            "or pass the head's address",
            field="--ray-address",
        ) from None


def _connect(address: str | None) -> bool:
    """Connect this process to Ray (starting a local Ray when ``address`` is None). True when the
    connection is ours to close."""
    global _users
    with _conn_lock:
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if address and ":" in address and "://" not in address and address != current:
                raise ConfigError(
                    f"this process is already connected to the Ray cluster at {current}, not {address}",
                    field="--ray-address",
                )
            if _users == 0:
                return False  # the caller's connection
            _users += 1
            return True
        if address:
            _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except Exception as e:  # ConnectionError, a version mismatch, a bad address form: one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ConfigError(f"cannot connect to {where}: {first}", field="--ray-address") from None
        _users = 1
        return True


def _disconnect() -> None:
    global _users
    with _conn_lock:
        _users -= 1
        if _users == 0:
            ray.shutdown()


def _check_fits(threads: int, gpus: float) -> None:
    """Raise a one-line ConfigError when no node of the cluster has the CPUs (threads) or GPUs one run asks
    for: Ray would keep such a task pending forever, and the sweep would hang without a word. (A cluster
    that autoscales would add the node later; scalescope assumes a fixed cluster.)"""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if gpus > 0 and not any(r.get("GPU", 0) >= gpus for r in nodes):
        most = max((r.get("GPU", 0) for r in nodes), default=0)
        raise ConfigError(
            f"each run asks for {gpus:g} GPU(s) but no node of the Ray cluster has that many (most on one node: "
            f"{most:g})",
            field="executor.gpus_per_run",
        )
    if not any(r.get("CPU", 0) >= threads for r in nodes):
        most = max((r.get("CPU", 0) for r in nodes), default=0)
        raise ConfigError(
            f"each run asks for {threads} CPUs but no node of the Ray cluster has that many (most on one node: "
            f"{most:g})",
            field="executor.threads",
        )


class RayExecutor:
    """``submit(spec) -> Future[Outcome]`` on Ray. ``address``: a Ray head (``host:port``, ``auto``,
    ``ray://...``), else ``RAY_ADDRESS``, else a local Ray started here and stopped by :meth:`shutdown`."""

    def __init__(
        self,
        address: str | None = None,
        threads_per_run: int = 1,
        num_gpus_per_run: float = 0,
        max_retries: int = 3,
    ) -> None:
        if threads_per_run < 1:
            raise ConfigError(f"expected a positive number, got {threads_per_run}", field="threads_per_run")
        if num_gpus_per_run < 0:
            raise ConfigError(f"expected a number >= 0, got {num_gpus_per_run}", field="num_gpus_per_run")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.threads = threads_per_run
        self.gpus = num_gpus_per_run
        self.max_retries = max_retries
        self._owned = _connect(self.address)
        try:
            _check_fits(self.threads, self.gpus)
        except ConfigError:
            if self._owned:
                _disconnect()
            raise
        self._closed = False
        self._lock = threading.Lock()
        self._pending: dict[Any, Future[Outcome]] = {}  # ObjectRef -> our future, until it resolves

    def submit(self, spec: RunSpec) -> Future[Outcome]:
        fut: Future[Outcome] = Future()
        if self._closed:
            fut.set_exception(RuntimeError("the Ray executor has shut down"))
            return fut
        threads = spec.threads or self.threads
        spec = replace(spec, threads=threads)
        try:
            ref = _remote().options(num_cpus=threads, num_gpus=self.gpus, max_retries=self.max_retries).remote(spec)
        except Exception as e:  # the cluster went away: this run fails, the sweep goes on
            fut.set_exception(RuntimeError(f"cannot submit to Ray: {e}"))
            return fut
        fut.set_running_or_notify_cancel()
        with self._lock:
            self._pending[ref] = fut
        ref.future().add_done_callback(lambda rf: self._resolved(ref, rf, spec, fut))
        return fut

    def _resolved(self, ref: Any, rf: Future[Any], spec: RunSpec, fut: Future[Outcome]) -> None:
        """Runs on Ray's thread: it must not raise, and must always resolve ``fut``."""
        with self._lock:
            self._pending.pop(ref, None)
        try:
            out = rf.result()
            if not isinstance(out, Outcome):
                raise TypeError(f"the Ray task returned {type(out).__name__}, not an Outcome")
        except ray.exceptions.TaskCancelledError:
            # shutdown(cancel=True): the task stopped (or never started) and released its lock; the run
            # stays resumable, so nothing is written into it.
            fut.set_result(Outcome(RunDir(Path(spec.run_dir)).id, "failed", error="cancelled"))
            return
        except BaseException as e:  # retries exhausted, node lost
            try:
                # What the run directory says; a run whose worker died unrecorded is marked failed (or is
                # "elsewhere" while the dead worker's lock on another host has not yet gone stale).
                out = dead_worker_outcome(spec, None)
                if out.status == "failed" and out.error:
                    out.error = f"{out.error.split(' (exit code')[0]} on Ray: {type(e).__name__}"
            except BaseException as e2:
                fut.set_exception(RuntimeError(f"Ray task failed ({e!r}) and its run could not be read ({e2!r})"))
                return
        fut.set_result(out)

    def shutdown(self, cancel: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            pending = dict(self._pending)
        if cancel:
            for ref in pending:
                try:
                    ray.cancel(ref)  # KeyboardInterrupt in the task: execute() releases the lock
                except Exception:
                    pass
            deadline = time.time() + CANCEL_WAIT_S
            while time.time() < deadline and not all(f.done() for f in pending.values()):
                time.sleep(0.05)
        else:
            for f in pending.values():
                try:
                    f.exception()  # waits; the outcome itself went to whoever submitted
                except BaseException:
                    pass
        if self._owned:
            _disconnect()
