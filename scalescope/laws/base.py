"""The shared shape of every scaling-law fitter: scikit-learn's estimator contract plus a bootstrap.

A law is constructed with keyword options only; ``fit(X, y)`` returns ``self``; what was learned ends in
``_`` (``params_``, ``ci_``, ``r2_``, ``rmsle_``, ``n_points_``, ``bootstrap_params_``, ``diagnostics_``).
All laws here are fitted on ``log y`` (relative error is what matters when losses span a decade), so ``y``
must be positive, and every feature whose log is taken must be positive too; bad input raises
:class:`FitError` with a one-line message naming the variable. A degenerate fit (a parameter at a bound,
a collinear design, resamples that cannot be fitted) is not an error: ``diagnostics_`` reports it.

Uncertainty is a bootstrap (Efron & Tibshirani 1993, ch. 6, 9 and 13). A sweep is a designed experiment
(the sizes and budgets are chosen), so the default resamples residuals with the design fixed (Davison &
Hinkley 1997, sec. 6.2.3, Algorithm 6.3, with leverage-adjusted, smoothed residuals), refitting each
resample from the full-data solution (the resampled optimum is close to it, so no grid is needed).
Parameter intervals are studentized percentile intervals (``Law.confidence_intervals``); prediction
intervals add a new run's scatter by the studentized bootstrap prediction error (Davison & Hinkley 1997,
sec. 6.3.3, Algorithm 6.4; see ``Law.predict_interval``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import FitError, NotFittedError
from .diagnostics import BOUND_RTOL, FitDiagnostics, assess_fit, collinear_parameters, leverages, numeric_jacobian

__all__ = ["Estimator", "Law", "as_rng"]

FloatArray = NDArray[np.float64]
_E = TypeVar("_E", bound="Estimator")
_L = TypeVar("_L", bound="Law")

# What a bootstrap refit may raise on a resample it cannot fit: that resample counts as failed.
_REFIT_ERRORS = (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError)


def as_rng(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """One source of randomness (scikit-learn's ``random_state``): an int seed, a Generator, or None."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


class Estimator:
    """``get_params`` / ``set_params`` / ``clone`` read the constructor's keyword arguments (as sklearn does).

    Subclasses store every constructor argument unchanged under the same attribute name, and nothing else.
    """

    @classmethod
    def _param_keys(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor options, as passed."""
        return {k: getattr(self, k) for k in self._param_keys()}

    def set_params(self: _E, **params: Any) -> _E:
        """Change constructor options in place; unknown names raise ``ValueError``."""
        keys = set(self._param_keys())
        for k, v in params.items():
            if k not in keys:
                raise ValueError(f"{type(self).__name__} has no option {k!r}; options: {', '.join(sorted(keys))}")
            setattr(self, k, v)
        return self

    def clone(self: _E, **overrides: Any) -> _E:
        """A new, unfitted estimator with the same options (optionally some changed)."""
        return type(self)(**{**self.get_params(), **overrides})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _names_of(X: Any, y: Any, default_x: Sequence[str], default_y: str) -> tuple[list[str], str]:
    """Names for messages: a DataFrame's columns / a Series' name when given, else the law's defaults."""
    xnames = list(default_x)
    cols = getattr(X, "columns", None)
    if cols is not None and len(cols) == len(xnames):
        xnames = [str(c) for c in cols]
    elif getattr(X, "name", None) is not None and len(xnames) == 1:
        xnames = [str(X.name)]
    yname = str(getattr(y, "name", None) or default_y)
    return xnames, yname


def _as_float(a: Any, what: str) -> FloatArray:
    try:
        return np.asarray(a, dtype=float)
    except (TypeError, ValueError) as err:
        raise FitError(f"{what} must be numeric ({err})") from None


def check_finite(v: FloatArray, name: str) -> None:
    """Raise FitError naming ``name`` if ``v`` holds NaN or inf."""
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FitError(f"{name} has {int(bad.sum())} NaN or infinite value(s), first at row {i} ({v[i]})")


def check_positive(v: FloatArray, name: str) -> None:
    """Raise FitError naming ``name`` if any value is <= 0 (its log is taken)."""
    bad = v <= 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FitError(
            f"{name} must be positive (its log is taken): {int(bad.sum())} value(s) <= 0, first at row {i} ({v[i]:g})"
        )


def percentile_interval(draws: FloatArray, level: float) -> tuple[FloatArray, FloatArray]:
    """Percentile bootstrap interval along axis 0, ignoring failed (NaN) draws."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


class Law(Estimator):
    """Base class of the one-equation laws y = f(X; params), fitted on log y.

    Fitted attributes: ``params_`` (name -> value), ``param_vector_`` (same, ``param_names`` order),
    ``ci_`` (name -> 95% percentile interval; NaN without bootstrap, and NaN for a parameter the data do
    not pin, see ``diagnostics_``), ``raw_ci_`` (the percentile intervals as computed, for inspection),
    ``r2_`` and ``rmsle_`` (both on log y, the space of the fit), ``log_residual_scale_`` (residual s.d. of
    log y, dof-corrected), ``n_points_``, ``bootstrap_params_`` (successful draws, (B, n_params)),
    ``bootstrap_scales_`` (each draw's residual scale), ``bootstrap_residuals_`` (the centred,
    leverage-adjusted residuals the bootstrap draws from), ``n_bootstrap_failed_``, ``diagnostics_``
    (:class:`~scalescope.laws.diagnostics.FitDiagnostics`: which parameters are pinned, one verdict),
    ``feature_names_in_``.

    Subclasses set ``feature_names`` (default column names for messages), ``log_features`` (which
    features must be positive) and implement ``param_names``, ``_fit_params`` (full fit from scratch; it
    may set ``bounds_``, name -> (lo, hi), the optimizer's bounds, and ``fixed_params_``, the names held
    fixed), ``_refit`` (bootstrap refit warm-started from the full solution) and ``_predict_params``.
    Class attributes tune the diagnostics: ``nuisance_params`` (judged leniently: amplitudes that trade off
    exponentially against exponents), ``positive_params`` (positive by construction: 0 is their bound) and
    ``signed_params`` (may take either sign: not judged on the decade rule).
    """

    feature_names: ClassVar[tuple[str, ...]] = ("x",)
    target_name: ClassVar[str] = "y"
    log_features: ClassVar[tuple[bool, ...]] = (True,)
    nuisance_params: ClassVar[tuple[str, ...]] = ("A", "B")
    positive_params: ClassVar[tuple[str, ...]] = ("E", "A", "B")
    signed_params: ClassVar[tuple[str, ...]] = ()
    # Amplitude -> (its exponent, feature column) for terms amp·x^(−exponent): the diagnostics judge such an
    # amplitude by its term at the centre of the data (see ``diagnostics``), not by its value at x = 1.
    amplitude_terms: ClassVar[dict[str, tuple[str, int]]] = {}
    # "residuals": model-based resampling of the fixed design (every law of a designed sweep); "pairs":
    # resample points (cases), robust to heteroscedastic noise (Efron & Tibshirani 1993, sec. 9.5).
    resampling: ClassVar[Literal["residuals", "pairs"]] = "residuals"

    # Subclass constructors must accept and store these two.
    bootstrap: int
    random_state: int | np.random.Generator | None
    diagnostics_: FitDiagnostics | None

    def __init__(self, *, bootstrap: int = 1000, random_state: int | np.random.Generator | None = None):
        self.bootstrap = bootstrap
        self.random_state = random_state

    # -- to implement ---------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        """Fit from scratch; return the parameter vector in ``param_names`` order."""
        raise NotImplementedError

    def _refit(self, X: FloatArray, y: FloatArray, p0: FloatArray) -> FloatArray:
        """Fit a bootstrap resample starting from ``p0`` (the full-data solution)."""
        return self._fit_params(X, y)

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        """Evaluate the law at ``X`` (shape (n, n_features)) for parameter vector ``p``."""
        raise NotImplementedError

    # The space the law is fitted in (log y); the sigmoid, fitted on y itself, overrides both.
    def _link(self, v: FloatArray) -> FloatArray:
        return np.log(v)

    def _unlink(self, z: FloatArray) -> FloatArray:
        return np.exp(z)

    # -- shared machinery -------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def min_points(self) -> int:
        """Fewest points accepted: one more than the parameters, so some residual scatter is left to see."""
        return len(self.param_names) + 1

    def _check_X(self, X: Any, names: Sequence[str]) -> FloatArray:
        Xa = _as_float(X, "X")
        if Xa.ndim == 1 and self.n_features == 1:
            Xa = Xa[:, None]
        if Xa.ndim != 2 or Xa.shape[1] != self.n_features:
            raise FitError(
                f"{type(self).__name__} expects X with {self.n_features} column(s) "
                f"({', '.join(self.feature_names)}), got shape {Xa.shape}"
            )
        for j, name in enumerate(names):
            check_finite(Xa[:, j], name)
            if self.log_features[j]:
                check_positive(Xa[:, j], name)
        return Xa

    def _validate(self, X: Any, y: Any) -> tuple[FloatArray, FloatArray]:
        xnames, yname = _names_of(X, y, self.feature_names, self.target_name)
        Xa = self._check_X(X, xnames)
        ya = _as_float(y, yname).ravel()
        if ya.shape[0] != Xa.shape[0]:
            raise FitError(f"X has {Xa.shape[0]} rows but {yname} has {ya.shape[0]}")
        check_finite(ya, yname)
        check_positive(ya, yname)
        m, k = len(self.param_names), self.min_points()
        if len(ya) < k:
            raise FitError(f"need at least {k} points to fit {m} parameters, got {len(ya)}")
        distinct = len(np.unique(Xa, axis=0))
        if distinct < m:
            raise FitError(f"need at least {m} distinct values of X to fit {m} parameters, got {distinct}")
        self.feature_names_in_ = xnames
        return Xa, ya

    def _fixed(self) -> set[str]:
        return set(getattr(self, "fixed_params_", None) or ())

    def _dof(self, n: int) -> int:
        """Residual degrees of freedom: points minus free (not fixed) parameters, at least 1."""
        return max(n - (len(self.param_names) - len(self._fixed())), 1)

    def fit(self, X: ArrayLike, y: ArrayLike) -> Law:
        """Fit to points ``X`` (n, n_features) or (n,) and positive targets ``y`` (n,); return self."""
        Xa, ya = self._validate(X, y)
        # Overflow/underflow inside an optimizer's trial steps is part of its search, not an error.
        with np.errstate(all="ignore"):
            p = np.asarray(self._fit_params(Xa, ya), dtype=float)
            pred = self._predict_params(p, Xa) if np.all(np.isfinite(p)) else np.full(len(ya), np.nan)
        if not np.all(np.isfinite(p)):
            raise FitError(f"{type(self).__name__}: the optimizer returned non-finite parameters {p}")
        if not np.all(np.isfinite(pred) & (pred > 0)):
            raise FitError(
                f"{type(self).__name__}: the fitted law is not positive and finite at every point "
                f"(parameters {dict(zip(self.param_names, p.tolist(), strict=True))}); the fit failed"
            )
        self.param_vector_ = p
        self.params_ = dict(zip(self.param_names, map(float, p), strict=True))
        self.n_points_ = len(ya)
        logres = np.log(pred) - np.log(ya)
        # R^2 and RMSLE are both in log space, the space the fit is made in.
        ly = np.log(ya)
        ss_tot = float(np.sum((ly - ly.mean()) ** 2))
        self.r2_ = 1.0 - float(np.sum(logres**2)) / ss_tot if ss_tot > 0 else math.nan
        self.rmsle_ = float(np.sqrt(np.mean(logres**2)))
        # Residual scale with a degrees-of-freedom correction, for prediction intervals.
        self.log_residual_scale_ = float(np.sqrt(np.sum(logres**2) / self._dof(len(ya))))
        self._fit_uncertainty(Xa, ya, p, self.log_residual_scale_)
        return self

    # -- bounds, Jacobian, bootstrap and diagnostics ------------------------------------------------
    def _param_bounds(self) -> dict[str, tuple[float, float]]:
        """The bounds a parameter can sit at: 0 for ``positive_params``, overlaid with the fit's ``bounds_``."""
        out = {k: (0.0, math.inf) for k in self.positive_params if k in self.param_names}
        out.update(getattr(self, "bounds_", None) or {})
        return out

    def _bound_hit(self, j: int, p: FloatArray, X: FloatArray, lo_hi: tuple[float, float]) -> float | None:
        """The bound parameter ``j`` sits at, or None. A bound at 0 is judged by its effect (the parameter
        set to 0 moves no prediction by more than BOUND_RTOL in the fit's space): 0 has no scale of its own."""
        v = float(p[j])
        base = self._link(self._predict_params(p, X))
        for b in lo_hi:
            if not math.isfinite(b):
                continue
            if b == 0.0:
                q = p.copy()
                q[j] = 0.0
                with np.errstate(all="ignore"):
                    eff = np.abs(self._link(self._predict_params(q, X)) - base)
                if np.all(np.isfinite(eff)) and float(eff.max()) <= BOUND_RTOL:
                    return 0.0
            elif abs(v - b) <= BOUND_RTOL * abs(b):
                return float(b)
        return None

    def _fit_uncertainty(self, X: FloatArray, y: FloatArray, p: FloatArray, scale: float) -> None:
        """Bounds, Jacobian (collinearity, leverages), the bootstrap, then ``diagnostics_`` and ``ci_``."""
        names, fixed = self.param_names, self._fixed()
        with np.errstate(all="ignore"):
            at_bound = {
                k: self._bound_hit(names.index(k), p, X, lo_hi)
                for k, lo_hi in self._param_bounds().items()
                if k in names and k not in fixed
            }
            free = [j for j, k in enumerate(names) if k not in fixed and at_bound.get(k) is None]
            J = numeric_jacobian(lambda q: self._link(self._predict_params(q, X)), p, free)
        collinear = collinear_parameters(J, [names[j] for j in free], p[free])
        self._bootstrap_fit(X, y, p, leverages(J) if J.size else np.zeros(len(y)))
        self.diagnostics_ = assess_fit(
            names=names,
            values=p,
            raw_ci=self.raw_ci_,
            n_points=len(y),
            n_bootstrap=int(self.bootstrap),
            n_failed=self.n_bootstrap_failed_,
            at_bound=at_bound,
            collinear=collinear,
            fixed=fixed,
            nuisance=[k for k in self.nuisance_params if k in names],
            fixed_sign=[k for k in names if k not in self.signed_params],
            residual_scale=scale,
            options=self._param_keys(),
            judged_ci=self._term_intervals(X),
        )
        self.ci_ = self.confidence_intervals(0.95)

    def _term_intervals(self, X: FloatArray) -> dict[str, tuple[float, float, str]]:
        """95% intervals of each amplitude's term amp·x_c^(−exponent) at the geometric centre x_c of its
        feature, studentized like the parameters' (``confidence_intervals``): the quantity the data pin."""
        names = self.param_names
        out: dict[str, tuple[float, float, str]] = {}
        draws, ratio = self.bootstrap_params_, self._studentize()
        if len(draws) == 0:
            return out
        for amp, (expo, col) in self.amplitude_terms.items():
            if amp not in names or expo not in names or amp in self._fixed():
                continue
            ia, ie = names.index(amp), names.index(expo)
            xc = float(np.exp(np.mean(np.log(X[:, col]))))
            with np.errstate(all="ignore"):
                hat = self.param_vector_[ia] * xc ** (-self.param_vector_[ie])
                term = draws[:, ia] * xc ** (-draws[:, ie])
            if ratio is not None:
                term = hat + (term - hat) * ratio
            term = term[np.isfinite(term)]
            if len(term) == 0:
                continue
            lo, hi = np.percentile(term, [2.5, 97.5])
            feature = self.feature_names[col]
            out[amp] = (float(lo), float(hi), f"95% interval of its term at {feature} = {xc:.3g}")
        return out

    def _bootstrap_fit(self, X: FloatArray, y: FloatArray, p: FloatArray, leverage: FloatArray | None = None) -> None:
        """B refits, warm-started at ``p``. Residual resampling (``resampling = "residuals"``): the design
        is kept and y* = f(X; p) ⊙ exp(ε*) with ε* drawn from the centred, leverage-adjusted log residuals
        r_i = e_i/(1 − h_i)^½ (Davison & Hinkley 1997, sec. 6.2.3, Algorithm 6.3; their eq. 6.9).
        Pairs resampling draws points with replacement (a resample with fewer distinct points than
        parameters cannot identify them and counts as failed)."""
        B, n, m = int(self.bootstrap), len(y), len(p)
        if B < 0:
            raise ValueError(f"bootstrap must be >= 0, got {B}")
        fitted = self._link(self._predict_params(p, X))
        e = self._link(y) - fitted
        h = np.zeros(n) if leverage is None else np.minimum(leverage, 0.99)
        r = e / np.sqrt(1.0 - h)
        self.bootstrap_residuals_ = r - r.mean()
        dof = self._dof(n)
        draws, scales = np.full((B, m), np.nan), np.full(B, np.nan)
        rng = as_rng(self.random_state)
        for i in range(B):
            if self.resampling == "pairs":
                idx = rng.integers(0, n, size=n)
                if len(np.unique(idx)) < m:
                    continue
                Xb, yb = X[idx], y[idx]
            else:
                eps = self._draw_residuals(rng, (n,))
                Xb, yb = X, self._unlink(fitted + eps)
            try:
                with np.errstate(all="ignore"):
                    q = np.asarray(self._refit(Xb, yb, p), dtype=float)
                    res = self._link(self._predict_params(q, Xb)) - self._link(yb)
            except _REFIT_ERRORS:
                continue
            if np.all(np.isfinite(q)) and np.all(np.isfinite(res)):
                draws[i], scales[i] = q, math.sqrt(float(np.sum(res**2)) / dof)
        ok = np.all(np.isfinite(draws), axis=1)
        self.bootstrap_params_ = draws[ok]
        self.bootstrap_scales_ = scales[ok]
        self.n_bootstrap_failed_ = int(B - ok.sum())
        self.raw_ci_ = self.confidence_intervals(0.95, raw=True)
        self.ci_ = dict(self.raw_ci_)

    # Bandwidth of the smoothed residual bootstrap, in units of the residuals' s.d. (0: plain resampling).
    residual_smoothing: ClassVar[float] = 0.5

    def _draw_residuals(self, rng: np.random.Generator, shape: tuple[int, ...]) -> FloatArray:
        """Errors for the bootstrap world: resampled adjusted residuals, smoothed by a normal kernel and
        shrunk back to their variance (the smoothed bootstrap, Davison & Hinkley 1997, sec. 3.4, eq. 3.25;
        Silverman & Young 1987). Smoothing matters for the Huber fit of the Chinchilla form, which behaves
        like least absolute deviations: it interpolates some points, whose residuals of ~0 form an atom
        that makes resampled fits too stable (De Angelis, Hall & Young 1993); least-squares fits are
        unaffected to first order, since the variance is kept."""
        r = self.bootstrap_residuals_
        eps = r[rng.integers(0, len(r), size=shape)]
        b = float(self.residual_smoothing)
        v = float(np.mean(r**2))
        if b > 0 and v > 0:
            eps = (eps + b * math.sqrt(v) * rng.standard_normal(shape)) / math.sqrt(1.0 + b * b)
        return eps

    @classmethod
    def from_params(cls: type[_L], params: Mapping[str, float], **options: Any) -> _L:
        """The law with these parameters, as if fitted: rebuilt from a stored ``params_`` (or a ``summary()``,
        whose other keys are ignored), ready for ``predict``. ``options``: constructor options that shape
        the parameters (e.g. ``BrokenNeuralScalingLaw``'s ``n_breaks``). Nothing of the fit is known: no
        bootstrap draws (``ci_`` is NaN, ``predict_interval`` raises), NaN fit statistics, ``n_points_`` 0,
        ``diagnostics_`` None."""
        law = cls(**options)
        missing = [k for k in law.param_names if k not in params]
        if missing:
            raise FitError(f"{cls.__name__}.from_params: missing parameter(s) {', '.join(missing)}")
        p = np.array([float(params[k]) for k in law.param_names])
        law.param_vector_ = p
        law.params_ = dict(zip(law.param_names, map(float, p), strict=True))
        law.feature_names_in_ = list(law.feature_names)
        law.n_points_ = 0
        law.r2_ = law.rmsle_ = law.log_residual_scale_ = math.nan
        law.bootstrap_params_ = np.empty((0, len(p)))
        law.bootstrap_scales_ = np.empty(0)
        law.bootstrap_residuals_ = np.empty(0)
        law.n_bootstrap_failed_ = 0
        law.diagnostics_ = None
        law.raw_ci_ = law.ci_ = law.confidence_intervals(0.95, raw=True)
        return law

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")

    def _studentize(self) -> FloatArray | None:
        """s / s*_r per draw when intervals are studentized (residual resampling of noisy data), else None."""
        s, s_star = self.log_residual_scale_, self.bootstrap_scales_
        if self.resampling != "residuals" or not (math.isfinite(s) and s > 1e-9) or not np.all(s_star > 0):
            return None
        return s / s_star

    def _interval_draws(self) -> FloatArray:
        """The parameter draws intervals are read from: θ̂ + (θ*_r − θ̂)·s/s*_r (see
        ``confidence_intervals``), kept inside the parameters' bounds; the raw draws when not studentized."""
        ratio = self._studentize()
        if ratio is None:
            return self.bootstrap_params_
        p = self.param_vector_
        draws = p + (self.bootstrap_params_ - p) * ratio[:, None]
        for k, (lo, hi) in self._param_bounds().items():
            if k in self.param_names:
                j = self.param_names.index(k)
                draws[:, j] = np.clip(draws[:, j], lo, hi)
        return draws

    def confidence_intervals(self, level: float = 0.95, *, raw: bool = False) -> dict[str, tuple[float, float]]:
        """Bootstrap intervals of each parameter.

        With residual resampling (the default) each draw's deviation from the fit is studentized by its
        refit's residual scale, θ̃_r = θ̂ + s·(θ*_r − θ̂)/s*_r, and the interval is the percentiles of θ̃: the
        bootstrap-t pivot (Efron & Tibshirani 1993, ch. 12; Davison & Hinkley 1997, sec. 5.2.1) with the
        standard error taken proportional to the residual scale (exact for linear least squares, where it
        is s times a constant of the design), read without reflection so a skewed parameter keeps the
        percentile interval's orientation (Efron & Tibshirani 1993, sec. 13.3). Plain percentiles
        under-cover at few points because resampled residuals understate the scale's own uncertainty: on
        the saturating power law with 8 points their E interval covered 86.5%, the studentized one 92.5%
        (VALIDATION.md, "Diagnostics and calibration"). Pairs resampling (the sigmoid) keeps plain
        percentiles.

        NaN when there are no bootstrap draws, and (unless ``raw``) NaN for every parameter that
        ``diagnostics_`` finds unpinned: an interval from degenerate or failed resamples is not shown as
        if it were informative (the reasons are in ``diagnostics_.parameters``)."""
        self._check_fitted()
        if len(self.bootstrap_params_) == 0:
            return {k: (math.nan, math.nan) for k in self.param_names}
        lo, hi = percentile_interval(self._interval_draws(), level)
        out = {k: (float(a), float(b)) for k, a, b in zip(self.param_names, lo, hi, strict=True)}
        diag = getattr(self, "diagnostics_", None)
        if not raw and diag is not None:
            for k, d in diag.parameters.items():
                if d.status == "unpinned":
                    out[k] = (math.nan, math.nan)
        return out

    def predict(self, X: ArrayLike) -> FloatArray:
        """The fitted law at ``X``."""
        self._check_fitted()
        Xa = self._check_X(X, self.feature_names)
        return self._predict_params(self.param_vector_, Xa)

    def predict_interval(
        self,
        X: ArrayLike,
        level: float = 0.95,
        *,
        kind: Literal["confidence", "prediction"] = "confidence",
    ) -> tuple[FloatArray, FloatArray]:
        """Bootstrap interval of the law at ``X``; returns ``(lo, hi)``.

        ``kind="confidence"``: a confidence band for the fitted curve (the law's central value, a median in
        log space), from the percentiles of the law evaluated at each bootstrap draw of the parameters
        (studentized in log space as in ``confidence_intervals``). It says where the *curve* is, not where a
        new run would land.

        ``kind="prediction"``: a prediction interval for a new observation, which must hold both the
        parameter uncertainty and the scatter of a new run about the law. Method: the bootstrap prediction
        error of Davison & Hinkley 1997, sec. 6.3.3 (Algorithm 6.4), studentized. Each refit r of the
        residual bootstrap (see ``_bootstrap_fit``: y* from the fit plus resampled leverage-adjusted log
        residuals, smoothed as ``_draw_residuals`` says) predicts log ŷ*_r at ``X``; a fresh residual ε*
        drawn from the same distribution is the new run's scatter; the prediction error
        δ* = (log ŷ*_r − log ŷ − ε*)/s*_r is divided by the refit's own residual scale s*_r, so the
        uncertainty of the scale itself enters (the bootstrap's analogue of a t quantile rather than a
        normal one; studentized bootstrap, Davison & Hinkley sec. 5.2.1). With s the fit's residual scale
        (``log_residual_scale_``) the interval is
        [log ŷ − s·δ*_(1+level)/2, log ŷ − s·δ*_(1−level)/2], mapped back by exp. Several fresh residuals
        are drawn per refit (at least 4,000 errors in all). Exact data (s ≈ 0) fall back to the plain,
        unstudentized prediction error. Measured coverage on held-out larger scales: VALIDATION.md,
        "Diagnostics and calibration".

        Raises FitError when the law has no bootstrap draws because none were asked for (``bootstrap=0``
        or a law rebuilt by ``from_params``); when every resample failed, the interval is NaN
        (uninformative), not an error.
        """
        self._check_fitted()
        if kind not in ("confidence", "prediction"):
            raise ValueError(f"kind must be 'confidence' or 'prediction', got {kind!r}")
        Xa = self._check_X(X, self.feature_names)
        if len(self.bootstrap_params_) == 0:
            if self.n_bootstrap_failed_ > 0:
                nan = np.full(len(Xa), math.nan)
                return nan, nan.copy()
            raise FitError(f"{type(self).__name__} has no bootstrap draws; fit with bootstrap > 0")
        with np.errstate(all="ignore"):
            if kind == "prediction":
                zc = self._link(np.stack([self._predict_params(q, Xa) for q in self.bootstrap_params_]))
                return self._prediction_interval(Xa, zc, level)
            return percentile_interval(self._curves(Xa), level)

    def bootstrap_curves(self, X: ArrayLike) -> FloatArray:
        """The law at ``X`` for every bootstrap draw, shape (B, len(X)), studentized in the fit's space as
        the parameter intervals are (``confidence_intervals``): ẑ + s·(z*_r − ẑ)/s*_r, z = log y. Their
        pointwise percentiles are the ``kind="confidence"`` band."""
        self._check_fitted()
        Xa = self._check_X(X, self.feature_names)
        with np.errstate(all="ignore"):
            return self._curves(Xa)

    def _curves(self, Xa: FloatArray) -> FloatArray:
        zc = self._link(np.stack([self._predict_params(q, Xa) for q in self.bootstrap_params_]))
        ratio = self._studentize()
        if ratio is not None:
            z0 = self._link(self._predict_params(self.param_vector_, Xa))
            zc = z0 + (zc - z0) * ratio[:, None]
        return self._unlink(zc)

    def _prediction_interval(self, Xa: FloatArray, zc: FloatArray, level: float) -> tuple[FloatArray, FloatArray]:
        """See ``predict_interval``; ``zc``: (R, m) bootstrap curves in the fit's space."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        z0 = self._link(self._predict_params(self.param_vector_, Xa))
        R, m = zc.shape
        s, s_star = self.log_residual_scale_, self.bootstrap_scales_
        student = math.isfinite(s) and s > 1e-9 and bool(np.all(s_star > 0))
        M = max(1, math.ceil(4000 / R))
        # A stream of its own: seeded like the bootstrap, the fresh residuals would replay the indices
        # that built the resamples and be correlated with the refits they are added to.
        rs = self.random_state
        rng = np.random.default_rng([int(rs), 1]) if isinstance(rs, (int, np.integer)) else as_rng(rs)
        lo, hi = np.empty(m), np.empty(m)
        qs = [50 * (1 - level), 50 * (1 + level)]
        for c in range(0, m, 256):  # columns in blocks: R*M*256 floats at most
            sl = slice(c, min(c + 256, m))
            k = sl.stop - sl.start
            eps = self._draw_residuals(rng, (R, M, k))
            delta = zc[:, None, sl] - z0[sl] - eps
            if student:
                delta = delta / s_star[:, None, None]
            d_lo, d_hi = np.nanpercentile(delta.reshape(R * M, k), qs, axis=0)
            scale = s if student else 1.0
            lo[sl], hi[sl] = z0[sl] - scale * d_hi, z0[sl] - scale * d_lo
        return self._unlink(lo), self._unlink(hi)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict: params, 95% intervals (NaN for unpinned parameters), fit quality, counts and
        the identifiability diagnostics."""
        self._check_fitted()
        diag = getattr(self, "diagnostics_", None)
        return {
            **self.params_,
            "ci": {k: list(v) for k, v in self.ci_.items()},
            "n_points": self.n_points_,
            "r2": self.r2_,
            "rmsle": self.rmsle_,
            "bootstrap": len(self.bootstrap_params_),
            "bootstrap_failed": self.n_bootstrap_failed_,
            "diagnostics": None if diag is None else diag.as_dict(),
        }
