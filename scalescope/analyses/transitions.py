"""Abrupt transitions across scale or training time, and the metric-robustness test (issue 5, item 4).

* **Is the change abrupt?** :func:`detect_transition` fits a logistic in log x
  (:class:`~scalescope.laws.sigmoid.SigmoidLaw`) and a smooth saturating power law
  (:class:`~scalescope.laws.power.SaturatingPowerLaw`, Hestness et al. 2017; Hoffmann et al. 2022 eq. 2 in
  one variable) and compares them on held-out points, the way Caballero et al. 2022 judge functional forms
  by extrapolation rather than by in-sample fit.
* **Is it real or an artifact of the metric?** Schaeffer, Miranda & Koyejo 2023 ("Are Emergent Abilities
  of Large Language Models a Mirage?") show that a discontinuous metric (exact match of L tokens,
  accuracy ≈ p^L) jumps even when the per-token probability p improves smoothly as a power law.
  :func:`metric_robustness` runs the detector on both metrics and says which case holds;
  :func:`~scalescope.laws.trend.exact_match_link` is their link from the per-token metric to exact match.

Forecasting the scale at which a metric crosses a threshold is :mod:`scalescope.forecast.crossing`.

Conventions: x is N, D, C or the step (positive; its natural log is taken); a transition's *width* is the
10%→90% span of the logistic in decades of x (:func:`~scalescope.laws.sigmoid.width_decades`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import FitError
from ..laws.sigmoid import SigmoidLaw, width_decades
from ..laws.trend import Direction, SmoothTrend, exact_match_link, infer_direction, sorted_xy

__all__ = [
    "Robustness",
    "Transition",
    "detect_transition",
    "exact_match_link",  # defined in scalescope.laws.trend, with the smooth trend the tests compare against
    "metric_robustness",
]


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
    xa, ya = sorted_xy(x, y, 6)
    folds = _heldout_sets(len(xa), holdout)
    if min_gain <= 0:
        raise ValueError(f"min_gain must be positive, got {min_gain}")
    dirn = infer_direction(xa, ya, direction)
    span = math.log10(xa.max() / xa.min())
    max_w = 0.5 * span if max_width is None else float(max_width)
    smooth = SmoothTrend(dirn, bound).fit(xa, ya)  # first: bad input gets its message here
    full = SigmoidLaw(bootstrap=bootstrap, random_state=random_state).fit(xa, ya)
    X = xa[:, None]
    sig_err, smo_err = [], []
    for held in folds:
        keep = np.setdiff1d(np.arange(len(xa)), held)
        # Each fold is warm-started from the full-data fit (as the bootstrap is): a fold differs by a point.
        try:
            p = full._refit(X[keep], ya[keep], full.param_vector_)
            smo = SmoothTrend(dirn, bound).fit(xa[keep], ya[keep])
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
