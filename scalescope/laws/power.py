"""One-variable power laws: y = A·x^(−α) and the saturating y = E + A·x^(−α).

The pure power law is Kaplan et al. 2020's form (eqs. 1.1–1.3, e.g. L(N) = (N_c/N)^α_N, i.e.
A = N_c^α_N); the saturating form adds an irreducible term E as in Hestness et al. 2017 and Hoffmann
et al. 2022 (eq. 2 restricted to one variable). x can be parameters N, tokens D, compute C or steps.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from ..errors import FitError
from .base import FloatArray, Law

__all__ = ["PowerLaw", "SaturatingPowerLaw"]


class PowerLaw(Law):
    """y = A·x^(−α), fitted by linear least squares on log y = log A − α log x (exact, no optimizer).

    Fitted: ``params_ = {"A", "alpha"}`` plus the :class:`~scalescope.laws.base.Law` attributes.
    """

    amplitude_terms = {"A": ("alpha", 0)}

    def __init__(self, *, bootstrap: int = 1000, random_state: int | np.random.Generator | None = None):
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("A", "alpha")

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        lx = np.log(X[:, 0])
        design = np.column_stack([np.ones_like(lx), -lx])
        (log_a, alpha), *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
        return np.array([np.exp(log_a), alpha])

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        return p[0] * X[:, 0] ** (-p[1])


# Grid of starting exponents and floor fractions (E as a fraction of min y) for the saturating law; the
# best few by initial log-space error are refined. Wide in α because the one-variable laws cover N, D, C
# and steps, whose exponents range from ~0.05 (Kaplan's α_C) to ~1 (learning curves).
_ALPHA_GRID = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
_E_FRACTIONS = np.array([0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99])


class SaturatingPowerLaw(Law):
    """y = E + A·x^(−α) with E ≥ 0, fitted on log-space residuals log ŷ − log y.

    Method: a grid of (E, α) starts, with log A set for each start in closed form (the median of
    log(y − E) + α log x), ranked by squared log error; the best ``n_starts`` are refined with
    trust-region least squares (``scipy.optimize.least_squares``, analytic Jacobian, bound E ≥ 0) and the
    best result kept. Fitted: ``params_ = {"E", "A", "alpha"}``; ``bounds_`` {"E": (0, inf)} (a curve with
    no visible floor puts E at 0, which ``diagnostics_`` reports as a bound, not a measured floor).
    """

    amplitude_terms = {"A": ("alpha", 0)}

    def __init__(
        self,
        *,
        n_starts: int = 5,
        bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ):
        self.n_starts = n_starts
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("E", "A", "alpha")

    # Optimisation variables z = (E, log A, α); log A keeps A > 0 without a bound.
    @staticmethod
    def _resid(z: FloatArray, lx: FloatArray, ly: FloatArray) -> FloatArray:
        return np.log(z[0] + np.exp(z[1] - z[2] * lx)) - ly

    @staticmethod
    def _jac(z: FloatArray, lx: FloatArray, ly: FloatArray) -> FloatArray:
        t = np.exp(z[1] - z[2] * lx)
        s = z[0] + t
        return np.column_stack([1.0 / s, t / s, -lx * t / s])

    def _solve(self, z0: FloatArray, lx: FloatArray, ly: FloatArray, tol: float = 1e-12) -> tuple[FloatArray, float]:
        res = least_squares(
            self._resid,
            z0,
            jac=self._jac,
            args=(lx, ly),
            bounds=([0.0, -np.inf, -np.inf], [np.inf, np.inf, np.inf]),
            method="trf",
            x_scale="jac",
            ftol=tol,
            xtol=tol,
            gtol=tol,
            max_nfev=2000,
        )
        return res.x, float(np.sum(res.fun**2))

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        lx, ly = np.log(X[:, 0]), np.log(y)
        starts, costs = [], []
        for e in _E_FRACTIONS * y.min():
            ly_e = np.log(y - e) if e > 0 else ly
            for alpha in _ALPHA_GRID:
                z = np.array([e, np.median(ly_e + alpha * lx), alpha])
                starts.append(z)
                costs.append(np.sum(self._resid(z, lx, ly) ** 2))
        self.bounds_ = {"E": (0.0, np.inf)}
        best_z, best_cost = None, np.inf
        for k in np.argsort(costs)[: self.n_starts]:
            z, cost = self._solve(starts[k], lx, ly)
            if cost < best_cost:
                best_z, best_cost = z, cost
        if best_z is None:
            raise FitError("SaturatingPowerLaw: least squares failed from every starting point")
        return np.array([best_z[0], np.exp(best_z[1]), best_z[2]])

    def _refit(self, X: FloatArray, y: FloatArray, p0: FloatArray) -> FloatArray:
        # A fit whose A underflowed to 0 still restarts from a finite log A.
        log_a = np.log(max(float(p0[1]), np.finfo(float).tiny))
        # A resample's optimum is near p0; 1e-9 relative is far below the spread of the draws (>= 1e-4 at
        # any noise level worth an interval) and saves a third of the evaluations.
        z, _ = self._solve(np.array([p0[0], log_a, p0[2]]), np.log(X[:, 0]), np.log(y), tol=1e-9)
        return np.array([z[0], np.exp(z[1]), z[2]])

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        return p[0] + p[1] * X[:, 0] ** (-p[2])
