"""Abrupt transitions across scale or training time, the metric-robustness test, and crossing forecasts.

Three questions about a capability that "appears" (issue 5, item 4):

* **Is the change abrupt?** :func:`detect_transition` fits a logistic in log x (:class:`SigmoidLaw`) and
  a smooth saturating power law (:class:`~scalescope.laws.power.SaturatingPowerLaw`, Hestness et al. 2017;
  Hoffmann et al. 2022 eq. 2 in one variable) and compares them on held-out points, the way Caballero et
  al. 2022 judge functional forms by extrapolation rather than by in-sample fit.
* **Is it real or an artifact of the metric?** Schaeffer, Miranda & Koyejo 2023 ("Are Emergent Abilities
  of Large Language Models a Mirage?") show that a discontinuous metric (exact match of L tokens,
  accuracy ≈ p^L) jumps even when the per-token probability p improves smoothly as a power law.
  :func:`metric_robustness` runs the detector on both metrics and says which case holds.
* **Can the crossing be forecast?** :func:`forecast_crossing` fits the continuous metric's smooth trend
  on smaller runs, maps it through a link (e.g. :func:`exact_match_link`) and predicts the scale at which
  the discontinuous metric crosses a threshold, with a bootstrap interval; :func:`record_crossing_forecast`
  writes it to the forecast ledger (``STORE/forecasts/<id>.json``, see :mod:`scalescope.forecast`) and
  :func:`score_crossing` scores it once larger runs exist.

Conventions: x is N, D, C or the step (positive; its natural log is taken); a transition's *width* is the
10%→90% span of the logistic in decades of x, ``2·ln 9·w / ln 10 ≈ 1.91·w`` for the scale w of eq. (1).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import least_squares
from scipy.special import expit

from ..laws.base import (
    FitError,
    FloatArray,
    Law,
    _as_float,
    _names_of,
    as_rng,
    check_finite,
    check_positive,
    percentile_interval,
)
from ..laws.power import SaturatingPowerLaw

__all__ = [
    "CrossingForecast",
    "Robustness",
    "SigmoidLaw",
    "Transition",
    "crossing_record",
    "detect_transition",
    "exact_match_link",
    "forecast_crossing",
    "metric_robustness",
    "observed_crossing",
    "record_crossing_forecast",
    "score_crossing",
    "score_crossing_runs",
    "width_decades",
]

RECORD_KIND = "emergence_crossing"
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
        self._bootstrap_fit(Xa, ya, p)
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
        if len(self.bootstrap_params_) == 0:
            raise FitError("SigmoidLaw has no bootstrap draws; fit with bootstrap > 0")
        Xa = self._check_X(X, self.feature_names)
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


# --- the smooth trend -----------------------------------------------------------------------------------


Direction = Literal["auto", "increasing", "decreasing"]


def _direction(x: FloatArray, y: FloatArray, direction: Direction) -> Literal["increasing", "decreasing"]:
    if direction in ("increasing", "decreasing"):
        return direction  # type: ignore[return-value]
    if direction != "auto":
        raise ValueError(f"direction must be 'auto', 'increasing' or 'decreasing', got {direction!r}")
    # Rank correlation of y with x: robust to the shape of the curve.
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return "increasing" if np.corrcoef(rx, ry)[0, 1] >= 0 else "decreasing"


@dataclass
class _SmoothTrend:
    """A saturating power law on the gap to a bound: y = bound − (E + A·x^−α) for an increasing metric
    (bound default 1, the ceiling of an accuracy or probability), y = bound + E + A·x^−α for a decreasing
    one (bound default 0, a loss). Gaps below ``1e-3·ptp(y)`` are clipped there, so an accuracy that
    reaches its ceiling can still be fitted in log space."""

    direction: Literal["increasing", "decreasing"]
    bound: float | None = None
    bootstrap: int = 0
    random_state: int | np.random.Generator | None = None
    law: SaturatingPowerLaw = field(init=False)

    @property
    def b(self) -> float:
        if self.bound is not None:
            return float(self.bound)
        return 1.0 if self.direction == "increasing" else 0.0

    def _sign(self) -> float:
        return -1.0 if self.direction == "increasing" else 1.0

    def fit(self, x: FloatArray, y: FloatArray) -> _SmoothTrend:
        gap = self._sign() * (y - self.b)
        if np.any(gap < 0):
            side = "above the ceiling" if self.direction == "increasing" else "below the floor"
            raise FitError(
                f"{int(np.sum(gap < 0))} value(s) lie {side} bound={self.b:g} of the smooth trend; "
                "pass bound= (the metric's best possible value)"
            )
        # A gap of exactly 0 (an accuracy of 1) has no log: put it at the smallest positive gap's half,
        # but no lower than 1e-3 of the metric's range, so one such point cannot dominate a log fit.
        pos = gap[gap > 0]
        floor = max(0.5 * float(pos.min()) if len(pos) else 0.0, 1e-3 * max(float(np.ptp(y)), 1e-12))
        self.law = SaturatingPowerLaw(bootstrap=self.bootstrap, random_state=self.random_state)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.law.fit(x, np.where(gap > 0, gap, floor))
        return self

    def predict(self, x: FloatArray) -> FloatArray:
        return self.b + self._sign() * self.law.predict(x)

    def curves(self, x: FloatArray) -> FloatArray:
        """The trend at ``x`` for every bootstrap draw, shape (B, len(x))."""
        X = np.asarray(x, dtype=float)[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            g = np.stack([self.law._predict_params(q, X) for q in self.law.bootstrap_params_])
        return self.b + self._sign() * g


# --- detection ------------------------------------------------------------------------------------------


def _xy(x: ArrayLike, y: ArrayLike, min_n: int, xname: str = "x", yname: str = "y") -> tuple[FloatArray, FloatArray]:
    xa, ya = _as_float(x, xname).ravel(), _as_float(y, yname).ravel()
    if xa.shape != ya.shape:
        raise FitError(f"{xname} has {len(xa)} values but {yname} has {len(ya)}")
    check_finite(xa, xname)
    check_finite(ya, yname)
    check_positive(xa, xname)
    if len(xa) < min_n:
        raise FitError(f"need at least {min_n} points, got {len(xa)}")
    if len(np.unique(xa)) < min_n - 1:
        raise FitError(f"need at least {min_n - 1} distinct values of {xname}, got {len(np.unique(xa))}")
    order = np.argsort(xa, kind="stable")
    return xa[order], ya[order]


def _ci(v: Any) -> tuple[float, float]:
    return (float(v[0]), float(v[1]))


@dataclass(frozen=True)
class Transition:
    """The verdict of :func:`detect_transition`. ``x0``/``width`` come from the full-data sigmoid fit
    (``width`` in decades, 10%→90%), their intervals from its bootstrap; the two held-out RMSEs are in y."""

    abrupt: bool
    x0: float
    x0_ci: tuple[float, float]
    width: float
    width_ci: tuple[float, float]
    sigmoid_heldout_rmse: float
    smooth_heldout_rmse: float
    n_heldout: int
    direction: str
    reason: str
    sigmoid: SigmoidLaw = field(repr=False)
    smooth_params: dict[str, float] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        """Held-out RMSE of the smooth trend over that of the sigmoid (> 1: the sigmoid predicts better)."""
        return self.smooth_heldout_rmse / self.sigmoid_heldout_rmse if self.sigmoid_heldout_rmse > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no fitted objects)."""
        return {
            "abrupt": self.abrupt,
            "x0": self.x0,
            "x0_ci": list(self.x0_ci),
            "width_decades": self.width,
            "width_ci": list(self.width_ci),
            "sigmoid_heldout_rmse": self.sigmoid_heldout_rmse,
            "smooth_heldout_rmse": self.smooth_heldout_rmse,
            "gain": self.gain,
            "n_heldout": self.n_heldout,
            "direction": self.direction,
            "reason": self.reason,
            "sigmoid": dict(self.sigmoid.params_),
            "smooth": dict(self.smooth_params),
        }


