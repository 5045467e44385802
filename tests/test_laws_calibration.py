"""Calibration of prediction intervals: fit on the smaller scales of data drawn from a known law, predict
the next-larger scale, and count how often the 95% prediction interval holds the new observation.

Coverage is a frequency, so it is tested as one. With R replicates and true coverage 95% the count's
standard error is sqrt(0.95·0.05/R): 1.5 points at R = 200. The tolerance is 3 standard errors (4.6
points at R = 200): an interval that truly covers 95% fails the check about 0.3% of the time, while the
previous method (pairs bootstrap times exp(N(0, s²)), measured at 90% here) fails it. Widths are checked
too: an interval is no use if it is wide enough to cover anything. Run with ``-s`` to print the figures
(VALIDATION.md, "Diagnostics and calibration", records them); ``-m slow`` runs the full versions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from scalescope.laws import ChinchillaLaw, Law, PowerLaw, SaturatingPowerLaw, chinchilla_loss

NOMINAL = 0.95
TRUE_CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022


def _tolerance(reps: int) -> float:
    return 3 * math.sqrt(NOMINAL * (1 - NOMINAL) / reps)


def _one_variable_coverage(
    make: Callable[[int], Law], law_fn: Callable[[np.ndarray], np.ndarray], *, n: int, noise: float, reps: int
) -> tuple[float, float]:
    """(coverage, median relative half-width) of the 95% prediction interval at the (n+1)-th scale of a
    half-decade grid from 1e6, fitted on the first n, with log-normal noise of s.d. ``noise``."""
    x = 10 ** (6 + 0.5 * np.arange(n + 1))
    hits, widths = 0, []
    for r in range(reps):
        y = law_fn(x) * np.exp(np.random.default_rng(1000 + r).normal(0, noise, x.size))
        law = make(r).fit(x[:n], y[:n])
        lo, hi = law.predict_interval(x[n:], NOMINAL, kind="prediction")
        hits += bool(lo[0] <= y[n] <= hi[0])
        widths.append((hi[0] - lo[0]) / (2 * law.predict(x[n:])[0]))
    return hits / reps, float(np.median(widths))


def _power(x: np.ndarray) -> np.ndarray:
    return 50.0 * x**-0.2


def _saturating(x: np.ndarray) -> np.ndarray:
    return 1.8 + 200.0 * x**-0.3


def test_power_law_prediction_interval_coverage() -> None:
    reps = 200
    cov, hw = _one_variable_coverage(
        lambda r: PowerLaw(bootstrap=200, random_state=r), _power, n=8, noise=0.02, reps=reps
    )
    print(f"PowerLaw, 8 points, 2% noise, {reps} replicates: coverage {cov:.3f}, median half-width {hw:.4f}")
    # Measured 0.955 (the previous method: 0.900). Tolerance 3 s.e. = 4.6 points.
    assert abs(cov - NOMINAL) <= _tolerance(reps), cov
    # Not uselessly wide: knowing the law exactly, the 95% interval of one new run is +-1.96 x 2% = 3.9%;
    # estimating 2 parameters from 8 points and extrapolating 1/2 decade widens it (measured 6.1%).
    assert hw < 0.08, hw


def test_saturating_power_law_prediction_interval_coverage_quick() -> None:
    # A fast guard against gross miscalibration (the reviewer's 75%): 80 replicates, 40 resamples each
    # (few resamples make the interval's ends noisy, which costs a few points of coverage: measured 0.925
    # here, 0.950 with 200 resamples on 200 replicates). 0.85 is 3 s.e. below 0.93 at 80 replicates.
    reps = 80
    cov, hw = _one_variable_coverage(
        lambda r: SaturatingPowerLaw(n_starts=2, bootstrap=40, random_state=r), _saturating, n=8, noise=0.01, reps=reps
    )
    print(f"SaturatingPowerLaw quick, {reps} replicates, 40 resamples: coverage {cov:.3f}, half-width {hw:.4f}")
    assert cov >= 0.85, cov
    assert hw < 0.06, hw


@pytest.mark.slow
def test_saturating_power_law_prediction_interval_coverage() -> None:
    reps = 200
    cov, hw = _one_variable_coverage(
        lambda r: SaturatingPowerLaw(bootstrap=200, random_state=r), _saturating, n=8, noise=0.01, reps=reps
    )
    print(f"SaturatingPowerLaw, 8 points, 1% noise, {reps} replicates: coverage {cov:.3f}, half-width {hw:.4f}")
    # Measured 0.950 (the previous method: 0.915). Tolerance 3 s.e. = 4.6 points.
    assert abs(cov - NOMINAL) <= _tolerance(reps), cov
    # Knowing the law, +-1.96 x 1% = 2.0%; measured 3.5% with 3 parameters from 8 points.
    assert hw < 0.05, hw


@pytest.mark.slow
def test_chinchilla_prediction_interval_coverage() -> None:
    # 25 runs on a 5 x 5 grid of N in 1e7..1e9 and D in 1e9..1e11, 1% noise; predict one run half a decade
    # beyond both (N = 10^9.5, D = 10^11.5). Fits start at the truth (a single start, as the bootstrap
    # coverage test of test_laws_chinchilla.py does): the resampling, which is under test, is unchanged.
    reps = 200
    Ng, Dg = np.meshgrid(np.logspace(7, 9, 5), np.logspace(9, 11, 5))
    X = np.column_stack([Ng.ravel(), Dg.ravel()])
    Xt = np.array([[10**9.5, 10**11.5]])
    f, ft = chinchilla_loss(X[:, 0], X[:, 1], **TRUE_CHINCHILLA), chinchilla_loss(Xt[:, 0], Xt[:, 1], **TRUE_CHINCHILLA)
    hits, widths = 0, []
    for r in range(reps):
        eps = np.random.default_rng(2000 + r).normal(0, 0.01, len(f) + 1)
        y, yt = f * np.exp(eps[:-1]), ft[0] * math.exp(eps[-1])
        law = ChinchillaLaw(grid=[list(TRUE_CHINCHILLA.values())], n_starts=None, bootstrap=100, random_state=r)
        law.fit(X, y)
        lo, hi = law.predict_interval(Xt, NOMINAL, kind="prediction")
        hits += bool(lo[0] <= yt <= hi[0])
        widths.append((hi[0] - lo[0]) / (2 * law.predict(Xt)[0]))
    cov, hw = hits / reps, float(np.median(widths))
    print(f"ChinchillaLaw, 25 runs, 1% noise, {reps} replicates: coverage {cov:.3f}, half-width {hw:.4f}")
    # Measured 0.955, half-width 3.5% (200 other data sets, seeds 4000+: 0.920); the previous method
    # (pairs, 3.8% wide): 0.970. Without the smoothed residuals (base.Law._draw_residuals) 0.925 and 0.910:
    # the Huber fit behaves like least absolute deviations, whose resamples are too stable on raw residuals.
    assert abs(cov - NOMINAL) <= _tolerance(reps), cov
    assert hw < 0.05, hw


@pytest.mark.slow
@pytest.mark.parametrize("n", [5, 6, 9, 12])
def test_saturating_power_law_coverage_across_points_per_parameter(n: int) -> None:
    # The figures behind diagnostics.MIN_POINTS_PER_PARAMETER: studentized intervals stay calibrated at few
    # points per parameter when the law is right; what few points cost is width (and any check of the form).
    reps = 200
    truth = {"E": 1.8, "A": 200.0, "alpha": 0.3}
    x = 10 ** (6 + 0.5 * np.arange(n + 1))
    hits, param_hits, widths = 0, dict.fromkeys(truth, 0), []
    for r in range(reps):
        y = _saturating(x) * np.exp(np.random.default_rng(1000 + r).normal(0, 0.01, x.size))
        law = SaturatingPowerLaw(bootstrap=200, random_state=r).fit(x[:n], y[:n])
        lo, hi = law.predict_interval(x[n:], NOMINAL, kind="prediction")
        hits += bool(lo[0] <= y[n] <= hi[0])
        widths.append((hi[0] - lo[0]) / (2 * law.predict(x[n:])[0]))
        for k, v in truth.items():
            param_hits[k] += bool(law.raw_ci_[k][0] <= v <= law.raw_ci_[k][1])
    cov, hw = hits / reps, float(np.median(widths))
    pcov = {k: v / reps for k, v in param_hits.items()}
    print(
        f"SaturatingPowerLaw, {n} points ({n / 3:.1f} per parameter): prediction coverage {cov:.3f}, "
        f"half-width {hw:.4f}, parameter coverage {pcov}"
    )
    assert abs(cov - NOMINAL) <= _tolerance(reps), cov
    assert all(abs(c - NOMINAL) <= _tolerance(reps) + 0.02 for c in pcov.values()), pcov
