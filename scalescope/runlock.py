"""One writer per run: a lock file in the run directory that exactly one worker holds while it trains.

The lock is a small JSON file ``{host, pid, token, started, heartbeat}``. It is taken by creating it with
``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3+, unlike ``flock``, which network
filesystems implement loosely or not at all). While the worker runs, a heartbeat thread rewrites it
every :data:`HEARTBEAT_S` seconds (temporary file + rename, so a reader never sees half a file);
:meth:`RunLock.release` removes it only if it still holds our token.

A lock is *stale*, and may be taken over, when its heartbeat is older than :data:`STALE_S`, or when it
was written on this host by a process that no longer exists. Takeover renames the stale file to a name
of our own (of two racing takers only one rename of the same source succeeds), checks that what it moved
is the file it judged stale (not a lock just refreshed or re-created by someone else), deletes it and
then creates its own with ``O_EXCL``. A file that cannot be parsed (a worker killed while creating it)
is judged by its modification time alone.

Nothing here knows about training: a Ray or Slurm worker takes the same lock around the same work
(:func:`scalescope.executors.base.execute`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import LockLost, StoreError
from .faults import maybe_fail
from .rundir import RunDir

__all__ = ["HEARTBEAT_S", "STALE_S", "Holder", "RunLock"]


# A heartbeat every 5 s costs one ~150-byte rename per run per 5 s: nothing next to a checkpoint.
HEARTBEAT_S = 5.0
# Stale after 60 s = 12 missed heartbeats: a worker stalled by swapping, a long checkpoint fsync on a
# busy disk, or clocks of two hosts a few seconds apart never lose a live lock, while the run of a worker
# that died on another host (on this host a dead pid is seen at once) waits at most a minute to be taken
# over, which is small next to the runs it protects.
STALE_S = 60.0

HOST = socket.gethostname()


@dataclass(frozen=True)
class Holder:
    """Who holds a run's lock, as its file says. ``pid == -1`` for a file that cannot be parsed."""

    host: str
    pid: int
    token: str
    started: float
    heartbeat: float

    def __str__(self) -> str:
        return f"{self.host}, pid {self.pid}" if self.pid >= 0 else "unreadable lock file"

    def alive(self) -> bool:
        """False only when we can tell the process is gone: it ran on this host and its pid is free."""
        if self.host != HOST or self.pid <= 0:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a process of another user: it exists
            return True
        try:  # a zombie (exited, not yet reaped by its parent) answers kill(0) but is dead (Linux)
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            return stat[stat.rindex(")") + 2 :][:1] != "Z"
        except (OSError, ValueError):
            return True


