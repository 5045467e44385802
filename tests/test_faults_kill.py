"""Kills in the middle of a write (issue 12 item 7): a worker SIGKILLed halfway through a checkpoint, a status,
a lock or an append of metrics, again and again, must never lose the run: the next worker takes over the dead
one's lock, resumes, and ends with the metrics of an uninterrupted run, bitwise; the store stays readable
throughout and ``scalescope check --repair`` leaves it clean.

``SCALESCOPE_FAULT=kill_after:N`` (scalescope/faults.py) kills the worker at its N+1-th write, after the
temporary file of an atomic write is complete but before its rename, or after half the bytes of an append.
"""

from __future__ import annotations

import os
import subprocess
import sys

from scalescope.executors.base import RunSpec, execute
from scalescope.faults import ENV
from scalescope.store import Store, load
from scalescope.storecheck import check_store
from scalescope.sweep import load_experiment

from .conftest import ROOT
from .test_resume import deterministic_rows

WORKER = """
import pickle, sys
from scalescope.executors.base import execute
execute(pickle.loads(bytes.fromhex(sys.argv[1])))
"""

# Which write of each successive worker is cut. Per worker process a run's writes go: lock, then (first
# worker) meta, status "running", then per evaluation one append, one checkpoint and one status, and a
# checkpoint and status every 5 steps between evaluations. Small values land on the lock, the meta and the
# first status; the others spread over appends, checkpoints and statuses of later steps.
KILL_AT = (0, 1, 2, 4, 7, 11)


def test_kills_in_the_middle_of_writes_never_lose_the_run(tiny_toml, tmp_path):
    import pickle

    exp = load_experiment(tiny_toml(tokens=8 * 16 * 60, eval_every=10, checkpoint_every=5))
    cfg = exp.runs[0]

    ref_store = Store(tmp_path / "ref").ensure_writable()
    ref = ref_store.add(cfg)
    assert execute(RunSpec(cfg, str(ref.path), str(ref_store.cache_dir), threads=1)).status == "finished"

    store = Store(tmp_path / "killed").ensure_writable()
    rd = store.add(cfg)
    spec = pickle.dumps(RunSpec(cfg, str(rd.path), str(store.cache_dir), threads=1)).hex()
    kills = 0
    for n in KILL_AT:
        env = {**os.environ, "PYTHONPATH": str(ROOT), ENV: f"kill_after:{n}"}
        proc = subprocess.run([sys.executable, "-c", WORKER, spec], env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode == 0:
            break  # the run finished before the N-th write of this worker
        assert proc.returncode == -9, proc.stderr  # killed by the fault, nothing else went wrong
        kills += 1
        # Between kills the store stays readable: a torn last line is a crash artifact, not an error.
        load(store.path)
    assert kills == len(KILL_AT), f"only {kills} kills landed: lengthen the run"
    assert rd.read_status().get("state") != "finished"

    out = execute(RunSpec(cfg, str(rd.path), str(store.cache_dir), threads=1))
    assert out.status == "finished", out.error
    assert deterministic_rows(store.path) == deterministic_rows(ref_store.path)
    assert load(store.path).problems == []
    repaired = check_store(store.path, repair=True)  # stale temp files of the cut atomic writes, if any
    assert check_store(store.path).healthy, [f.line() for f in repaired.findings]
    assert not rd.lock_path.exists()