def _heldout_sets(n: int, holdout: str) -> list[np.ndarray]:
    interior = np.arange(1, n - 1)  # the end points are never held out: that would test extrapolation
    if holdout == "loo":
        return [np.array([i]) for i in interior]
    if holdout == "interleaved":
        return [interior[1::3]] if len(interior) >= 3 else [interior]
    raise ValueError(f"holdout must be 'loo' or 'interleaved', got {holdout!r}")


def detect_transition(
    x: ArrayLike,
    y: ArrayLike,
    *,
    holdout: Literal["loo", "interleaved"] = "loo",
    direction: Direction = "auto",
    bound: float | None = None,
    min_gain: float = 1.5,
    max_width: float | None = None,
    bootstrap: int = 500,
    level: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> Transition:
    """Is the change of ``y`` over ``x`` abrupt? Sigmoid in log x (:class:`SigmoidLaw`, eq. 1) against a
    smooth saturating power law (Hestness et al. 2017; Hoffmann et al. 2022 eq. 2), compared on held-out
    points (model choice by prediction, as in Caballero et al. 2022).

    ``holdout="loo"`` leaves out each interior point in turn (the smallest and largest x are always
    fitted: holding them out would test extrapolation); ``"interleaved"`` holds out every third interior
    point once. Each fold's sigmoid is warm-started from the full-data fit (as the bootstrap is; a fold
    differs from the full data by one point), so a fold costs one local refinement. The smooth trend is
    fitted on the gap to ``bound`` (see ``direction``: an increasing
    metric approaches a ceiling, default 1; a decreasing one a floor, default 0).

    Abrupt means all three: (a) the smooth trend's held-out RMSE is at least ``min_gain`` times the
    sigmoid's; (b) x0 lies inside the observed range of x; (c) the 10%→90% width is at most
    ``max_width`` decades (default: half the observed span of log10 x). ``reason`` says which failed.
    """
    xa, ya = _xy(x, y, 6)
    folds = _heldout_sets(len(xa), holdout)
    if min_gain <= 0:
        raise ValueError(f"min_gain must be positive, got {min_gain}")
    dirn = _direction(xa, ya, direction)
    span = math.log10(xa.max() / xa.min())
    max_w = 0.5 * span if max_width is None else float(max_width)
    smooth = _SmoothTrend(dirn, bound).fit(xa, ya)  # first: bad input gets its message here
    full = SigmoidLaw(bootstrap=bootstrap, random_state=random_state).fit(xa, ya)
    X = xa[:, None]
    sig_err, smo_err = [], []
    for held in folds:
        keep = np.setdiff1d(np.arange(len(xa)), held)
        # Each fold is warm-started from the full-data fit (as the bootstrap is): a fold differs by a point.
        try:
            p = full._refit(X[keep], ya[keep], full.param_vector_)
            smo = _SmoothTrend(dirn, bound).fit(xa[keep], ya[keep])
        except (FitError, ValueError, np.linalg.LinAlgError):
            continue
        sig_err.append(full._predict_params(p, X[held]) - ya[held])
        smo_err.append(smo.predict(xa[held]) - ya[held])
    if not sig_err:
        raise FitError("every held-out fold failed to fit; too few or degenerate points")
    rmse_sig = float(np.sqrt(np.mean(np.concatenate(sig_err) ** 2)))
    rmse_smo = float(np.sqrt(np.mean(np.concatenate(smo_err) ** 2)))
    ci = full.confidence_intervals(level)
    x0, w = full.params_["x0"], full.params_["w"]
    gain = rmse_smo / rmse_sig if rmse_sig > 0 else math.inf
    fails = []
    if not gain >= min_gain:
        fails.append(
            f"the sigmoid predicts held-out points only {gain:.2f}x better than the smooth trend (needs {min_gain:g}x)"
        )
    if not xa.min() <= x0 <= xa.max():
        fails.append(f"the sigmoid's midpoint x0={x0:.3g} is outside the data [{xa.min():.3g}, {xa.max():.3g}]")
    if not width_decades(w) <= max_w:
        fails.append(f"the transition is {width_decades(w):.2f} decades wide (abrupt means <= {max_w:.2f})")
    reason = (
        "; ".join(fails)
        if fails
        else (
            f"sigmoid beats the smooth trend {gain:.2f}x on held-out points; transition at x0={x0:.3g}, "
            f"{width_decades(w):.2f} decades wide"
        )
    )
    return Transition(
        abrupt=not fails,
        x0=x0,
        x0_ci=_ci(ci["x0"]),
        width=width_decades(w),
        width_ci=(width_decades(ci["w"][0]), width_decades(ci["w"][1])),
        sigmoid_heldout_rmse=rmse_sig,
        smooth_heldout_rmse=rmse_smo,
        n_heldout=len(np.concatenate(sig_err)),
        direction=dirn,
        reason=reason,
        sigmoid=full,
        smooth_params=dict(smooth.law.params_),
    )


# --- metric robustness (Schaeffer et al. 2023) -----------------------------------------------------------


@dataclass(frozen=True)
class Robustness:
    """The verdict of :func:`metric_robustness`: ``"real"``, ``"metric artifact"`` or ``"no jump"``."""

    verdict: str
    reason: str
    discontinuous: Transition
    continuous: Transition | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "discontinuous": self.discontinuous.as_dict(),
            "continuous": None if self.continuous is None else self.continuous.as_dict(),
        }


