"""The [log] mirrors: each tracker's data read back with the library's own reader, resume without duplicated steps,
a bad [log] table, and a tracker that fails mid-run (the run goes on, one warning)."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scalescope import trackers
from scalescope.errors import ConfigError
from scalescope.trackers import LogConfig, Mirror, flatten, open_trackers, parse_log

CONFIG = {"name": "r", "seed": 0, "model": {"d_model": 16, "n_layer": 2}, "instruments": {}, "tags": [1, 2]}
METRICS = ("val_loss", "hessian/top1")


def rows(steps: range | list[int], attempt: int = 1) -> list[dict[str, Any]]:
    """Rows as train.py appends them; values differ between attempts so the test sees which one a tracker keeps."""
    out = []
    for s in steps:
        for i, m in enumerate(METRICS):
            value = 1.0 / (s + 1) + i * math.pi + (attempt - 1) * 1000.0
            out.append({"step": s, "tokens": s * 64, "flops": s * 6e6, "wall_s": s * 0.1, "metric": m, "value": value})
    return out


def value(s: int, m: str, attempt: int = 1) -> float:
    return next(r["value"] for r in rows([s], attempt) if r["metric"] == m)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "store" / "runs" / "abc123"
    d.mkdir(parents=True)
    return d


def mirror(log: LogConfig, run_dir: Path, start_step: int | None = None, history: list | None = None) -> Mirror:
    m = open_trackers(log, run_dir, "abc123", CONFIG, experiment="exp", start_step=start_step, history=history)
    assert m.warnings == []
    return m


# --- the [log] table ----------------------------------------------------------------------------------------
def test_parse_log_defaults_and_values():
    assert parse_log(None, "e.toml") == LogConfig()
    assert not LogConfig().any()
    log = parse_log({"tensorboard": True, "mlflow": False}, "e.toml")
    assert log.tensorboard and log.any()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"tensorbord": True}, "e.toml: log.tensorbord: unknown key; did you mean 'tensorboard'?"),
        ({"mlflow": "yes"}, "e.toml: log.mlflow: expected true or false, got 'yes'"),
        ({"mlflow_uri": 3}, "e.toml: log.mlflow_uri: expected a non-empty string, got 3"),
        ([1], "e.toml: log: expected a table, got [1]"),
        # A setting of a tracker that is off would be ignored without a word.
        ({"mlflow_uri": "file:///x"}, "e.toml: log.mlflow_uri: only applies with log.mlflow = true"),
        ({"wandb_project": "p", "wandb": False}, "e.toml: log.wandb_project: only applies with log.wandb = true"),
    ],
)
def test_parse_log_rejects_bad_tables(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_log(raw, "e.toml")
    assert str(err.value) == message


def test_parse_log_names_the_missing_library(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        parse_log({"wandb": True}, "e.toml")
    assert str(err.value) == "e.toml: log.wandb: needs the wandb package: pip install 'scalescope[wandb]'"


def test_flatten_dots_nested_tables():
    assert flatten(CONFIG) == {
        "name": "r",
        "seed": 0,
        "model.d_model": 16,
        "model.n_layer": 2,
        "instruments": {},
        "tags": [1, 2],
    }


def test_libraries_are_imported_only_by_a_tracker_that_is_on(run_dir, monkeypatch):
    # None in sys.modules makes any import of that name raise ImportError: nothing below may import them.
    for name in ("tensorboard", "mlflow", "wandb", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    m = open_trackers(LogConfig(), run_dir, "abc123", CONFIG, experiment="exp", start_step=None)
    m.log(rows([0]))
    m.close("finished")
    assert (m.trackers, m.warnings) == ({}, [])
    # ... and no module of the package imports one at its top level (what `import scalescope` would run).
    for path in Path(trackers.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("tensorboard", "mlflow", "wandb", "torch")], path


# --- failures never fail the run ------------------------------------------------------------------------------
class Flaky:
    def __init__(self, fail_on: int):
        self.calls, self.fail_on, self.closed = 0, fail_on, ""

    def log(self, rows):
        self.calls += 1
        if self.calls == self.fail_on:
            raise ConnectionError("server went away\nsecond line")

    def close(self, status):
        self.closed = status


def test_a_failing_tracker_is_dropped_with_one_warning(capsys):
    bad, good = Flaky(fail_on=2), Flaky(fail_on=0)
    m = Mirror("abc123", {"mlflow": bad, "tensorboard": good})
    for s in range(4):
        m.log(rows([s]))
    m.close("finished")
    assert (bad.calls, good.calls) == (2, 4)
    assert (bad.closed, good.closed) == ("", "finished")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: log.mlflow: disabled for run abc123 after ConnectionError: server went away "
        "(metrics.jsonl is unaffected)"
    ]
    assert m.warnings == [err[0].removeprefix("warning: ")]


def test_a_tracker_that_cannot_open_is_left_out(run_dir, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    import mlflow.tracking

    def boom(*a, **k):
        raise RuntimeError("no store")

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", boom)
    m = open_trackers(LogConfig(mlflow=True), run_dir, "abc123", CONFIG, experiment="exp", start_step=None)
    assert m.trackers == {} and len(m.warnings) == 1
    m.log(rows([0]))
    m.close("failed")
    assert capsys.readouterr().err.count("warning: log.mlflow: disabled") == 1


def test_library_raising_mid_run_leaves_the_others(run_dir, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    m = Mirror("abc123", {**mirror(LogConfig(tensorboard=True), run_dir).trackers, "other": Flaky(0)})
    m.log(rows([0]))

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    m.log(rows([1]))
    m.log(rows([2]))
    m.close("finished")
    assert list(m.trackers) == [] and m.warnings[0].startswith("log.tensorboard: disabled for run abc123 after OSError")
    assert capsys.readouterr().err.count("warning:") == 1


# --- TensorBoard ----------------------------------------------------------------------------------------------
def tb_read(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(x: float) -> float:
    # TensorBoard stores a scalar as Summary.Value.simple_value, a protobuf float: the read-back value is the
    # float32 nearest the logged one, exactly (both round to nearest), so equality needs no tolerance.
    return float(np.float32(x))


def test_tensorboard_reads_back(run_dir):
    pytest.importorskip("tensorboard")
    m = mirror(LogConfig(tensorboard=True), run_dir)
    m.log(rows(range(0, 50, 10)))
    m.log([{**rows([50])[0], "value": float("nan")}, {**rows([50])[1], "value": None}])  # non-finite: kept as NaN
    m.close("finished")
    got = tb_read(run_dir)
    assert got["val_loss"][:5] == [(s, f32(value(s, "val_loss"))) for s in range(0, 50, 10)]
    assert got["val_loss"][5][0] == 50 and math.isnan(got["val_loss"][5][1])
    assert got["hessian/top1"] == [(s, f32(value(s, "hessian/top1"))) for s in range(0, 50, 10)]


def test_tensorboard_resume_purges_what_the_checkpoint_did_not_cover(run_dir):
    pytest.importorskip("tensorboard")
    first = mirror(LogConfig(tensorboard=True), run_dir)
    first.log(rows(range(0, 60, 10)))  # checkpoint at 20; the process dies after logging 50, never closing
    first.trackers["tensorboard"].writer.flush()  # type: ignore[attr-defined]
    time.sleep(1.1)  # event file names carry whole seconds: the resumed file must sort after the first
    # The resumed attempt is given what metrics.jsonl holds up to its checkpoint (train.py does this).
    second = mirror(LogConfig(tensorboard=True), run_dir, start_step=20, history=rows(range(0, 30, 10)))
    second.log(rows(range(30, 70, 10), attempt=2))
    second.close("finished")
    got = tb_read(run_dir)
    assert got["val_loss"] == [(s, f32(value(s, "val_loss", 1 if s <= 20 else 2))) for s in range(0, 70, 10)]


# --- MLflow ---------------------------------------------------------------------------------------------------
def ml_read(store: Path, run_id: str = "abc123"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(store / "mlruns").as_uri())
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id], f"tags.`scalescope.run_id` = '{run_id}'")
    assert len(runs) == 1
    run = runs[0]
    hist = {k: [(x.step, x.value) for x in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    return run, {k: sorted(v) for k, v in hist.items()}


def test_mlflow_reads_back(run_dir):
    pytest.importorskip("mlflow")
    m = mirror(LogConfig(mlflow=True), run_dir)
    m.log(rows(range(0, 50, 10)))
    m.close("diverged")
    run, hist = ml_read(run_dir.parent.parent)
    assert hist["hessian/top1"] == [(s, value(s, "hessian/top1")) for s in range(0, 50, 10)]  # float64, exact
    assert run.data.params["model.d_model"] == "16" and run.data.params["tags"] == "[1, 2]"
    assert (run.info.status, run.data.tags["scalescope.status"]) == ("FAILED", "diverged")


def test_mlflow_resume_reopens_the_run_without_duplicates(run_dir):
    pytest.importorskip("mlflow")
    mirror(LogConfig(mlflow=True), run_dir).log(rows(range(0, 60, 10)))  # dies after 50; checkpoint at 20
    second = mirror(LogConfig(mlflow=True), run_dir, start_step=20)
    second.log(rows(range(30, 70, 10), attempt=2))
    second.close("finished")
    run, hist = ml_read(run_dir.parent.parent)
    # MLflow cannot delete points: steps 30..50 keep the first attempt's values, 60 is the second's.
    assert hist["val_loss"] == [(s, value(s, "val_loss", 1 if s <= 50 else 2)) for s in range(0, 70, 10)]
    assert run.info.status == "FINISHED"
    # Starting over from step 0 replaces the MLflow run.
    third = mirror(LogConfig(mlflow=True), run_dir, start_step=None)
    third.log(rows([0], attempt=3))
    third.close("finished")
    assert ml_read(run_dir.parent.parent)[1]["val_loss"] == [(0, value(0, "val_loss", 3))]


@pytest.mark.slow  # two processes that import torch and mlflow: 10-20 s on 2 cores
def test_mlflow_file_store_with_concurrent_workers(tmp_path):
    pytest.importorskip("mlflow")
    store = tmp_path / "store"
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from scalescope.trackers import LogConfig, open_trackers
        for i in range(3):
            run_id = sys.argv[1] + str(i)
            rd = Path({str(store)!r}) / "runs" / run_id
            m = open_trackers(LogConfig(mlflow=True), rd, run_id, {{"seed": i}}, experiment="exp", start_step=None)
            assert not m.warnings, m.warnings
            m.log([{{"step": s, "metric": "val_loss", "value": s / 10}} for s in range(3)])
            m.close("finished")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, w]) for w in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(store / "mlruns").as_uri())
    exps = [e for e in client.search_experiments() if e.name == "exp"]
    assert len(exps) == 1  # one experiment of that name, not one per worker
    runs = client.search_runs([exps[0].experiment_id])
    assert sorted(r.data.tags["scalescope.run_id"] for r in runs) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert all(len(client.get_metric_history(r.info.run_id, "val_loss")) == 3 for r in runs)


# --- Weights & Biases (offline) -----------------------------------------------------------------------------
def wb_read(store: Path) -> tuple[list[dict], dict[str, list[tuple[int, float]]]]:
    from scalescope.trackers.wandb import read_records

    files = sorted((store / "wandb").glob("offline-run-*-abc123/run-abc123.wandb"))
    records = [r for f in files for r in read_records(f)]
    hist: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r["type"] == "history":
            for k, v in r["history"]["item"].items():
                if not k.startswith("_"):
                    hist.setdefault(k, []).append((r["history"]["step"]["num"], v))
    return records, hist


def test_wandb_offline_reads_back(run_dir):
    pytest.importorskip("wandb")
    m = mirror(LogConfig(wandb=True), run_dir)
    m.log(rows(range(0, 50, 10)))
    m.close("finished")
    records, hist = wb_read(run_dir.parent.parent)
    assert hist["val_loss"] == [(s, value(s, "val_loss")) for s in range(0, 50, 10)]  # JSON float64, exact
    assert hist["hessian/top1"] == [(s, value(s, "hessian/top1")) for s in range(0, 50, 10)]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["run_id"], run["project"]) == ("abc123", "exp")
    assert run["config"]["update"]["model.d_model"] == 16
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]


def test_wandb_backfills_what_an_attempt_killed_before_it_flushed_lost(run_dir):
    # A SIGKILLed worker's wandb-core service dies before writing its buffer: that attempt's file is empty.
    # The next attempt is handed metrics.jsonl's rows up to its checkpoint and mirrors them first.
    pytest.importorskip("wandb")
    second = mirror(LogConfig(wandb=True), run_dir, start_step=20, history=rows(range(0, 30, 10)))
    second.log(rows(range(30, 50, 10), attempt=2))
    second.close("finished")
    _, hist = wb_read(run_dir.parent.parent)
    assert hist["val_loss"] == [(s, value(s, "val_loss", 1 if s <= 20 else 2)) for s in range(0, 50, 10)]


def test_wandb_resume_skips_steps_already_held(run_dir):
    pytest.importorskip("wandb")
    first = mirror(LogConfig(wandb=True), run_dir)
    first.log(rows(range(0, 60, 10)))
    first.close("failed")  # the writer must end its file before the reader can see all of it
    time.sleep(1.1)  # offline run directories carry whole seconds in their names
    second = mirror(LogConfig(wandb=True), run_dir, start_step=20)
    second.log(rows(range(30, 70, 10), attempt=2))
    second.close("finished")
    _, hist = wb_read(run_dir.parent.parent)
    assert hist["val_loss"] == [(s, value(s, "val_loss", 1 if s <= 50 else 2)) for s in range(0, 70, 10)]


# --- end to end: an experiment's [log] table, through the CLI and through an interrupted run -------------------
def test_an_experiments_log_table_mirrors_every_row_of_a_resumed_run(tiny_toml, tmp_path):
    pytest.importorskip("tensorboard")
    import os
    import subprocess

    from scalescope import config as C
    from scalescope.errors import LockLost
    from scalescope.store import Store
    from scalescope.sweep import load_experiment
    from scalescope.train import train

    from .conftest import ROOT, cli_cmd

    exp_file = tiny_toml("\n[log]\ntensorboard = true\n")
    exp = load_experiment(exp_file)
    plain = load_experiment(tiny_toml(name="plain.toml")).runs[0]
    assert exp.log.tensorboard and C.run_id(exp.runs[0]) == C.run_id(plain)  # observation is not identity

    # Through the CLI: every metrics.jsonl row is in TensorBoard at its step (float32).
    store = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        cli_cmd("run", str(exp_file), "--store", str(store), "--quiet"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rd = Store(store).run_dir(C.run_id(plain))
    want: dict[str, list] = {}
    for row in rd.read_metrics():
        want.setdefault(row["metric"], []).append((row["step"], f32(row["value"])))
    got = tb_read(rd.path)
    assert {k: v for k, v in got.items() if k != "tokens_per_s"} == {
        k: v for k, v in want.items() if k != "tokens_per_s"
    }

    # Interrupted after a few write groups (as a lost lock stops a worker: nothing more written), then resumed:
    # TensorBoard holds each step once, with the values of the finished run.
    cut = Store(tmp_path / "cut").ensure_writable()
    rd2 = cut.add(exp.runs[0])
    calls = {"n": 0}

    def guard():
        calls["n"] += 1
        if calls["n"] >= 6:
            raise LockLost("stopped by the test")

    assert train(exp.runs[0], rd2.path, cache_dir=cut.cache_dir, threads=1, guard=guard, log=exp.log).status == "failed"
    time.sleep(1.1)  # event file names carry whole seconds (see the resume test above)
    assert train(exp.runs[0], rd2.path, cache_dir=cut.cache_dir, threads=1, log=exp.log).status == "finished"
    got2 = tb_read(rd2.path)
    assert got2["val_loss"] == want["val_loss"] and got2["train_loss"] == want["train_loss"]


def test_an_mlflow_server_that_does_not_answer_is_refused_at_once():
    import socket

    from scalescope.errors import ConfigError
    from scalescope.trackers import check_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.time()
    with pytest.raises(
        ConfigError, match=rf"^e.toml: log.mlflow_uri: no MLflow server answers at http://127.0.0.1:{port}"
    ):
        check_reachable(LogConfig(mlflow=True, mlflow_uri=f"http://127.0.0.1:{port}"), "e.toml")
    assert time.time() - t < 6  # not MLflow's minutes of retries at every run's start
    check_reachable(LogConfig(mlflow=True, mlflow_uri="file:///tmp/x"), "e.toml")  # a file store: nothing to reach
