"""Fault injection for the fault-injection tests: make this process's store writes fail as a full disk would.

``SCALESCOPE_FAULT=enospc_after:N`` (in the environment of the process to break; spawned workers inherit
it): the first N writes through :mod:`scalescope.rundir` and the creation of a run's lock
(:mod:`scalescope.runlock`) succeed, every later one raises ``OSError(ENOSPC)``. Counts are per process
(the driver's writes and each worker's are counted apart). Lock heartbeats are not counted: they depend
on the clock, and N must pick the same write on every run of a test.

``SCALESCOPE_FAULT=kill_after:N``: the N+1-th write is cut off by SIGKILL in its middle
(:func:`maybe_die`): an atomic replace after its temporary file is written and before the rename, an
append of metrics after half its bytes. That is the worst moment a power cut or an OOM kill can pick.

Unset (always, outside tests), :func:`maybe_fail` and :func:`maybe_die` are one dictionary lookup each.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["ENV", "maybe_die", "maybe_fail"]

ENV = "SCALESCOPE_FAULT"
_writes = 0
_dying = False


def maybe_fail(path: object) -> None:
    """Raise ``OSError(ENOSPC)`` for the write to ``path`` when the injected fault says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    global _writes
    kind, _, arg = spec.partition(":")
    if kind in ("enospc_after", "kill_after"):
        _writes += 1
        if _writes > int(arg or 0):
            if kind == "kill_after":
                global _dying
                _dying = True  # maybe_die, in the middle of this write, ends the process
                return
            raise OSError(errno.ENOSPC, "No space left on device (injected by SCALESCOPE_FAULT)", str(path))


def maybe_die() -> None:
    """SIGKILL this process in the middle of the write that ``kill_after`` picked (see the module doc)."""
    if _dying:
        os.kill(os.getpid(), signal.SIGKILL)
