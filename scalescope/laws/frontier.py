"""The compute-frontier law L(C) = E + A·C^(−γ), fitted on the frontier runs only.

The frontier is the best loss reached at each compute budget (Kaplan et al. 2020, sec. 6.1 and fig. 14:
"the compute-efficient frontier"; Hoffmann et al. 2022, Approach 1: for each FLOP count, the run with the
lowest loss). From final losses, one point per run:

1. runs are grouped into budgets: sorted by C, a budget holds the runs within ``rtol`` (relative) of its
   smallest C, so runs aimed at one FLOP budget that overshoot it by part of a step count once;
2. each budget keeps its best (lowest-loss) run;
3. a budget's best is on the frontier only if it beats every smaller budget's best: more compute that
   bought no lower loss is not compute-efficient (the frontier is the lower envelope, decreasing in C).

On the frontier L(C) is a saturating power law: Kaplan et al.'s eq. 1.4 (L = (C_c/C)^α_C) with an
irreducible term, and exactly what Hoffmann et al.'s eq. 2 gives along its compute-optimal allocation
(appendix D.2: N_opt ∝ C^(β/(α+β)), D_opt ∝ C^(α/(α+β)) under C = 6ND), L_opt(C) = E + A·C^(−γ) with
γ = αβ/(α+β) and A = (A_N·G^(−α) + B·G^β)·6^γ. The fit itself is
:class:`~scalescope.laws.power.SaturatingPowerLaw` in C; only the point selection and the names differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import FitError
from .base import check_finite, check_positive
from .power import SaturatingPowerLaw

__all__ = ["ComputeFrontierLaw", "frontier_mask"]

FRONTIER_RTOL = 0.05  # runs within 5% of a budget's compute are one budget (a step's overshoot, rounding)


def frontier_mask(C: ArrayLike, loss: ArrayLike, *, rtol: float = FRONTIER_RTOL) -> NDArray[np.bool_]:
    """Which runs are on the compute frontier (module docstring): the best run of each budget, kept when it
    beats every smaller budget's best. Ties within a budget keep the first run in input order."""
    c = np.asarray(C, dtype=float).ravel()
    y = np.asarray(loss, dtype=float).ravel()
    if c.shape != y.shape:
        raise FitError(f"C has {c.size} values but loss has {y.size}")
    check_finite(c, "C")
    check_finite(y, "loss")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    order = np.argsort(c, kind="stable")
    mask = np.zeros(c.size, dtype=bool)
    best_so_far = np.inf
    i = 0
    while i < order.size:
        start = c[order[i]]
        j = i
        while j < order.size and c[order[j]] <= start * (1 + rtol):
            j += 1
        budget = order[i:j]
        k = budget[np.argmin(y[budget])]  # argmin keeps the first of equal losses
        if y[k] < best_so_far:
            mask[k] = True
            best_so_far = y[k]
        i = j
    return mask


class ComputeFrontierLaw(SaturatingPowerLaw):
    """L(C) = E + A·C^(−γ) on the compute frontier (module docstring), E >= 0.

    ``fit(C, loss)`` takes every run; with ``frontier=True`` (default) it keeps the frontier runs
    (:func:`frontier_mask` with ``rtol``) and fits those, recording which in ``frontier_mask_``; with
    ``frontier=False`` it fits the points as given (already a frontier). Fitted: ``params_ = {"E", "A",
    "gamma"}`` and the :class:`~scalescope.laws.base.Law` attributes, computed on the frontier points (the
    bootstrap resamples those). ``bounds_``: E >= 0, as the saturating power law's.
    """

    feature_names = ("C",)
    amplitude_terms = {"A": ("gamma", 0)}
    target_name = "loss"
    log_features = (True,)

    def __init__(
        self,
        *,
        frontier: bool = True,
        rtol: float = FRONTIER_RTOL,
        n_starts: int = 5,
        bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ):
        self.frontier = frontier
        self.rtol = rtol
        self.n_starts = n_starts
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("E", "A", "gamma")

    def fit(self, X: ArrayLike, y: ArrayLike) -> ComputeFrontierLaw:
        """Fit on the frontier of runs with compute ``X`` (n,) or (n, 1) and losses ``y``; return self."""
        c = np.asarray(X, dtype=float).reshape(-1)
        ya = np.asarray(y, dtype=float).ravel()
        if c.shape != ya.shape:
            raise FitError(f"C has {c.size} values but loss has {ya.size}")
        check_finite(c, "C")
        check_positive(c, "C")
        mask = frontier_mask(c, ya, rtol=self.rtol) if self.frontier else np.ones(c.size, dtype=bool)
        if self.frontier and mask.sum() < self.min_points():
            raise FitError(
                f"the compute frontier of these {c.size} runs has {int(mask.sum())} points; the frontier law "
                f"needs at least {self.min_points()} (3 parameters): more compute budgets are needed"
            )
        self.frontier_mask_ = mask
        super().fit(c[mask], ya[mask])
        return self

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["frontier"] = {
            "definition": (
                f"best run of each compute budget (runs within {self.rtol:.0%} of a budget's compute), kept when "
                "it beats every smaller budget"
            ),
            "points": int(self.frontier_mask_.sum()) if hasattr(self, "frontier_mask_") else None,
            "runs": int(self.frontier_mask_.size) if hasattr(self, "frontier_mask_") else None,
        }
        return out
