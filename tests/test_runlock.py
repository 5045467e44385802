"""The run lock: one holder at a time, stale locks taken over, live ones never, heartbeats that advance."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scalescope.errors import StoreError
from scalescope.runlock import HOST, Holder, RunLock


def _run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs" / "abc123"
    d.mkdir(parents=True)
    return d


def _write_lock(d: Path, **fields: object) -> None:
    rec = {"host": HOST, "pid": os.getpid(), "token": "theirs", "started": time.time(), "heartbeat": time.time()}
    (d / "lock").write_text(json.dumps({**rec, **fields}))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: the pid is free (reuse within this test is vanishingly unlikely)
    return p.pid


def test_exactly_one_of_many_threads_acquires(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    locks = [RunLock(d) for _ in range(8)]
    barrier = threading.Barrier(len(locks))
    won: list[bool] = [False] * len(locks)

    def go(i: int) -> None:
        barrier.wait()
        won[i] = locks[i].acquire()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(locks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1
    winner = locks[won.index(True)]
    h = RunLock(d).holder()
    assert h is not None and h.token == winner.token and h.pid == os.getpid() and h.host == HOST
    winner.release()
    assert not (d / "lock").exists()


def _acquire_in_process(d: str, start: float, q: mp.Queue) -> None:  # type: ignore[type-arg]
    while time.time() < start:
        time.sleep(0.001)
    lock = RunLock(d)
    got = lock.acquire()
    q.put(got)
    time.sleep(1.0)  # hold it while the others try
    if got:
        lock.release()


def test_exactly_one_of_several_processes_acquires(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    ctx = mp.get_context("fork")  # no torch in these children: fork is safe and fast
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = time.time() + 0.5
    procs = [ctx.Process(target=_acquire_in_process, args=(str(d), start, q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(timeout=20)
    assert sorted(results) == [False, False, False, True]
    assert not (d / "lock").exists()  # the winner released it


def test_lock_of_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    _write_lock(d, pid=_dead_pid())  # fresh heartbeat, but its process is gone
    lock = RunLock(d)
    assert lock.acquire()
    h = lock.holder()
    assert h is not None and h.token == lock.token and h.pid == os.getpid()
    assert [p.name for p in d.iterdir()] == ["lock"]  # the stale file was removed, not left renamed
    lock.release()


def test_lock_with_an_old_heartbeat_is_taken_over(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    _write_lock(d, host="another-host", pid=1, heartbeat=time.time() - 120)
    lock = RunLock(d, stale_s=60)
    assert lock.acquire()
    lock.release()


def test_fresh_lock_of_a_live_process_is_not_taken(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    _write_lock(d)  # this very process, heartbeat now
    lock = RunLock(d)
    assert not lock.acquire()
    held = lock.held_by_other()
    assert held is not None and held.token == "theirs"
    with pytest.raises(StoreError, match="held by another worker"):
        with RunLock(d):
            pass
    # and so is a live process on another host whose heartbeat is recent
    _write_lock(d, host="another-host", pid=1)
    assert not RunLock(d).acquire()


def test_half_written_lock_is_stale_only_after_stale_s_by_mtime(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    (d / "lock").write_text('{"host": "x", "pi')  # a worker killed while creating it
    assert not RunLock(d, stale_s=60).acquire()
    old = time.time() - 120
    os.utime(d / "lock", (old, old))
    lock = RunLock(d, stale_s=60)
    assert lock.acquire()
    lock.release()


def test_release_does_not_remove_someone_elses_lock(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    lock = RunLock(d)
    assert lock.acquire()
    _write_lock(d, token="someone-else")  # as if our lock had been taken over while we were stalled
    lock.release()
    h = RunLock(d).holder()
    assert h is not None and h.token == "someone-else"


def test_heartbeat_advances_and_stops_when_the_lock_is_lost(tmp_path: Path) -> None:
    d = _run_dir(tmp_path)
    lock = RunLock(d, heartbeat_s=0.05)
    assert lock.acquire()
    first = lock.holder()
    assert first is not None
    time.sleep(0.3)
    later = lock.holder()
    assert later is not None and later.heartbeat > first.heartbeat and later.token == first.token
    assert later.started == first.started
    _write_lock(d, token="someone-else")
    time.sleep(0.3)
    assert lock.lost
    h = lock.holder()
    assert h is not None and h.token == "someone-else"  # the heartbeat did not overwrite it
    lock.release()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_a_lock_that_cannot_be_written_raises_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    d = _run_dir(tmp_path)
    monkeypatch.setenv("SCALESCOPE_FAULT", "enospc_after:0")
    monkeypatch.setattr("scalescope.faults._writes", 0)
    with pytest.raises(OSError, match="No space left"):
        RunLock(d).acquire()
    assert list(d.iterdir()) == []


def test_holder_of_a_dead_process_is_not_alive() -> None:
    assert not Holder(HOST, _dead_pid(), "t", 0, time.time()).alive()
    assert Holder(HOST, os.getpid(), "t", 0, time.time()).alive()
    assert Holder("another-host", _dead_pid(), "t", 0, time.time()).alive()  # not ours to check: heartbeat decides
    p = subprocess.Popen(["sleep", "30"])
    p.kill()
    time.sleep(0.2)
    try:
        if sys.platform.startswith("linux"):
            assert not Holder(HOST, p.pid, "t", 0, time.time()).alive()  # a zombie, not yet reaped
    finally:
        p.wait()


def test_a_worker_whose_lock_was_taken_over_stops_writing(tiny_toml, tmp_path: Path) -> None:
    # A worker stopped (SIGSTOP, a suspended VM) past the stale timeout loses its run to another worker;
    # when it wakes it must not write beside the new owner (issue 12's hostile test: 755 rows written twice).
    from scalescope.store import Store
    from scalescope.sweep import load_experiment
    from scalescope.train import train

    cfg = load_experiment(tiny_toml(tokens=8 * 16 * 60, eval_every=10, checkpoint_every=5)).runs[0]
    store = Store(tmp_path / "s").ensure_writable()
    rd = store.add(cfg)
    lock = RunLock(rd.path)
    assert lock.acquire()
    calls = {"n": 0}

    def guard() -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # another worker takes the run over here (as after a stale heartbeat)
            _write_lock(rd.path, pid=os.getpid() + 1, token="the-new-owner")
            rows_at_takeover.append(rd.metrics_path.read_bytes())
            status_at_takeover.append(rd.status_path.read_bytes())
        lock.confirm()

    rows_at_takeover: list[bytes] = []
    status_at_takeover: list[bytes] = []
    out = train(cfg, rd.path, cache_dir=store.cache_dir, threads=1, guard=guard)
    lock.release()
    assert out.status == "failed" and "taken over" in (out.error or "")
    # Nothing written after the takeover: not a row, not a status (not even "failed"), and the new owner's lock stays.
    assert rd.metrics_path.read_bytes() == rows_at_takeover[0]
    assert rd.status_path.read_bytes() == status_at_takeover[0]
    assert json.loads((rd.path / "lock").read_text())["token"] == "the-new-owner"
    assert lock.lost
