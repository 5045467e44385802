"""On CUDA: a short run, an exact resume, bf16 autocast, MFU, and several runs sharing one GPU.

Marked ``gpu`` (skipped by the default run, and skipped without CUDA): run with ``pytest -m gpu``.
"""

import os
import subprocess

import pytest
import torch

from scalescope.store import Store, load
from scalescope.sweep import load_experiment
from scalescope.train import train

from .conftest import ROOT, cli_cmd
from .test_precision_logging import interrupted_then_resumed, rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def cuda_run(tiny_toml, tmp_path, extra: str, name: str, *, cut: int | None = None):
    cfg = load_experiment(tiny_toml('device = "cuda"\n' + extra, name=name)).runs[0]
    store = Store(tmp_path / name).ensure_writable()
    rd = store.add(cfg)
    if cut is None:
        out = train(cfg, rd.path, cache_dir=store.cache_dir, threads=1)
    else:
        out = interrupted_then_resumed(cfg, rd.path, store.cache_dir, calls=cut)
    assert out.status == "finished", out.error
    return rd


def test_a_short_run_trains_on_the_gpu_and_says_so(tiny_toml, tmp_path):
    rd = cuda_run(tiny_toml, tmp_path, "", "short.toml")
    assert rd.read_meta()["hardware"]["device"].startswith("cuda")
    v = rows(rd, "val_loss")
    assert v[-1][1] < v[0][1] - 0.05


def test_resume_on_the_gpu_is_bitwise(tiny_toml, tmp_path):
    # Deterministic kernels are not needed for this model: no atomics-based reductions in its backward at
    # these shapes; if this ever fails, it is CUDA non-determinism, not the checkpoint (compare two
    # uninterrupted runs first).
    ref = cuda_run(tiny_toml, tmp_path, "", "ref.toml")
    again = cuda_run(tiny_toml, tmp_path, "", "again.toml")
    cut = cuda_run(tiny_toml, tmp_path, "", "cut.toml", cut=5)
    assert rows(again, "val_loss") == rows(ref, "val_loss"), "two uninterrupted CUDA runs differ"
    assert rows(cut, "val_loss") == rows(ref, "val_loss")


def test_bf16_on_the_gpu_trains_close_to_fp32(tiny_toml, tmp_path):
    fp32 = cuda_run(tiny_toml, tmp_path, "tf32 = false\n", "fp32.toml")
    bf16 = cuda_run(tiny_toml, tmp_path, 'precision = "bf16"\n', "bf16.toml")
    for (s, a), (_, b) in zip(rows(fp32, "val_loss"), rows(bf16, "val_loss")):
        assert abs(a - b) / a < 0.01, (s, a, b)  # bf16 rounding (2^-8) over 30 steps; 0.06% measured on CPU
    mfu = rows(bf16, "mfu")
    if mfu:  # only on GPUs with a known peak (scalescope.device.PEAK_FLOPS)
        assert all(0 < v < 1 for _, v in mfu)


def test_runs_share_one_gpu_in_separate_processes(tiny_toml, tmp_path):
    exp = tiny_toml('\n[sweep]\n"train.lr" = [0.01, 0.02, 0.03, 0.04]\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    store = tmp_path / "shared"
    r = subprocess.run(
        cli_cmd("run", str(exp), "--store", str(store), "--runs-per-gpu", "4", "--quiet"),
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    t = load(store)
    assert (t.runs["status"] == "finished").all() and len(t.runs) == 4
