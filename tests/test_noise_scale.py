"""Gradient noise scale (McCandlish et al. 2018): the two-batch estimator against the closed forms of
least-squares regression with Gaussian inputs, the Hessian-vector products against finite differences,
the instrument inside a training run, and the offline probe command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.data.base import Batch
from scalescope.instruments import build
from scalescope.instruments.noise_scale import (
    NoiseScaleEMA,
    _hvps,
    _params,
    ema_ratio,
    estimate_noise_scale,
    linear_regression_truth,
    moment_estimates,
    two_batch_estimates,
)

from .conftest import train_tiny

# A least-squares problem: x ~ N(0, diag(s)), y = wᵀx + ε, evaluated at θ = w + δ (B_simple ≈ 8.6).
D = 8
S_DIAG = np.linspace(0.5, 2.0, D)
_rng = np.random.default_rng(0)
W = _rng.normal(size=D)
DELTA = 0.7 * _rng.normal(size=D)
NOISE_VAR = 0.5
TRUTH = linear_regression_truth(np.diag(S_DIAG), DELTA, NOISE_VAR)


def _xy(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(*shape, D)) * np.sqrt(S_DIAG)
    return x, x @ W + np.sqrt(NOISE_VAR) * rng.normal(size=shape)


def _micro_grads(rng: np.random.Generator, k: int, b: int) -> np.ndarray:
    """(k, D) gradients of ½ mean (θᵀx − y)² over k independent micro-batches of b examples."""
    x, y = _xy(rng, (k, b))
    r = x @ (W + DELTA) - y
    return (r[..., None] * x).mean(axis=1)


def _stats(g: np.ndarray, b: int, H: np.ndarray | None = None) -> dict[str, float]:
    Hg = g if H is None else g @ H
    return moment_estimates((g * Hg).sum(1), Hg @ g.sum(0), b)


# --- the estimator's algebra ------------------------------------------------------------------------


def test_two_batch_formulas_invert_the_expectations():
    # E|G_B|² = |G|² + tr(Σ)/B (McCandlish et al. 2018, A.1); the estimator solves the two equations.
    g2, tr = 3.0, 120.0
    small, big = g2 + tr / 4, g2 + tr / 64
    assert two_batch_estimates(small, big, 4, 64) == pytest.approx((g2, tr), rel=1e-12)
    with pytest.raises(ValueError):
        two_batch_estimates(small, big, 64, 4)


def test_moment_estimates_is_the_sample_covariance():
    rng = np.random.default_rng(1)
    g, b = rng.normal(size=(7, 5)), 3
    s = moment_estimates((g * g).sum(1), g @ g.sum(0), b)
    mean = g.mean(0)
    assert s["trace"] == pytest.approx(b * np.trace(np.cov(g.T, ddof=1)), rel=1e-12)
    assert s["G2"] == pytest.approx(mean @ mean - s["trace"] / (7 * b), rel=1e-12)
    assert s["small_sq"] == pytest.approx((g * g).sum(1).mean()) and s["big_sq"] == pytest.approx(mean @ mean)
    # Jackknife by brute force: leave each micro-batch out and recompute.
    loo = np.array(
        [moment_estimates((h * h).sum(1), h @ h.sum(0), b)["G2"] for h in (np.delete(g, j, 0) for j in range(7))]
    )
    assert s["G2_stderr"] == pytest.approx(np.sqrt(6 / 7 * ((loo - loo.mean()) ** 2).sum()), rel=1e-10)


def test_linear_regression_closed_forms_match_monte_carlo():
    # The truth itself, checked by brute force on 400k per-example gradients (Monte Carlo error ~0.5%).
    rng = np.random.default_rng(2)
    x, y = _xy(rng, (400_000,))
    g = ((x @ (W + DELTA) - y)[:, None]) * x
    G, cov = g.mean(0), np.cov(g.T)
    S = np.diag(S_DIAG)
    assert G @ G == pytest.approx(TRUTH["G2"], rel=0.02)
    assert np.trace(cov) == pytest.approx(TRUTH["trace_sigma"], rel=0.02)
    assert np.trace(S @ cov) == pytest.approx(TRUTH["trace_HSigma"], rel=0.02)
    assert G @ S @ G == pytest.approx(TRUTH["gHg"], rel=0.02)


# --- validation: estimates within 5% of the truth ---------------------------------------------------


def test_estimates_within_5_percent_large_sample():
    # 20,000 micro-batches of 16. The estimates' own (jackknife) standard errors are below 1.2%, so the 5%
    # tolerance is > 4 standard errors: a correct estimator fails it with probability < 1e-4.
    rng = np.random.default_rng(3)
    k, b = 20_000, 16
    g = _micro_grads(rng, k, b)
    s, h = _stats(g, b), _stats(g, b, np.diag(S_DIAG))
    for name, est, se in (
        ("G2", s["G2"], s["G2_stderr"]),
        ("trace_sigma", s["trace"], s["trace_stderr"]),
        ("B_simple", s["ratio"], s["ratio_stderr"]),
        ("gHg", h["G2"], h["G2_stderr"]),
        ("trace_HSigma", h["trace"], h["trace_stderr"]),
        ("B_noise", h["ratio"], h["ratio_stderr"]),
    ):
        truth = TRUTH[name]
        assert se / truth < 0.0125, name
        assert est == pytest.approx(truth, rel=0.05), name
        assert abs(est - truth) < 4 * se, (name, est, truth, se)


def test_estimator_is_unbiased_with_few_small_micro_batches():
    # The in-training setting: 4 micro-batches of 4 examples, far below B_simple ≈ 8.6 · (signal/noise).
    # Single estimates are very noisy, but their mean is the truth, unlike the naive |ḡ|² (biased by tr(Σ)/16).
    rng = np.random.default_rng(4)
    reps, k, b = 20_000, 4, 4
    g = _micro_grads(rng, reps * k, b).reshape(reps, k, D)
    est = [moment_estimates((gi * gi).sum(1), gi @ gi.sum(0), b) for gi in g]
    g2 = np.array([e["G2"] for e in est])
    tr = np.array([e["trace"] for e in est])
    for vals, truth in ((g2, TRUTH["G2"]), (tr, TRUTH["trace_sigma"])):
        sem = vals.std() / np.sqrt(reps)
        assert abs(vals.mean() - truth) < 4 * sem
    naive = np.array([e["big_sq"] for e in est])
    assert naive.mean() - TRUTH["G2"] > 20 * naive.std() / np.sqrt(reps)
    # The ratio of means (what the EMA of the two estimates converges to) is B_simple.
    assert tr.mean() / g2.mean() == pytest.approx(TRUTH["B_simple"], rel=0.05)


def test_jackknife_standard_error_is_calibrated():
    rng = np.random.default_rng(5)
    reps, k, b = 400, 40, 8
    g = _micro_grads(rng, reps * k, b).reshape(reps, k, D)
    est = [moment_estimates((gi * gi).sum(1), gi @ gi.sum(0), b) for gi in g]
    for key in ("G2", "trace"):
        spread = np.std([e[key] for e in est])
        stated = np.sqrt(np.mean([e[key + "_stderr"] ** 2 for e in est]))
        assert 0.8 < stated / spread < 1.25, (key, stated, spread)  # 400 reps: spread known to ~4%


class _LinReg(torch.nn.Module):
    """½ mean (θᵀx − y)²: per-example gradient (θᵀx − y)x, Hessian E[xxᵀ]."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(W + DELTA))

    def loss(self, x, y, mask=None):
        return 0.5 * ((x @ self.theta - y) ** 2).mean()


