"""Kaplan et al. 2020's critical-batch relations: B_crit(L) (eq. 5.3) and the S–E hyperbola (eq. 5.1)."""

from __future__ import annotations

import numpy as np
import pytest

from scalescope.laws import CriticalBatchLaw, FitError, fit_steps_examples

S_MIN, E_MIN = 1000.0, 1.0e6  # B_crit = E_min / S_min = 1000
BATCHES = np.logspace(np.log10(32), np.log10(32768), 11)


def _hyperbola(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Points exactly on (S/S_min - 1)(E/E_min - 1) = 1 with E = B S: S = S_min (1 + B_crit/B).
    S = S_MIN * (1 + (E_MIN / S_MIN) / batch)
    return S, batch * S


def test_steps_examples_exact_hyperbola() -> None:
    S, E = _hyperbola(BATCHES)
    np.testing.assert_allclose((S / S_MIN - 1) * (E / E_MIN - 1), 1.0)  # the data are on the curve
    fit = fit_steps_examples(S, E, bootstrap=100, random_state=0)
    # Linear least squares in (S_min, E_min) on exact data: exact to rounding.
    assert fit.S_min == pytest.approx(S_MIN, rel=1e-9)
    assert fit.E_min == pytest.approx(E_MIN, rel=1e-9)
    assert fit.B_crit == pytest.approx(1000.0, rel=1e-9)
    # Resampling exact points changes nothing: the intervals collapse on the truth.
    assert fit.ci["B_crit"][0] == pytest.approx(1000.0, rel=1e-9)
    assert fit.ci["B_crit"][1] == pytest.approx(1000.0, rel=1e-9)
    np.testing.assert_allclose(fit.steps(BATCHES), S, rtol=1e-9)


def test_steps_examples_noisy_interval_covers_truth() -> None:
    rng = np.random.default_rng(4)
    S, E = _hyperbola(BATCHES)
    noise = np.exp(rng.normal(0, 0.03, S.size))  # 3% noise in steps-to-target (E = B S moves with it)
    fit = fit_steps_examples(S * noise, E * noise, bootstrap=500, random_state=0)
    for name, truth in (("S_min", S_MIN), ("E_min", E_MIN), ("B_crit", 1000.0)):
        lo, hi = fit.ci[name]
        assert lo <= truth <= hi, (name, lo, hi)
    # 3% noise on 11 points: B_crit's bootstrap s.d. here is 2.6%; 10% is ~4 s.d.
    assert fit.B_crit == pytest.approx(1000.0, rel=0.10)
    assert set(fit.as_dict()) == {"S_min", "E_min", "B_crit", "ci", "n_points", "diagnostics"}
    assert fit.diagnostics is not None and fit.diagnostics.verdict == "ok"  # 11 points, 2 parameters


def test_steps_examples_bad_input() -> None:
    S, E = _hyperbola(BATCHES)
    with pytest.raises(FitError, match="at least 3 points"):
        fit_steps_examples(S[:2], E[:2])
    with pytest.raises(FitError, match="^E must be positive"):
        fit_steps_examples(S, -E)
    with pytest.raises(FitError, match="^S has 1 NaN"):
        fit_steps_examples(np.where(np.arange(S.size) == 2, np.nan, S), E)
    with pytest.raises(FitError, match="distinct batch sizes"):
        fit_steps_examples(np.full(4, 10.0), np.full(4, 100.0))


def test_critical_batch_law_recovers_kaplan_values() -> None:
    # Kaplan et al. 2020 eq. 5.3 with their B* = 2e8 tokens, alpha_B = 0.21.
    loss = np.linspace(2.2, 5.0, 12)
    b = 2e8 * loss ** (-1 / 0.21)
    law = CriticalBatchLaw(bootstrap=0).fit(loss, b)
    assert law.params_["B_star"] == pytest.approx(2e8, rel=1e-9)
    assert law.params_["alpha_B"] == pytest.approx(0.21, rel=1e-9)
    rng = np.random.default_rng(2)
    noisy = CriticalBatchLaw(bootstrap=500, random_state=0).fit(loss, b * np.exp(rng.normal(0, 0.1, b.size)))
    lo, hi = noisy.ci_["alpha_B"]
    assert lo <= 0.21 <= hi
    # 10% noise over a 2.3x range of losses: alpha_B's bootstrap s.d. is 0.005; 0.02 is 4 s.d.
    assert noisy.params_["alpha_B"] == pytest.approx(0.21, abs=0.02)