def metric_robustness(
    x: ArrayLike,
    discontinuous: ArrayLike,
    continuous: ArrayLike,
    *,
    continuous_bound: float | None = None,
    discontinuous_bound: float | None = None,
    **options: Any,
) -> Robustness:
    """The metric-robustness test of Schaeffer, Miranda & Koyejo 2023 (sec. 2–3): a jump in a
    discontinuous metric (accuracy, exact match) is "real" only if a continuous metric of the same
    outputs (per-token loss or log-probability of the correct answer) jumps too; if the continuous one
    changes smoothly, the jump is a "metric artifact" of the nonlinear scoring (accuracy ≈ p^L).

    Runs :func:`detect_transition` (same ``options``) on each; ``*_bound`` are their ``bound`` (a
    per-token loss has floor 0, the default; pass ``continuous_bound=0`` for a log-probability, which
    rises to a ceiling of 0). Returns "no jump" when the discontinuous metric has no abrupt transition.
    """
    d = detect_transition(x, discontinuous, bound=discontinuous_bound, **options)
    if not d.abrupt:
        return Robustness("no jump", f"the discontinuous metric changes smoothly: {d.reason}", d, None)
    c = detect_transition(x, continuous, bound=continuous_bound, **options)
    if c.abrupt:
        apart = abs(math.log10(c.x0 / d.x0))
        where = "at the same scale" if apart <= max(d.width, c.width) else f"but {apart:.2f} decades away from it"
        return Robustness("real", f"the continuous metric jumps too ({where}): {c.reason}", d, c)
    return Robustness("metric artifact", f"the continuous metric changes smoothly: {c.reason}", d, c)