def _batch(seed: int, n: int) -> Batch:
    x, y = _xy(np.random.default_rng(seed), (n,))
    return Batch(torch.tensor(x), torch.tensor(y))


def test_probe_pipeline_within_5_percent_of_truth():
    # The same estimator end to end through autograd and double-backward HVPs on an independent Hessian
    # batch. Error budget: jackknife s.e. (< 1.5%, asserted) plus the Hessian batch's own sampling error
    # on the quadratic forms, about sqrt(2/n_h) ≈ 0.8%; 5% is more than 3 combined standard errors.
    k, b, n_h = 2000, 64, 30_000
    est = estimate_noise_scale(_LinReg(), _batch(10, k * b), k, _batch(11, n_h))
    assert (est.b_small, est.b_big, est.n_micro) == (b, k * b, k)
    h_err = np.sqrt(2 / n_h)
    for name, se in (
        ("G2", est.G2_stderr),
        ("trace_sigma", est.trace_sigma_stderr),
        ("B_simple", est.B_simple_stderr),
        ("B_noise", est.B_noise_stderr),
        ("gHg", None),
        ("trace_HSigma", None),
    ):
        value, truth = getattr(est, name), TRUTH[name]
        assert value == pytest.approx(truth, rel=0.05), name
        if se is not None:
            assert se / truth < 0.015, name
            extra = h_err * truth if name == "B_noise" else 0.0
            assert abs(value - truth) < 4 * np.hypot(se, extra), (name, value, truth, se)
    # Same numbers from the numpy formulas on the same micro-batches (exact up to float32 gradients).
    x = _batch(10, k * b)
    g = ((x.inputs @ torch.tensor(W + DELTA) - x.targets)[:, None] * x.inputs).reshape(k, b, D).mean(1).numpy()
    assert est.G2 == pytest.approx(_stats(g, b)["G2"], rel=1e-5)


# --- the transformer path ---------------------------------------------------------------------------


def _tiny_gpt(attention: str = "sdpa"):
    from scalescope.model import GPT

    torch.manual_seed(0)
    cfg = C.ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=8, attention=attention)
    return GPT(cfg, 11).double()


