"""IsoFLOP profiles: Chinchilla Approach 2 (Hoffmann et al. 2022, sec. 3.2).

For each compute budget C, fit a parabola of final loss against log N over the runs at that budget and
take its vertex as N_opt(C); then fit log N_opt = k + a·log C. Since D = C/(6N), D_opt ∝ C^b with b = 1 − a.

Known bias. The parabola is a symmetric stand-in for an asymmetric curve. Under the Chinchilla form at
fixed C, with t = N/N_opt(C),  L − E = K(C)·(t^(−α)/α + t^β/β), which is skewed in log t when α ≠ β; the
parabola's vertex therefore moves away from the true minimum by an amount set by where the sampled N sit
relative to N_opt (the grid's offset and width in log N). Because the curve's shape in log t is the same at
every C (only the scale K(C) changes), a grid with the same width and the same offset from N_opt at every
budget displaces every vertex by the same factor: a is then unbiased and only the intercept is off. Grids
fixed in N, or centred on a guess whose error drifts with C, displace the vertex by a C-dependent factor
and bias a (tests/test_laws_isoflop.py measures both cases). Noise, few points near the minimum, and
final losses from runs whose schedule is not matched to their length add further error (Hoffmann et al.
2022, sec. 3.1; Porian et al. 2024, "Resolving discrepancies in compute-optimal scaling of language
models", trace Kaplan-vs-Chinchilla gaps to such choices: last-layer FLOPs, warmup, tuning). Besiroglu et
al. 2024 found the published Approach-3 fit inconsistent with Approaches 1–2 and traced it to the fit.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import FitError, NotFittedError
from .base import (
    Estimator,
    FloatArray,
    as_rng,
    check_finite,
    check_positive,
    percentile_interval,
)
from .diagnostics import FitDiagnostics, assess_fit

__all__ = ["IsoFLOPAnalysis"]


def group_budgets(C: FloatArray, rtol: float) -> tuple[FloatArray, FloatArray]:
    """Label each run with its budget: runs whose C differ by less than ``rtol`` (relative) share one.

    Returns (labels (n,), budget values (k,) as geometric means of their groups).
    """
    order = np.argsort(C)
    lc = np.log(C[order])
    new = np.concatenate([[True], np.diff(lc) > np.log1p(rtol)])
    labels_sorted = np.cumsum(new) - 1
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    budgets = np.exp(np.array([lc[labels_sorted == k].mean() for k in range(labels_sorted[-1] + 1)]))
    return labels, budgets


def _vertex(lN: FloatArray, loss: FloatArray) -> tuple[float, float, float]:
    """(log N at the vertex, loss there, curvature) of the least-squares parabola loss(log N)."""
    with warnings.catch_warnings():
        # Nearly equal N at one budget make polyfit warn of a poorly conditioned fit; the vertex is then
        # NaN or far outside the sampled range, which the caller reports.
        warnings.simplefilter("ignore")
        c2, c1, c0 = np.polyfit(lN, loss, 2)
    if not c2 > 0:
        return np.nan, np.nan, float(c2)
    x = -c1 / (2 * c2)
    return float(x), float(c0 - c1 * c1 / (4 * c2)), float(c2)


class IsoFLOPAnalysis(Estimator):
    """Chinchilla Approach 2: parabola minima per budget, then N_opt ∝ C^a (see the module docstring for
    its bias).

    ``fit(X, y)``: X has columns (N, C), one row per run (C = training FLOPs, e.g. 6ND); y is final loss.
    Options: ``budget_rtol`` (runs whose C agree within it form one budget), ``min_points_per_budget``
    (budgets with fewer distinct N are skipped; 3 is the least a parabola needs), ``bootstrap`` (runs
    resampled within each budget) and ``random_state``.

    Fitted: ``budgets_``, ``n_opt_``, ``d_opt_`` (= C/(6 N_opt)), ``loss_opt_``, ``vertex_in_range_``
    (whether each vertex lies inside the N sampled at that budget), ``a_``, ``b_`` (= 1 − a),
    ``intercept_`` (log N_opt = intercept + a log C), ``ci_`` {"a", "b"}, ``bootstrap_params_`` (draws of a),
    ``n_bootstrap_failed_``, ``diagnostics_`` (:class:`~scalescope.laws.diagnostics.FitDiagnostics` of a:
    one point per budget, two parameters, intercept and a; ``weak`` when a vertex lies outside the sizes
    sampled at its budget, since the parabola then extrapolates; ``ci_`` is NaN when a is unpinned).
    ``predict(C)`` returns N_opt(C).
    """

    def __init__(
        self,
        *,
        budget_rtol: float = 0.01,
        min_points_per_budget: int = 3,
        bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ):
        self.budget_rtol = budget_rtol
        self.min_points_per_budget = min_points_per_budget
        self.bootstrap = bootstrap
        self.random_state = random_state

    def _profiles(
        self, lN: FloatArray, loss: FloatArray, labels: FloatArray, k: int
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        xs, ls, ok = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k, dtype=bool)
        for j in range(k):
            m = labels == j
            if len(np.unique(lN[m])) >= max(3, self.min_points_per_budget):
                xs[j], ls[j], _ = _vertex(lN[m], loss[m])
                ok[j] = np.isfinite(xs[j])
        return xs, ls, ok

    @staticmethod
    def _exponent(lC: FloatArray, x: FloatArray) -> tuple[float, float]:
        a, intercept = np.polyfit(lC, x, 1)
        return float(a), float(intercept)

    def fit(self, X: ArrayLike, y: ArrayLike) -> IsoFLOPAnalysis:
        """Fit to runs X = (N, C) columns and final losses y; return self."""
        Xa = np.asarray(X, dtype=float)
        ya = np.asarray(y, dtype=float).ravel()
        if Xa.ndim != 2 or Xa.shape[1] != 2:
            raise FitError(f"IsoFLOPAnalysis expects X with 2 columns (N, C), got shape {Xa.shape}")
        if len(ya) != len(Xa):
            raise FitError(f"X has {len(Xa)} rows but loss has {len(ya)}")
        for v, name in ((Xa[:, 0], "N"), (Xa[:, 1], "C")):
            check_finite(v, name)
            check_positive(v, name)
        check_finite(ya, "loss")
        lN = np.log(Xa[:, 0])
        labels, budgets = group_budgets(Xa[:, 1], self.budget_rtol)
        xs, ls, ok = self._profiles(lN, ya, labels, len(budgets))
        if ok.sum() < 2:
            raise FitError(
                f"need at least 2 compute budgets with >= {max(3, self.min_points_per_budget)} distinct N "
                f"and a convex loss profile, got {int(ok.sum())} (of {len(budgets)} budgets)"
            )
        self.budgets_ = budgets[ok]
        self.n_opt_ = np.exp(xs[ok])
        self.d_opt_ = self.budgets_ / (6.0 * self.n_opt_)
        self.loss_opt_ = ls[ok]
        self.vertex_in_range_ = np.array(
            [lN[labels == j].min() <= xs[j] <= lN[labels == j].max() for j in np.flatnonzero(ok)]
        )
        self.a_, self.intercept_ = self._exponent(np.log(self.budgets_), xs[ok])
        self.b_ = 1.0 - self.a_
        self.n_points_ = len(ya)

        rng = as_rng(self.random_state)
        groups = [np.flatnonzero(labels == j) for j in range(len(budgets))]
        draws = np.full(int(self.bootstrap), np.nan)
        lcb = np.log(budgets)
        for i in range(int(self.bootstrap)):
            idx = np.concatenate([g[rng.integers(0, len(g), size=len(g))] for g in groups])
            bx, _, bok = self._profiles(lN[idx], ya[idx], labels[idx], len(budgets))
            if bok.sum() >= 2:
                draws[i] = self._exponent(lcb[bok], bx[bok])[0]
        self.bootstrap_params_ = draws[np.isfinite(draws)]
        self.n_bootstrap_failed_ = int(np.sum(~np.isfinite(draws)))
        a_ci = (np.nan, np.nan)
        if len(self.bootstrap_params_):
            lo, hi = percentile_interval(self.bootstrap_params_[:, None], 0.95)
            a_ci = (float(lo[0]), float(hi[0]))
        self.diagnostics_ = self._diagnose(a_ci)
        if not self.diagnostics_.parameters["a"].pinned:
            a_ci = (np.nan, np.nan)  # not shown as if informative; the reason is in diagnostics_
        self.ci_ = {"a": a_ci, "b": (1 - a_ci[1], 1 - a_ci[0])}
        return self

    def _diagnose(self, a_ci: tuple[float, float]) -> FitDiagnostics:
        """Diagnostics of the exponent a: the line log N_opt = intercept + a log C through one vertex per
        budget has 2 parameters (two budgets fit it exactly: no scatter left to judge it by)."""
        n = len(self.budgets_)
        collinear = {"a": ["the intercept"]} if n < 2 else {}
        diag = assess_fit(
            names=["intercept", "a"],
            values=np.array([self.intercept_, self.a_]),
            raw_ci={"a": a_ci},
            n_points=n,
            n_bootstrap=int(self.bootstrap),
            n_failed=self.n_bootstrap_failed_,
            at_bound={},
            collinear=collinear,
            nuisance=["intercept"],
            fixed_sign=["a"],
            residual_scale=float(np.std(np.log(self.n_opt_) - self.intercept_ - self.a_ * np.log(self.budgets_))),
        )
        outside = int(np.sum(~self.vertex_in_range_))
        if outside:
            diag = diag.downgraded(
                "weak",
                f"{outside} of {n} vertices lie outside the sizes sampled at their budget (extrapolated parabola)",
            )
        return diag

    def predict(self, C: ArrayLike) -> Any:
        """N_opt(C) from the fitted power law."""
        if not hasattr(self, "a_"):
            raise NotFittedError("IsoFLOPAnalysis is not fitted yet; call fit(X, y) first")
        return np.exp(self.intercept_ + self.a_ * np.log(np.asarray(C, dtype=float)))

    def summary(self) -> dict[str, Any]:
        if not hasattr(self, "a_"):
            raise NotFittedError("IsoFLOPAnalysis is not fitted yet; call fit(X, y) first")
        return {
            "a": self.a_,
            "b": self.b_,
            "ci": {k: list(v) for k, v in self.ci_.items()},
            "budgets": self.budgets_.tolist(),
            "n_opt": self.n_opt_.tolist(),
            "vertex_in_range": self.vertex_in_range_.tolist(),
            "n_points": self.n_points_,
            "diagnostics": self.diagnostics_.as_dict(),
        }
