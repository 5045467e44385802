"""Held-out largest scales: small errors on noiseless data, honest intervals on noisy data."""

from __future__ import annotations

import numpy as np
import pytest

from scalescope.laws import ChinchillaLaw, FitError, PowerLaw, SaturatingPowerLaw, chinchilla_loss, holdout_largest

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def test_power_law_holdout_is_exact_on_noiseless_data() -> None:
    x = np.logspace(6, 9, 15)[::-1]  # unsorted on purpose: "largest" is by value, not position
    y = 50.0 * x**-0.2
    res = holdout_largest(PowerLaw(bootstrap=0), x, y, 3)
    np.testing.assert_array_equal(np.sort(res.X_heldout[:, 0]), np.sort(x)[-3:])
    assert res.max_abs_rel_error < 1e-10  # an exact model on exact data
    assert res.law.n_points_ == 12 and res.interval is None and res.covered is None


def test_chinchilla_holdout_by_compute_on_noiseless_data() -> None:
    Ng, Dg = np.meshgrid(np.logspace(7, 10, 8), np.logspace(9, 12, 8))
    X = np.column_stack([Ng.ravel(), Dg.ravel()])
    y = chinchilla_loss(X[:, 0], X[:, 1], **TRUE)
    law = ChinchillaLaw(grid="coarse", n_starts=16, bootstrap=0)
    res = holdout_largest(law, X, y, 10)
    # Held out = the 10 largest N*D (= C/6), i.e. the far corner of the grid.
    assert np.min(np.prod(res.X_heldout, axis=1)) >= np.sort(np.prod(X, axis=1))[-10]
    # Noiseless data and the true functional form: extrapolation error is optimizer precision (1e-6).
    assert res.max_abs_rel_error < 1e-6
    assert not hasattr(law, "params_")  # the law passed in is a template, left unfitted
    d = res.as_dict()
    assert d["k"] == 10 and len(d["rel_error"]) == 10


def test_holdout_prediction_interval_on_noisy_data() -> None:
    rng = np.random.default_rng(8)
    x = np.logspace(6, 10, 30)
    y = (1.8 + 200.0 * x**-0.3) * np.exp(rng.normal(0, 0.01, x.size))
    res = holdout_largest(SaturatingPowerLaw(bootstrap=300, random_state=0), x, y, 4)
    # The 4 held-out points span the last ~0.5 decade, close to the floor E: errors should be at the 1%
    # noise level (3% allows ~3 s.d. of noise plus the fitted curve's own error).
    assert res.max_abs_rel_error < 0.03
    assert res.covered is not None and res.covered.sum() >= 3  # 95% intervals: at most one miss of four
    assert set(res.as_dict()) >= {"interval", "covered", "predicted", "observed"}


def test_holdout_k_is_checked() -> None:
    x = np.logspace(6, 9, 6)
    with pytest.raises(FitError, match="holdout k"):
        holdout_largest(PowerLaw(bootstrap=0), x, x**-0.2, 6)
    with pytest.raises(FitError, match="need at least 3 points"):
        holdout_largest(PowerLaw(bootstrap=0), x, x**-0.2, 4)


def test_holdout_status_reports_informative_coverage() -> None:
    rng = np.random.default_rng(8)
    x = np.logspace(6, 10, 30)
    y = (1.8 + 200.0 * x**-0.3) * np.exp(rng.normal(0, 0.01, x.size))
    res = holdout_largest(SaturatingPowerLaw(bootstrap=200, random_state=0), x, y, 4)
    lo, hi = res.interval  # type: ignore[misc]
    # The relative half-width is defined on the prediction: (hi - lo) / (2 predicted).
    np.testing.assert_allclose(res.rel_half_width, (hi - lo) / (2 * res.predicted), rtol=1e-12)
    # 1% noise, 26 points: intervals of a few percent, well under the 10% limit, so covered points count.
    assert np.all(res.rel_half_width < 0.10)
    assert res.status == ["covered" if c else "not covered" for c in res.covered]  # type: ignore[union-attr]
    d = res.as_dict()
    assert d["status"] == res.status and d["max_rel_half_width"] == 0.10 and d["verdict"] == "ok"
    # The same interval judged against a stricter limit is uninformative, covered or not.
    strict = holdout_largest(SaturatingPowerLaw(bootstrap=200, random_state=0), x, y, 4, max_rel_half_width=1e-4)
    assert strict.status == ["uninformative"] * 4
    with pytest.raises(FitError, match="max_rel_half_width"):
        holdout_largest(PowerLaw(bootstrap=0), x, y, 4, max_rel_half_width=0.0)


def test_a_wide_interval_that_covers_is_uninformative_not_a_success() -> None:
    # 30% noise on 5 points: the interval is far wider than 10%, so covering the truth proves nothing.
    rng = np.random.default_rng(3)
    x = np.logspace(6, 9, 6)
    y = 50.0 * x**-0.2 * np.exp(rng.normal(0, 0.3, x.size))
    res = holdout_largest(PowerLaw(bootstrap=200, random_state=0), x, y, 1)
    assert res.covered is not None and res.covered[0]
    assert res.rel_half_width[0] > 0.10  # type: ignore[index]
    assert res.status == ["uninformative"]


class _NeverRefits(PowerLaw):
    def _refit(self, X, y, p0):  # type: ignore[no-untyped-def]
        raise ValueError("cannot fit this resample")


def test_holdout_with_every_resample_failing_is_uninformative() -> None:
    x = np.logspace(6, 9, 10)
    y = 50.0 * x**-0.2 * np.exp(np.random.default_rng(4).normal(0, 0.02, x.size))
    res = holdout_largest(_NeverRefits(bootstrap=10, random_state=0), x, y, 2)
    assert res.status == ["uninformative", "uninformative"]
    assert res.as_dict()["verdict"] == "unidentified"
