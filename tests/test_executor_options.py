"""The experiment's [executor] table, the flags that override it, GPU slots of the local executor, and a GPU
asked for on a machine without one: one line naming the file and key, exit 2, nothing written."""

import argparse
import os
import subprocess

import pytest

from scalescope.errors import ConfigError
from scalescope.executors.local import least_loaded_gpu, visible_gpu
from scalescope.executors.options import parse_executor
from scalescope.sweep import load_experiment

from .conftest import ROOT, cli_cmd

HAS_CUDA = __import__("torch").cuda.is_available()


@pytest.mark.parametrize(
    "table, message",
    [
        ({"kind": "kubernetes"}, "executor.kind: expected one of 'local', 'ray', 'slurm', got 'kubernetes'"),
        ({"kind": "slurm", "partiton": "gpu"}, "executor.partiton: unknown key; did you mean 'partition'?"),
        ({"kind": "local", "partition": "gpu"}, "executor.partition: only applies to kind = 'slurm', not 'local'"),
        ({"kind": "slurm", "time_min": "1h"}, "executor.time_min: expected an integer, got '1h'"),
        ({"kind": "slurm", "time_min": 0}, "executor.time_min: expected a number >= 1, got 0"),
        ({"kind": "ray", "gpus_per_run": -1}, "executor.gpus_per_run: expected a number >= 0, got -1"),
        ({"workers": True}, "executor.workers: expected an integer, got True"),
        ("slurm", "executor: expected a table, got 'slurm'"),
    ],
)
def test_bad_tables_are_one_line_naming_the_file_and_key(table, message):
    with pytest.raises(ConfigError) as err:
        parse_executor(table, "exp.toml")
    assert str(err.value) == f"exp.toml: {message}"


def test_a_good_table_and_its_absence(tiny_toml):
    t = parse_executor({"kind": "slurm", "partition": "gpu", "gpus_per_run": 1, "sbatch_options": {"qos": "x"}}, "f")
    assert (t.kind, t.options) == ("slurm", {"partition": "gpu", "gpus_per_run": 1, "sbatch_options": {"qos": "x"}})
    assert load_experiment(tiny_toml()).executor.kind == "local"
    exp = load_experiment(tiny_toml('\n[executor]\nkind = "ray"\naddress = "auto"\n'))
    assert (exp.executor.kind, exp.executor.options) == ("ray", {"address": "auto"})


def test_the_table_does_not_change_run_ids(tiny_toml):
    from scalescope.config import run_id

    plain = load_experiment(tiny_toml(name="a.toml")).runs[0]
    tabled = load_experiment(tiny_toml('\n[executor]\nkind = "local"\nworkers = 2\n', name="b.toml")).runs[0]
    assert run_id(plain) == run_id(tabled)  # where a run trains is not what it is


def args(**kw):
    base = dict(executor=None, ray_address=None, runs_per_gpu=None, workers=None, threads=None, slurm_sbatch=[])
    base.update({f: None for f in ("slurm_cluster", "slurm_partition", "slurm_time", "slurm_cpus", "slurm_gpus")})
    base.update({f: None for f in ("slurm_mem", "slurm_array_parallelism")})
    base.update(kw)
    return argparse.Namespace(**base)


def test_flags_override_the_table_field_by_field(tmp_path):
    pytest.importorskip("submitit")
    from scalescope.cli.run import make_executor
    from scalescope.store import Store

    table = parse_executor({"kind": "slurm", "cluster": "local", "time_min": 30, "cpus_per_run": 2}, "exp.toml")
    ex = make_executor(args(slurm_time=90), Store(tmp_path / "s"), table)
    try:
        assert (ex.options.cluster, ex.options.time_min, ex.options.cpus_per_run) == ("local", 90, 2)
    finally:
        ex.shutdown()
    # A bad value is named where the user gave it: the flag, or the table's key in its file.
    with pytest.raises(ConfigError) as err:
        make_executor(args(slurm_cpus=0), Store(tmp_path / "bad"), table)
    assert str(err.value).startswith("--slurm-cpus: ")
    bad = parse_executor({"kind": "slurm", "cluster": "local", "sbatch_options": {"acount": "x"}}, "exp.toml")
    with pytest.raises(ConfigError) as err:
        make_executor(args(), Store(tmp_path / "bad"), bad)
    assert str(err.value).startswith("exp.toml: executor.sbatch_options.acount: sbatch has no option --acount")
    assert not (tmp_path / "bad").exists()


