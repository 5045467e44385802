"""The noisy quadratic model (NQM) of Zhang, Li, Nado, Martens, Sachdeva, Dahl, Shallue & Grosse 2019,
"Which Algorithmic Choices Matter at Which Batch Sizes? Insights From a Noisy Quadratic Model"
(NeurIPS 2019, arXiv:1907.04164), sec. 3.

The loss is L(θ) = ½ Σ_i h_i θ_i² in the Hessian's eigenbasis, and a mini-batch of B examples gives the
gradient h_i θ_i + ε_i with independent noise of variance c_i/B (c_i: the per-example gradient variance
along eigenvector i). Every coordinate evolves on its own and the expected loss is ½ Σ_i h_i E[θ_i²].

**SGD** (Zhang et al. 2019, sec. 3.1), θ ← θ − α g:

    E[θ_i²]_{t+1} = (1 − α h_i)² E[θ_i²]_t + α² c_i / B,

whose fixed point is E[θ_i²]_∞ = α c_i / (B h_i (2 − α h_i)).

**Heavy-ball momentum** (sec. 3.2; torch's ``SGD(momentum=β)``: m ← β m + g, θ ← θ − α m): with
a = 1 − α h, the second moments (Θ, X, M) = (E[θ²], E[θm], E[m²]) follow the linear recurrence

    Θ' = a² Θ − 2aαβ X + α²β² M + α² c/B
    X' = a h Θ + β(1 − 2αh) X − αβ² M − α c/B
    M' = h² Θ + 2hβ X + β² M + c/B

(expand θ' = aθ − αβm − αε, m' = hθ + βm + ε; the noise ε is independent of (θ, m) with mean 0). It is
stable when both roots of z² − (1 + β − αh) z + β have modulus below 1.

**Preconditioning** (sec. 3.3, Adam-like): the update α P⁻¹ g with P = H^γ (the paper's exponent p) is
SGD or momentum on the same loss with curvature h^(1−γ) and noise c·h^(−2γ) driving the coordinates,
while the loss still weighs coordinate i by h_i.

**Steps to a target** and the critical batch size: for each batch size the learning rate is optimized
on a grid (then a finer grid around the best), as Zhang et al. do for their NQM experiments. The
critical batch size is Kaplan et al. 2020's B_crit = E_min/S_min from the fit of
(S/S_min − 1)(E/E_min − 1) = 1 (eq. 5.1) to the NQM's own (S, E = B·S) curve; ``B_knee``, the batch size
at which steps are twice the large-batch minimum, is the same number when the curve is exactly that
hyperbola (S = S_min (1 + B_crit/B)).

Steps are found by binary lifting on powers of the (affine) one-step map, so a steps-to-target call costs
O(d log S), not O(d S); between integer steps the loss is interpolated linearly (fractional steps keep
the lr optimization and the hyperbola fit smooth). The search returns the first crossing of the target
when the expected loss decreases monotonically (always for SGD started above its noise floor); an
oscillating momentum curve may cross more than once, and then a later crossing can be returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["NQM", "NQMCriticalBatch", "Optimizer", "nqm_from_measurements"]

_MAX_DOUBLINGS = 62  # steps up to 2^62: "never" for any practical purpose


@dataclass(frozen=True)
class Optimizer:
    """Heavy-ball ``momentum`` β (0: plain SGD) and preconditioner exponent ``precondition`` γ (P = H^γ;
    0: none, 1: exact Newton-like; Zhang et al. use p ∈ [0, 1] and liken Adam to p ≈ ½)."""

    momentum: float = 0.0
    precondition: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.precondition <= 1:
            raise ValueError(f"precondition must be in [0, 1], got {self.precondition}")


@dataclass(frozen=True)
class NQMCriticalBatch:
    """Steps S and examples E = B·S to reach ``target`` at each batch size (lr optimized per batch size),
    and the critical batch size two ways (see the module doc)."""

    target: float
    batch_sizes: np.ndarray
    steps: np.ndarray
    lrs: np.ndarray
    S_inf: float  # steps with the exact gradient (B → ∞), lr optimized
    B_crit: float  # E_min / S_min of the hyperbola fit (Kaplan et al. 2020, eq. 5.1)
    S_min: float
    E_min: float
    B_knee: float  # where S(B) = 2 S_inf (log-log interpolation)
    fit: Any = field(repr=False, default=None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "B_crit": self.B_crit,
            "B_knee": self.B_knee,
            "S_min": self.S_min,
            "E_min": self.E_min,
            "S_inf": self.S_inf,
            "batch_sizes": self.batch_sizes.tolist(),
            "steps": [None if not np.isfinite(s) else float(s) for s in self.steps],
            "lrs": self.lrs.tolist(),
        }


class NQM:
    """A noisy quadratic model: curvatures ``h`` (> 0), per-example gradient-noise variances ``c`` (≥ 0),
    and the initial second moments ``theta0_sq`` = E[θ_i(0)²] (default 1 per coordinate)."""

    def __init__(self, h: ArrayLike, c: ArrayLike, theta0_sq: ArrayLike | None = None):
        self.h = np.atleast_1d(np.asarray(h, dtype=float))
        self.c = np.broadcast_to(np.asarray(c, dtype=float), self.h.shape).copy()
        t0 = np.ones_like(self.h) if theta0_sq is None else np.asarray(theta0_sq, dtype=float)
        self.theta0_sq = np.broadcast_to(t0, self.h.shape).copy()
        if self.h.ndim != 1 or not np.all(np.isfinite(self.h)) or np.any(self.h <= 0):
            raise ValueError("curvatures h must be a finite, positive 1-d array")
        if not np.all(np.isfinite(self.c)) or np.any(self.c < 0):
            raise ValueError("noise variances c must be finite and >= 0")
        if not np.all(np.isfinite(self.theta0_sq)) or np.any(self.theta0_sq < 0):
            raise ValueError("theta0_sq must be finite and >= 0")

    @classmethod
    def zhang2019(cls, d: int = 1000) -> NQM:
        """The paper's default problem: h_i = 1/i, noise c_i = h_i (the gradient covariance equals the
        Hessian, as for a well-specified likelihood near its optimum), unit initial displacement."""
        h = 1.0 / np.arange(1, d + 1)
        return cls(h, h)

    # --- loss ---------------------------------------------------------------------------------------

    @property
    def initial_loss(self) -> float:
        return float(0.5 * np.sum(self.h * self.theta0_sq))

    def noise_scales(self) -> dict[str, float]:
        """McCandlish et al.'s B_noise = tr(HΣ)/(GᵀHG) and B_simple = tr(Σ)/|G|² at the initial point
        (with G_i = h_i θ_i, θ_i² = theta0_sq), in the NQM's batch unit."""
        g2 = self.h**2 * self.theta0_sq
        return {
            "B_noise": float(np.sum(self.h * self.c) / np.sum(self.h * g2)),
            "B_simple": float(np.sum(self.c) / np.sum(g2)),
        }

    def _effective(self, opt: Optimizer) -> tuple[np.ndarray, np.ndarray]:
        g = opt.precondition
        return self.h ** (1 - g), self.c * self.h ** (-2 * g)

    def _maps(self, lr: np.ndarray, batch_size: float, opt: Optimizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One-step affine maps s' = A s + q for every (lr, coordinate): A (L, d, n, n), q (L, d, n), and
        the initial state s0 (L, d, n); n = 1 (SGD: E[θ²]) or 3 (momentum: E[θ²], E[θm], E[m²])."""
        h, c = self._effective(opt)
        a = lr[:, None]
        nz = c[None, :] / batch_size if np.isfinite(batch_size) else np.zeros((1, h.size))
        L, d = lr.size, h.size
        if opt.momentum == 0:
            A = ((1 - a * h) ** 2)[..., None, None]
            q = (a**2 * nz)[..., None]
            s0 = np.broadcast_to(self.theta0_sq, (L, d))[..., None].copy()
            return A, np.broadcast_to(q, (L, d, 1)).copy(), s0
        b = opt.momentum
        one = 1 - a * h
        A = np.empty((L, d, 3, 3))
        A[..., 0, 0], A[..., 0, 1], A[..., 0, 2] = one**2, -2 * one * a * b, (a * b) ** 2
        A[..., 1, 0], A[..., 1, 1], A[..., 1, 2] = one * h, b * (1 - 2 * a * h), -a * b**2
        A[..., 2, 0], A[..., 2, 1], A[..., 2, 2] = h**2, 2 * h * b, b**2
        q = np.stack(np.broadcast_arrays(a**2 * nz, -a * nz, nz + 0 * a), axis=-1)
        s0 = np.zeros((L, d, 3))
        s0[..., 0] = self.theta0_sq
        return A, q, s0

    def _stable(self, lr: np.ndarray, opt: Optimizer) -> np.ndarray:
        """(L, d) mask: the second-moment recurrence contracts (spectral radius < 1)."""
        h, _ = self._effective(opt)
        ah = lr[:, None] * h
        if opt.momentum == 0:
            return np.abs(1 - ah) < 1
        b = opt.momentum
        tr = 1 + b - ah
        disc = tr**2 - 4 * b
        sq = np.sqrt(np.abs(disc))
        rad = np.where(disc < 0, math.sqrt(b), np.maximum(np.abs(tr + sq), np.abs(tr - sq)) / 2)
        return rad < 1 - 1e-12

    def loss_curve(self, lr: float, batch_size: float, steps: int, opt: Optimizer = Optimizer()) -> np.ndarray:
        """Expected loss after 0..``steps`` steps, by iterating the recurrence (reference, O(d·steps))."""
        A, q, s = self._maps(np.array([float(lr)]), batch_size, opt)
        A, q, s = A[0], q[0], s[0]
        out = np.empty(steps + 1)
        for t in range(steps + 1):
            out[t] = 0.5 * np.sum(self.h * s[:, 0])
            s = np.einsum("dij,dj->di", A, s) + q
        return out

    def steady_state_loss(self, lr: float | ArrayLike, batch_size: float, opt: Optimizer = Optimizer()) -> np.ndarray:
        """Expected loss as t → ∞ (inf where the recurrence is unstable). For SGD, coordinate i
        contributes ½ h_i · α c_i / (B h_i (2 − α h_i))."""
        lr = np.atleast_1d(np.asarray(lr, dtype=float))
        A, q, _ = self._maps(lr, batch_size, opt)
        stable = self._stable(lr, opt)
        n = A.shape[-1]
        A = np.where(stable[..., None, None], A, 0.0)  # keep the solve well posed; masked below
        s = np.linalg.solve(np.eye(n) - A, q[..., None])[..., 0]
        loss = 0.5 * np.sum(self.h * s[..., 0], axis=-1)
        return np.where(stable.all(axis=1), loss, np.inf)

    # --- steps to a target --------------------------------------------------------------------------

    def steps_to_target(
        self, target: float, lr: float | ArrayLike, batch_size: float, opt: Optimizer = Optimizer()
    ) -> np.ndarray:
        """Expected-loss steps to reach ``target`` for each lr (fractional: linear between integer steps;
        inf where unstable or where the noise floor is at or above the target)."""
        lr = np.atleast_1d(np.asarray(lr, dtype=float))
        A, q, s0 = self._maps(lr, batch_size, opt)
        w = 0.5 * self.h

        def loss(s: np.ndarray) -> np.ndarray:
            return s[..., 0] @ w

        def apply(P: tuple[np.ndarray, np.ndarray], s: np.ndarray) -> np.ndarray:
            return np.einsum("ldij,ldj->ldi", P[0], s) + P[1]

        out = np.full(lr.size, np.inf)
        l0 = loss(s0)
        reach = self.steady_state_loss(lr, batch_size, opt) < target
        out[l0 <= target] = 0.0
        todo = reach & (l0 > target)
        if not todo.any():
            return out
        idx = np.flatnonzero(todo)
        P = [(A[idx], q[idx])]
        s0 = s0[idx]
        states = [s0, apply(P[0], s0)]  # states[j + 1] is the state at step 2^j
        found = np.full(idx.size, -1)
        j = 0
        while True:
            hit = (found < 0) & (loss(states[j + 1]) <= target)
            found[hit] = j
            if (found >= 0).all() or j + 1 >= _MAX_DOUBLINGS:
                break
            states.append(apply(P[j], states[j + 1]))  # step 2^(j+1) = 2^j more steps from step 2^j
            Aj, qj = P[j]
            P.append((Aj @ Aj, np.einsum("ldij,ldj->ldi", Aj, qj) + qj))  # T^(2^(j+1)) = T^(2^j) ∘ T^(2^j)
            j += 1
        ok = found >= 0
        # The last step with loss above target lies in [2^(j-1), 2^j): descend the binary digits.
        t = np.where(found > 0, 2.0 ** (found - 1), 0.0)
        s = s0.copy()
        for i, f in enumerate(found):
            if f > 0:
                s[i] = states[f][i]  # the state at step 2^(f-1), the last power of two above target
        for bit in range(int(found.max()) - 2, -1, -1):
            use = found - 2 >= bit
            if not use.any():
                continue
            cand = apply(P[bit], s)
            step = use & (loss(cand) > target)
            t[step] += 2.0**bit
            s[step] = cand[step]
        lo, hi = loss(s), loss(apply(P[0], s))
        frac = np.clip((lo - target) / np.maximum(lo - hi, 1e-300), 0.0, 1.0)
        res = np.where(ok, t + frac, np.inf)
        out[idx] = res
        return out

    def _lr_bound(self, opt: Optimizer) -> float:
        h, _ = self._effective(opt)
        return 2 * (1 + opt.momentum) / float(h.max())  # first-moment stability limit of the stiffest mode

    def optimal_steps(
        self, target: float, batch_size: float, opt: Optimizer = Optimizer(), *, n_grid: int = 48, span: float = 1e-5
    ) -> tuple[float, float]:
        """(steps, lr) minimizing steps to ``target`` at ``batch_size`` over a log grid of learning rates
        up to the stability limit, refined on a second grid around the best."""
        top = self._lr_bound(opt)
        grid = top * np.logspace(math.log10(span), 0, n_grid, endpoint=False)
        st = self.steps_to_target(target, grid, batch_size, opt)
        if not np.isfinite(st).any():
            return math.inf, math.nan
        i = int(np.argmin(st))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, n_grid - 1)] if i + 1 < n_grid else top
        fine = np.geomspace(lo, hi, 24, endpoint=False)
        sf = self.steps_to_target(target, fine, batch_size, opt)
        j = int(np.argmin(sf))
        return (float(sf[j]), float(fine[j])) if sf[j] <= st[i] else (float(st[i]), float(grid[i]))

    def steps_vs_batch(
        self, target: float, batch_sizes: ArrayLike, opt: Optimizer = Optimizer()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Optimal steps and learning rates at each batch size."""
        res = [self.optimal_steps(target, float(b), opt) for b in np.atleast_1d(batch_sizes)]
        return np.array([r[0] for r in res]), np.array([r[1] for r in res])

    def critical_batch(
        self, target: float, opt: Optimizer = Optimizer(), *, batch_sizes: ArrayLike | None = None, n_batch: int = 13
    ) -> NQMCriticalBatch:
        """The NQM's critical batch size for ``target`` (see the module doc). Without ``batch_sizes``,
        a log grid is placed where the steps fall from ~30× to ~1.03× the exact-gradient minimum, so both
        regimes of the hyperbola are sampled."""
        from .critical_batch import fit_steps_examples

        if not target > 0:
            raise ValueError(f"target must be a positive (excess) loss, got {target}")
        s_inf, _ = self.optimal_steps(target, math.inf, opt)
        if not np.isfinite(s_inf):
            raise ValueError(f"target {target:g} is not reachable even with exact gradients")
        if batch_sizes is None:
            b0 = self.noise_scales()["B_noise"]
            lo = hi = b0
            for _ in range(40):  # expand until the steps are far into the 1/B regime ...
                s = self.optimal_steps(target, lo, opt)[0]
                if np.isfinite(s) and s > 30 * s_inf:
                    break
                lo /= 4
            for _ in range(40):  # ... and flat at the top
                if self.optimal_steps(target, hi, opt)[0] < 1.03 * s_inf:
                    break
                hi *= 4
            batch_sizes = np.geomspace(lo, hi, n_batch)
        B = np.asarray(batch_sizes, dtype=float)
        S, lrs = self.steps_vs_batch(target, B, opt)
        ok = np.isfinite(S) & (S > 0)
        fit = fit_steps_examples(S[ok], B[ok] * S[ok], bootstrap=0)
        return NQMCriticalBatch(
            target=target,
            batch_sizes=B,
            steps=S,
            lrs=lrs,
            S_inf=s_inf,
            B_crit=fit.B_crit,
            S_min=fit.S_min,
            E_min=fit.E_min,
            B_knee=_knee(B[ok], S[ok], s_inf),
            fit=fit,
        )


def _knee(B: np.ndarray, S: np.ndarray, s_inf: float) -> float:
    """Batch size where S(B) = 2 S_inf, interpolating log S against log B (NaN if not bracketed)."""
    r = S / s_inf - 2.0
    for i in range(len(B) - 1):
        if r[i] >= 0 > r[i + 1] or r[i] > 0 >= r[i + 1]:
            x0, x1 = math.log(B[i]), math.log(B[i + 1])
            y0, y1 = math.log(S[i]), math.log(S[i + 1])
            y = math.log(2 * s_inf)
            return math.exp(x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return math.nan


def nqm_from_measurements(
    eigenvalues: ArrayLike,
    noise_in_eigenbasis: ArrayLike,
    *,
    grad_in_eigenbasis: ArrayLike | None = None,
    theta0_sq: ArrayLike | None = None,
    target_fraction: float = 0.5,
    optimizers: dict[str, Optimizer] | None = None,
    batch_sizes: ArrayLike | None = None,
) -> dict[str, Any]:
    """An NQM built from a measured Hessian spectrum and the per-example gradient variance along each
    eigenvector (uᵢᵀ Σ uᵢ), and its predicted critical batch size per optimizer.

    The displacement from the optimum along uᵢ is θᵢ = (uᵢᵀ G)/hᵢ when the gradient's projections
    ``grad_in_eigenbasis`` are given (the quadratic model's own answer), else ``theta0_sq`` (default 1).
    Non-positive eigenvalues are dropped (the NQM has no descent direction there) and counted in the
    result. The target is ``target_fraction`` of the model's initial excess loss. Batch sizes come out in
    the unit the noise was measured in (per sequence for scalescope's covariance probe).
    """
    h = np.asarray(eigenvalues, dtype=float).ravel()
    c = np.asarray(noise_in_eigenbasis, dtype=float).ravel()
    if h.shape != c.shape:
        raise ValueError(f"{h.size} eigenvalues but {c.size} noise variances")
    if not 0 < target_fraction < 1:
        raise ValueError(f"target_fraction must be in (0, 1), got {target_fraction}")
    keep = h > 0
    if not keep.any():
        raise ValueError("no positive eigenvalues: the NQM needs positive curvature")
    if grad_in_eigenbasis is not None:
        g = np.asarray(grad_in_eigenbasis, dtype=float).ravel()
        if g.shape != h.shape:
            raise ValueError(f"{h.size} eigenvalues but {g.size} gradient components")
        t0 = (g[keep] / h[keep]) ** 2
    elif theta0_sq is not None:
        t0 = np.broadcast_to(np.asarray(theta0_sq, dtype=float), h.shape)[keep]
    else:
        t0 = None
    model = NQM(h[keep], np.clip(c[keep], 0, None), t0)
    opts = optimizers or {
        "sgd": Optimizer(),
        "momentum_0.9": Optimizer(momentum=0.9),
        "precond_0.5": Optimizer(precondition=0.5),
    }
    target = target_fraction * model.initial_loss
    out: dict[str, Any] = {
        "target": target,
        "initial_loss": model.initial_loss,
        "n_dropped": int((~keep).sum()),
        **model.noise_scales(),
        "optimizers": {},
    }
    for name, opt in opts.items():
        out["optimizers"][name] = model.critical_batch(target, opt, batch_sizes=batch_sizes).as_dict()
    out["B_crit"] = out["optimizers"][next(iter(opts))]["B_crit"]
    out["nqm"] = model
    return out
