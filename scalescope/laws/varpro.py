"""Variable projection for the Chinchilla form, and a cross-check against the Huber fit.

L(N, D) = E + A/N^α + B/D^β is linear in (E, A, B) once (α, β) are fixed, so the fit separates (Golub &
Pereyra 1973, "variable projection"): search (α, β); for each, solve E, A, B ≥ 0 by non-negative least
squares (Lawson & Hanson 1974; ``scipy.optimize.nnls``). Residuals are relative, (L̂ − L)/L, which is
log L̂ − log L to first order, so the two fits target the same thing with a different loss (squared vs
Huber ≈ absolute) and a different optimizer. When they disagree, the fit is not to be trusted as it is:
the objective is flat, the data do not pin the form down, or an optimizer stopped early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize, nnls

from .base import FloatArray, Law
from .chinchilla import PARAM_NAMES, ChinchillaLaw, chinchilla_loss

__all__ = ["ChinchillaCrossCheck", "ChinchillaVarPro", "compare_chinchilla"]

# Exponents searched on this grid before local refinement. Published fits have α, β in 0.05–0.8
# (Kaplan: 0.076/0.095; Hoffmann: 0.34/0.28; Besiroglu: 0.35/0.37); 1.5 leaves room above.
_DEFAULT_EXPONENT_GRID = np.linspace(0.05, 1.5, 30)


def _project(alpha: float, beta: float, N: FloatArray, D: FloatArray, L: FloatArray) -> tuple[FloatArray, float]:
    """(E, A, B) ≥ 0 minimising Σ ((E + A N^−α + B D^−β − L)/L)², and that minimum."""
    M = np.column_stack([np.ones_like(N), N ** (-alpha), D ** (-beta)]) / L[:, None]
    coef, rnorm = nnls(M, np.ones_like(L))
    return coef, float(rnorm * rnorm)


class ChinchillaVarPro(Law):
    """The Chinchilla form fitted by variable projection: (α, β) on a grid, then Nelder–Mead refinement;
    E, A, B ≥ 0 by NNLS on relative residuals for each (α, β). Fitted: ``params_`` as
    :class:`~scalescope.laws.chinchilla.ChinchillaLaw` (E may be exactly 0 here), ``objective_``
    (Σ squared relative residuals).

    ``alpha_grid`` / ``beta_grid``: exponents tried first (default 30 points in 0.05..1.5).
    """

    feature_names = ("N", "D")
    target_name = "loss"
    log_features = (True, True)

    def __init__(
        self,
        *,
        alpha_grid: ArrayLike | None = None,
        beta_grid: ArrayLike | None = None,
        bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ):
        self.alpha_grid = alpha_grid
        self.beta_grid = beta_grid
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        return PARAM_NAMES

    @staticmethod
    def _refine(x0: FloatArray, N: FloatArray, D: FloatArray, L: FloatArray) -> tuple[FloatArray, float]:
        def f(x: FloatArray) -> float:
            # Non-positive exponents make a term constant (collinear with E): outside the model.
            if x[0] <= 0 or x[1] <= 0:
                return np.inf
            return _project(x[0], x[1], N, D, L)[1]

        res = minimize(f, x0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-16, "maxiter": 4000})
        x = res.x
        coef, obj = _project(x[0], x[1], N, D, L)
        return np.array([*coef, x[0], x[1]]), obj

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        # NNLS keeps E, A, B >= 0 (and puts them exactly at 0 when the data ask for less); the objective is
        # infinite for exponents <= 0, so they stay above 0.
        self.bounds_ = {k: (0.0, math.inf) for k in PARAM_NAMES}
        N, D = X[:, 0], X[:, 1]
        ag = _DEFAULT_EXPONENT_GRID if self.alpha_grid is None else np.asarray(self.alpha_grid, dtype=float)
        bg = _DEFAULT_EXPONENT_GRID if self.beta_grid is None else np.asarray(self.beta_grid, dtype=float)
        best = min(((_project(a, b, N, D, y)[1], a, b) for a in ag for b in bg), key=lambda t: t[0])
        p, obj = self._refine(np.array(best[1:]), N, D, y)
        self.objective_ = obj
        return p

    def _refit(self, X: FloatArray, y: FloatArray, p0: FloatArray) -> FloatArray:
        return self._refine(p0[3:], X[:, 0], X[:, 1], y)[0]

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        return chinchilla_loss(X[:, 0], X[:, 1], *p)


def _rel_diff(a: float, b: float) -> float:
    """|a − b| / |b|, with 0 for two equal values and inf when b alone is 0 (E can be exactly 0: NNLS puts
    it at its bound, and exp(log E) underflows to 0 in the Huber fit)."""
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b != 0 else math.inf


@dataclass(frozen=True)
class ChinchillaCrossCheck:
    """The Huber (grid + quasi-Newton) fit against the variable-projection fit of the same data."""

    huber: dict[str, float]
    varpro: dict[str, float]
    param_rel_diff: dict[str, float]
    max_pred_rel_diff: float
    agrees: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.varpro,
            "param_rel_diff": self.param_rel_diff,
            "max_pred_rel_diff": self.max_pred_rel_diff,
            "agrees": self.agrees,
            "message": self.message,
        }


def compare_chinchilla(
    X: ArrayLike,
    y: ArrayLike,
    *,
    huber: ChinchillaLaw | None = None,
    varpro: ChinchillaVarPro | None = None,
    X_check: ArrayLike | None = None,
    loss_rtol: float = 0.01,
    param_rtol: float = 0.1,
) -> ChinchillaCrossCheck:
    """Fit (or reuse) both Chinchilla fitters on (X, y) and say whether they agree.

    They agree when (i) the predicted losses differ by at most ``loss_rtol`` (relative) at every data point
    and at ``X_check`` (default: one extrapolation point, 10x the largest N and D), and (ii) each of E, α
    and β differs by at most ``param_rtol`` (relative to the Huber fit) *or* the varpro value lies inside
    the Huber fit's own 95% bootstrap interval: a difference the data cannot resolve is statistics, not a
    failed fit. A and B are reported but not judged: they trade off exponentially against α, β
    (A ≈ L_N·N^α), so their relative differences are large even when the curves coincide. Fitters passed
    unfitted (or None) are fitted here without bootstrap. A parameter of 0 in the Huber fit (E underflowed)
    makes any other value an infinite relative difference, never a division error.

    The verdict is also recorded in the Huber fit's ``diagnostics_`` (``with_cross_check``): a disagreement
    makes an ``ok`` fit ``weak``.
    """
    Xa = np.asarray(X, dtype=float)
    ya = np.asarray(y, dtype=float)
    h = huber if huber is not None else ChinchillaLaw(bootstrap=0)
    v = varpro if varpro is not None else ChinchillaVarPro(bootstrap=0)
    if not hasattr(h, "params_"):
        h.fit(Xa, ya)
    if not hasattr(v, "params_"):
        v.fit(Xa, ya)
    extra = 10 * Xa.max(axis=0) if X_check is None else np.asarray(X_check, dtype=float)
    Xc = np.vstack([Xa, np.atleast_2d(extra)])
    with np.errstate(all="ignore"):
        ph, pv = h.predict(Xc), v.predict(Xc)
        rel_pred = np.abs(pv - ph) / np.abs(ph)
    # A prediction of 0 or a non-finite one (an underflowed or overflowed fit) is an infinite difference.
    pred_diff = float(np.max(np.where(np.isfinite(rel_pred), rel_pred, np.inf)))
    rel = {k: _rel_diff(v.params_[k], h.params_[k]) for k in PARAM_NAMES}
    # Only informative (pinned) Huber intervals may excuse a difference: NaN entries never contain anything.
    has_ci = len(h.bootstrap_params_) > 0
    off = {
        k: rel[k]
        for k in ("E", "alpha", "beta")
        if rel[k] > param_rtol and not (has_ci and h.ci_[k][0] <= v.params_[k] <= h.ci_[k][1])
    }
    agrees = pred_diff <= loss_rtol and not off
    worst = max(("E", "alpha", "beta"), key=lambda k: rel[k])
    if agrees:
        within = " (or inside the Huber fit's 95% interval)" if rel[worst] > param_rtol else ""
        msg = f"agree: predictions within {pred_diff:.2%}, E/alpha/beta within {rel[worst]:.1%}{within}"
    else:
        parts = [f"predictions differ by up to {pred_diff:.2%} (tolerance {loss_rtol:.1%})"]
        parts += [f"{k} differs by {d:.1%} (tolerance {param_rtol:.0%})" for k, d in off.items()]
        msg = "DISAGREE: " + "; ".join(parts)
    diag = getattr(h, "diagnostics_", None)
    if diag is not None:
        h.diagnostics_ = diag.with_cross_check(bool(agrees), msg)
    return ChinchillaCrossCheck(
        huber=dict(h.params_),
        varpro=dict(v.params_),
        param_rel_diff=rel,
        max_pred_rel_diff=pred_diff,
        agrees=bool(agrees),
        message=msg,
    )
