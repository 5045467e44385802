"""Broken neural scaling law (Caballero et al. 2022, "Broken Neural Scaling Laws", eq. 1):

    y = a + b·x^(−c0) · Π_{i=1..n} (1 + (x/d_i)^(1/f_i))^(−c_i·f_i)

n breaks at x ≈ d_i; f_i is the sharpness of break i (small: abrupt); after break i the log-log slope
changes by −c_i, so non-monotone and abrupt ("emergent") curves are representable. With n = 0 it is the
saturating power law. Fitted as the paper recommends: on log y, with a brute-force grid of starts
followed by local refinement (here ``scipy.optimize.least_squares``, trust-region, analytic Jacobian).
Requires a ≥ 0 and b > 0 so that ŷ > 0 and log ŷ exists.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit

from ..errors import FitError
from .base import FloatArray, Law, as_rng

__all__ = ["BrokenNeuralScalingLaw"]

# Brute-force grid (per break: position at data quantiles, slope change, sharpness). Coarse on purpose:
# it only has to land in the right basin; least squares does the rest.
_A_FRACTIONS = np.array([0.0, 0.5, 0.9, 0.99])  # a as a fraction of min(y)
_C0_GRID = np.array([-0.25, 0.0, 0.1, 0.3, 0.6, 1.0])
_C_GRID = np.array([-1.0, -0.3, 0.2, 0.5, 1.0, 2.0])
_F_GRID = np.array([0.05, 0.3, 1.0])
_D_QUANTILES = np.array([0.15, 0.3, 0.5, 0.7, 0.85])
_LOG_F_BOUNDS = (np.log(1e-3), np.log(1e2))


def _log_g(z: FloatArray, lx: FloatArray, n_breaks: int) -> FloatArray:
    """log(b x^−c0 Π ...) for z = (a, log b, c0, [c_i, log d_i, log f_i]...) of shape (P,) or (K, P).

    −c·f·log(1 + (x/d)^(1/f)) is computed as −c·f·logaddexp(0, (log x − log d)/f): no overflow.
    """
    Z = np.atleast_2d(z)[:, :, None]  # (K, P, 1) against lx (n,)
    out = Z[:, 1] - Z[:, 2] * lx
    for i in range(n_breaks):
        c, ld, f = Z[:, 3 + 3 * i], Z[:, 4 + 3 * i], np.exp(Z[:, 5 + 3 * i])
        out = out - c * f * np.logaddexp(0.0, (lx - ld) / f)
    return out if np.ndim(z) == 2 else out[0]


class BrokenNeuralScalingLaw(Law):
    """Caballero et al. 2022's BNSL (eq. 1) with ``n_breaks`` breaks (0, 1, 2, ...).

    Fitted ``params_``: ``a, b, c0`` and ``c{i}, d{i}, f{i}`` for i = 1..n_breaks, breaks sorted by d.
    Options: ``n_starts`` grid points refined locally; ``max_grid`` caps the brute-force grid (it grows as
    180^n; above the cap a random subset is drawn with ``random_state``).

    Extrapolating a BNSL beyond the last break seen in the data is only as good as the assumption that no
    further break comes; see Caballero et al. 2022 sec. 6 on the limits of predictability.
    """

    feature_names = ("x",)
    target_name = "y"
    log_features = (True,)
    # b trades off against c0 as A does against an exponent; the slope changes c0, c_i may take either sign.
    nuisance_params = ("b",)
    positive_params = ("a", "b")

    @property
    def signed_params(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("c0", *(f"c{i}" for i in range(1, self.n_breaks + 1)))

    def __init__(
        self,
        *,
        n_breaks: int = 1,
        n_starts: int = 10,
        max_grid: int = 20_000,
        bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ):
        self.n_breaks = n_breaks
        self.n_starts = n_starts
        self.max_grid = max_grid
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        extra = [f"{k}{i}" for i in range(1, self.n_breaks + 1) for k in ("c", "d", "f")]
        return ("a", "b", "c0", *extra)

    # z = (a, log b, c0, [c_i, log d_i, log f_i]...) <-> p = (a, b, c0, [c_i, d_i, f_i]...)
    def _to_p(self, z: FloatArray) -> FloatArray:
        p = z.copy()
        p[1] = np.exp(z[1])
        for i in range(self.n_breaks):
            p[4 + 3 * i : 6 + 3 * i] = np.exp(z[4 + 3 * i : 6 + 3 * i])
        # Sort breaks by position: the law is symmetric under relabelling them.
        blocks = sorted((p[3 + 3 * i : 6 + 3 * i] for i in range(self.n_breaks)), key=lambda b: b[1])
        return np.concatenate([p[:3], *blocks]) if blocks else p

    def _to_z(self, p: FloatArray) -> FloatArray:
        # Floors at the smallest positive float: a b that underflowed to 0 still maps to a finite log b.
        tiny = np.finfo(float).tiny
        z = np.array(p, dtype=float)
        z[1] = np.log(max(float(p[1]), tiny))
        for i in range(self.n_breaks):
            z[4 + 3 * i : 6 + 3 * i] = np.log(np.maximum(p[4 + 3 * i : 6 + 3 * i], tiny))
        return z

    def _resid(self, z: FloatArray, lx: FloatArray, ly: FloatArray) -> FloatArray:
        return np.log(z[0] + np.exp(_log_g(z, lx, self.n_breaks))) - ly

    def _jac(self, z: FloatArray, lx: FloatArray, ly: FloatArray) -> FloatArray:
        g = np.exp(_log_g(z, lx, self.n_breaks))
        s = z[0] + g
        t = g / s  # d log ŷ / d log g
        J = np.empty((lx.shape[0], z.shape[0]))
        J[:, 0] = 1.0 / s
        J[:, 1] = t
        J[:, 2] = -lx * t
        for i in range(self.n_breaks):
            c, ld, lf = z[3 + 3 * i : 6 + 3 * i]
            f = np.exp(lf)
            u = lx - ld
            sp, sig = np.logaddexp(0.0, u / f), expit(u / f)
            J[:, 3 + 3 * i] = -f * sp * t
            J[:, 4 + 3 * i] = c * sig * t
            J[:, 5 + 3 * i] = -c * (f * sp - sig * u) * t
        return J

    def _bounds(self, lx: FloatArray) -> tuple[FloatArray, FloatArray]:
        # Breaks are kept within half a data span of the data: further out they are not identified.
        span = max(lx.max() - lx.min(), 1e-12)
        lo = [0.0, -np.inf, -np.inf] + [-np.inf, lx.min() - 0.5 * span, _LOG_F_BOUNDS[0]] * self.n_breaks
        hi = [np.inf, np.inf, np.inf] + [np.inf, lx.max() + 0.5 * span, _LOG_F_BOUNDS[1]] * self.n_breaks
        return np.array(lo), np.array(hi)

    def _solve(self, z0: FloatArray, lx: FloatArray, ly: FloatArray) -> tuple[FloatArray, float]:
        lo, hi = self._bounds(lx)
        z0 = np.clip(z0, lo, hi)
        res = least_squares(
            self._resid,
            z0,
            jac=self._jac,
            args=(lx, ly),
            bounds=(lo, hi),
            method="trf",
            x_scale="jac",
            # More breaks than the data show leave flat directions; the cap stops the wandering there.
            ftol=1e-10,
            xtol=1e-10,
            gtol=1e-10,
            max_nfev=1000,
        )
        return res.x, float(np.sum(res.fun**2))

    def _grid(self, lx: FloatArray, ly: FloatArray, y_min: float) -> FloatArray:
        """Brute-force starts z with log b set in closed form (median of log(y − a) − log g + log b)."""
        d_grid = np.quantile(lx, _D_QUANTILES)
        per_break = list(itertools.product(_C_GRID, d_grid, np.log(_F_GRID)))
        combos = itertools.product(_A_FRACTIONS * y_min, _C0_GRID, *([per_break] * self.n_breaks))
        total = len(_A_FRACTIONS) * len(_C0_GRID) * len(per_break) ** self.n_breaks
        rows = (
            [np.array([a, 0.0, c0, *itertools.chain.from_iterable(br)]) for a, c0, *br in combos]
            if (total <= self.max_grid)
            else self._sample_grid(per_break, y_min)
        )
        Z = np.array(rows)
        # log b: with g computed at log b = 0, log(y − a) = log b + log g, so log b = median of the gap.
        for i in range(0, len(Z), 2000):
            Zc = Z[i : i + 2000]
            Zc[:, 1] = np.median(np.log(np.exp(ly) - Zc[:, :1]) - _log_g(Zc, lx, self.n_breaks), axis=1)
        return Z

    def _sample_grid(self, per_break: list[tuple[float, float, float]], y_min: float) -> list[FloatArray]:
        rng = as_rng(self.random_state)
        rows = []
        for _ in range(self.max_grid):
            br = [per_break[j] for j in rng.integers(0, len(per_break), size=self.n_breaks)]
            a = rng.choice(_A_FRACTIONS) * y_min
            rows.append(np.array([a, 0.0, rng.choice(_C0_GRID), *itertools.chain.from_iterable(br)]))
        return rows

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        if self.n_breaks < 0:
            raise ValueError(f"n_breaks must be >= 0, got {self.n_breaks}")
        lx, ly = np.log(X[:, 0]), np.log(y)
        Z = self._grid(lx, ly, float(y.min()))
        costs = np.empty(len(Z))
        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(0, len(Z), 2000):
                Zc = Z[i : i + 2000]
                r = np.log(Zc[:, :1] + np.exp(_log_g(Zc, lx, self.n_breaks))) - ly
                costs[i : i + 2000] = np.sum(r**2, axis=1)
        costs[~np.isfinite(costs)] = np.inf
        lo, hi = self._bounds(lx)
        self.bounds_ = {"a": (0.0, np.inf)}
        for i in range(1, self.n_breaks + 1):
            self.bounds_[f"d{i}"] = (float(np.exp(lo[1 + 3 * i])), float(np.exp(hi[1 + 3 * i])))
            self.bounds_[f"f{i}"] = (float(np.exp(lo[2 + 3 * i])), float(np.exp(hi[2 + 3 * i])))
        best_z, best_cost = None, np.inf
        for k in np.argsort(costs)[: self.n_starts]:
            z, cost = self._solve(Z[k], lx, ly)
            if cost < best_cost:
                best_z, best_cost = z, cost
        if best_z is None:
            raise FitError("BrokenNeuralScalingLaw: least squares failed from every starting point")
        self.objective_ = best_cost
        return self._to_p(best_z)

    def _refit(self, X: FloatArray, y: FloatArray, p0: FloatArray) -> FloatArray:
        z, _ = self._solve(self._to_z(p0), np.log(X[:, 0]), np.log(y))
        return self._to_p(z)

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        return p[0] + np.exp(_log_g(self._to_z(p), np.log(X[:, 0]), self.n_breaks))
