"""Gradient covariance (Σ of per-example gradients) against the Hessian: the instrument's numbers against
NumPy on dense closed-form H and Σ of linear models, co-diagonal and non-co-diagonal constructions, the
Gram route against the direct one, the instrument inside a training run, and the offline probe command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.data.base import Batch
from scalescope.instruments import build
from scalescope.instruments.covariance import covariance_factor, measure, normalized_commutator, sigma_eigenpairs
from scalescope.instruments.hvp import HessianOperator, Objective

from .conftest import train_tiny

# --- ground truth: NumPy on dense matrices ----------------------------------------------------------


def _top(A: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    lam, V = np.linalg.eigh(A)
    lam, V = lam[::-1], V[:, ::-1]
    # The top-k subspace must be well defined for the comparison to mean anything.
    assert lam[k - 1] - lam[k] > 1e-3 * abs(lam[0]), "test problem has no spectral gap at k"
    return lam, V[:, :k]


def _numpy_metrics(H: np.ndarray, grads: np.ndarray, k: int) -> dict[str, float]:
    """Every metric from the dense Hessian and the (B, n) per-example gradients, by definition."""
    S = np.cov(grads.T, ddof=1)
    g = grads.mean(0)
    hl, UH = _top(H, k)
    sl, US = _top(S, k)
    Hk, Sk = UH.T @ H @ UH, UH.T @ S @ UH
    H0, S0 = Hk - np.trace(Hk) / k * np.eye(k), Sk - np.trace(Sk) / k * np.eye(k)  # traceless parts
    comm = np.linalg.norm(Hk @ Sk - Sk @ Hk) / (np.sqrt(2) * np.linalg.norm(H0) * np.linalg.norm(S0))
    out = {f"sigma_eig_{i + 1}": sl[i] for i in range(k)} | {f"hess_eig_{i + 1}": hl[i] for i in range(k)}
    return out | {
        "sigma_trace": np.trace(S),
        "effective_rank": np.trace(S) ** 2 / np.sum(S * S),  # (Σλ)²/Σλ² = (tr Σ)²/‖Σ‖²_F
        "overlap": np.sum((UH.T @ US) ** 2) / k,
        "commutator": comm,
        "grad_fraction": np.sum((UH.T @ g) ** 2) / (g @ g),
    }


def _compare(res: dict, truth: dict, *, rel: float, abs_: float) -> None:
    for key, want in truth.items():
        assert res[key] == pytest.approx(want, rel=rel, abs=abs_), key


# --- test 1: f(x) = D·Wx under ½‖f(x) − y‖², Hessian and per-example gradients in closed form --------

M, D_IN, B_LIN = 3, 5, 8  # n = 15 > B = 8: the Gram route


class ScaledLinear(torch.nn.Module):
    """f(x) = D W x with a fixed diagonal D (a buffer). For D = I this is the plain linear model; distinct
    D entries make H's eigenvalues d_a² s_j distinct, so its top-k eigenspace is well defined (with
    H = I ⊗ XᵀX/B every eigenvalue has multiplicity m, which single-vector Lanczos cannot resolve)."""

    def __init__(self, scale: np.ndarray, seed: int = 0):
        super().__init__()
        self.lin = torch.nn.Linear(D_IN, len(scale), bias=False).double()
        torch.nn.init.normal_(self.lin.weight, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


def _linear_problem(scale: np.ndarray, B: int = B_LIN, seed: int = 0):
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(B, D_IN)), rng.normal(size=(B, len(scale)))
    model = ScaledLinear(scale, seed)
    W = model.lin.weight.detach().numpy()
    # ½‖DWx − y‖²: ∂/∂W_aj = d_a r_a x_j with r = DWx − y, so, flattened row-major as Objective does
    # (named_parameters order, then W's own C order), g_i = kron(D r_i, x_i) and H = kron(D², XᵀX/B).
    R = X @ W.T * scale - Y
    grads = np.stack([np.kron(scale * r, x) for r, x in zip(R, X)])
    H = np.kron(np.diag(scale**2), X.T @ X / B)
    return model, Batch(torch.tensor(X), torch.tensor(Y)), H, grads


def test_linear_model_hessian_is_kron_in_the_objectives_ordering():
    scale = np.array([1.0, 1.5, 2.0])
    model, batch, H, grads = _linear_problem(scale)
    obj = Objective(model, batch.inputs, batch.targets, loss="mse")
    dense = HessianOperator(obj).dense().numpy()
    np.testing.assert_allclose(dense, H, rtol=0, atol=1e-12)
    X = batch.inputs.numpy()
    assert not np.allclose(dense, np.kron(X.T @ X / B_LIN, np.diag(scale**2)))  # the other ordering is wrong
    np.testing.assert_allclose(obj.per_example_gradients().numpy(), grads, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [[1.0, 1.5, 2.0], [2.0, 1.0, 0.7]])
def test_linear_model_metrics_match_numpy(scale):
    scale = np.array(scale)
    model, batch, H, grads = _linear_problem(scale)
    res = measure(model, batch, top_k=3, tol=1e-12, loss="mse")
    truth = _numpy_metrics(H, grads, 3)
    # Float64 throughout. Σ's spectrum is plain dense algebra (errors ~1e-14 relative); H's eigenpairs
    # come from ARPACK with tol 1e-12, so eigenvector errors are ~1e-12·‖H‖/gap with gaps ≥ 1e-3‖H‖
    # (asserted in _top): 1e-8 leaves four orders of margin and still catches any wrong formula or scale.
    _compare(res, truth, rel=1e-8, abs_=1e-8)
    resid = batch.inputs.numpy() @ model.lin.weight.detach().numpy().T * scale - batch.targets.numpy()
    assert res["loss"] == pytest.approx(0.5 * np.mean(np.sum(resid**2, 1)), rel=1e-12)
    # The problem is not degenerate: the metrics sit well inside their ranges, so a wrong one shows.
    assert 0.1 < res["overlap"] < 0.9 and res["commutator"] > 1e-3 and 0.05 < res["grad_fraction"] < 0.95
    spec = res["sigma_eigenvalues"]
    assert spec.shape == (B_LIN - 1,) and np.all(np.diff(spec) <= 0)
    np.testing.assert_allclose(spec, np.linalg.eigvalsh(np.cov(grads.T))[::-1][: B_LIN - 1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res["hess_eigenvalues"], [truth[f"hess_eig_{i}"] for i in (1, 2, 3)], rtol=1e-8)


def test_noise_along_hessian_eigenvectors_and_the_nqm_prediction():
    from scalescope.laws.nqm import Optimizer, nqm_from_measurements

    scale = np.array([1.0, 1.5, 2.0])
    model, batch, H, grads = _linear_problem(scale)
    res = measure(model, batch, top_k=3, tol=1e-12, loss="mse")
    _, UH = _top(H, 3)
    S = np.cov(grads.T, ddof=1)
    # uᵢᵀΣuᵢ and uᵢᵀḡ do not depend on the eigenvectors' signs (the latter only through its square in
    # the NQM), so compare |uᵢᵀḡ|; float64 and ARPACK tol 1e-12 as above.
    np.testing.assert_allclose(res["hess_noise"], np.diag(UH.T @ S @ UH), rtol=1e-8)
    np.testing.assert_allclose(np.abs(res["hess_grad"]), np.abs(UH.T @ grads.mean(0)), rtol=1e-8)
    want = nqm_from_measurements(
        res["hess_eigenvalues"], res["hess_noise"], grad_in_eigenbasis=res["hess_grad"], optimizers={"sgd": Optimizer()}
    )
    assert res["nqm_B_crit"] == pytest.approx(want["B_crit"], rel=1e-12) and res["nqm_B_crit"] > 0
    assert res["nqm_B_simple"] == pytest.approx(want["B_simple"], rel=1e-12)
    assert "nqm_B_crit" not in measure(model, batch, top_k=3, tol=1e-12, loss="mse", nqm=False)


# --- test 2: Σ = H by construction, and a rotated Σ -----------------------------------------------

H_DIAG = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
B_DIAG = 12  # > n = 6: Σ can have full rank (and the direct route is used)


class Elementwise(torch.nn.Module):
    """f(x) = x ⊙ θ. With every input x_i = √h, ½‖f(x_i) − y_i‖² is the diagonal quadratic
    ½ Σ_j h_j (θ_j − y_ij/√h_j)²: H = diag(h), g_i = h ⊙ θ − √h ⊙ y_i, so Σ = diag(√h) Cov(y) diag(√h)."""

    def __init__(self, theta: np.ndarray):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.theta


def _diag_problem(cov_y: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = len(H_DIAG)
    # Targets with sample covariance exactly cov_y: orthonormal, centered columns Q (QR of a centered
    # Gaussian matrix; its columns stay orthogonal to 1), so Z = √(B−1) Q has sample covariance I.
    Z = rng.normal(size=(B_DIAG, n))
    Q, _ = np.linalg.qr(Z - Z.mean(0))
    Y = 0.3 + np.sqrt(B_DIAG - 1) * Q @ np.linalg.cholesky(cov_y).T
    X = np.tile(np.sqrt(H_DIAG), (B_DIAG, 1))
    theta = rng.normal(size=n)
    grads = H_DIAG * theta - np.sqrt(H_DIAG) * Y
    return Elementwise(theta), Batch(torch.tensor(X), torch.tensor(Y)), np.diag(H_DIAG), grads


def test_codiagonal_sigma_equals_hessian():
    model, batch, H, grads = _diag_problem(np.eye(len(H_DIAG)))
    np.testing.assert_allclose(np.cov(grads.T), H, atol=1e-12)  # the construction: Σ = H exactly
    res = measure(model, batch, top_k=2, tol=1e-12, loss="mse")
    # Exact answers; 1e-9 allows for ARPACK's tol 1e-12 on an operator with gaps ≥ 0.5.
    assert res["overlap"] == pytest.approx(1.0, abs=1e-9)
    assert res["commutator"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(res["sigma_eigenvalues"], H_DIAG, rtol=1e-10)
    np.testing.assert_allclose(res["hess_eigenvalues"], H_DIAG[:2], rtol=1e-10)
    assert res["effective_rank"] == pytest.approx(H_DIAG.sum() ** 2 / (H_DIAG**2).sum(), rel=1e-10)
    _compare(res, _numpy_metrics(H, grads, 2), rel=1e-8, abs_=1e-8)


def test_rotated_sigma_is_not_codiagonal():
    n = len(H_DIAG)
    R, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(n, n)))
    model, batch, H, grads = _diag_problem(R @ np.diag([10.0, 6.0, 1.0, 0.5, 0.3, 0.2]) @ R.T)
    res = measure(model, batch, top_k=2, tol=1e-12, loss="mse")
    # A random rotation puts Σ's top directions across H's eigenbasis: for two random 2-planes in ℝ⁶
    # the overlap is k/n = 1/3 on average, and the restriction Σ_k is far from diagonal.
    assert res["overlap"] < 0.7
    assert res["commutator"] > 0.05
    _compare(res, _numpy_metrics(H, grads, 2), rel=1e-8, abs_=1e-8)


def test_normalized_commutator_is_sin_2phi_and_shift_invariant():
    # k = 2: A = diag(a1, a2), B with eigenvectors rotated by φ: the value is |sin 2φ| exactly, whatever
    # the eigenvalues and any multiple of I added to either matrix.
    A = torch.tensor([[5.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    for phi in (0.0, 0.3, np.pi / 4, 1.2):
        R = torch.tensor([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]], dtype=torch.float64)
        B = R @ torch.diag(torch.tensor([3.0, 0.2], dtype=torch.float64)) @ R.T
        want = abs(np.sin(2 * phi))
        assert normalized_commutator(A, B) == pytest.approx(want, abs=1e-12)
        assert normalized_commutator(A + 100 * torch.eye(2, dtype=A.dtype), 7 * B) == pytest.approx(want, abs=1e-10)
    # In [0, 1] for any symmetric pair (Böttcher–Wenzel), 0 when one is a multiple of I.
    rng = np.random.default_rng(0)
    for _ in range(50):
        X, Y = rng.normal(size=(2, 5, 5))
        v = normalized_commutator(torch.tensor(X + X.T), torch.tensor(Y + Y.T))
        assert 0 < v <= 1
    assert normalized_commutator(3 * torch.eye(5, dtype=torch.float64), torch.tensor(Y + Y.T)) == 0.0


# --- test 3: the Gram route equals the direct one --------------------------------------------------


@pytest.mark.parametrize("B,n", [(10, 7), (6, 9)])
def test_gram_route_equals_direct_route(B, n):
    rng = np.random.default_rng(B * n)
    G = torch.tensor(rng.normal(size=(B, n)) * np.linspace(3.0, 0.5, n))  # distinct scales: clear gaps
    Cf = covariance_factor(G)
    np.testing.assert_allclose((Cf.T @ Cf).numpy(), np.cov(G.numpy().T), atol=1e-12)
    k = 3
    s_gram, U_gram = sigma_eigenpairs(Cf, k, route="gram")
    s_dir, U_dir = sigma_eigenpairs(Cf, k, route="direct")
    assert s_gram.shape == s_dir.shape == (min(n, B - 1),)
    np.testing.assert_allclose(s_gram, s_dir, rtol=1e-10)
    # Eigenvectors agree up to sign; compare the projectors onto the top-k subspaces.
    np.testing.assert_allclose((U_gram @ U_gram.T).numpy(), (U_dir @ U_dir.T).numpy(), atol=1e-10)
    np.testing.assert_allclose((U_gram.T @ U_gram).numpy(), np.eye(k), atol=1e-10)


def test_gram_and_direct_routes_give_the_same_measurement():
    model, batch, _, _ = _linear_problem(np.array([1.0, 1.5, 2.0]))
    gram = measure(model, batch, top_k=3, tol=1e-12, loss="mse", route="gram")
    direct = measure(model, batch, top_k=3, tol=1e-12, loss="mse", route="direct")
    for key, v in gram.items():
        if key != "seconds":
            np.testing.assert_allclose(direct[key], v, rtol=1e-9, atol=1e-12, err_msg=key)


def test_rank_deficient_sigma_leaves_null_directions_out():
    # Six examples but only three distinct gradients: Σ has rank 2. The Gram route cannot give an
    # eigenvector for a zero eigenvalue; it leaves those columns zero instead of dividing by ~0.
    rng = np.random.default_rng(3)
    g3 = rng.normal(size=(3, 20))
    Cf = covariance_factor(torch.tensor(np.vstack([g3, g3])))
    s, U = sigma_eigenpairs(Cf, 4, route="gram")
    assert np.all(s[2:] < 1e-12 * s[0]) and s[1] > 1e-3 * s[0]
    assert torch.isfinite(U).all()
    np.testing.assert_allclose(torch.linalg.vector_norm(U, dim=0).numpy(), [1, 1, 0, 0], atol=1e-10)


def test_bad_top_k_is_a_config_error():
    model, batch, _, _ = _linear_problem(np.array([1.0, 1.5, 2.0]))  # n = 15, B = 8
    with pytest.raises(C.ConfigError, match=r"top_k: top_k must be at most 7"):
        measure(model, batch, top_k=8, loss="mse")
    big, bbatch, _, _ = _linear_problem(np.array([1.0, 1.5, 2.0]), B=40)
    with pytest.raises(C.ConfigError, match=r"between 1 and 14 \(the parameter count is 15\)"):
        measure(big, bbatch, top_k=15, loss="mse")
    for opts, field in (
        ({"top_k": 0}, "top_k"),
        ({"tol": 2.0}, "tol"),
        ({"index": -1}, "index"),
        ({"float64": "yes"}, "float64"),
    ):
        with pytest.raises(C.ConfigError, match=f"instruments.covariance.{field}"):
            build({"covariance": opts})


# --- the transformer path ------------------------------------------------------------------------


def test_transformer_sigma_matches_per_example_autograd():
    # On a GPT (SDPA attention, switched to the math path and back by the probe) Σ from vmap equals Σ
    # from one autograd call per sequence; both float64, so only rounding separates them.
    from scalescope.model import GPT

    torch.manual_seed(0)
    model = GPT(C.ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=8, attention="sdpa"), 11).double()
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randint(0, 11, (6, 8), generator=g), torch.randint(0, 11, (6, 8), generator=g))
    res = measure(model, batch, top_k=3, tol=1e-8)
    assert all(not m.math for m in model.modules() if hasattr(m, "math"))
    params = [p for p in model.parameters() if p.requires_grad]

    def grad_of(i: int) -> np.ndarray:
        gs = torch.autograd.grad(model.loss(batch.inputs[i : i + 1], batch.targets[i : i + 1]), params)
        return torch.cat([x.reshape(-1) for x in gs]).numpy()

    loop = np.stack([grad_of(i) for i in range(6)])
    np.testing.assert_allclose(res["sigma_eigenvalues"], _cov_spectrum(loop), rtol=1e-9)
    assert res["sigma_trace"] == pytest.approx(np.trace(np.cov(loop.T)), rel=1e-12)
    with torch.no_grad():
        assert res["loss"] == pytest.approx(float(model.loss(batch.inputs, batch.targets)), rel=1e-12)
    assert 0 <= res["overlap"] <= 1 and 0 <= res["commutator"] <= 1 and 0 <= res["grad_fraction"] <= 1


def _cov_spectrum(grads: np.ndarray) -> np.ndarray:
    c = grads - grads.mean(0)
    return np.linalg.eigvalsh(c @ c.T / (len(grads) - 1))[::-1][: len(grads) - 1]


# --- in a training run, and offline ----------------------------------------------------------------


def test_instrument_in_training_logs_metrics_and_changes_nothing(tiny_toml, tmp_path):
    rd = train_tiny(tiny_toml, tmp_path, "[instruments.covariance]\ntop_k = 3\n", "cov.toml")
    by: dict[str, dict[int, float]] = {}
    for r in rd.read_metrics():
        by.setdefault(r["metric"], {})[r["step"]] = r["value"]
    evals = sorted(by["val_loss"])
    names = [*(f"sigma_eig_{i}" for i in (1, 2, 3)), *(f"hess_eig_{i}" for i in (1, 2, 3))]
    names += ["sigma_trace", "effective_rank", "overlap", "commutator", "grad_fraction", "loss", "seconds"]
    for key in names:
        assert sorted(by[f"covariance/{key}"]) == evals, key
    for s in evals:
        v = {key: by[f"covariance/{key}"][s] for key in names}
        assert v["sigma_eig_1"] >= v["sigma_eig_2"] >= v["sigma_eig_3"] >= 0
        assert v["hess_eig_1"] >= v["hess_eig_2"] >= v["hess_eig_3"]
        assert 1 <= v["effective_rank"] <= 7 + 1e-9  # probe batch of 8: Σ has rank ≤ 7
        assert 0 <= v["overlap"] <= 1 and 0 <= v["commutator"] <= 1 and 0 <= v["grad_fraction"] <= 1
        spec = np.load(rd.artifact_path("covariance/sigma_eigenvalues", s))
        assert spec.shape == (7,) and spec.sum() == pytest.approx(v["sigma_trace"], rel=1e-9)
        assert np.load(rd.artifact_path("covariance/hess_eigenvalues", s)).shape == (3,)
    # Training is untouched: the probe only reads the weights, under a forked RNG.
    plain = train_tiny(tiny_toml, tmp_path, "", "plain.toml")
    for metric in ("val_loss", "train_loss"):
        base = {r["step"]: r["value"] for r in plain.read_metrics() if r["metric"] == metric}
        assert base and base == by[metric], metric


def test_offline_probe_command(tiny_toml, tmp_path, capsys):
    from scalescope.cli import main

    rd = train_tiny(tiny_toml, tmp_path, "", "off.toml")
    assert main(["probe", "covariance", str(rd.path), "--json", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 30 and out["batch_size"] == 8
    assert {"sigma_eig_3", "hess_eig_3", "overlap", "commutator", "grad_fraction", "effective_rank"} <= set(out)
    assert len(out["sigma_eigenvalues"]) == 7 and len(out["hess_eigenvalues"]) == 3
    assert main(["probe", "covariance", str(rd.path), "--top-k", "2"]) == 0
    assert "overlap" in capsys.readouterr().out
    assert main(["probe", "covariance", str(rd.path), "--top-k", "8"]) == 2  # Σ of 8 examples: rank ≤ 7
    assert main(["probe", "covariance", str(rd.path), "--top-k", "100000"]) == 2  # above the parameter count
    assert main(["probe", "covariance", str(tmp_path / "nope")]) == 2
    assert main(["probe", "covariance", str(rd.path), "--step", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert "--top-k" in err[0] and "at most 7" in err[0] and "--top-k" in err[1]