class RunLock:
    """The lock of one run directory. ``acquire()`` -> bool, ``release()``, ``holder()``; as a context
    manager it acquires (raising :class:`~scalescope.errors.StoreError` naming the holder if it cannot)."""

    def __init__(
        self, run_dir: str | Path | RunDir, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S
    ) -> None:
        rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
        self.run_id = rd.id
        self.path = rd.lock_path
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token: str | None = None  # ours, while we hold the lock
        self.lost = False  # set by the heartbeat when the file no longer holds our token
        self._beat_failed = False  # a heartbeat write failed (reported once)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- reading ------------------------------------------------------------------------------------
    def _read(self, path: Path | None = None) -> tuple[bytes, Holder | None, float] | None:
        """(raw bytes, parsed holder or None if unparsable, mtime), or None when there is no file."""
        p = path or self.path
        try:
            raw = p.read_bytes()
            mtime = p.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            d = json.loads(raw)
            h = Holder(str(d["host"]), int(d["pid"]), str(d["token"]), float(d["started"]), float(d["heartbeat"]))
        except (ValueError, KeyError, TypeError):
            h = None
        return raw, h, mtime

    def holder(self) -> Holder | None:
        """Who holds the lock now (stale or not), or None when the run is not locked."""
        got = self._read()
        if got is None:
            return None
        _, h, mtime = got
        return h or Holder("?", -1, "", mtime, mtime)

    def is_stale(self, holder: Holder, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - holder.heartbeat > self.stale_s or not holder.alive()

    def held_by_other(self) -> Holder | None:
        """The holder of a live lock that is not ours, else None."""
        h = self.holder()
        if h is None or h.token == self.token or self.is_stale(h):
            return None
        return h

    # --- taking and giving back ---------------------------------------------------------------------
    def _record(self, started: float) -> bytes:
        assert self.token is not None
        h = Holder(HOST, os.getpid(), self.token, started, time.time())
        return (json.dumps(asdict(h), sort_keys=True) + "\n").encode()

    def _create(self) -> bool:
        """Create the lock file with O_EXCL; False when it exists. Other errors (disk full) raise, leaving
        no file behind."""
        maybe_fail(self.path)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            self.token = uuid.uuid4().hex
            os.write(fd, self._record(time.time()))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            self.token = None
            raise
        os.close(fd)
        return True

    def clear_stale(self) -> bool:
        """Remove the lock if it is stale. True when there is no lock afterwards (cleared or absent)."""
        got = self._read()
        if got is None:
            return True
        raw, h, mtime = got
        if not self.is_stale(h or Holder("?", -1, "", mtime, mtime)):
            return False
        moved = self.path.with_name(f".{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:  # another taker moved it first (or its holder released it)
            return not self.path.exists()
        again = self._read(moved)
        if again is not None and again[0] != raw:
            # Between our read and our rename the holder refreshed it, or someone took it over and created
            # a fresh lock: it was not the stale file. Put it back without overwriting a newer lock.
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links
                os.rename(moved, self.path)
                return False
            moved.unlink(missing_ok=True)
            return False
        moved.unlink(missing_ok=True)
        return True

    def acquire(self) -> bool:
        """Claim the run: True when the lock is now ours (taking over a stale one), False when another
        worker holds a live lock. Raises ``OSError`` when the file cannot be written (disk full)."""
        if self.token is not None:
            return True
        for _ in range(3):  # a lost race to take over a stale lock is retried, a live lock is not
            if self._create():
                self._start_heartbeat()
                return True
            if not self.clear_stale():
                return False
        return False

    def confirm(self) -> None:
        """Raise :class:`~scalescope.errors.LockLost` unless the lock file still holds our token. A worker
        calls it before each group of writes (an evaluation's rows, a checkpoint, a status): one that was
        stopped (SIGSTOP, a suspended VM, a stalled disk) for longer than ``stale_s`` and whose run was taken
        over then stops instead of writing beside the new owner. (A write that starts within microseconds of
        a takeover can still land: without fencing tokens on the filesystem no lock can exclude that.)"""
        got = self._read()
        if self.token is None or got is None or got[1] is None or got[1].token != self.token:
            self.lost = True
            raise LockLost(
                f"{self.path}: this worker's claim on the run was taken over by {self.holder() or 'nobody'} "
                f"(it stalled for more than {self.stale_s:g} s); it stopped without writing more"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self.token is None:
            return
        got = self._read()
        if got is not None and got[1] is not None and got[1].token == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise StoreError(f"{self.path.parent}: run is held by another worker ({self.holder()})")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- heartbeat ----------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self.lost = False
        got = self._read()
        started = got[1].started if got and got[1] else time.time()
        self._beat = threading.Thread(target=self._heartbeat, args=(started,), daemon=True, name="runlock")
        self._beat.start()

    def beat(self, started: float | None = None) -> bool:
        """Refresh the heartbeat now; False (and ``lost`` set) when the file no longer holds our token.
        A write that fails (disk full) is reported on stderr and retried at the next beat."""
        got = self._read()
        if self.token is None or got is None or got[1] is None or got[1].token != self.token:
            self.lost = True
            return False
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self._record(got[1].started if started is None else started))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if not self._beat_failed:
                self._beat_failed = True
                print(f"run {self.run_id}: lock heartbeat could not be written ({e.strerror or e})", file=sys.stderr)
        return True

    def _heartbeat(self, started: float) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.beat(started):
                return
