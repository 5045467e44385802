"""Exact resume: a run SIGKILLed at arbitrary moments and restarted ends with the same metrics,
bitwise, as an uninterrupted run (same thread count, CPU)."""

import json
import os
import signal
import subprocess
import time

import pytest

from scalescope.store import load

from .conftest import ROOT, cli_cmd

TIMING = ("tokens_per_s",)  # the only metric that depends on the clock


def deterministic_rows(store):
    t = load(store)
    m = t.metrics[~t.metrics["metric"].isin(TIMING)]
    return [tuple(r) for r in m[["id", "step", "tokens", "flops", "metric", "value"]].itertuples(index=False)]


def status_of(store):
    # The driver creates runs/ before the run directory inside it: until then there is no status.
    runs = list((store / "runs").iterdir()) if (store / "runs").exists() else []
    if not runs:
        return {}
    assert len(runs) == 1
    try:
        return json.loads((runs[0] / "status").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.slow  # 45 s; a kill then an identical resume is also checked by test_faults_kill (kills inside writes)
def test_sigkill_at_arbitrary_moments_then_resume_is_bitwise_identical(tiny_toml, tmp_path):
    # 300 steps, checkpoints every 7 steps and at every eval: kills land between and during them.
    exp = tiny_toml(tokens=8 * 16 * 300, eval_every=25, checkpoint_every=7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref"
    subprocess.run(
        cli_cmd("run", str(exp), "--store", str(ref), "--workers", "1", "--quiet"),
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    kills = 0
    for wait_step in (20, 90, 180):
        proc = subprocess.Popen(
            cli_cmd("run", str(exp), "--store", str(killed), "--workers", "1", "--quiet"),
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if status_of(killed).get("step", 0) >= wait_step:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker, no chance to clean up
            kills += 1
        proc.wait()
    assert kills >= 2, "the run finished before it could be killed; make it longer"
    assert status_of(killed).get("state") != "finished"

    done = subprocess.run(
        cli_cmd("run", str(exp), "--store", str(killed), "--workers", "1", "--quiet"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert status_of(killed)["state"] == "finished"
    a, b = deterministic_rows(ref), deterministic_rows(killed)
    assert len(a) > 50
    assert a == b  # bitwise: floats compared with ==
