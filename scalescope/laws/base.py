"""The shared shape of every scaling-law fitter: scikit-learn's estimator contract plus a bootstrap.

A law is constructed with keyword options only; ``fit(X, y)`` returns ``self``; what was learned ends in
``_`` (``params_``, ``ci_``, ``r2_``, ``rmsle_``, ``n_points_``, ``bootstrap_params_``). All laws here are
fitted on ``log y`` (relative error is what matters when losses span a decade), so ``y`` must be positive,
and every feature whose log is taken must be positive too; bad input raises :class:`FitError` with a
one-line message naming the variable.

Uncertainty is a nonparametric bootstrap (Efron & Tibshirani 1993, ch. 6 and 13): resample the points with
replacement, refit starting from the full-data solution (the resampled optimum is close to it, so no grid
is needed), and report percentile intervals.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import FitError, NotFittedError

__all__ = ["Estimator", "Law", "as_rng"]

FloatArray = NDArray[np.float64]
_E = TypeVar("_E", bound="Estimator")
_L = TypeVar("_L", bound="Law")


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
    ``ci_`` (name -> 95% percentile interval; NaN without bootstrap), ``r2_`` and ``rmsle_`` (both on
    log y, the space of the fit), ``log_residual_scale_`` (residual s.d. of log y, dof-corrected),
    ``n_points_``, ``bootstrap_params_`` (successful draws, (B, n_params)), ``n_bootstrap_failed_``,
    ``feature_names_in_``.

    Subclasses set ``feature_names`` (default column names for messages), ``log_features`` (which
    features must be positive) and implement ``param_names``, ``_fit_params`` (full fit from scratch),
    ``_refit`` (bootstrap refit warm-started from the full solution) and ``_predict_params``.
    """

    feature_names: ClassVar[tuple[str, ...]] = ("x",)
    target_name: ClassVar[str] = "y"
    log_features: ClassVar[tuple[bool, ...]] = (True,)

    # Subclass constructors must accept and store these two.
    bootstrap: int
    random_state: int | np.random.Generator | None

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

    def fit(self, X: ArrayLike, y: ArrayLike) -> Law:
        """Fit to points ``X`` (n, n_features) or (n,) and positive targets ``y`` (n,); return self."""
        Xa, ya = self._validate(X, y)
        p = np.asarray(self._fit_params(Xa, ya), dtype=float)
        if not np.all(np.isfinite(p)):
            raise FitError(f"{type(self).__name__}: the optimizer returned non-finite parameters {p}")
        self.param_vector_ = p
        self.params_ = dict(zip(self.param_names, map(float, p), strict=True))
        self.n_points_ = len(ya)
        logres = np.log(self._predict_params(p, Xa)) - np.log(ya)
        # R^2 and RMSLE are both in log space, the space the fit is made in.
        ly = np.log(ya)
        ss_tot = float(np.sum((ly - ly.mean()) ** 2))
        self.r2_ = 1.0 - float(np.sum(logres**2)) / ss_tot if ss_tot > 0 else math.nan
        self.rmsle_ = float(np.sqrt(np.mean(logres**2)))
        # Residual scale with a degrees-of-freedom correction, for prediction intervals.
        dof = max(len(ya) - len(p), 1)
        self.log_residual_scale_ = float(np.sqrt(np.sum(logres**2) / dof))
        self._bootstrap_fit(Xa, ya, p)
        return self

    def _bootstrap_fit(self, X: FloatArray, y: FloatArray, p: FloatArray) -> None:
        B, n, m = int(self.bootstrap), len(y), len(p)
        if B < 0:
            raise ValueError(f"bootstrap must be >= 0, got {B}")
        draws = np.full((B, m), np.nan)
        rng = as_rng(self.random_state)
        for i in range(B):
            idx = rng.integers(0, n, size=n)
            # A resample with fewer distinct points than parameters cannot identify them: count it failed.
            if len(np.unique(idx)) < m:
                continue
            try:
                q = self._refit(X[idx], y[idx], p)
            except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                continue
            if np.all(np.isfinite(q)):
                draws[i] = q
        ok = np.all(np.isfinite(draws), axis=1)
        self.bootstrap_params_ = draws[ok]
        self.n_bootstrap_failed_ = int(B - ok.sum())
        self.ci_ = self.confidence_intervals(0.95)

    @classmethod
    def from_params(cls: type[_L], params: Mapping[str, float], **options: Any) -> _L:
        """The law with these parameters, as if fitted: rebuilt from a stored ``params_`` (or a ``summary()``,
        whose other keys are ignored), ready for ``predict``. ``options``: constructor options that shape
        the parameters (e.g. ``BrokenNeuralScalingLaw``'s ``n_breaks``). Nothing of the fit is known: no
        bootstrap draws (``ci_`` is NaN, ``predict_interval`` raises), NaN fit statistics, ``n_points_`` 0."""
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
        law.n_bootstrap_failed_ = 0
        law.ci_ = law.confidence_intervals(0.95)
        return law

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")

    def confidence_intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals of each parameter (NaN when there are no bootstrap draws)."""
        self._check_fitted()
        if len(self.bootstrap_params_) == 0:
            return {k: (math.nan, math.nan) for k in self.param_names}
        lo, hi = percentile_interval(self.bootstrap_params_, level)
        return {k: (float(a), float(b)) for k, a, b in zip(self.param_names, lo, hi, strict=True)}

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
        log space), from the percentiles of the law evaluated at each bootstrap draw of the parameters.
        It says where the *curve* is, not where a new run would land.

        ``kind="prediction"``: a prediction interval for a new observation: each draw is multiplied by
        ``exp(eps)``, ``eps ~ Normal(0, s^2)`` with ``s`` the log-residual scale of the fit
        (``log_residual_scale_``, degrees-of-freedom corrected), i.e. residual scatter added in log space.
        """
        self._check_fitted()
        if len(self.bootstrap_params_) == 0:
            raise FitError(f"{type(self).__name__} has no bootstrap draws; fit with bootstrap > 0")
        Xa = self._check_X(X, self.feature_names)
        with np.errstate(over="ignore", invalid="ignore"):
            curves = np.stack([self._predict_params(q, Xa) for q in self.bootstrap_params_])
        if kind == "prediction":
            rng = as_rng(self.random_state)
            curves = curves * np.exp(rng.normal(0.0, self.log_residual_scale_, size=curves.shape))
        elif kind != "confidence":
            raise ValueError(f"kind must be 'confidence' or 'prediction', got {kind!r}")
        return percentile_interval(curves, level)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict: params, 95% intervals, fit quality, counts."""
        self._check_fitted()
        return {
            **self.params_,
            "ci": {k: list(v) for k, v in self.ci_.items()},
            "n_points": self.n_points_,
            "r2": self.r2_,
            "rmsle": self.rmsle_,
            "bootstrap": len(self.bootstrap_params_),
            "bootstrap_failed": self.n_bootstrap_failed_,
        }
