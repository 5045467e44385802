"""Checked extrapolation: fit on the smaller scales, predict the largest ones, report the errors.

A law is used to extrapolate; the only direct evidence that it can is to hide the largest scales from
the fit and see how well it predicts them (as Hoffmann et al. 2022 fig. A5, and Caballero et al. 2022's
extrapolation benchmark, do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import FitError
from .base import FloatArray, Law

__all__ = ["HoldoutResult", "holdout_largest", "scale_of"]


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

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.rel_error)))

    @property
    def covered(self) -> NDArray[np.bool_] | None:
        """Whether each held-out observation lies inside its prediction interval."""
        if self.interval is None:
            return None
        return (self.interval[0] <= self.y_heldout) & (self.y_heldout <= self.interval[1])

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
        return out


def scale_of(X: FloatArray) -> FloatArray:
    """The scale a point is ranked by: x for one feature; the product of the features (N·D = C/6 for
    the Chinchilla form) for several."""
    return np.prod(X, axis=1)


def holdout_largest(law: Law, X: ArrayLike, y: ArrayLike, k: int, *, level: float = 0.95) -> HoldoutResult:
    """Fit a fresh clone of ``law`` on all but the ``k`` largest-scale points (see :func:`scale_of`) and
    predict those. With ``law.bootstrap > 0`` the result carries a prediction interval (residual scatter
    included) for each held-out point. ``law`` itself is left untouched.
    """
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
    if len(fitted.bootstrap_params_):
        interval = fitted.predict_interval(Xa[held], level, kind="prediction")
    return HoldoutResult(
        law=fitted,
        X_heldout=Xa[held],
        y_heldout=ya[held],
        predicted=pred,
        rel_error=(pred - ya[held]) / ya[held],
        interval=interval,
        level=level,
    )
