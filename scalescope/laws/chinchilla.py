"""The Chinchilla law L(N, D) = E + A/N^α + B/D^β, fitted as Hoffmann et al. 2022 (Approach 3).

Hoffmann et al. 2022, sec. 3.3 (eq. 2: the form; eq. 3: the objective) and appendix D.2: with
a = log A, b = log B, e = log E, minimise

    Σ_i Huber_δ( LSE(a − α log N_i, b − β log D_i, e) − log L_i ),   δ = 1e-3,

with L-BFGS from a grid of initial points, keeping the best. Besiroglu et al. 2024 ("Chinchilla scaling: a
replication attempt") found that the published parameters fit the data poorly, plausibly because the
optimizer stopped early; the remedy (and our pitfall note in
DESIGN.md) is to optimise tightly and polish the best grid result with a second method on the same
objective. Here the second method is trust-region least squares with the same Huber loss
(``scipy.optimize.least_squares(loss="huber", f_scale=δ)``, whose cost is exactly Σ Huber_δ(r_i)); the
better of the two is kept and the gain is recorded.

The local method from each start is a quasi-Newton method, BFGS by default rather than Hoffmann's L-BFGS:
with 5 parameters the limited memory buys nothing, and scipy's L-BFGS-B (1.17) calls multithreaded
OpenBLAS for its tiny matrices; on our 2-core machines with another process busy that made a 64-start fit
take 8-18 s of CPU instead of 0.4-0.6 s (BFGS: 0.6 s either way, same optimum, measured 2026-11-22).
``optimizer="l-bfgs-b"`` restores L-BFGS-B (fast with ``OPENBLAS_NUM_THREADS=1``).

Constrained fits (options ``fix_E``, ``shared_exponent``, ``E_min``) keep the method and the parameters
(E, A, B, α, β): a fixed E (e.g. a language's known entropy rate, the floor no model can beat) is held at
its value, a shared exponent ties β to α (the symmetric form Hoffmann et al.'s fit nearly has, α 0.34 vs
β 0.28; Besiroglu et al. 2024: 0.35 vs 0.37), and a floor E ≥ E_min is built in by writing E = E_min +
exp(e). The loss becomes L = c + exp(LSE(a − α log N, b − β log D[, e])) with c the fixed E or the floor;
the same Huber objective is minimised over the free parameters only, from the same grid (collapsed onto
the free coordinates), with the same polish, and the bootstrap refits under the same constraints. Fewer
free parameters are what few points can pin down; ``scalescope fit auto`` (:mod:`scalescope.laws.select`)
asks the held-out scales which form the data support.

Compute-optimal allocation under C = 6ND (Hoffmann et al. 2022, sec. 3.3, eq. 4; appendix D.2):
N_opt(C) = G (C/6)^a, D_opt(C) = G^(−1) (C/6)^b, G = (αA / (βB))^(1/(α+β)), a = β/(α+β), b = α/(α+β).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares, minimize

from ..errors import ConfigError, FitError
from .base import FloatArray, Law, percentile_interval

__all__ = [
    "ChinchillaLaw",
    "chinchilla_loss",
    "compute_optimal_allocation",
    "compute_optimal_exponents",
    "hoffmann_grid",
]

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


def chinchilla_loss(N: ArrayLike, D: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float) -> Any:
    """L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2)."""
    return E + A * np.asarray(N, dtype=float) ** (-alpha) + B * np.asarray(D, dtype=float) ** (-beta)


def compute_optimal_exponents(alpha: float, beta: float) -> tuple[float, float]:
    """Exponents (a, b) of N_opt ∝ C^a and D_opt ∝ C^b: a = β/(α+β), b = α/(α+β) (Hoffmann eq. 4).
    A degenerate fit with α + β = 0 gives NaN or inf, not a division error."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.float64(alpha) + np.float64(beta)
        return float(np.float64(beta) / s), float(np.float64(alpha) / s)


