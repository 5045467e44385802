"""No hang, ever, and one writer per run: two drivers on one store, a full disk, a failing monitor thread
and a killed worker each end the sweep promptly, with a clear line and the right exit code."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from scalescope.errors import StoreError
from scalescope.executors import ELSEWHERE, LocalExecutor, RunSpec
from scalescope.executors.local import dead_worker_outcome
from scalescope.lab import run_experiment
from scalescope.rundir import RunDir
from scalescope.runlock import HOST, RunLock
from scalescope.store import Store
from scalescope.sweep import load_experiment
from scalescope.train import train

from .conftest import ROOT, cli_cmd

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# Generous bounds: a spawned worker takes ~2 s to import torch on an idle 2-core machine and ~5 s under the
# load of a parallel test run; a hang is "never", so any bound that a sweep of a few seconds meets is fine.
SWEEP_TIMEOUT_S = 120


def two_runs(tiny_toml, steps: int) -> Path:
    return tiny_toml('[sweep]\n"train.lr" = [0.01, 0.02]\n', tokens=8 * 16 * steps, eval_every=20, checkpoint_every=10)


def rows(rd: RunDir) -> list[dict]:
    return [json.loads(line) for line in rd.metrics_path.read_text().splitlines()]


def test_two_drivers_on_one_store_train_every_run_once(tiny_toml, tmp_path):
    # Runs long enough (150 steps, ~2 s each) that the two drivers' workers, started within a second of
    # each other, overlap on the first run: without the lock this test sees duplicate rows (checked).
    exp_file = two_runs(tiny_toml, steps=150)
    store = tmp_path / "shared"
    cmd = cli_cmd("run", str(exp_file), "--store", str(store), "--workers", "1", "--threads", "1", "--quiet")
    procs = [
        subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    # Meanwhile, the reference: each run trained alone, in this process, with the same thread count.
    exp = load_experiment(exp_file)
    ref = Store(tmp_path / "ref").ensure_writable()
    expected = {}
    for cfg in exp.runs:
        rd = ref.add(cfg)
        assert train(cfg, rd.path, cache_dir=ref.cache_dir, threads=1).status == "finished"
        expected[rd.id] = [(r["step"], r["metric"], r["value"]) for r in rows(rd) if r["metric"] != "tokens_per_s"]
    results = [p.communicate(timeout=SWEEP_TIMEOUT_S) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    shared = Store(store)
    assert sorted(shared.run_ids()) == sorted(expected)
    for rid, want in expected.items():
        rd = shared.run_dir(rid)
        got = rows(rd)
        dupes = [k for k, n in Counter((r["step"], r["metric"]) for r in got).items() if n > 1]
        assert dupes == []
        assert [(r["step"], r["metric"], r["value"]) for r in got if r["metric"] != "tokens_per_s"] == want
        assert rd.read_status()["state"] == "finished"
        assert not (rd.path / "lock").exists()


def test_disk_full_mid_run_ends_the_sweep_with_a_clear_line(tiny_toml, tmp_path):
    # Four runs, one worker: the first run's disk fills mid-training. The sweep must stop there (every other
    # run would fail the same way) with one line naming the store, exit 2, and the other runs left pending.
    exp_file = tiny_toml(
        '[sweep]\n"train.lr" = [0.01, 0.02, 0.03, 0.04]\n', tokens=8 * 16 * 60, eval_every=20, checkpoint_every=10
    )
    # The driver writes 8 files (config, status per run); the worker then gets a few writes (lock, meta,
    # statuses, metrics) and the disk is full during training, so its failure cannot be written down either.
    env = {**ENV, "SCALESCOPE_FAULT": "enospc_after:12"}
    t0 = time.time()
    done = subprocess.run(
        cli_cmd("run", str(exp_file), "--store", str(tmp_path / "s"), "--workers", "1", "--quiet"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in done.stderr
    assert "the store cannot be written, so the sweep stopped" in done.stderr
    assert "Traceback" not in done.stderr
    states = [Store(tmp_path / "s").run_dir(r).read_status().get("state") for r in Store(tmp_path / "s").run_ids()]
    assert states.count("pending") == 3, states  # the sweep did not start the others only to fail them
    assert time.time() - t0 < SWEEP_TIMEOUT_S


def test_disk_full_at_start_is_a_store_error_naming_the_path(tiny_toml, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALESCOPE_FAULT", "enospc_after:0")
    monkeypatch.setattr("scalescope.faults._writes", 0)
    store = Store(tmp_path / "s")
    with pytest.raises(StoreError, match=r"runs/[0-9a-f]+/config.json: cannot create the run directory"):
        run_experiment(load_experiment(tiny_toml()), store, workers=1, progress=False)


def test_a_failing_monitor_thread_fails_every_run_promptly(tiny_toml, tmp_path, monkeypatch):
    calls = 0
    tick = LocalExecutor._tick

    def flaky_tick(self):
        nonlocal calls
        calls += 1
        if calls > 3:  # the first run's worker has been started by then
            raise RuntimeError("boom")
        tick(self)

    monkeypatch.setattr(LocalExecutor, "_tick", flaky_tick)
    exp = load_experiment(two_runs(tiny_toml, steps=2000))  # minutes of training, were it not stopped
    t0 = time.time()
    outs = run_experiment(exp, Store(tmp_path / "s"), workers=1, threads=1, progress=False)
    assert time.time() - t0 < 30
    assert [o.status for o in outs] == ["failed", "failed"]
    assert all("monitor thread failed: RuntimeError('boom')" in (o.error or "") for o in outs)
    ex = LocalExecutor(workers=1)  # a fresh executor: its successor's submits are refused at once
    monkeypatch.setattr(LocalExecutor, "_tick", lambda self: 1 / 0)
    time.sleep(0.2)
    fut = ex.submit(RunSpec(exp.runs[0], str(tmp_path / "x"), str(tmp_path / "c")))
    with pytest.raises(RuntimeError, match="has stopped"):
        fut.result(timeout=5)
    ex.shutdown()


def test_a_killed_worker_is_recorded_failed_and_the_sweep_ends(tiny_toml, tmp_path):
    exp = load_experiment(tiny_toml(tokens=8 * 16 * 2000, eval_every=20, checkpoint_every=10))
    store = Store(tmp_path / "s")
    killed: list[int] = []

    def kill_the_worker() -> None:
        deadline = time.time() + SWEEP_TIMEOUT_S
        while time.time() < deadline and not killed:
            for rid in store.run_ids():
                h = RunLock(store.run_dir(rid)).holder()
                if h is not None and h.pid > 0 and store.run_dir(rid).read_status().get("step", 0) >= 5:
                    os.kill(h.pid, signal.SIGKILL)  # the lock names the worker that holds the run
                    killed.append(h.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    outs = run_experiment(exp, store, workers=1, threads=1, progress=False)
    killer.join()
    assert killed
    (o,) = outs
    assert o.status == "failed" and o.error == f"worker process died (exit code {-signal.SIGKILL})"
    rd = store.run_dir(o.id)
    assert rd.read_status()["state"] == "failed"
    assert not (rd.path / "lock").exists()  # the dead worker's lock was cleared with its failure


def test_driver_waits_for_a_run_held_elsewhere_and_takes_it_over_when_its_holder_dies(tiny_toml, tmp_path, capsys):
    exp = load_experiment(tiny_toml(tokens=8 * 16 * 20, eval_every=10, checkpoint_every=5))
    store = Store(tmp_path / "s").ensure_writable()
    rd = store.add(exp.runs[0])
    other = subprocess.Popen(["sleep", "60"])  # stands for a worker of another driver on this host
    (rd.path / "lock").write_text(
        json.dumps({"host": HOST, "pid": other.pid, "token": "t", "started": time.time(), "heartbeat": time.time()})
    )
    threading.Timer(2.0, other.kill).start()  # the other worker dies; its lock is stale from then on
    try:
        (o,) = run_experiment(exp, store, workers=1, threads=1, progress=False)
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err
    assert f"run {rd.id}: running elsewhere ({HOST}, pid {other.pid}); waiting" in err
    assert f"run {rd.id}: the lock of {HOST}, pid {other.pid} is stale; taking it over" in err
    assert o.status == "finished" and not o.skipped
    assert Counter((r["step"], r["metric"]) for r in rows(rd)).most_common(1)[0][1] == 1


def _running_run(tmp_path: Path, tiny_toml) -> tuple[RunSpec, RunDir]:
    cfg = load_experiment(tiny_toml()).runs[0]
    store = Store(tmp_path / "s").ensure_writable()
    rd = store.add(cfg)
    rd.write_status("running", step=7)
    return RunSpec(cfg, str(rd.path), str(store.cache_dir)), rd


def test_a_failed_status_that_cannot_be_written_is_reported_not_raised(tiny_toml, tmp_path, monkeypatch, capsys):
    spec, rd = _running_run(tmp_path, tiny_toml)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(rd.status_path))

    monkeypatch.setattr(RunDir, "write_status", full)
    out = dead_worker_outcome(spec, -9, pid=12345)
    assert out.status == "failed"
    assert "worker process died (exit code -9)" in (out.error or "")
    assert "No space left on device" in (out.error or "")
    assert f"run {rd.id}: status could not be written ({rd.status_path}): No space left" in capsys.readouterr().err


def test_a_dead_workers_run_held_by_another_live_worker_is_not_marked_failed(tiny_toml, tmp_path):
    spec, rd = _running_run(tmp_path, tiny_toml)
    other = RunLock(rd)
    assert other.acquire()  # a live worker of another driver (this process) has taken the run over
    try:
        out = dead_worker_outcome(spec, -9, pid=12345)
    finally:
        other.release()
    assert out.status == ELSEWHERE
    assert rd.read_status()["state"] == "running"


def _fill(path: Path) -> None:
    """Fill the filesystem of ``path``: one big file, then small ones until not even a page is left."""
    with open(path / "fill", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    for i in range(10_000):
        try:
            (path / f"fill{i}").write_bytes(b"\0" * 512)
        except OSError:
            break


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_filesystem_mid_run_ends_the_sweep(tiny_toml, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        exp_file = tiny_toml(tokens=8 * 16 * 3000, eval_every=20, checkpoint_every=10)
        store = mnt / "store"
        proc = subprocess.Popen(
            cli_cmd("run", str(exp_file), "--store", str(store), "--workers", "1", "--quiet"),
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + SWEEP_TIMEOUT_S
        while time.time() < deadline and proc.poll() is None:
            ids = Store(store).run_ids()
            if ids and Store(store).run_dir(ids[0]).read_status().get("step", 0) >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the disk could be filled; make it longer"
        _fill(mnt)
        t_full = time.time()
        _, err = proc.communicate(timeout=SWEEP_TIMEOUT_S)
        assert proc.returncode == 2, err  # the store cannot be written: the sweep stops (StoreError)
        assert "the sweep stopped" in err
        assert time.time() - t_full < 60
        assert "No space left on device" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_store_on_a_read_only_filesystem_is_one_line_before_anything_starts(tiny_toml, tmp_path):
    # As root, chmod cannot make a directory unwritable: a read-only mount is the real case.
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = subprocess.run(
            cli_cmd("run", str(tiny_toml()), "--store", str(mnt / "store"), "--quiet"),
            env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2
        assert r.stderr.strip() == f"error: {mnt / 'store'}: store is not writable (Read-only file system)"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