def test_gpu_slots_fill_the_least_busy_gpu_first():
    assert [least_loaded_gpu(2, busy) for busy in ([], [0], [0, 1], [0, 0, 1])] == [0, 1, 0, 1]
    assert least_loaded_gpu(3, [0, None, 2]) == 1  # a CPU run (None) occupies no GPU


def test_a_gpu_index_maps_through_the_drivers_own_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert (visible_gpu(0), visible_gpu(1)) == ("2", "3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu(1) == "1"


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    "extra, flags, message",
    [
        ('device = "cuda"\n', [], "exp.toml: train.device: CUDA requested but not available"),
        ("\n[executor]\nruns_per_gpu = 2\n", [], "exp.toml: executor.runs_per_gpu: no CUDA GPU on this machine"),
        ("", ["--runs-per-gpu", "2"], "--runs-per-gpu: no CUDA GPU on this machine"),
    ],
)
def test_a_gpu_asked_for_without_one_is_refused_before_anything_is_written(tiny_toml, tmp_path, extra, flags, message):
    exp = tiny_toml(extra)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        cli_cmd("run", str(exp), "--store", str(store), *flags), env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}".replace("exp.toml", str(exp))), r.stderr
    assert not store.exists()


def test_sbatch_flags_add_to_the_tables_options(tmp_path):
    pytest.importorskip("submitit")
    from scalescope.cli.run import make_executor
    from scalescope.store import Store

    table = parse_executor(
        {"kind": "slurm", "cluster": "local", "sbatch_options": {"account": "lab", "qos": "low"}}, "exp.toml"
    )
    ex = make_executor(args(slurm_sbatch=["qos=high"]), Store(tmp_path / "s"), table)
    try:
        assert dict(ex.options.sbatch_options) == {"account": "lab", "qos": "high"}  # merged, the flag wins per key
    finally:
        ex.shutdown()


@pytest.mark.parametrize(
    "table, flags, message",
    [
        # Flags another executor would silently ignore are refused with the option that does the job there.
        ({"kind": "slurm", "cluster": "local"}, {"threads": 1}, "--threads: not used by the Slurm executor"),
        ({"kind": "slurm", "cluster": "local"}, {"workers": 2}, "--workers: not used by the slurm executor"),
        ({"kind": "ray"}, {"workers": 2}, "--workers: not used by the ray executor"),
    ],
)
def test_flags_an_executor_would_ignore_are_refused(tmp_path, table, flags, message):
    from scalescope.cli.run import make_executor
    from scalescope.store import Store

    with pytest.raises(ConfigError) as err:
        make_executor(args(**flags), Store(tmp_path / "s"), parse_executor(table, "exp.toml"))
    assert str(err.value).startswith(message)


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_gpus_for_the_local_slurm_cluster_without_a_gpu_are_refused(tmp_path):
    pytest.importorskip("submitit")
    from scalescope.cli.run import make_executor
    from scalescope.store import Store

    table = parse_executor({"kind": "slurm", "cluster": "local", "gpus_per_run": 1}, "exp.toml")
    with pytest.raises(ConfigError) as err:
        make_executor(args(), Store(tmp_path / "s"), table)
    assert str(err.value).startswith("exp.toml: executor.gpus_per_run: no CUDA GPU on this machine")
    with pytest.raises(ConfigError) as err:
        make_executor(args(executor="slurm", slurm_gpus=1, slurm_cluster="local"), Store(tmp_path / "s"), None)
    assert str(err.value).startswith("--slurm-gpus: no CUDA GPU")
    assert not (tmp_path / "s").exists()