def compute_optimal_allocation(C: ArrayLike, *, A: float, B: float, alpha: float, beta: float) -> tuple[Any, Any]:
    """N_opt(C), D_opt(C) minimising L(N, D) subject to C = 6ND (Hoffmann et al. 2022, appendix D.2).

    G = (αA/(βB))^(1/(α+β)); N_opt = G (C/6)^a; D_opt = G^(−1) (C/6)^b. (E does not enter.)
    """
    a, b = compute_optimal_exponents(alpha, beta)
    al, be, A_, B_ = (np.float64(v) for v in (alpha, beta, A, B))
    with np.errstate(all="ignore"):  # a degenerate fit (B or β at 0) gives inf or NaN, not a division error
        G = (al * A_ / (be * B_)) ** (1.0 / (al + be))
        c6 = np.asarray(C, dtype=float) / 6.0
        return G * c6**a, c6**b / G


def hoffmann_grid(kind: Literal["hoffmann", "coarse"] = "hoffmann") -> FloatArray:
    """Initial points θ = (a, b, e, α, β), a = log A, b = log B, e = log E.

    ``"hoffmann"``: Hoffmann et al.'s grid, α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1},
    a, b ∈ {0, 5, …, 25} (4,500 points). ``"coarse"``: α, β ∈ {0.25, 0.75, 1.5}, e ∈ {−1, 0, 1},
    a, b ∈ {0, 10, 20} (243 points), for speed.
    """
    if kind == "hoffmann":
        ab, e, ex = np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5), np.arange(0, 2.01, 0.5)
    elif kind == "coarse":
        ab, e, ex = np.array([0.0, 10.0, 20.0]), np.array([-1.0, 0.0, 1.0]), np.array([0.25, 0.75, 1.5])
    else:
        raise ValueError(f"grid must be 'hoffmann', 'coarse' or an array of starts, got {kind!r}")
    return np.array(list(itertools.product(ab, ab, e, ex, ex)), dtype=float)


# --- the objective in θ = (a, b, e, α, β) --------------------------------------------------------------


def _lse_terms(theta: FloatArray, lN: FloatArray, lD: FloatArray) -> tuple[FloatArray, FloatArray]:
    """log L̂ = LSE(u) and softmax weights w (3, n), computed stably by subtracting the max."""
    a, b, e, alpha, beta = theta
    u = np.empty((3, lN.shape[0]))
    u[0] = a - alpha * lN
    u[1] = b - beta * lD
    u[2] = e
    m = u.max(axis=0)
    ex = np.exp(u - m)
    s = ex.sum(axis=0)
    return m + np.log(s), ex / s


def huber_lse_objective(
    theta: FloatArray, lN: FloatArray, lD: FloatArray, lL: FloatArray, delta: float
) -> tuple[float, FloatArray]:
    """(Σ Huber_δ(r_i) / δ, its gradient), r = LSE(a − α log N, b − β log D, e) − log L.

    Divided by δ so the objective is O(Σ|r|) rather than O(δ Σ|r|) ~ 1e-5: L-BFGS-B's stopping test is
    relative to max(|f|, 1) and gradient tests are absolute, so an unscaled tiny objective makes
    optimizers stop early (the DESIGN.md pitfall).
    """
    lse, w = _lse_terms(theta, lN, lD)
    r = lse - lL
    ar = np.abs(r)
    f = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum() / delta
    psi = np.clip(r, -delta, delta) / delta  # Huber'(r) / δ
    g = w @ psi
    grad = np.array([g[0], g[1], g[2], -(w[0] * psi) @ lN, -(w[1] * psi) @ lD])
    return float(f), grad


def _residuals(theta: FloatArray, lN: FloatArray, lD: FloatArray, lL: FloatArray) -> FloatArray:
    return _lse_terms(theta, lN, lD)[0] - lL


def _jacobian(theta: FloatArray, lN: FloatArray, lD: FloatArray, lL: FloatArray) -> FloatArray:
    _, w = _lse_terms(theta, lN, lD)
    return np.column_stack([w[0], w[1], w[2], -w[0] * lN, -w[1] * lD])


