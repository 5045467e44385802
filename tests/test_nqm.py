"""The noisy quadratic model (Zhang et al. 2019): closed-form expected dynamics against the fixed point,
against Monte Carlo simulation and against plain iteration; steps-to-target against batch size; the
paper's qualitative results (momentum and preconditioning raise the critical batch size)."""

from __future__ import annotations

import numpy as np
import pytest

from scalescope.laws.nqm import NQM, Optimizer, nqm_from_measurements

SGD, MOM, PRE = Optimizer(), Optimizer(momentum=0.9), Optimizer(precondition=0.5)


def test_sgd_single_coordinate_fixed_point_and_transient():
    h, c, B, a, t0 = 2.0, 3.0, 4.0, 0.3, 5.0
    m = NQM([h], [c], [t0])
    fixed = a * c / (B * h * (2 - a * h))  # E[θ²]_∞ (Zhang et al. 2019, sec. 3.1)
    assert m.steady_state_loss(a, B)[0] == pytest.approx(0.5 * h * fixed, rel=1e-12)
    t = np.arange(41)
    closed = 0.5 * h * ((1 - a * h) ** (2 * t) * (t0 - fixed) + fixed)
    np.testing.assert_allclose(m.loss_curve(a, B, 40), closed, rtol=1e-12)
    # Unstable (α h > 2) or a target under the noise floor: never reached.
    assert np.isinf(m.steps_to_target(0.5 * h * fixed * 0.99, a, B)[0])
    assert np.isinf(m.steps_to_target(1.0, 1.01, B)[0])
    assert np.isinf(m.steady_state_loss(1.01, B)[0])


