"""The critical batch size: Kaplan et al. 2020 (sec. 5.1) after McCandlish et al. 2018.

Training to a fixed loss with batch size B takes S steps and E = B·S examples; the trade-off is the
hyperbola (Kaplan et al. 2020, eq. 5.1; derived in McCandlish et al. 2018, sec. 2)

    (S/S_min − 1)(E/E_min − 1) = 1,

and the critical batch size is B_crit = E_min/S_min (Kaplan eq. 5.2). Kaplan found it depends on the loss
alone (eq. 5.3): B_crit(L) ≈ B*/L^(1/α_B), with B* ≈ 2·10^8 tokens and α_B ≈ 0.21 for their models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import nnls

from ..errors import FitError
from .base import FloatArray, Law, as_rng, check_finite, check_positive, percentile_interval
from .diagnostics import FitDiagnostics, assess_fit

__all__ = ["CriticalBatchLaw", "StepsExamplesFit", "fit_steps_examples"]


class CriticalBatchLaw(Law):
    """B_crit(L) = B*/L^(1/α_B) (Kaplan et al. 2020, eq. 5.3), fitted by linear least squares on
    log B_crit = log B* − (1/α_B) log L. X is the loss L, y the critical batch size (tokens or sequences:
    B* is in the same unit). Fitted: ``params_ = {"B_star", "alpha_B"}``.

    α_B is the reciprocal of the fitted slope, so it is ill-determined (and its bootstrap interval wide)
    when B_crit barely changes over the losses seen.
    """

    feature_names = ("loss",)
    target_name = "B_crit"
    log_features = (True,)
    nuisance_params = ("B_star",)  # B* = B_crit at L = 1: an extrapolation that trades off against α_B
    positive_params = ("B_star",)

    def __init__(self, *, bootstrap: int = 1000, random_state: int | np.random.Generator | None = None):
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("B_star", "alpha_B")

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        ll = np.log(X[:, 0])
        design = np.column_stack([np.ones_like(ll), ll])
        (log_b, slope), *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
        # α_B = −1/slope: a B_crit that does not change with the loss (to rounding) has no finite exponent.
        if abs(slope) * max(float(np.ptp(ll)), 1e-300) <= 1e-12 * max(1.0, float(np.max(np.abs(np.log(y))))):
            raise FitError("B_crit does not change with the loss: alpha_B = -1/slope is infinite")
        return np.array([np.exp(log_b), -1.0 / slope])

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        return p[0] * X[:, 0] ** (-1.0 / p[1])


@dataclass(frozen=True)
class StepsExamplesFit:
    """S_min, E_min and B_crit = E_min/S_min with percentile bootstrap intervals (``ci``, at ``level``;
    NaN for a quantity the data do not pin, see ``diagnostics``: S_min or E_min at its bound 0, an interval
    over a decade wide, most resamples failed)."""

    S_min: float
    E_min: float
    B_crit: float
    ci: dict[str, tuple[float, float]]
    n_points: int
    level: float
    bootstrap_draws: FloatArray  # (successful resamples, 3): S_min, E_min, B_crit
    n_bootstrap_failed: int
    diagnostics: FitDiagnostics | None = None

    def steps(self, batch_size: ArrayLike) -> Any:
        """S(B) = S_min (1 + B_crit/B), the steps to the target loss at batch size B (from eq. 5.1)."""
        return self.S_min * (1.0 + self.B_crit / np.asarray(batch_size, dtype=float))

    def as_dict(self) -> dict[str, Any]:
        return {
            "S_min": self.S_min,
            "E_min": self.E_min,
            "B_crit": self.B_crit,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "n_points": self.n_points,
            "diagnostics": None if self.diagnostics is None else self.diagnostics.as_dict(),
        }


def _solve_hyperbola(S: FloatArray, E: FloatArray) -> FloatArray:
    # Expanding eq. 5.1 gives S·E = S·E_min + E·S_min, i.e. S_min/S + E_min/E = 1: linear in the unknowns,
    # so a (non-negative) least-squares solve is exact on exact data and needs no starting point.
    coef, _ = nnls(np.column_stack([1.0 / S, 1.0 / E]), np.ones_like(S))
    s_min, e_min = coef
    return np.array([s_min, e_min, e_min / s_min if s_min > 0 else np.nan])


def fit_steps_examples(
    S: ArrayLike,
    E: ArrayLike,
    *,
    bootstrap: int = 1000,
    level: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> StepsExamplesFit:
    """Fit (S/S_min − 1)(E/E_min − 1) = 1 (Kaplan et al. 2020, eq. 5.1) to steps S and examples E = B·S
    needed to reach one target loss at several batch sizes B; return S_min, E_min, B_crit = E_min/S_min.

    Points are resampled with replacement for the bootstrap intervals.
    """
    Sa, Ea = np.asarray(S, dtype=float).ravel(), np.asarray(E, dtype=float).ravel()
    if Sa.shape != Ea.shape:
        raise FitError(f"S has {Sa.size} values but E has {Ea.size}")
    for v, name in ((Sa, "S"), (Ea, "E")):
        check_finite(v, name)
        check_positive(v, name)
    if Sa.size < 3:
        raise FitError(f"need at least 3 points to fit 2 parameters, got {Sa.size}")
    if len(np.unique(Ea / Sa)) < 2:
        raise FitError("need at least 2 distinct batch sizes E/S to fit the hyperbola")
    est = _solve_hyperbola(Sa, Ea)
    rng = as_rng(random_state)
    draws = np.full((int(bootstrap), 3), np.nan)
    for i in range(int(bootstrap)):
        idx = rng.integers(0, Sa.size, size=Sa.size)
        if len(np.unique(Ea[idx] / Sa[idx])) >= 2:
            draws[i] = _solve_hyperbola(Sa[idx], Ea[idx])
    ok = np.all(np.isfinite(draws), axis=1)
    names = ("S_min", "E_min", "B_crit")
    if ok.any():
        lo, hi = percentile_interval(draws[ok], level)
        ci = {k: (float(a), float(b)) for k, a, b in zip(names, lo, hi, strict=True)}
    else:
        ci = {k: (np.nan, np.nan) for k in names}
    # NNLS puts S_min or E_min exactly at 0 when the data ask for less: B_crit is then 0 or undefined.
    resid = est[0] / Sa + est[1] / Ea - 1.0
    diag = assess_fit(
        names=names[:2],
        values=est[:2],
        raw_ci=ci,
        n_points=int(Sa.size),
        n_bootstrap=int(bootstrap),
        n_failed=int((~ok).sum()),
        at_bound={k: 0.0 for k, v in zip(names[:2], est[:2], strict=True) if v == 0.0},
        collinear={},
        fixed_sign=names[:2],
        residual_scale=float(np.sqrt(np.mean(resid**2))),
    )
    for k in names[:2]:
        if not diag.parameters[k].pinned:
            ci[k] = ci["B_crit"] = (np.nan, np.nan)
    return StepsExamplesFit(
        S_min=float(est[0]),
        E_min=float(est[1]),
        B_crit=float(est[2]),
        ci=ci,
        n_points=int(Sa.size),
        level=level,
        bootstrap_draws=draws[ok],
        n_bootstrap_failed=int((~ok).sum()),
        diagnostics=diag,
    )
