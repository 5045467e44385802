"""Executors send run specs somewhere to be trained and hand back their outcomes.

The protocol is deliberately tiny (:mod:`.base`): ``submit(spec) -> Future[Outcome]`` and ``shutdown()``;
:mod:`.local` runs specs in local processes.

Who writes the run directory: the driver has created it with its config before it submits the spec; the
worker owns it while it holds the run's lock (:mod:`scalescope.runlock`); a worker that cannot claim it
answers ``Outcome(id, "elsewhere")`` without writing anything; an executor writes into it only the
failure of a worker that died (see :mod:`scalescope.rundir`). :class:`~scalescope.train.Outcome` is
defined beside ``train``, which returns it: the executors only pass it on, and ``train`` must not import
the executors that call it.
"""

from __future__ import annotations

from .base import ELSEWHERE, Executor, RunSpec, execute
from .local import LocalExecutor

__all__ = ["ELSEWHERE", "Executor", "LocalExecutor", "RunSpec", "execute"]