# --- forecasting the crossing --------------------------------------------------------------------------


def exact_match_link(n_tokens: int, *, of: Literal["loss", "prob"] = "loss") -> Callable[[FloatArray], FloatArray]:
    """Exact match of an ``n_tokens``-token answer from the per-token metric, assuming independent tokens
    (Schaeffer et al. 2023 eq. 2): accuracy = p^L = exp(−L·ℓ) for per-token loss ℓ (``of="loss"``) or
    per-token probability p (``of="prob"``)."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    if of == "loss":
        return lambda v: np.exp(-n_tokens * np.asarray(v, dtype=float))
    if of == "prob":
        return lambda v: np.clip(np.asarray(v, dtype=float), 0.0, None) ** n_tokens
    raise ValueError(f"of must be 'loss' or 'prob', got {of!r}")


@dataclass(frozen=True)
class CrossingForecast:
    """The x at which ``link(trend(x))`` first reaches ``threshold`` (inf: not within ``max_decades``)."""

    x_cross: float
    interval: tuple[float, float]
    level: float
    threshold: float
    fraction_crossing: float  # of bootstrap draws that cross within the searched range
    n_points: int
    fit_max_x: float
    direction: str
    trend_params: dict[str, float]
    trend_ci: dict[str, tuple[float, float]]


def _first_crossing(lx: FloatArray, d: FloatArray, threshold: float, rising: bool) -> FloatArray:
    """Per row of ``d`` (B, G): log x of the first grid crossing, linearly interpolated; inf if none."""
    above = (d >= threshold) if rising else (d <= threshold)
    above &= np.isfinite(d)
    hit = above.any(axis=1)
    i = np.argmax(above, axis=1)
    out = np.full(d.shape[0], np.inf)
    for r in np.flatnonzero(hit):
        k = i[r]
        if k == 0:
            out[r] = lx[0]
            continue
        v0, v1 = d[r, k - 1], d[r, k]
        frac = 0.0 if v1 == v0 else (threshold - v0) / (v1 - v0)
        out[r] = lx[k - 1] + min(max(frac, 0.0), 1.0) * (lx[k] - lx[k - 1])
    return out


def forecast_crossing(
    x: ArrayLike,
    continuous: ArrayLike,
    threshold: float,
    *,
    link: Callable[[FloatArray], FloatArray],
    fit_below: float | None = None,
    direction: Direction = "auto",
    bound: float | None = None,
    rising: bool = True,
    max_decades: float = 6.0,
    bootstrap: int = 1000,
    level: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> CrossingForecast:
    """Predict the scale at which a discontinuous metric crosses ``threshold`` from a continuous one's
    smooth trend (Schaeffer et al. 2023: the continuous metric is what scales predictably).

    Fits the saturating power law (Hoffmann et al. 2022 eq. 2 in one variable, on the gap to ``bound``,
    as in :func:`detect_transition`) to the runs with x ≤ ``fit_below`` (all when None), maps the trend
    through ``link`` (continuous → discontinuous, monotone; e.g. :func:`exact_match_link`) and finds the
    first x ≥ min x where it reaches ``threshold`` (from below when ``rising``), searching up to
    ``max_decades`` beyond the largest fitted x. The interval is the percentile interval of the same
    crossing for each bootstrap draw of the trend (draws that never cross count as +inf).

    Pass the metric that is itself a power law: in Schaeffer et al.'s model that is the per-token loss
    (ℓ ∝ N^−α), not the per-token probability p = exp(−ℓ), whose gap 1 − p saturates at small scale.
    """
    xa, ya = _xy(x, continuous, 5, "x", "continuous")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1 for an interval, got {bootstrap}")
    if fit_below is not None:
        keep = xa <= fit_below
        if keep.sum() < 5:
            raise FitError(f"only {int(keep.sum())} runs with x <= fit_below={fit_below:g}; need at least 5")
        xa, ya = xa[keep], ya[keep]
    dirn = _direction(xa, ya, direction)
    trend = _SmoothTrend(dirn, bound, bootstrap=bootstrap, random_state=random_state).fit(xa, ya)
    lx = np.linspace(math.log(xa.min()), math.log(xa.max()) + max_decades * _LN10, 4001)
    grid = np.exp(lx)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        central = np.asarray(link(trend.predict(grid)), dtype=float)[None, :]
        draws = np.asarray(link(trend.curves(grid)), dtype=float)
    x_cross = float(np.exp(_first_crossing(lx, central, threshold, rising)[0]))
    lxd = _first_crossing(lx, draws, threshold, rising)
    q = [50 * (1 - level), 50 * (1 + level)]
    lo, hi = np.exp(np.percentile(lxd, q, method="inverted_cdf"))  # no interpolation: inf stays inf
    return CrossingForecast(
        x_cross=x_cross,
        interval=(float(lo), float(hi)),
        level=level,
        threshold=float(threshold),
        fraction_crossing=float(np.mean(np.isfinite(lxd))),
        n_points=len(xa),
        fit_max_x=float(xa.max()),
        direction=dirn,
        trend_params=dict(trend.law.params_),
        trend_ci=dict(trend.law.ci_),
    )


# --- the forecast ledger -------------------------------------------------------------------------------


def observed_crossing(x: ArrayLike, y: ArrayLike, threshold: float, *, rising: bool = True) -> float | None:
    """The first x at which ``y`` (averaged over repeats of one x) reaches ``threshold``, interpolated
    linearly in log x between the runs that bracket it; None if it never does."""
    xa, ya = _xy(x, y, 1)
    ux = np.unique(xa)
    uy = np.array([ya[xa == v].mean() for v in ux])
    lxd = _first_crossing(np.log(ux), uy[None, :], threshold, rising)[0]
    return float(np.exp(lxd)) if math.isfinite(lxd) else None


def crossing_record(
    fc: CrossingForecast,
    *,
    x_column: str,
    metric: str,
    continuous_metric: str,
    fitted_on: Sequence[str] = (),
    link: str = "",
    rising: bool = True,
) -> dict[str, Any]:
    """A forecast-ledger record (kind ``"emergence_crossing"``) of ``fc``: the same fields the ledger's
    other records have (``id``, ``law``, ``target``, ``predicted``, ``interval``, ``score``...) so
    ``scalescope forecast --score`` lists and scores it. ``x_column`` and ``metric`` name the runs-table
    columns it will be scored on (e.g. ``params_nonembedding`` and ``final_exact_match``)."""
    from .. import __version__
    from ..forecast import _jsonable, forecast_id

    content = {
        "kind": RECORD_KIND,
        "law": "emergence_crossing",
        "x_column": x_column,
        "metric": metric,
        "continuous_metric": continuous_metric,
        "link": link,
        "threshold": fc.threshold,
        "rising": rising,
        "fitted_on": sorted(fitted_on),
        "fit_max_x": fc.fit_max_x,
        "trend_params": fc.trend_params,
        "scalescope_version": __version__,
    }
    return _jsonable(
        {
            "id": forecast_id(content),
            **content,
            "target": {},
            "predicted": fc.x_cross,
            "interval": list(fc.interval),
            "level": fc.level,
            "interval_kind": "bootstrap of the trend",
            "fraction_crossing": fc.fraction_crossing,
            "n_points": fc.n_points,
            "trend_ci": fc.trend_ci,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "score": None,
        }
    )


def record_crossing_forecast(store: str | Path, fc: CrossingForecast, **record_options: Any) -> tuple[dict, bool]:
    """Write :func:`crossing_record` to ``STORE/forecasts/<id>.json`` unless that id is already there.
    Returns (record, created), as :func:`scalescope.forecast.record_forecast`."""
    from ..forecast import forecasts_dir
    from ..rundir import atomic_write_json

    rec = crossing_record(fc, **record_options)
    path = forecasts_dir(store) / f"{rec['id']}.json"
    if path.exists():
        return json.loads(path.read_text()), False
    atomic_write_json(path, rec)
    return rec, True


def score_crossing(rec: dict[str, Any], x: ArrayLike, y: ArrayLike) -> dict[str, Any] | None:
    """Score a crossing record against observed runs (x, discontinuous metric y), or None while no run
    is larger than the largest fitted one. Scored when the observed metric crosses the threshold (then
    ``observed`` is the interpolated crossing and ``covered`` says whether it is in the interval) or when
    runs reach past the interval's upper end without crossing (``observed`` None, not covered).
    Errors are in decades (``log10_error`` = log10 predicted/observed) and relative (``rel_error``)."""
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0)
    xa, ya = xa[ok], ya[ok]
    if len(xa) == 0 or xa.max() <= float(rec["fit_max_x"]):
        return None
    obs = observed_crossing(xa, ya, float(rec["threshold"]), rising=bool(rec.get("rising", True)))
    lo, hi = rec["interval"]
    hi = math.inf if hi is None else float(hi)
    if obs is None:
        if xa.max() <= hi:
            return None  # not crossed yet, but not past the interval either
        return {
            "observed": None,
            "observed_max_x": float(xa.max()),
            "error": None,
            "rel_error": None,
            "log10_error": None,
            "covered": False,
        }
    # A forecast of "never within the searched range" is stored as predicted null.
    pred = math.inf if rec["predicted"] is None else float(rec["predicted"])
    finite = math.isfinite(pred)
    return {
        "observed": obs,
        "observed_max_x": float(xa.max()),
        "error": pred - obs if finite else None,
        "rel_error": (pred - obs) / obs if finite else None,
        "log10_error": math.log10(pred / obs) if finite else None,
        "covered": bool(lo is not None and float(lo) <= obs <= hi),
    }


def score_crossing_runs(rec: dict[str, Any], runs: pd.DataFrame) -> dict[str, Any] | None:
    """:func:`score_crossing` on a store's runs table (finished runs, the record's ``x_column`` and
    ``metric`` columns); None when those columns or finished runs are missing."""
    if runs.empty or "status" not in runs or rec["x_column"] not in runs or rec["metric"] not in runs:
        return None
    done = runs[runs["status"] == "finished"]
    xs = pd.to_numeric(done[rec["x_column"]], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(done[rec["metric"]], errors="coerce").to_numpy(dtype=float)
    out = score_crossing(rec, xs, ys)
    if out is not None:
        ok = np.isfinite(xs) & np.isfinite(ys)
        out["observed_runs"] = sorted(done["id"][ok])
    return out
