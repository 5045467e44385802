"""The Chinchilla law: recovery of Hoffmann et al.'s published parameters, the early-stop pitfall,
bootstrap honesty, the compute-optimal closed form and the variable-projection cross-check."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import check_grad, minimize, minimize_scalar

from scalescope.laws import (
    ChinchillaLaw,
    ChinchillaVarPro,
    chinchilla_loss,
    compare_chinchilla,
    compute_optimal_allocation,
)
from scalescope.laws.chinchilla import _params_to_theta, _residuals, huber_lse_objective

# Hoffmann et al. 2022's published Approach-3 fit (sec. 3.3 / appendix D.2).
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
_NG, _DG = np.meshgrid(np.logspace(7, 10, 15), np.logspace(9, 12, 15))
X = np.column_stack([_NG.ravel(), _DG.ravel()])  # 225 runs, N in 1e7..1e10, D in 1e9..1e12
L_TRUE = chinchilla_loss(X[:, 0], X[:, 1], **TRUE)


def _noisy(seed: int) -> np.ndarray:
    return L_TRUE * np.exp(np.random.default_rng(seed).normal(0, 0.01, L_TRUE.size))  # 1% log-normal


@pytest.fixture(scope="module")
def noisy_fit() -> tuple[ChinchillaLaw, np.ndarray]:
    y = _noisy(0)
    return ChinchillaLaw(bootstrap=200, random_state=0).fit(X, y), y


def test_gradient_is_exact() -> None:
    y = _noisy(1)
    args = (np.log(X[:, 0]), np.log(X[:, 1]), np.log(y), 0.05)  # delta 0.05: both Huber branches are hit
    theta = _params_to_theta(np.array([1.6, 300.0, 500.0, 0.3, 0.3]))
    err = check_grad(lambda t: huber_lse_objective(t, *args)[0], lambda t: huber_lse_objective(t, *args)[1], theta)
    assert err < 1e-4 * np.linalg.norm(huber_lse_objective(theta, *args)[1])


def test_noiseless_data_recovers_parameters_exactly() -> None:
    law = ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0).fit(X, L_TRUE)
    for k, v in TRUE.items():
        # With zero residuals the Huber objective's minimum is 0 at the truth; 1e-6 is optimizer precision.
        assert law.params_[k] == pytest.approx(v, rel=1e-6), k
    assert law.objective_ < 1e-15


def test_recovery_from_noisy_data(noisy_fit) -> None:
    law, _ = noisy_fit
    # Relative s.d. of the estimates over 100 simulated data sets like this one (225 points, 1% noise):
    # E 1.0%, A 9%, B 17%, alpha 1.7%, beta 3.1%. Tolerances are ~4 s.d.
    tol = {"E": 0.045, "A": 0.4, "B": 0.7, "alpha": 0.07, "beta": 0.13}
    for k, v in TRUE.items():
        assert law.params_[k] == pytest.approx(v, rel=tol[k]), k
    assert law.bootstrap_params_.shape == (200, 5) and law.n_bootstrap_failed_ == 0
    assert law.r2_ > 0.99
    assert law.rmsle_ == pytest.approx(0.01, rel=0.2)  # the residuals are the 1% noise


def _coverage_hits(n_sets: int, grid) -> np.ndarray:
    """How many of n_sets data sets (100 points, 1% noise) have 95% intervals covering each truth."""
    Ng, Dg = np.meshgrid(np.logspace(7, 10, 10), np.logspace(9, 12, 10))
    X10 = np.column_stack([Ng.ravel(), Dg.ravel()])
    L0 = chinchilla_loss(X10[:, 0], X10[:, 1], **TRUE)
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # compute-optimal exponent of N
    hits = np.zeros(6)
    for s in range(n_sets):
        y = L0 * np.exp(np.random.default_rng(500 + s).normal(0, 0.01, L0.size))
        law = ChinchillaLaw(grid=grid, n_starts=16, bootstrap=200, random_state=s).fit(X10, y)
        ci = [law.ci_[k] for k in TRUE] + [law.derived_ci_["a"]]
        hits += [lo <= v <= hi for (lo, hi), v in zip(ci, [*TRUE.values(), a_true], strict=True)]
    return hits


def test_bootstrap_intervals_cover_truth_at_their_nominal_rate() -> None:
    # Coverage is a frequency, so it is tested as one (a single data set misses 2-6% of the time per
    # parameter: the fixture's seed 0 misses E by 0.004). Over 100 simulated data sets of this kind the
    # coverage of the 95% intervals was E 99%, A 98%, B 95%, alpha 98%, beta 95%, a 94%. With p = 0.94,
    # P(fewer than 17 of 20) = 3%; intervals with a true coverage of 75% would pass only 23% of the time.
    # For speed the fits start at the truth (a single start): the early-stop test below shows that start
    # reaches the same optimum as the grid; the bootstrap, which is under test, is unchanged.
    hits = _coverage_hits(20, grid=[list(TRUE.values())])
    assert np.all(hits >= 17), dict(zip([*TRUE, "a"], hits, strict=True))


@pytest.mark.slow
def test_bootstrap_coverage_with_grid_fits() -> None:
    # The same with the full procedure (coarse grid), on 60 data sets: >= 52 of 60 (P(fail | p = 0.94) = 1%).
    hits = _coverage_hits(60, grid="coarse")
    assert np.all(hits >= 52), dict(zip([*TRUE, "a"], hits, strict=True))


def test_fit_started_at_published_solution_does_not_stop_early(noisy_fit) -> None:
    law, y = noisy_fit
    lN, lD, lL = np.log(X[:, 0]), np.log(X[:, 1]), np.log(y)
    t0 = _params_to_theta(np.array(list(TRUE.values())))

    def unscaled(t: np.ndarray) -> float:
        r = _residuals(t, lN, lD, lL)
        a = np.abs(r)
        return float(np.where(a <= 1e-3, 0.5 * r * r, 1e-3 * (a - 5e-4)).sum())

    # The pitfall (DESIGN.md): a default L-BFGS-B on the raw objective, started at the published solution,
    # stops far short of the optimum because the objective is ~1e-3 and flat there.
    naive = minimize(unscaled, t0, method="L-BFGS-B")
    assert naive.fun > law.objective_ * (1 + 1e-3)
    # Ours, from the same single start, reaches the grid-started optimum.
    warm = ChinchillaLaw(grid=[list(TRUE.values())], n_starts=None, bootstrap=0).fit(X, y)
    assert warm.objective_ == pytest.approx(law.objective_, rel=1e-9)
    for k in TRUE:
        assert warm.params_[k] == pytest.approx(law.params_[k], rel=1e-5), k
    assert law.optimizer_["polish_gain"] >= 0.0 and law.optimizer_["starts_at_best"] >= 1


def test_warm_started_bootstrap_refits_match_cold_fits(noisy_fit) -> None:
    # The bootstrap refits each resample from the full-data optimum without a grid; if that stalled at the
    # start, resampled estimates would collapse onto the full fit. Compare with fresh grid fits.
    law, y = noisy_fit
    rng = np.random.default_rng(7)
    for _ in range(3):
        idx = rng.integers(0, len(y), len(y))
        warm = law._refit(X[idx], y[idx], law.param_vector_)
        cold = ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0).fit(X[idx], y[idx]).param_vector_
        np.testing.assert_allclose(warm, cold, rtol=1e-5)
        assert np.max(np.abs(warm / law.param_vector_ - 1)) > 1e-3  # it did move off the start


def test_l_bfgs_b_option_reaches_the_same_optimum(noisy_fit) -> None:
    law, y = noisy_fit
    alt = ChinchillaLaw(grid="coarse", n_starts=4, optimizer="l-bfgs-b", bootstrap=0).fit(X, y)
    assert alt.objective_ == pytest.approx(law.objective_, rel=1e-9)
    with pytest.raises(ValueError, match="optimizer"):
        ChinchillaLaw(optimizer="newton", bootstrap=0).fit(X, y)  # type: ignore[arg-type]


def test_compute_optimal_closed_form_matches_numerical_minimum() -> None:
    p = {k: TRUE[k] for k in ("A", "B", "alpha", "beta")}
    for C in (1e18, 1e21, 5.76e23):
        n_opt, d_opt = compute_optimal_allocation(C, **p)
        # Minimise L(N, C/(6N)) over log N directly.
        res = minimize_scalar(
            lambda ln, C=C: chinchilla_loss(np.exp(ln), C / (6 * np.exp(ln)), **TRUE),
            bracket=(10.0, 30.0),
            tol=1e-12,
        )
        assert n_opt == pytest.approx(np.exp(res.x), rel=1e-5)  # the loss is flat at its minimum
        assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-12)
    law = ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0).fit(X, L_TRUE)
    a, b = law.compute_optimal_exponents_
    n1, _ = law.compute_optimal(1e20)
    n2, _ = law.compute_optimal(1e22)
    assert a == pytest.approx(np.log(n2 / n1) / np.log(100.0), rel=1e-9)
    assert a + b == pytest.approx(1.0)
    assert law.tokens_per_parameter(1e22) == pytest.approx(law.compute_optimal(1e22)[1] / law.compute_optimal(1e22)[0])


def test_varpro_agrees_with_huber_fit_on_clean_data() -> None:
    vp = ChinchillaVarPro(bootstrap=0).fit(X, L_TRUE)
    for k, v in TRUE.items():
        assert vp.params_[k] == pytest.approx(v, rel=1e-5), k
    check = compare_chinchilla(X, L_TRUE, huber=ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0), varpro=vp)
    assert check.agrees and check.max_pred_rel_diff < 1e-6
    assert check.message.startswith("agree")


def test_varpro_cross_check_reports_disagreement(noisy_fit) -> None:
    law, y = noisy_fit
    # On noisy data the two losses (Huber vs squared) give slightly different, both valid, fits: they
    # should still agree within the default tolerances (over 5 seeds predictions differed <= 0.6%).
    assert compare_chinchilla(X, y, huber=law).agrees
    # A Huber fit of other data (losses 5% higher) must be flagged against varpro on these data.
    other = ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0).fit(X, 1.05 * y)
    check = compare_chinchilla(X, y, huber=other)
    assert not check.agrees
    assert check.max_pred_rel_diff == pytest.approx(0.05, abs=0.01)
    assert check.message.startswith("DISAGREE")
    # Parameter differences: with no tolerance they are flagged, unless the data cannot resolve them
    # (varpro's value inside the Huber fit's 95% bootstrap interval).
    bare = ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0).fit(X, y)
    strict = compare_chinchilla(X, y, huber=bare, param_rtol=0.0)
    assert not strict.agrees and "differs by" in strict.message
    assert compare_chinchilla(X, y, huber=law, param_rtol=0.0).agrees


def test_varpro_bootstrap_covers_truth() -> None:
    vp = ChinchillaVarPro(bootstrap=150, random_state=0).fit(X, _noisy(2))
    for k in ("E", "alpha", "beta"):
        lo, hi = vp.ci_[k]
        assert lo <= TRUE[k] <= hi, k


# --- constrained fits: fix_E, shared_exponent, E_min ----------------------------------------------------


def test_unconstrained_default_takes_the_original_path() -> None:
    law = ChinchillaLaw()
    assert law._form() is None and law.fixed_params_ == set() and law.n_free_params == 5
    assert ChinchillaLaw(E_min=0.0)._form() is None  # the default floor E >= 0 is the original fit


@pytest.mark.parametrize(
    ("c", "with_e", "shared"),
    [
        (0.0, True, False),
        (1.5, True, False),
        (1.69, False, False),
        (1.69, False, True),
        (1.2, True, True),
        (0.0, False, False),
    ],
)
def test_constrained_objective_gradient_is_exact(c: float, with_e: bool, shared: bool) -> None:
    from scalescope.laws.chinchilla import _Form, _huber

    form = _Form(c=c, with_e=with_e, shared=shared)
    lN, lD, lL, delta = np.log(X[:, 0]), np.log(X[:, 1]), np.log(_noisy(3)), 0.05  # both Huber branches
    z = form.z_of_params(np.array([1.9, 300.0, 500.0, 0.3, 0.3]))

    def f(zz: np.ndarray) -> float:
        return float(_huber(form.log_loss(zz, lN, lD)[0] - lL, delta).sum() / delta)

    def g(zz: np.ndarray) -> np.ndarray:
        r = form.log_loss(zz, lN, lD)[0] - lL
        return form.log_loss(zz, lN, lD)[1].T @ (np.clip(r, -delta, delta) / delta)

    assert check_grad(f, g, z) < 1e-5 * np.linalg.norm(g(z))
    # The vectorised grid evaluation is the same function.
    np.testing.assert_allclose(form.grid_log_loss(z[None], lN, lD)[0], form.log_loss(z, lN, lD)[0], rtol=1e-13)


def test_fix_E_recovers_the_free_parameters() -> None:
    # Noiseless: E held at the truth, the other four recovered to optimizer precision.
    law = ChinchillaLaw(grid="coarse", n_starts=16, fix_E=TRUE["E"], bootstrap=0).fit(X, L_TRUE)
    for k, v in TRUE.items():
        assert law.params_[k] == pytest.approx(v, rel=1e-6), k
    assert law.params_["E"] == TRUE["E"] and law.fixed_params_ == {"E"} and law.n_free_params == 4
    assert law.min_points() == 5 and "E" not in law.bounds_
    # Noisy (1%): E fixed removes E's trade-off with A and alpha, so A, alpha are pinned better than in
    # the free fit (test_recovery_from_noisy_data: ~4 s.d. there); same tolerances hold with room.
    law = ChinchillaLaw(grid="coarse", n_starts=16, fix_E=TRUE["E"], bootstrap=50, random_state=0).fit(X, _noisy(0))
    tol = {"A": 0.4, "B": 0.7, "alpha": 0.07, "beta": 0.13}
    for k, t in tol.items():
        assert law.params_[k] == pytest.approx(TRUE[k], rel=t), k
    # The bootstrap respects the constraint: every draw has E at its fixed value.
    assert np.all(law.bootstrap_params_[:, 0] == TRUE["E"])
    s = law.summary()
    assert s["constraints"] == {
        "fix_E": TRUE["E"],
        "shared_exponent": False,
        "E_min": 0.0,
        "fixed": ["E"],
        "free_params": 4,
    }
    diag = s.get("diagnostics")
    if diag is not None:  # laws/diagnostics.py: a fixed parameter is neither pinned nor unpinned
        assert diag["parameters"]["E"]["status"] == "fixed"


def test_shared_exponent_recovers_a_symmetric_law() -> None:
    sym = {**TRUE, "beta": TRUE["alpha"]}
    y = chinchilla_loss(X[:, 0], X[:, 1], **sym)
    law = ChinchillaLaw(grid="coarse", n_starts=16, shared_exponent=True, bootstrap=20, random_state=0).fit(X, y)
    for k, v in sym.items():
        assert law.params_[k] == pytest.approx(v, rel=1e-6), k  # noiseless, exactly of the fitted form
    assert law.fixed_params_ == {"beta"} and law.compute_optimal_exponents_ == pytest.approx((0.5, 0.5))
    assert np.all(law.bootstrap_params_[:, 3] == law.bootstrap_params_[:, 4])  # alpha = beta in every draw
    # Both constraints at once: 3 free parameters (A, B, alpha).
    both = ChinchillaLaw(grid="coarse", n_starts=16, shared_exponent=True, fix_E=sym["E"], bootstrap=0).fit(X, y)
    assert both.n_free_params == 3 and both.params_["alpha"] == pytest.approx(sym["alpha"], rel=1e-6)


def test_E_floor() -> None:
    # A floor below the truth does not bind: the noiseless fit recovers every parameter.
    law = ChinchillaLaw(grid="coarse", n_starts=16, E_min=1.5, bootstrap=0).fit(X, L_TRUE)
    for k, v in TRUE.items():
        assert law.params_[k] == pytest.approx(v, rel=1e-6), k
    assert law.bounds_["E"] == (1.5, np.inf) and law.fixed_params_ == set()
    # A floor above the truth binds: E ends on it (never below), and the diagnostics see the bound.
    y = _noisy(4)
    law = ChinchillaLaw(grid="coarse", n_starts=16, E_min=1.8, bootstrap=20, random_state=0).fit(X, y)
    assert 1.8 <= law.params_["E"] <= 1.8 * (1 + 1e-6)
    assert np.all(law.bootstrap_params_[:, 0] >= 1.8)
    diag = getattr(law, "diagnostics_", None)
    if diag is not None:
        assert diag.parameters["E"].at_bound
    # The unconstrained fit never reports a negative E either (E = exp(e) >= 0 is its floor).
    assert ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0).fit(X, y).bounds_["E"] == (0.0, np.inf)


def test_constraint_errors_name_the_option() -> None:
    from scalescope.errors import ConfigError

    y = L_TRUE
    cases = [
        ({"fix_E": float(y.min())}, "fix_E", "not below the smallest observed loss"),
        ({"fix_E": -1.0}, "fix_E", "must be a number >= 0"),
        ({"E_min": 100.0}, "E_min", "not below the smallest observed loss"),
        ({"fix_E": 1.0, "E_min": 1.5}, "fix_E", "below E_min=1.5"),
    ]
    for opts, field, text in cases:
        with pytest.raises(ConfigError, match=text) as e:
            ChinchillaLaw(grid="coarse", n_starts=4, bootstrap=0, **opts).fit(X, y)
        assert e.value.field == field
