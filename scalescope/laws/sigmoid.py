"""The sigmoid law: a logistic in log x, the shape of an abrupt transition across scale or training time.

Used by :func:`scalescope.analyses.transitions.detect_transition`, which compares it with a smooth power
law on held-out points (Caballero et al. 2022 judge functional forms by extrapolation). A transition's
*width* is the 10%→90% span of the logistic in decades of x, ``2·ln 9·w / ln 10 ≈ 1.91·w`` for the scale
w of eq. (1).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares
from scipy.special import expit

from ..errors import FitError
from .base import FloatArray, Law, _as_float, _names_of, as_rng, check_finite, percentile_interval

__all__ = ["SigmoidLaw", "width_decades"]

_LN10 = math.log(10.0)
_WIDTH_FACTOR = 2.0 * math.log(9.0) / _LN10  # 10%→90% span of a logistic of scale w, in decades


def width_decades(w: float) -> float:
    """The 10%→90% span, in decades of x, of the logistic of eq. (1) with scale ``w`` (natural-log units)."""
    return _WIDTH_FACTOR * float(w)


# --- the sigmoid law ------------------------------------------------------------------------------------


class SigmoidLaw(Law):
    """y = lo + (hi − lo) / (1 + exp(−(log x − log x0) / w))   (1)

    A logistic in log x: the transition is at x0 (half-way between lo and hi) and w is its scale in
    natural-log units of x (10%→90% in ``width_decades(w)`` decades). hi < lo describes a drop (a loss).
    Unlike the other laws it is fitted on y itself (least squares), not on log y: accuracies are often 0.

    Method: variable projection over a grid of (log x0, w) (for fixed x0, w the model is linear in lo, hi,
    solved exactly), then trust-region least squares from the ``n_starts`` best grid points, with
    log x0 kept within one data span of the data and w in [1e-4, 10] spans. Bootstrap as every law
    (percentile intervals of lo, hi, x0, w). Fitted: ``params_ = {"lo", "hi", "x0", "w"}``, ``rmse_``
    (in y), ``r2_`` (in y), ``residual_scale_`` (dof-corrected s.d. of y); ``rmsle_`` and
    ``log_residual_scale_`` are NaN (y may be 0).
    """

    # Fitted on y (accuracies may be 0), resampled by points: accuracy noise is binomial, larger mid-way
    # through a transition than at its ends, so residuals are not exchangeable (Efron & Tibshirani 1993,
    # sec. 9.5). lo and hi may take either sign and are not judged on the decade rule.
    resampling = "pairs"
    nuisance_params = ()
    positive_params = ("x0", "w")
    signed_params = ("lo", "hi")

    def __init__(
        self,
        *,
        n_starts: int = 4,
        bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ):
        self.n_starts = n_starts
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("lo", "hi", "x0", "w")

    def min_points(self) -> int:
        return 5

    def _link(self, v: FloatArray) -> FloatArray:
        return v

    def _unlink(self, z: FloatArray) -> FloatArray:
        return z

    # Optimisation variables z = (lo, hi, log x0, log w).
    @staticmethod
    def _resid(z: FloatArray, lx: FloatArray, y: FloatArray) -> FloatArray:
        return z[0] + (z[1] - z[0]) * expit((lx - z[2]) / np.exp(z[3])) - y

    @staticmethod
    def _jac(z: FloatArray, lx: FloatArray, y: FloatArray) -> FloatArray:
        w = np.exp(z[3])
        t = (lx - z[2]) / w
        s = expit(t)
        ds = (z[1] - z[0]) * s * (1 - s)
        return np.column_stack([1 - s, s, -ds / w, -ds * t])

    @staticmethod
    def _bounds(lx: FloatArray) -> tuple[list[float], list[float]]:
        span = max(float(np.ptp(lx)), 1e-12)
        lo = [-np.inf, -np.inf, float(lx.min()) - span, math.log(1e-4 * span)]
        hi = [np.inf, np.inf, float(lx.max()) + span, math.log(10 * span)]
        return lo, hi

    def _solve(self, z0: FloatArray, lx: FloatArray, y: FloatArray, max_nfev: int = 200) -> tuple[FloatArray, float]:
        lo, hi = self._bounds(lx)
        z0 = np.clip(z0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        res = least_squares(
            self._resid,
            z0,
            jac=self._jac,
            args=(lx, y),
            bounds=(lo, hi),
            method="trf",
            x_scale="jac",
            ftol=1e-10,
            xtol=1e-10,
            gtol=1e-10,
            max_nfev=max_nfev,
        )
        return res.x, float(np.sum(res.fun**2))

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        lx = np.log(X[:, 0])
        span = max(float(np.ptp(lx)), 1e-12)
        blo, bhi = self._bounds(lx)
        self.bounds_ = {"x0": (math.exp(blo[2]), math.exp(bhi[2])), "w": (math.exp(blo[3]), math.exp(bhi[3]))}
        starts, costs = [], []
        for c in np.linspace(lx.min(), lx.max(), 25):
            for w in span * np.geomspace(0.005, 1.0, 12):
                s = expit((lx - c) / w)
                design = np.column_stack([1 - s, s])
                (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
                starts.append(np.array([a, b, c, math.log(w)]))
                costs.append(float(np.sum((design @ np.array([a, b]) - y) ** 2)))
        best_z, best_cost = starts[int(np.argmin(costs))], float(np.min(costs))
        for k in np.argsort(costs)[: self.n_starts]:
            z, cost = self._solve(starts[k], lx, y)
            if cost < best_cost:
                best_z, best_cost = z, cost
        return np.array([best_z[0], best_z[1], math.exp(best_z[2]), math.exp(best_z[3])])

    def _refit(self, X: FloatArray, y: FloatArray, p0: FloatArray) -> FloatArray:
        # Warm start: a resample's optimum is near the full-data one, so fewer evaluations are allowed.
        z0 = np.array([p0[0], p0[1], math.log(p0[2]), math.log(p0[3])])
        z, _ = self._solve(z0, np.log(X[:, 0]), y, max_nfev=60)
        return np.array([z[0], z[1], math.exp(z[2]), math.exp(z[3])])

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        return p[0] + (p[1] - p[0]) * expit((np.log(X[:, 0]) - math.log(p[2])) / p[3])

    def fit(self, X: ArrayLike, y: ArrayLike) -> SigmoidLaw:
        """Fit eq. (1) to positive ``X`` (n,) or (n, 1) and finite ``y`` (any sign); return self."""
        xnames, yname = _names_of(X, y, self.feature_names, self.target_name)
        Xa = self._check_X(X, xnames)
        ya = _as_float(y, yname).ravel()
        if ya.shape[0] != Xa.shape[0]:
            raise FitError(f"X has {Xa.shape[0]} rows but {yname} has {ya.shape[0]}")
        check_finite(ya, yname)
        if len(ya) < self.min_points():
            raise FitError(f"need at least {self.min_points()} points to fit a sigmoid (4 parameters), got {len(ya)}")
        distinct = len(np.unique(Xa[:, 0]))
        if distinct < 4:
            raise FitError(f"need at least 4 distinct values of {xnames[0]} to fit a sigmoid, got {distinct}")
        self.feature_names_in_ = xnames
        p = self._fit_params(Xa, ya)
        if not np.all(np.isfinite(p)):
            raise FitError(f"SigmoidLaw: the optimizer returned non-finite parameters {p}")
        self.param_vector_ = p
        self.params_ = dict(zip(self.param_names, map(float, p), strict=True))
        self.n_points_ = len(ya)
        res = self._predict_params(p, Xa) - ya
        ss_tot = float(np.sum((ya - ya.mean()) ** 2))
        self.r2_ = 1.0 - float(np.sum(res**2)) / ss_tot if ss_tot > 0 else math.nan
        self.rmse_ = float(np.sqrt(np.mean(res**2)))
        self.residual_scale_ = float(np.sqrt(np.sum(res**2) / max(len(ya) - 4, 1)))
        self.rmsle_ = math.nan
        self.log_residual_scale_ = math.nan
        self._fit_uncertainty(Xa, ya, p, self.residual_scale_)
        return self

    def predict_interval(
        self,
        X: ArrayLike,
        level: float = 0.95,
        *,
        kind: Literal["confidence", "prediction"] = "confidence",
    ) -> tuple[FloatArray, FloatArray]:
        """As :meth:`Law.predict_interval`, but residual scatter (``kind="prediction"``) is added in y,
        Normal(0, ``residual_scale_``²), since the sigmoid is fitted in y, not log y."""
        self._check_fitted()
        Xa = self._check_X(X, self.feature_names)
        if len(self.bootstrap_params_) == 0:
            if self.n_bootstrap_failed_ > 0:  # every resample failed: uninformative, not an error
                return np.full(len(Xa), math.nan), np.full(len(Xa), math.nan)
            raise FitError("SigmoidLaw has no bootstrap draws; fit with bootstrap > 0")
        curves = np.stack([self._predict_params(q, Xa) for q in self.bootstrap_params_])
        if kind == "prediction":
            curves = curves + as_rng(self.random_state).normal(0.0, self.residual_scale_, size=curves.shape)
        elif kind != "confidence":
            raise ValueError(f"kind must be 'confidence' or 'prediction', got {kind!r}")
        return percentile_interval(curves, level)

    @property
    def width_decades_(self) -> float:
        """10%→90% width of the fitted transition, in decades of x."""
        self._check_fitted()
        return width_decades(self.params_["w"])
