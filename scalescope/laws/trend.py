"""A metric's smooth trend toward a bound, and the exact-match link of Schaeffer et al. 2023.

:class:`SmoothTrend` is the saturating power law (Hestness et al. 2017; Hoffmann et al. 2022 eq. 2 in one
variable) fitted to the gap between a metric and its best possible value: the smooth alternative that
:func:`scalescope.analyses.transitions.detect_transition` holds a sigmoid against, and the trend that
:func:`scalescope.forecast.crossing.forecast_crossing` extrapolates. :func:`exact_match_link` maps a
per-token metric to the exact match of an L-token answer (Schaeffer, Miranda & Koyejo 2023, eq. 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import FitError
from .base import FloatArray, _as_float, check_finite, check_positive
from .power import SaturatingPowerLaw

__all__ = ["Direction", "SmoothTrend", "exact_match_link", "infer_direction", "sorted_xy"]


Direction = Literal["auto", "increasing", "decreasing"]


def infer_direction(x: FloatArray, y: FloatArray, direction: Direction) -> Literal["increasing", "decreasing"]:
    """``direction`` itself, or for ``"auto"`` the sign of the rank correlation of ``y`` with ``x``."""
    if direction in ("increasing", "decreasing"):
        return direction
    if direction != "auto":
        raise ValueError(f"direction must be 'auto', 'increasing' or 'decreasing', got {direction!r}")
    # Rank correlation of y with x: robust to the shape of the curve.
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return "increasing" if np.corrcoef(rx, ry)[0, 1] >= 0 else "decreasing"


@dataclass
class SmoothTrend:
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

    def fit(self, x: FloatArray, y: FloatArray) -> SmoothTrend:
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

    @classmethod
    def from_params(
        cls, direction: Literal["increasing", "decreasing"], params: Mapping[str, float], bound: float | None = None
    ) -> SmoothTrend:
        """The trend with the saturating power law's stored parameters (``E``, ``A``, ``alpha``, e.g. a
        :class:`Transition`'s ``smooth_params``), ready for :meth:`predict`."""
        trend = cls(direction, bound)
        trend.law = SaturatingPowerLaw.from_params(params)
        return trend

    def predict(self, x: FloatArray) -> FloatArray:
        return self.b + self._sign() * self.law.predict(x)

    def curves(self, x: FloatArray) -> FloatArray:
        """The trend at ``x`` for every bootstrap draw, shape (B, len(x)): the gap's curves studentized as
        the law's confidence band is (``Law.bootstrap_curves``), so few points do not make them too tight."""
        if len(self.law.bootstrap_params_) == 0:
            return np.empty((0, len(np.atleast_1d(x))))
        g = self.law.bootstrap_curves(np.asarray(x, dtype=float)[:, None])
        return self.b + self._sign() * g


def sorted_xy(
    x: ArrayLike, y: ArrayLike, min_n: int, xname: str = "x", yname: str = "y"
) -> tuple[FloatArray, FloatArray]:
    """Finite (x > 0, y) as float arrays sorted by x, at least ``min_n`` points at ``min_n - 1`` distinct x;
    FitError naming ``xname``/``yname`` otherwise."""
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