def _grid_objective(starts: FloatArray, lN: FloatArray, lD: FloatArray, lL: FloatArray, delta: float) -> FloatArray:
    """Objective at many θ at once (chunks keep memory at a few MB)."""
    out = np.empty(len(starts))
    chunk = max(1, 2_000_000 // max(len(lN), 1))
    for i in range(0, len(starts), chunk):
        a, b, e, al, be = (c[:, None] for c in starts[i : i + chunk].T)
        r = np.logaddexp(np.logaddexp(a - al * lN, b - be * lD), e) - lL
        ar = np.abs(r)
        out[i : i + chunk] = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(axis=1) / delta
    return out


def _theta_to_params(theta: FloatArray) -> FloatArray:
    a, b, e, alpha, beta = theta
    return np.array([np.exp(e), np.exp(a), np.exp(b), alpha, beta])


def _params_to_theta(p: FloatArray) -> FloatArray:
    # A fit whose E (or A, B) underflowed to exactly 0 restarts from the smallest positive float, not log 0.
    E, A, B, alpha, beta = p
    tiny = np.finfo(float).tiny
    return np.array([np.log(max(A, tiny)), np.log(max(B, tiny)), np.log(max(E, tiny)), alpha, beta])


# Tight on purpose (see huber_lse_objective): stopping is decided by the polish comparison, not by luck.
_LOCAL_OPTIONS = {
    "bfgs": ("BFGS", {"maxiter": 10_000, "gtol": 1e-10}),
    "l-bfgs-b": ("L-BFGS-B", {"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-10}),
}


# --- constrained forms: L = c + exp(LSE(a − α log N, b − β log D[, e])) over the free coordinates -------


@dataclass(frozen=True)
class _Form:
    """Which of θ = (a, b, e, α, β) are free, and the offset c (a fixed E, or the floor E_min; 0: none).

    ``with_e``: E has a free part exp(e) (False when E is fixed); ``shared``: β is tied to α. The free
    vector z is θ at :attr:`free`; θ = P z (β = α when shared).
    """

    c: float
    with_e: bool
    shared: bool

    @property
    def free(self) -> list[int]:
        return [0, 1] + ([2] if self.with_e else []) + [3] + ([] if self.shared else [4])

    def P(self) -> FloatArray:
        free = self.free
        P = np.zeros((5, len(free)))
        P[free, np.arange(len(free))] = 1.0
        if self.shared:
            P[4, free.index(3)] = 1.0
        return P

    def theta(self, z: FloatArray) -> FloatArray:
        """θ rows for z rows ((k,) -> (5,), (m, k) -> (m, 5)); e is −inf when E has no free part."""
        Z = np.atleast_2d(z)
        T = Z @ self.P().T
        if not self.with_e:
            T[:, 2] = -np.inf
        return T if np.ndim(z) == 2 else T[0]

    def params(self, z: FloatArray) -> FloatArray:
        """(E, A, B, α, β) of the free vector z."""
        a, b, e, alpha, beta = self.theta(z)
        E = self.c + (np.exp(e) if self.with_e else 0.0)
        return np.array([E, np.exp(a), np.exp(b), alpha, beta])

    def z_of_params(self, p: FloatArray) -> FloatArray:
        """The free vector of parameters p (E at or below the floor is started just above it)."""
        E, A, B, alpha, beta = p
        e = np.log(max(E - self.c, 1e-300)) if self.with_e else 0.0
        return np.array([np.log(A), np.log(B), e, alpha, beta])[self.free]

    def log_loss(self, z: FloatArray, lN: FloatArray, lD: FloatArray) -> tuple[FloatArray, FloatArray]:
        """log L̂ at every point and d log L̂ / dz (n, k); z = (a, b[, e], α[, β])."""
        a, b = z[0], z[1]
        k = 3 if self.with_e else 2
        alpha = z[k]
        beta = alpha if self.shared else z[k + 1]
        u0, u1 = a - alpha * lN, b - beta * lD
        if self.with_e:
            m = np.maximum(np.maximum(u0, u1), z[2])
            e0, e1, e2 = np.exp(u0 - m), np.exp(u1 - m), np.exp(z[2] - m)
            s = e0 + e1 + e2
        else:
            m = np.maximum(u0, u1)
            e0, e1 = np.exp(u0 - m), np.exp(u1 - m)
            s = e0 + e1
        lse = m + np.log(s)
        scale = 1.0 / s
        if self.c > 0:
            log_l = np.logaddexp(np.log(self.c), lse)
            scale = scale * np.exp(lse - log_l)  # d log(c + e^lse) = (e^lse / (c + e^lse)) d lse
        else:
            log_l = lse
        w0, w1 = e0 * scale, e1 * scale
        cols = [w0, w1] + ([e2 * scale] if self.with_e else [])
        if self.shared:
            cols.append(-w0 * lN - w1 * lD)
        else:
            cols += [-w0 * lN, -w1 * lD]
        return log_l, np.column_stack(cols)

    def grid_log_loss(self, Z: FloatArray, lN: FloatArray, lD: FloatArray) -> FloatArray:
        """log L̂ for many z at once, (m, n)."""
        T = self.theta(np.atleast_2d(Z))
        a, b, e, al, be = (c[:, None] for c in T.T)
        out = np.logaddexp(a - al * lN, b - be * lD)
        if self.with_e:
            out = np.logaddexp(out, e)
        if self.c > 0:
            out = np.logaddexp(np.log(self.c), out)
        return out


def _huber(r: FloatArray, delta: float) -> FloatArray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


class ChinchillaLaw(Law):
    """L(N, D) = E + A/N^α + B/D^β, fitted by Huber loss on log-sum-exp log residuals (Hoffmann et al.
    2022, Approach 3; Besiroglu et al. 2024).

    Options:
      ``delta``: Huber threshold on log residuals (1e-3 as Hoffmann; residuals above it count as |r|).
      ``grid``: ``"hoffmann"`` (4,500 starts), ``"coarse"`` (243) or an array (k, 5) of starting
      (E, A, B, alpha, beta).
      ``n_starts``: the local optimizer is run from the ``n_starts`` grid points with the lowest initial
      objective (None: from every point, as Hoffmann did; ~70x slower for the full grid).
      ``optimizer``: ``"bfgs"`` (default) or ``"l-bfgs-b"`` for the runs from the grid (module docstring).
      ``polish``: polish the best grid-started result with Huber least squares and keep the better.
      ``bootstrap``, ``random_state``: see :class:`~scalescope.laws.base.Law`. Each resample is refitted by
      the Huber least-squares method warm-started at the full-data θ; on 245 points it reaches the same
      optimum as L-BFGS-B (objective within 1e-14) in ~8 evaluations, ~2.4x faster.
      ``fix_E``: hold E at this value (>= 0 and below the smallest loss; e.g. a known entropy rate).
      ``shared_exponent``: fit one exponent, α = β.
      ``E_min``: the floor E >= E_min (default 0: E >= 0; e.g. the entropy rate, below which no model goes).
      Constrained fits keep the five parameters; the constrained ones are listed in ``fixed_params_``
      (β when shared: it is α) and have zero-width intervals by construction.

    Fitted, besides the base attributes: ``objective_`` (Σ Huber_δ, Hoffmann's units),
    ``optimizer_`` (diagnostics: starts run, how many reached the best, polish gain),
    ``compute_optimal_exponents_`` (a, b), via the bootstrap ``derived_ci_`` for a, b, and ``bounds_``
    (the optimizer's bounds: E >= E_min, A, B > 0).
    """

    feature_names = ("N", "D")
    amplitude_terms = {"A": ("alpha", 0), "B": ("beta", 1)}
    target_name = "loss"
    log_features = (True, True)

    def __init__(
        self,
        *,
        delta: float = 1e-3,
        grid: Literal["hoffmann", "coarse"] | ArrayLike = "hoffmann",
        n_starts: int | None = 64,
        optimizer: Literal["bfgs", "l-bfgs-b"] = "bfgs",
        polish: bool = True,
        fix_E: float | None = None,
        shared_exponent: bool = False,
        E_min: float = 0.0,
        bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ):
        self.delta = delta
        self.grid = grid
        self.n_starts = n_starts
        self.optimizer = optimizer
        self.polish = polish
        self.fix_E = fix_E
        self.shared_exponent = shared_exponent
        self.E_min = E_min
        self.bootstrap = bootstrap
        self.random_state = random_state

    @property
    def param_names(self) -> tuple[str, ...]:
        return PARAM_NAMES

    # -- constraints ------------------------------------------------------------------------------------
    @property
    def fixed_params_(self) -> set[str]:
        """Parameters the options fix rather than the data: E with ``fix_E``, β with ``shared_exponent``
        (it equals α). Diagnostics skip them."""
        return ({"E"} if self.fix_E is not None else set()) | ({"beta"} if self.shared_exponent else set())

    @property
    def n_free_params(self) -> int:
        return len(PARAM_NAMES) - len(self.fixed_params_)

    def min_points(self) -> int:
        """One more point than free parameters."""
        return self.n_free_params + 1

    def _form(self) -> _Form | None:
        """The constrained form, or None for the unconstrained default (fitted exactly as before)."""
        if self.fix_E is None and not self.shared_exponent and self.E_min == 0:
            return None
        c = float(self.fix_E) if self.fix_E is not None else float(self.E_min)
        return _Form(c=c, with_e=self.fix_E is None, shared=bool(self.shared_exponent))

    def _check_constraints(self, y: FloatArray) -> None:
        """Options against each other and against the data (one-line errors naming the option)."""
        for name in ("fix_E", "E_min"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"must be a number >= 0, got {v!r}", field=name)
        lo = float(np.min(y))
        if self.fix_E is not None:
            if self.fix_E >= lo:
                raise ConfigError(
                    f"{self.fix_E:.6g} is not below the smallest observed loss {lo:.6g}: the law's losses all "
                    "exceed E, so no fit with this E exists",
                    field="fix_E",
                )
            if self.E_min > self.fix_E:
                raise ConfigError(f"{self.fix_E:.6g} is below E_min={self.E_min:.6g}", field="fix_E")
        elif self.E_min >= lo:
            raise ConfigError(
                f"{self.E_min:.6g} is not below the smallest observed loss {lo:.6g}: the law's losses all exceed E",
                field="E_min",
            )

    def _starts(self) -> FloatArray:
        if isinstance(self.grid, str):
            return hoffmann_grid(self.grid)  # type: ignore[arg-type]
        p = np.atleast_2d(np.asarray(self.grid, dtype=float))
        if p.shape[1] != 5 or np.any(p[:, :3] <= 0):
            raise ValueError("grid array must have rows (E, A, B, alpha, beta) with E, A, B > 0")
        return np.array([_params_to_theta(q) for q in p])

    def _least_squares(self, theta0: FloatArray, lN: FloatArray, lD: FloatArray, lL: FloatArray) -> FloatArray:
        res = least_squares(
            _residuals,
            theta0,
            jac=_jacobian,
            args=(lN, lD, lL),
            loss="huber",
            f_scale=self.delta,
            method="trf",
            x_scale="jac",
            ftol=1e-12,
            xtol=1e-12,
            gtol=1e-12,
            max_nfev=2000,
        )
        return res.x

    def _fit_params(self, X: FloatArray, y: FloatArray) -> FloatArray:
        lN, lD, lL, delta = np.log(X[:, 0]), np.log(X[:, 1]), np.log(y), float(self.delta)
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.optimizer not in _LOCAL_OPTIONS:
            raise ValueError(f"optimizer must be 'bfgs' or 'l-bfgs-b', got {self.optimizer!r}")
        self._check_constraints(y)
        # E = E_min + exp(e) and A, B = exp(.) never cross these; the diagnostics flag a parameter on one.
        self.bounds_ = {"A": (0.0, math.inf), "B": (0.0, math.inf)}
        if self.fix_E is None:
            self.bounds_["E"] = (float(self.E_min), math.inf)
        method, options = _LOCAL_OPTIONS[self.optimizer]
        form = self._form()
        if form is not None:
            return self._fit_constrained(form, lN, lD, lL, delta, method, options)
        starts = self._starts()
        order = np.argsort(_grid_objective(starts, lN, lD, lL, delta))
        if self.n_starts is not None:
            order = order[: self.n_starts]
        results = []
        for k in order:
            res = minimize(
                huber_lse_objective,
                starts[k],
                args=(lN, lD, lL, delta),
                jac=True,
                method=method,
                options=options,
            )
            # At these tight tolerances both methods usually end on a line-search failure ("precision
            # loss" / "ABNORMAL"); the point is still the best found, and the polish below checks it.
            if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
                results.append((float(res.fun), res.x))
        if not results:
            raise FitError(f"ChinchillaLaw: {method} failed from every starting point")
        theta = self._polish_best(
            results,
            len(order),
            delta,
            lambda t: self._least_squares(t, lN, lD, lL),
            lambda t: huber_lse_objective(t, lN, lD, lL, delta)[0],
        )
        return _theta_to_params(theta)

    def _polish_best(
        self,
        results: list[tuple[float, FloatArray]],
        n_starts: int,
        delta: float,
        polish: Any,
        objective: Any,
    ) -> FloatArray:
        """The best local result, polished by the second method when that improves it (see the module
        doc); records ``optimizer_`` and ``objective_``. Shared by the free and the constrained fits."""
        f_local, z = min(results, key=lambda t: t[0])
        f_best = f_local
        if self.polish:
            z_ls = polish(z)
            f_ls = objective(z_ls)
            if np.all(np.isfinite(z_ls)) and f_ls < f_best:
                z, f_best = z_ls, f_ls
        fs = np.array([f for f, _ in results])
        self.optimizer_ = {
            "starts_run": n_starts,
            "starts_at_best": int(np.sum(fs <= f_local + 1e-9 * max(1.0, abs(f_local)))),
            "local_objective": f_local * delta,
            "polished_objective": f_best * delta,
            "polish_gain": (f_local - f_best) * delta,
        }
        self.objective_ = f_best * delta
        return z

    def _refit(self, X: FloatArray, y: FloatArray, p0: FloatArray) -> FloatArray:
        form = self._form()
        lN, lD, lL = np.log(X[:, 0]), np.log(X[:, 1]), np.log(y)
        if form is not None:  # the resample is refitted under the same constraints
            return form.params(self._least_squares_form(form, form.z_of_params(p0), lN, lD, lL))
        theta = self._least_squares(_params_to_theta(p0), lN, lD, lL)
        return _theta_to_params(theta)

    def _least_squares_form(
        self, form: _Form, z0: FloatArray, lN: FloatArray, lD: FloatArray, lL: FloatArray
    ) -> FloatArray:
        def resid(z: FloatArray) -> FloatArray:
            return form.log_loss(z, lN, lD)[0] - lL

        def jac(z: FloatArray) -> FloatArray:
            return form.log_loss(z, lN, lD)[1]

        res = least_squares(
            resid,
            z0,
            jac=jac,
            loss="huber",
            f_scale=self.delta,
            method="trf",
            x_scale="jac",
            ftol=1e-12,
            xtol=1e-12,
            gtol=1e-12,
            max_nfev=2000,
        )
        return res.x

    def _constrained_starts(self, form: _Form) -> FloatArray:
        """The grid on the free coordinates (duplicates of the collapsed coordinates removed)."""
        if isinstance(self.grid, str):
            Z = hoffmann_grid(self.grid)[:, form.free]  # type: ignore[arg-type]
        else:
            p = np.atleast_2d(np.asarray(self.grid, dtype=float))
            if p.shape[1] != 5 or np.any(p[:, 1:3] <= 0):
                raise ValueError("grid array must have rows (E, A, B, alpha, beta) with A, B > 0")
            Z = np.array([form.z_of_params(q) for q in p])
        return np.unique(Z, axis=0)

    def _fit_constrained(
        self,
        form: _Form,
        lN: FloatArray,
        lD: FloatArray,
        lL: FloatArray,
        delta: float,
        method: str,
        options: dict[str, Any],
    ) -> FloatArray:
        """Hoffmann's procedure (grid, quasi-Newton from the best starts, least-squares polish) on the free
        coordinates of ``form``; the objective is the same Σ Huber_δ(log L̂ − log L) / δ."""

        def objective(z: FloatArray) -> tuple[float, FloatArray]:
            log_l, J = form.log_loss(z, lN, lD)
            r = log_l - lL
            return float(_huber(r, delta).sum() / delta), J.T @ (np.clip(r, -delta, delta) / delta)

        Z = self._constrained_starts(form)
        f0 = np.empty(len(Z))
        chunk = max(1, 2_000_000 // max(len(lN), 1))
        for i in range(0, len(Z), chunk):
            r = form.grid_log_loss(Z[i : i + chunk], lN, lD) - lL
            f0[i : i + chunk] = _huber(r, delta).sum(axis=1) / delta
        order = np.argsort(f0)
        if self.n_starts is not None:
            order = order[: self.n_starts]
        results = []
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for k in order:
                res = minimize(objective, Z[k], jac=True, method=method, options=options)
                if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
                    results.append((float(res.fun), res.x))
        if not results:
            raise FitError(f"ChinchillaLaw: {method} failed from every starting point")
        z = self._polish_best(
            results,
            len(order),
            delta,
            lambda t: self._least_squares_form(form, t, lN, lD, lL),
            lambda t: objective(t)[0],
        )
        return form.params(z)

    def _predict_params(self, p: FloatArray, X: FloatArray) -> FloatArray:
        return chinchilla_loss(X[:, 0], X[:, 1], *p)

    # -- derived quantities -------------------------------------------------------------------------
    def fit(self, X: ArrayLike, y: ArrayLike) -> ChinchillaLaw:
        """Fit to X = (N, D) columns and losses y; return self."""
        super().fit(X, y)
        p = self.params_
        self.compute_optimal_exponents_ = compute_optimal_exponents(p["alpha"], p["beta"])
        if len(self.bootstrap_params_):
            al, be = self.bootstrap_params_[:, 3], self.bootstrap_params_[:, 4]
            with np.errstate(divide="ignore", invalid="ignore"):
                lo, hi = percentile_interval(np.column_stack([be / (al + be), al / (al + be)]), 0.95)
            self.derived_ci_ = {"a": (float(lo[0]), float(hi[0])), "b": (float(lo[1]), float(hi[1]))}
        else:
            self.derived_ci_ = {"a": (np.nan, np.nan), "b": (np.nan, np.nan)}
        return self

    def compute_optimal(self, C: ArrayLike) -> tuple[Any, Any]:
        """(N_opt(C), D_opt(C)) under C = 6ND (Hoffmann et al. 2022, appendix D.2)."""
        self._check_fitted()
        p = self.params_
        return compute_optimal_allocation(C, A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])

    def tokens_per_parameter(self, C: ArrayLike) -> Any:
        """D_opt(C) / N_opt(C) (about 20 at Chinchilla's scale with Hoffmann's published fit)."""
        n, d = self.compute_optimal(C)
        return d / n

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        a, b = self.compute_optimal_exponents_
        out["compute_optimal"] = {
            "a": a,
            "b": b,
            "ci": {k: list(v) for k, v in self.derived_ci_.items()},
            "G": self._G(),
        }
        out["objective"] = self.objective_
        out["optimizer"] = self.optimizer_
        out["constraints"] = self.constraints()
        return out

    def _G(self) -> float:
        """G = (αA/(βB))^(1/(α+β)) (Hoffmann et al. appendix D.2); NaN or inf for a degenerate fit."""
        p = {k: np.float64(v) for k, v in self.params_.items()}
        with np.errstate(all="ignore"):
            return float((p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"])))

    def constraints(self) -> dict[str, Any]:
        """The constraint options and what they fix (JSON-ready): fix_E, shared_exponent, E_min, the fixed
        parameters and the count of free ones."""
        return {
            "fix_E": self.fix_E,
            "shared_exponent": bool(self.shared_exponent),
            "E_min": float(self.E_min),
            "fixed": sorted(self.fixed_params_),
            "free_params": self.n_free_params,
        }