def test_hvp_on_sdpa_model_matches_finite_differences():
    model = _tiny_gpt("sdpa")
    params = _params(model)
    g = torch.Generator().manual_seed(0)
    b = Batch(torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g))
    n = sum(p.numel() for p in params)
    v = torch.randn(1, n, generator=g, dtype=torch.float64)
    hv = _hvps(model, params, b, v)[0]
    assert all(not m.math for m in model.modules() if hasattr(m, "math"))  # the switch is undone

    def grad_at(shift: float) -> torch.Tensor:
        with torch.no_grad():
            i = 0
            for p in params:
                p.add_(shift * v[0, i : i + p.numel()].view_as(p))
                i += p.numel()
        gr = torch.autograd.grad(model.loss(b.inputs, b.targets), params)
        with torch.no_grad():
            i = 0
            for p in params:
                p.sub_(shift * v[0, i : i + p.numel()].view_as(p))
                i += p.numel()
        return torch.cat([x.reshape(-1) for x in gr])

    eps = 1e-5
    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    err = (hv - fd).abs().max() / fd.abs().max()
    assert err < 1e-6, float(err)


def test_ema_is_a_ratio_of_averages():
    ema = NoiseScaleEMA(0.5)
    assert ema.update(2.0, 10.0) == pytest.approx((2.0, 10.0, 5.0))  # bias-corrected: first value exact
    g2, tr, r = ema.update(-1.0, 30.0)  # a negative |G|² estimate is averaged, not dropped
    assert (g2, tr) == pytest.approx(((0.25 * 2 + 0.5 * -1) / 0.75, (0.25 * 10 + 0.5 * 30) / 0.75))
    assert np.isnan(r)  # EMA of |G|² is 0 here: no ratio
    out = ema_ratio([2.0, None, -1.0], [10.0, 5.0, 30.0], 0.5)
    assert out[0] == 5.0 and np.isnan(out[1]) and np.isnan(out[2])


def test_bad_options_are_config_errors():
    for opts, field in (({"n_micro": 1}, "n_micro"), ({"ema": 1.0}, "ema"), ({"hessian_every": -1}, "hessian_every")):
        with pytest.raises(C.ConfigError, match=f"instruments.noise_scale.{field}"):
            build({"noise_scale": opts})
    with pytest.raises(C.ConfigError, match="instruments.noise_scale.n_mikro: unknown option; did you mean 'n_micro'"):
        build({"noise_scale": {"n_mikro": 4}})


# --- in a training run, and offline -----------------------------------------------------------------


def test_instrument_in_training_logs_raw_statistics_and_changes_nothing(tiny_toml, tmp_path):
    rd = train_tiny(
        tiny_toml,
        tmp_path,
        """
    [instruments.noise_scale]
    n_micro = 4
    hessian_every = 3
    """,
        "ns.toml",
    )
    rows = rd.read_metrics()
    by = {}
    for r in rows:
        by.setdefault(r["metric"], {})[r["step"]] = r["value"]
    evals = sorted(by["val_loss"])
    for key in ("B_simple", "B_simple_eval", "G2", "trace_sigma", "g_small_sq", "g_big_sq", "b_small", "b_big"):
        assert sorted(by[f"noise_scale/{key}"]) == evals, key
    assert set(by["noise_scale/b_small"].values()) == {2.0} and set(by["noise_scale/b_big"].values()) == {8.0}
    assert sorted(by["noise_scale/B_noise"]) == evals[::3]  # every 3rd evaluation
    # The logged raw statistics reproduce the logged estimates.
    for s in evals:
        g2, tr = two_batch_estimates(by["noise_scale/g_small_sq"][s], by["noise_scale/g_big_sq"][s], 2, 8)
        assert g2 == pytest.approx(by["noise_scale/G2"][s], rel=1e-6, abs=1e-9)
        assert tr == pytest.approx(by["noise_scale/trace_sigma"][s], rel=1e-6)
    g2s = [by["noise_scale/G2"][s] for s in evals]
    trs = [by["noise_scale/trace_sigma"][s] for s in evals]
    np.testing.assert_allclose(ema_ratio(g2s, trs, 0.8), [by["noise_scale/B_simple"][s] or np.nan for s in evals])
    # Training is untouched (the probe uses the probe stream, autograd.grad, and a forked RNG).
    plain = train_tiny(tiny_toml, tmp_path, "", "plain.toml")
    assert [r["value"] for r in plain.read_metrics() if r["metric"] == "val_loss"] == [by["val_loss"][s] for s in evals]


def test_offline_probe_command(tiny_toml, tmp_path, capsys):
    from scalescope.cli import main

    rd = train_tiny(tiny_toml, tmp_path, "", "off.toml")
    assert main(["probe", "noise-scale", str(rd.path), "--json", "--n-micro", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"B_simple", "B_noise", "G2", "trace_sigma", "step"} <= set(out)
    assert out["step"] == 30 and out["b_small"] == 8 and out["b_big"] == 32
    assert out["trace_sigma"] > 0
    assert main(["probe", "noise-scale", str(rd.path), "--n-micro", "4", "--no-hessian"]) == 0
    assert "B_simple" in capsys.readouterr().out
    assert main(["probe", "noise-scale", str(tmp_path / "nope")]) == 2
    assert main(["probe", "noise-scale", str(rd.path), "--step", "7"]) == 2
    assert main(["probe", "noise-scale", str(rd.path), "--n-micro", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