def test_preconditioning_zero_is_sgd_and_one_equalizes_rates():
    m = NQM([1.0, 0.1, 0.01], [1.0, 0.1, 0.01], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(m.loss_curve(0.5, 8, 30, Optimizer(precondition=0.0)), m.loss_curve(0.5, 8, 30))
    # P = H: every coordinate contracts by (1 − α) per step without noise.
    curve = m.loss_curve(0.5, np.inf, 10, Optimizer(precondition=1.0))
    np.testing.assert_allclose(curve, curve[0] * 0.25 ** np.arange(11), rtol=1e-12)


@pytest.mark.parametrize("opt", [SGD, MOM, PRE, Optimizer(momentum=0.5, precondition=0.5)])
def test_expected_dynamics_match_monte_carlo(opt):
    h = np.array([1.0, 0.3, 0.05])
    c = np.array([0.5, 0.3, 0.1])
    m = NQM(h, c, [1.0, 4.0, 9.0])
    lr, B, T, n = 0.4, 2.0, 30, 40_000
    rng = np.random.default_rng(0)
    theta = np.tile(np.sqrt([1.0, 4.0, 9.0]), (n, 1))
    mom = np.zeros_like(theta)
    P = h**-opt.precondition
    sim = [0.5 * (h * theta**2).sum(1)]
    for _ in range(T):
        g = h * theta + rng.normal(size=theta.shape) * np.sqrt(c / B)
        mom = opt.momentum * mom + P * g
        theta = theta - lr * mom
        sim.append(0.5 * (h * theta**2).sum(1))
    sim = np.array(sim)
    expected = m.loss_curve(lr, B, T, opt)
    for t in (1, 5, 15, 30):
        se = sim[t].std() / np.sqrt(n)
        assert abs(sim[t].mean() - expected[t]) < 4 * se, (t, sim[t].mean(), expected[t], se)


@pytest.mark.parametrize("opt", [SGD, PRE, Optimizer(momentum=0.5)])
def test_binary_lifting_finds_the_first_crossing(opt):
    m = NQM.zhang2019(50)
    B, target = 20.0, 0.2 * m.initial_loss
    lrs = np.array([0.05, 0.2, 0.6, 1.0])
    fast = m.steps_to_target(target, lrs, B, opt)
    for lr, s in zip(lrs, fast):
        curve = m.loss_curve(lr, B, 3000, opt)
        first = int(np.argmax(curve <= target))
        assert curve[first] <= target and first > 0
        assert first - 1 <= s <= first  # fractional: between the last step above and the first below


def test_steps_scale_as_one_over_b_then_flatten():
    m = NQM.zhang2019(100)
    target = 0.1 * m.initial_loss
    s_inf, _ = m.optimal_steps(target, np.inf)
    S, lrs = m.steps_vs_batch(target, [0.01, 0.02, 1e4, 2e4])
    # Perfect scaling at small batch: doubling B halves the steps (and the optimal lr doubles).
    assert S[0] / S[1] == pytest.approx(2.0, rel=0.03)
    assert lrs[1] / lrs[0] == pytest.approx(2.0, rel=0.1)
    # Large batch: as many steps as with the exact gradient.
    assert S[2] == pytest.approx(s_inf, rel=0.02) and S[3] == pytest.approx(s_inf, rel=0.02)


def test_sgd_curve_is_close_to_the_hyperbola():
    m = NQM.zhang2019(100)
    r = m.critical_batch(0.1 * m.initial_loss)
    # On an exact hyperbola B_crit (fit) and B_knee (S = 2 S_inf) coincide; SGD's NQM curve is near one.
    assert r.B_crit == pytest.approx(r.B_knee, rel=0.15)
    assert r.S_min == pytest.approx(r.S_inf, rel=0.15)
    assert np.all(np.diff(r.steps) <= 1e-9)  # more batch never needs more steps
    d = r.as_dict()
    assert d["B_crit"] == r.B_crit and len(d["steps"]) == len(r.batch_sizes)


def test_momentum_and_preconditioning_raise_the_critical_batch():
    # Zhang et al. 2019 (sec. 3.2-3.3, fig. 3): same steps as SGD at small batch, but perfect scaling up to
    # larger batches, so a larger critical batch size. Momentum's gain needs an ill-conditioned problem:
    # 300 coordinates (h from 1 to 1/300), of which the target needs the top ~100 optimized.
    m = NQM.zhang2019(300)
    target = 0.1 * m.initial_loss
    bs = np.geomspace(0.05, 5000, 11)
    sgd = m.critical_batch(target, SGD, batch_sizes=bs)
    mom = m.critical_batch(target, MOM, batch_sizes=bs)
    pre = m.critical_batch(target, PRE, batch_sizes=bs)
    assert mom.steps[0] == pytest.approx(sgd.steps[0], rel=0.05)  # momentum does not help at small batch
    assert mom.B_crit > 2 * sgd.B_crit and mom.B_knee > 2 * sgd.B_knee
    assert pre.B_crit > 2 * sgd.B_crit and pre.B_knee > 2 * sgd.B_knee
    assert pre.steps[0] < sgd.steps[0]  # preconditioning helps at every batch size


def test_nqm_from_measurements():
    h = np.array([2.0, 1.0, 0.5, 0.1, -0.05])  # a small negative eigenvalue is dropped
    c = np.array([1.0, 0.8, 0.3, 0.1, 0.1])
    g = np.array([0.4, 0.3, 0.1, 0.05, 0.0])
    rep = nqm_from_measurements(
        h,
        c,
        grad_in_eigenbasis=g,
        target_fraction=0.3,
        optimizers={"sgd": SGD},
        batch_sizes=np.geomspace(0.01, 1000, 11),
    )
    assert rep["n_dropped"] == 1
    direct = NQM(h[:4], c[:4], (g[:4] / h[:4]) ** 2)
    assert rep["initial_loss"] == pytest.approx(direct.initial_loss)
    assert rep["target"] == pytest.approx(0.3 * direct.initial_loss)
    want = direct.critical_batch(rep["target"], SGD, batch_sizes=np.geomspace(0.01, 1000, 11)).B_crit
    assert rep["B_crit"] == pytest.approx(want) and rep["B_crit"] > 0
    assert rep["B_noise"] == pytest.approx(np.sum(h[:4] * c[:4]) / np.sum(h[:4] ** 3 * (g[:4] / h[:4]) ** 2))
    with pytest.raises(ValueError, match="noise variances"):
        nqm_from_measurements(h, c[:3])
    with pytest.raises(ValueError, match="positive eigenvalues"):
        nqm_from_measurements(-np.abs(h), c)
    with pytest.raises(ValueError):
        Optimizer(momentum=1.0)
