"""The MLP and random-features models, and training them through the lab (issue 15)."""

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.classifiers import MLP, RandomFeatures, counts
from scalescope.errors import LockLost
from scalescope.model import build_model, param_counts
from scalescope.rundir import RunDir
from scalescope.train import train


def rf(n_features: int, d: int = 6, k: int = 3) -> RandomFeatures:
    torch.manual_seed(0)
    return RandomFeatures(C.ModelConfig(arch="random_features", d_model=n_features, input_dim=d), k)


def data(n: int, d: int = 6, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, d, generator=g), torch.randint(0, k, (n, 1), generator=g)


@pytest.mark.parametrize("n_features", [5, 40, 200])
def test_min_norm_readout_is_the_pseudoinverse_solution(n_features):
    m = rf(n_features)
    x, y = data(40)
    m.fit(x, y)
    phi = m.features(x).reshape(40, -1).double().numpy()
    onehot = np.eye(3)[y.reshape(-1).numpy()]
    # numpy's pinv (SVD, same cutoff) in float64: agreement to float32 rounding of the stored readout.
    assert np.allclose(m.readout.double().numpy(), np.linalg.pinv(phi) @ onehot, rtol=1e-4, atol=1e-5)
    train_loss = float(m.loss(x, y))
    if n_features >= 40:  # at least as many features as examples: interpolates
        assert train_loss < 1e-6
    else:
        assert train_loss > 0.1


def test_ridge_readout_is_the_normal_equations_solution():
    m = rf(30)
    x, y = data(50)
    m.fit(x, y, ridge=0.7)
    phi = m.features(x).reshape(50, -1).double().numpy()
    onehot = np.eye(3)[y.reshape(-1).numpy()]
    exact = np.linalg.solve(phi.T @ phi + 0.7 * np.eye(30), phi.T @ onehot)
    assert np.allclose(m.readout.double().numpy(), exact, rtol=1e-4, atol=1e-5)


def test_parameter_counts_match_the_modules():
    cfg = C.ModelConfig(arch="mlp", n_layer=3, d_model=17, input_dim=11)
    m = MLP(cfg, 4)
    assert counts(cfg, 4)[0] == sum(p.numel() for p in m.parameters())
    assert param_counts(cfg, 4).nonembedding == counts(cfg, 4)[0]
    assert isinstance(build_model(cfg, 4), MLP)
    assert m(torch.randn(2, 1, 11)).shape == (2, 1, 4)
    rcfg = C.ModelConfig(arch="random_features", d_model=50, input_dim=11)
    assert param_counts(rcfg, 4).total == 50 * 4  # the readout; the random weights are not learned


def metric_rows(rd: RunDir) -> list[tuple]:
    return [(r["step"], r["metric"], r["value"]) for r in rd.read_metrics() if r["metric"] != "tokens_per_s"]


def finals(rd: RunDir) -> dict[str, float]:
    out = {}
    for r in rd.read_metrics():
        out[r["metric"]] = r["value"]
    return out


def test_random_features_run_fits_in_one_step(tmp_path):
    cfg = C.from_dict(
        {"data": {"kind": "digits", "n_train": 100}, "model": {"arch": "random_features", "d_model": 300}}
    )
    assert cfg.train.steps == 1 and cfg.train.batch_size == 100
    out = train(cfg, tmp_path / "rf")
    assert out.status == "finished" and out.steps == 1 and not out.flags
    f = finals(RunDir(tmp_path / "rf"))
    assert f["trainset_acc"] == 1.0 and f["trainset_loss"] < 1e-6  # N = 3n features interpolate
    assert 0.5 < f["val_acc"] < 1.0


def test_mlp_full_batch_run_records_train_and_test_error(tmp_path):
    cfg = C.from_dict(
        {
            "data": {"kind": "digits", "n_train": 200},
            "model": {"arch": "mlp", "n_layer": 1, "d_model": 64},
            "train": {"full_batch": True, "steps": 60, "eval_every": 20, "lr": 3e-3, "warmup": 0},
        }
    )
    out = train(cfg, tmp_path / "mlp")
    assert out.status == "finished"
    rows = RunDir(tmp_path / "mlp").read_metrics()
    steps = sorted({r["step"] for r in rows if r["metric"] == "trainset_acc"})
    assert steps == [0, 1, 2, 4, 8, 16, 20, 40, 60]
    f = finals(RunDir(tmp_path / "mlp"))
    assert f["trainset_acc"] > 0.95 and f["val_acc"] > 0.8  # digits are easy: 60 full-batch Adam steps fit them


def test_killed_run_with_a_random_label_phase_resumes_exactly(tmp_path):
    raw = {
        "data": {"kind": "digits", "n_train": 150, "random_label_steps": 30},
        "model": {"arch": "mlp", "n_layer": 1, "d_model": 32},
        "train": {"batch_size": 32, "steps": 60, "eval_every": 10, "checkpoint_every": 7, "lr": 3e-3},
    }
    ref = train(C.from_dict(raw), tmp_path / "ref")
    # The switch to true labels makes the training loss jump: a new phase, not a divergence.
    assert ref.status == "finished"

    calls = {"n": 0}

    def guard() -> None:  # the worker's lock check: lose the lock (stop without writing) on the 9th write group
        calls["n"] += 1
        if calls["n"] == 9:
            raise LockLost("taken over")

    first = train(C.from_dict(raw), tmp_path / "killed", guard=guard)
    assert first.status == "failed" and first.steps == 0
    again = train(C.from_dict(raw), tmp_path / "killed")
    assert again.status == "finished"
    assert metric_rows(RunDir(tmp_path / "killed")) == metric_rows(RunDir(tmp_path / "ref"))
