"""Identifiability diagnostics: degenerate fits are reported (a verdict and a reason), never a traceback.

Each degenerate case is built from synthetic data whose defect is known by construction (a floor the data
do not have, every run at one N, N and D in fixed ratio, resamples that cannot be fitted); the good cases
come from known laws with enough points, where every parameter must be pinned.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from scalescope.jsonable import jsonable
from scalescope.laws import (
    BrokenNeuralScalingLaw,
    ChinchillaLaw,
    ChinchillaVarPro,
    CriticalBatchLaw,
    FitDiagnostics,
    FitError,
    IsoFLOPAnalysis,
    PowerLaw,
    SaturatingPowerLaw,
    SigmoidLaw,
    chinchilla_loss,
    compare_chinchilla,
    compute_optimal_allocation,
    fit_steps_examples,
)
from scalescope.laws.diagnostics import MIN_POINTS_PER_PARAMETER, collinear_parameters, leverages

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022
X1 = np.logspace(6, 9, 12)


def _noise(n: int, seed: int, s: float) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(0, s, n))


def _strict_json(law_or_dict) -> dict:
    # What a --json command would print: strict JSON (NaN as null) must be possible.
    d = law_or_dict.summary() if hasattr(law_or_dict, "summary") else law_or_dict
    return json.loads(json.dumps(jsonable(d), allow_nan=False))


# --- good fits: every parameter pinned ---------------------------------------------------------------------


def test_good_fits_are_ok_and_keep_their_intervals() -> None:
    power = PowerLaw(bootstrap=200, random_state=0).fit(X1, 50.0 * X1**-0.2 * _noise(12, 0, 0.02))
    sat = SaturatingPowerLaw(bootstrap=200, random_state=0).fit(X1, (1.8 + 200.0 * X1**-0.3) * _noise(12, 1, 0.01))
    for law in (power, sat):
        d = law.diagnostics_
        assert d.verdict == "ok", d.reason
        assert d.unpinned == [] and d.bootstrap_failed_share == 0.0
        assert d.points_per_parameter == 12 / len(law.param_names)
        # Pinned parameters keep their (finite) intervals, which contain the estimate.
        for k, (lo, hi) in law.ci_.items():
            assert lo <= law.params_[k] <= hi, k
        assert _strict_json(law)["diagnostics"]["verdict"] == "ok"


def test_noiseless_data_are_ok_not_zero_width() -> None:
    # Exact data give exact resamples: zero-width intervals are correct there, not a degenerate bootstrap.
    law = PowerLaw(bootstrap=50, random_state=0).fit(X1, 50.0 * X1**-0.2)
    assert law.diagnostics_.verdict == "ok", law.diagnostics_.reason


def test_few_points_per_parameter_is_weak() -> None:
    # 5 points for 2 parameters: 2.5 per parameter, below the threshold of 3 (stated in diagnostics.py).
    assert MIN_POINTS_PER_PARAMETER == 3
    x = X1[:5]
    law = PowerLaw(bootstrap=100, random_state=0).fit(x, 50.0 * x**-0.2 * _noise(5, 2, 0.02))
    assert law.diagnostics_.verdict == "weak"
    assert "2.5 points per parameter" in law.diagnostics_.reason


def test_no_bootstrap_is_weak_and_says_why() -> None:
    law = PowerLaw(bootstrap=0).fit(X1, 50.0 * X1**-0.2 * _noise(12, 3, 0.02))
    assert law.diagnostics_.verdict == "weak" and "no bootstrap" in law.diagnostics_.reason
    assert math.isnan(law.diagnostics_.bootstrap_failed_share)


# --- degenerate fits: reported, not raised -----------------------------------------------------------------


def _no_floor_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """6 runs with no loss floor: the Huber fit drives log E towards -inf, so E comes out at 1e-13 or below,
    or exactly 0.0 once exp underflows (issue 11's crash: ZeroDivisionError in the cross-check)."""
    N = np.array([1e5, 2e5, 4e5, 1e5, 2e5, 4e5])
    D = np.array([1e6, 1e6, 1e6, 4e6, 4e6, 4e6])
    return np.column_stack([N, D]), (30 * N**-0.25 + 40 * D**-0.2) * _noise(6, seed, 0.02)


def test_E_driven_to_zero_is_reported_as_at_its_bound() -> None:
    X, y = _no_floor_data(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning may leak to the user either
        law = ChinchillaLaw(n_starts=16, bootstrap=30, random_state=0).fit(X, y)
        check = compare_chinchilla(X, y, huber=law)
    assert law.params_["E"] < 1e-12  # the degenerate case really is built
    d = law.diagnostics_
    assert d.verdict == "unidentified"
    assert d.parameters["E"].at_bound and "at its bound 0" in d.parameters["E"].reasons
    assert d.reason.startswith("6 points cannot pin 5 parameters")
    # Never shown as informative: E's interval is NaN, not [1e-40, 2.1].
    assert all(math.isnan(v) for v in law.ci_["E"])
    assert d.cross_check == check.message and d.cross_check_agrees is check.agrees
    out = _strict_json(law)
    assert out["ci"]["E"] == [None, None] and out["diagnostics"]["parameters"]["E"]["status"] == "unpinned"


def test_cross_check_survives_E_exactly_zero() -> None:
    # The division that crashed: relative differences taken against a Huber E of exactly 0.0.
    X, y = _no_floor_data(1)
    huber = ChinchillaLaw.from_params({**TRUE, "E": 0.0})
    check = compare_chinchilla(X, y, huber=huber)
    assert math.isinf(check.param_rel_diff["E"]) or check.param_rel_diff["E"] == 0.0
    assert not check.agrees or check.param_rel_diff["E"] == 0.0
    _strict_json(check.as_dict())


def test_a_floor_the_data_do_not_have_is_at_its_bound() -> None:
    # A pure power law has no floor: the saturating law's E goes to its bound 0.
    law = SaturatingPowerLaw(bootstrap=50, random_state=0).fit(X1, 30.0 * X1**-0.5)
    d = law.diagnostics_
    assert d.parameters["E"].at_bound and d.verdict == "unidentified"
    assert d.parameters["alpha"].pinned  # the exponent is still measured


def test_every_run_at_one_N_is_a_collinear_design() -> None:
    # With one N, E + A/N^alpha is a single constant: E, A and alpha trade off exactly.
    D = np.logspace(8, 10, 8)
    N = np.full(8, 1e7)
    y = chinchilla_loss(N, D, **TRUE) * _noise(8, 0, 0.01)
    law = ChinchillaLaw(grid="coarse", bootstrap=30, random_state=0).fit(np.column_stack([N, D]), y)
    d = law.diagnostics_
    assert d.verdict == "unidentified"
    for k in ("E", "A", "alpha"):
        assert any("collinear" in r for r in d.parameters[k].reasons), (k, d.parameters[k].reasons)
        assert all(math.isnan(v) for v in law.ci_[k]), k
    assert d.parameters["beta"].pinned  # D varies: its exponent is still measured


def test_N_and_D_in_fixed_ratio_is_reported() -> None:
    N = np.logspace(6, 8, 10)
    X = np.column_stack([N, 20 * N])
    y = chinchilla_loss(X[:, 0], X[:, 1], **TRUE) * _noise(10, 1, 0.01)
    # Few starts and resamples: the degenerate valley makes each local fit slow (~0.2 s a refit).
    law = ChinchillaLaw(grid="coarse", n_starts=4, bootstrap=10, random_state=0).fit(X, y)
    assert law.diagnostics_.verdict == "unidentified"
    compare_chinchilla(X, y, huber=law)  # completes; its verdict joins the diagnostics
    assert law.diagnostics_.cross_check is not None


def test_varpro_amplitude_at_its_bound_and_its_exponent_without_effect() -> None:
    # Losses that do not depend on N: NNLS puts A at 0, and alpha then moves nothing.
    Ng, Dg = np.meshgrid(np.logspace(7, 9, 4), np.logspace(9, 11, 4))
    X = np.column_stack([Ng.ravel(), Dg.ravel()])
    y = (1.7 + 400 * X[:, 1] ** -0.3) * _noise(16, 2, 0.005)
    law = ChinchillaVarPro(bootstrap=30, random_state=0).fit(X, y)
    d = law.diagnostics_
    assert d.verdict == "unidentified"
    assert not d.parameters["A"].pinned and not d.parameters["alpha"].pinned
    assert d.parameters["beta"].pinned


class _NeverRefits(PowerLaw):
    def _refit(self, X, y, p0):  # type: ignore[no-untyped-def]
        raise np.linalg.LinAlgError("singular")


def test_all_bootstrap_resamples_failing_is_reported_not_raised() -> None:
    law = _NeverRefits(bootstrap=20, random_state=0).fit(X1, 50.0 * X1**-0.2 * _noise(12, 4, 0.02))
    d = law.diagnostics_
    assert d.bootstrap_failed_share == 1.0 and d.verdict == "unidentified"
    assert all("most bootstrap resamples failed (20 of 20)" in d.parameters[k].reasons for k in ("A", "alpha"))
    assert all(math.isnan(v) for c in law.ci_.values() for v in c)
    # The interval is NaN (uninformative), not an exception: a forecast can record it as such.
    lo, hi = law.predict_interval([1e10], kind="prediction")
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_bnsl_break_pushed_to_its_bound_is_reported() -> None:
    # A smooth saturating curve has no break to find: the break's position and sharpness are not pinned.
    y = (1.8 + 200 * X1**-0.3) * _noise(12, 5, 0.01)
    law = BrokenNeuralScalingLaw(n_breaks=1, bootstrap=15, random_state=0).fit(X1, y)
    d = law.diagnostics_
    assert d.verdict == "unidentified"
    assert {"d1", "f1"} & set(d.unpinned), d.reason


def test_constant_critical_batch_is_a_clear_fit_error() -> None:
    with pytest.raises(FitError, match="B_crit does not change with the loss"):
        CriticalBatchLaw(bootstrap=0).fit(np.linspace(2, 4, 6), np.full(6, 1e5))


def test_steps_examples_at_the_nnls_bound() -> None:
    # Steps that grow with the batch size (no hyperbola): NNLS puts E_min at 0, so B_crit = 0 is no estimate.
    B = np.logspace(1, 4, 8)
    fit = fit_steps_examples(B * 10, B**2 * 10, bootstrap=50, random_state=0)
    assert fit.E_min == 0.0 and fit.diagnostics is not None
    assert fit.diagnostics.parameters["E_min"].at_bound and fit.diagnostics.verdict == "unidentified"
    assert all(math.isnan(v) for v in fit.ci["B_crit"])
    _strict_json(fit.as_dict())


def test_isoflop_vertex_outside_the_sampled_sizes_is_weak() -> None:
    rows = []
    for C in np.logspace(18, 22, 5):
        # Sizes all below N_opt: the parabola's vertex is extrapolated beyond the sampled range.
        n_opt = compute_optimal_allocation(C, A=406.4, B=410.7, alpha=0.34, beta=0.28)[0]
        rows += [(N, C, chinchilla_loss(N, C / (6 * N), **TRUE)) for N in n_opt * np.logspace(-1.5, -0.3, 7)]
    r = np.array(rows)
    iso = IsoFLOPAnalysis(bootstrap=20, random_state=0).fit(r[:, :2], r[:, 2])
    assert not iso.vertex_in_range_.all()
    assert iso.diagnostics_.verdict in ("weak", "unidentified")
    assert "outside the sizes sampled" in iso.diagnostics_.reason
    assert _strict_json(iso)["diagnostics"]["verdict"] == iso.diagnostics_.verdict


def test_sigmoid_fit_carries_diagnostics() -> None:
    y = 0.1 + 0.8 / (1 + (X1 / 1e7) ** -2.0) + np.random.default_rng(6).normal(0, 0.01, X1.size)
    law = SigmoidLaw(bootstrap=50, random_state=0).fit(X1, y)
    assert isinstance(law.diagnostics_, FitDiagnostics)
    assert law.diagnostics_.parameters["lo"].interval_decades != law.diagnostics_.parameters["x0"].interval_decades


# --- the pieces, against exact small cases -----------------------------------------------------------------


def test_leverages_of_a_straight_line_match_the_closed_form() -> None:
    # For y = a + b x: h_i = 1/n + (x_i - mean x)^2 / sum (x - mean x)^2 (Davison & Hinkley 1997, eq. 6.6).
    x = np.array([0.0, 1.0, 2.0, 5.0, 9.0])
    J = np.column_stack([np.ones_like(x), x])
    expected = 1 / x.size + (x - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2)
    np.testing.assert_allclose(leverages(J), expected, rtol=1e-12)
    assert leverages(J).sum() == pytest.approx(2.0)  # trace = number of parameters


def test_collinear_parameters_exact_cases() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    # Column 2 = 3 x column 0: those two trade off; column 1 is free.
    J = np.column_stack([x, x**2, 3 * x])
    assert collinear_parameters(J, ["a", "b", "c"]) == {"a": ["c"], "c": ["a"]}
    # A column of zeros (elasticity 0): no effect at all.
    J0 = np.column_stack([x, np.zeros_like(x)])
    assert collinear_parameters(J0, ["a", "b"], np.array([1.0, 1.0])) == {"b": []}
    assert collinear_parameters(np.column_stack([x, x**2]), ["a", "b"]) == {}


def test_cross_check_verdict_does_not_stack() -> None:
    law = PowerLaw(bootstrap=50, random_state=0).fit(X1, 50.0 * X1**-0.2 * _noise(12, 7, 0.02))
    d = law.diagnostics_
    once = d.with_cross_check(False, "DISAGREE: x")
    twice = once.with_cross_check(False, "DISAGREE: y")
    assert once.verdict == twice.verdict == "weak"
    assert twice.reason == "the cross-check disagrees (DISAGREE: y)"
    assert twice.with_cross_check(True, "agree").verdict == "ok"


def test_an_amplitude_is_judged_by_its_term_at_the_centre_of_the_data() -> None:
    # A = 1e4 with alpha = 0.8 over x in [1e5, 1e7]: A is the term's value at x = 1, five decades outside
    # the data, so a small uncertainty in alpha moves A by orders of magnitude while the curve the data see
    # (A·x_c^-alpha at the geometric centre x_c = 1e6) barely moves. With 3% noise on 8 points alpha's
    # interval is ~±0.15, i.e. A's spans ~2 decades by construction; the term's spans ~0.1.
    x = np.logspace(5, 7, 8)
    y = (1.0 + 1e4 * x**-0.8) * _noise(8, 11, 0.03)
    law = SaturatingPowerLaw(bootstrap=300, random_state=0).fit(x, y)
    a = law.diagnostics_.parameters["A"]
    assert a.interval_decades > 1.0  # A's own interval is wide: the trap the term rule avoids
    assert a.judged_on.startswith("95% interval of its term at x = 1e+06")
    assert a.judged_decades < 0.5 and a.pinned, a.reasons
    assert _strict_json(law)["diagnostics"]["parameters"]["A"]["judged_decades"] < 0.5
