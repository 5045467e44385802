"""Checked extrapolation: fit on the smaller scales, predict the largest ones, report the errors.

A law is used to extrapolate; the only direct evidence that it can is to hide the largest scales from
the fit and see how well it predicts them (as Hoffmann et al. 2022 fig. A5, and Caballero et al. 2022's
extrapolation benchmark, do).

An interval that covers the truth only because it is huge is no success: each held-out point's status is
``"covered"``, ``"not covered"`` or ``"uninformative"``, the last when the prediction interval's relative
half-width (hi − lo)/(2·predicted) exceeds ``max_rel_half_width`` (10% by default: a forecast of a loss
to within ±10% is the loosest that still ranks candidate runs; scaling-law studies report extrapolation
errors of a few percent, e.g. Hoffmann et al. 2022 fig. A5), or when the interval could not be computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import FitError
from .base import FloatArray, Law

__all__ = ["MAX_REL_HALF_WIDTH", "HoldoutResult", "holdout_largest", "scale_of"]

MAX_REL_HALF_WIDTH = 0.10


@dataclass(frozen=True)
class HoldoutResult:
    """What the law fitted on the rest predicted for the ``k`` held-out largest points."""

    law: Law  # fitted on the kept points
    X_heldout: FloatArray
    y_heldout: FloatArray
    predicted: FloatArray
    rel_error: FloatArray  # (predicted − observed)/observed
    interval: tuple[FloatArray, FloatArray] | None  # prediction interval (level) when bootstrapped
    level: float
    max_rel_half_width: float = MAX_REL_HALF_WIDTH  # wider intervals are "uninformative"

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.rel_error)))

    @property
    def covered(self) -> NDArray[np.bool_] | None:
        """Whether each held-out observation lies inside its prediction interval (however wide: see
        ``status`` for the verdict that counts)."""
        if self.interval is None:
            return None
        return (self.interval[0] <= self.y_heldout) & (self.y_heldout <= self.interval[1])

    @property
    def rel_half_width(self) -> FloatArray | None:
        """(hi − lo) / (2·predicted) per held-out point (NaN where the interval is not finite)."""
        if self.interval is None:
            return None
        lo, hi = self.interval
        with np.errstate(all="ignore"):
            w = (hi - lo) / (2.0 * np.abs(self.predicted))
        return np.where(np.isfinite(w), w, np.nan)

    @property
    def status(self) -> list[str] | None:
        """Per held-out point: ``"uninformative"`` when the interval is missing, not finite or its relative
        half-width exceeds ``max_rel_half_width``; otherwise ``"covered"`` or ``"not covered"``."""
        if self.interval is None:
            return None
        w, cov = self.rel_half_width, self.covered
        assert w is not None and cov is not None
        return [
            "uninformative"
            if not (np.isfinite(wi) and wi <= self.max_rel_half_width)
            else ("covered" if ci else "not covered")
            for wi, ci in zip(w, cov, strict=True)
        ]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "k": len(self.y_heldout),
            "X": self.X_heldout.tolist(),
            "observed": self.y_heldout.tolist(),
            "predicted": self.predicted.tolist(),
            "rel_error": self.rel_error.tolist(),
            "max_abs_rel_error": self.max_abs_rel_error,
        }
        if self.interval is not None:
            out["interval"] = {
                "level": self.level,
                "lo": self.interval[0].tolist(),
                "hi": self.interval[1].tolist(),
            }
            out["covered"] = self.covered.tolist()  # type: ignore[union-attr]
            out["rel_half_width"] = self.rel_half_width.tolist()  # type: ignore[union-attr]
            out["max_rel_half_width"] = self.max_rel_half_width
            out["status"] = self.status
        diag = getattr(self.law, "diagnostics_", None)
        if diag is not None:
            out["verdict"] = diag.verdict
            out["verdict_reason"] = diag.reason
        return out


def scale_of(X: FloatArray) -> FloatArray:
    """The scale a point is ranked by: x for one feature; the product of the features (N·D = C/6 for
    the Chinchilla form) for several."""
    return np.prod(X, axis=1)


def holdout_largest(
    law: Law,
    X: ArrayLike,
    y: ArrayLike,
    k: int,
    *,
    level: float = 0.95,
    max_rel_half_width: float = MAX_REL_HALF_WIDTH,
) -> HoldoutResult:
    """Fit a fresh clone of ``law`` on all but the ``k`` largest-scale points (see :func:`scale_of`) and
    predict those. With ``law.bootstrap > 0`` the result carries a prediction interval (parameter
    uncertainty and residual scatter, ``Law.predict_interval(kind="prediction")``) for each held-out point,
    and a status per point: covered / not covered / uninformative (relative half-width above
    ``max_rel_half_width``). ``law`` itself is left untouched.
    """
    if not max_rel_half_width > 0:
        raise FitError(f"max_rel_half_width must be > 0, got {max_rel_half_width}")
    Xa = np.asarray(X, dtype=float)
    if Xa.ndim == 1:
        Xa = Xa[:, None]
    ya = np.asarray(y, dtype=float).ravel()
    if not 1 <= k < len(ya):
        raise FitError(f"holdout k must be between 1 and the number of points - 1 ({len(ya) - 1}), got {k}")
    order = np.argsort(scale_of(Xa), kind="stable")
    keep, held = order[:-k], order[-k:]
    fitted = law.clone().fit(Xa[keep], ya[keep])
    pred = fitted.predict(Xa[held])
    interval = None
    # Asked for (bootstrap > 0) but every resample failed: a NaN interval, reported as uninformative.
    if len(fitted.bootstrap_params_) or fitted.n_bootstrap_failed_:
        interval = fitted.predict_interval(Xa[held], level, kind="prediction")
    return HoldoutResult(
        law=fitted,
        X_heldout=Xa[held],
        y_heldout=ya[held],
        predicted=pred,
        rel_error=(pred - ya[held]) / ya[held],
        interval=interval,
        level=level,
        max_rel_half_width=float(max_rel_half_width),
    )
