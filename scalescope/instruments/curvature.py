"""Curvature of the loss on a probe batch fixed per run: top Hessian eigenvalues, trace, spectral density,
the Gauss-Newton matrix, and AdamW's preconditioned sharpness beside the edge-of-stability thresholds.

Estimators (all matrix-free, on :mod:`scalescope.instruments.hvp`'s Hessian-vector products):

- **top-k eigenvalues**: ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``,
  Lehoucq et al. 1998), largest algebraic, seeded start vector;
- **trace**: Hutch++ (Meyer, Musco, Musco & Woodruff 2021, alg. 1):
  tr(A) ≈ tr(QᵀAQ) + (3/m) tr(Gᵀ(I−QQᵀ)A(I−QQᵀ)G) with Q = orth(AS). Written here rather than taken from
  curvlinops' ``hutchpp_trace`` because that returns no error: ours also returns the standard error of
  the Hutchinson part (the sample std of its m/3 terms over √(m/3)), the only random part once Q is fixed;
- **spectral density**: stochastic Lanczos quadrature (Golub & Meurant 2010; Ubaru, Chen & Saad 2017;
  Ghorbani, Krishnan & Xiao 2019, sec. 3): m Lanczos steps from a random unit vector v, with full
  reorthogonalization, give the tridiagonal T = YΘYᵀ; nodes θⱼ (Ritz values) and weights
  τⱼ = (e₁ᵀyⱼ)² satisfy Σⱼτⱼ = 1 and Σⱼτⱼθⱼ^p = vᵀA^p v for p < 2m, so the density integrates to one and
  its mean is a Hutchinson estimate of tr(A)/n. Nodes and weights are stored, so the density can be
  re-smoothed offline; the report smooths them with a Gaussian (Ghorbani et al. eq. 9);
- **GGN** (option ``ggn``): the same top-k and trace for G = Jᵀ∇²ℓJ (Schraudolph 2002), PSD;
- **preconditioned sharpness** for Adam/AdamW: λ₁(P⁻¹H) = λ₁(P^(−1/2)HP^(−1/2)) with P = diag(√v̂ + ε)
  from the optimizer's current state (Cohen et al. 2022, "Adaptive gradient methods at the edge of
  stability", sec. 3), beside the thresholds of :func:`eos_thresholds`.

The probe batch is ``ctx.probe_batch(index)``: the same tokens at every evaluation, so values compare over
training.

Why not curvlinops-for-pytorch, which has SLQ and Hutch++: it depends on backpack-for-pytorch, which
depends on torchvision, and installing it replaces the pinned CPU ``torch==2.13.0`` with a newer CUDA
build (several GB; checked with ``pip install --dry-run curvlinops-for-pytorch`` on 2026-11-24). The
operators here still follow its (and SciPy's) linear-operator protocol, so its routines accept them
where it is installed. Lanczos with full reorthogonalization is a dozen lines.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.base import Batch
from ..errors import ConfigError
from ..offline import load_run
from .hvp import (
    GGNOperator,
    HessianOperator,
    Objective,
    Operator,
    PreconditionedOperator,
    adam_preconditioner,
    math_attention,
    top_eigenpairs,
)
from .registry import Option, ProbeContext, register


def eos_thresholds(lr: float, *, beta1: float = 0.9, momentum: float = 0.0) -> dict[str, float]:
    """Edge-of-stability thresholds for a learning rate η (Cohen et al. 2021, 2022).

    On a quadratic with curvature λ, gradient descent is stable iff λ < 2/η; heavy-ball momentum μ in
    PyTorch's form (v ← μv + g, θ ← θ − ηv) iff λ < (2 + 2μ)/η (Cohen et al. 2021, app. ... "momentum");
    Adam with a frozen preconditioner P and EMA momentum m ← β₁m + (1−β₁)g iff the preconditioned
    curvature λ(P⁻¹H) < (2 + 2β₁)/(η(1 − β₁)) (Cohen et al. 2022, eq. 1): 38/η for β₁ = 0.9.
    Empty for η ≤ 0 (e.g. step 0 of a warmup), where no threshold exists.
    """
    if not lr > 0:
        return {}
    return {
        "threshold_gd": 2.0 / lr,
        "threshold_momentum": (2.0 + 2.0 * momentum) / lr,
        "threshold_adam": (2.0 + 2.0 * beta1) / (lr * (1.0 - beta1)),
    }


def _rademacher(n: int, k: int, gen: torch.Generator, like: Operator) -> torch.Tensor:
    r = torch.randint(0, 2, (n, k), generator=gen, dtype=torch.int8).to(like.dtype).mul_(2).sub_(1)
    return r.to(like.device)


def hutchpp(op: Operator, num_matvecs: int = 30, *, seed: int = 0) -> tuple[float, float]:
    """Hutch++ trace estimate and its standard error (Meyer et al. 2021, alg. 1), ``num_matvecs`` products.

    The sketch S and the Hutchinson probes G are Rademacher with m/3 columns each. Conditional on Q the
    estimate is unbiased; its error is that of the mean of the m/3 terms gᵢᵀ(I−QQᵀ)A(I−QQᵀ)gᵢ, whose
    sample standard error is returned (a 1-sigma error; ~95% of estimates lie within two of it).
    """
    n = op.shape[0]
    if num_matvecs % 3 or num_matvecs < 6:
        raise ValueError(f"num_matvecs must be a multiple of 3 and at least 6, got {num_matvecs}")
    k = num_matvecs // 3
    if k >= n:
        raise ValueError(f"num_matvecs/3 = {k} must be below the dimension {n}")
    gen = torch.Generator().manual_seed(seed)
    S, G = _rademacher(n, k, gen, op), _rademacher(n, k, gen, op)
    # Orthonormalize in float64: the sketch of a float32 HVP is well conditioned enough, QR is not.
    Q, _ = torch.linalg.qr(op.matmat(S).double())
    Qd = Q.to(op.dtype)
    exact_part = float((Q * op.matmat(Qd).double()).sum())
    Gp = (G.double() - Q @ (Q.T @ G.double())).to(op.dtype)
    AG = op.matmat(Gp).double()
    AG = AG - Q @ (Q.T @ AG)
    terms = (Gp.double() * AG).sum(0)
    return exact_part + float(terms.mean()), float(terms.std(unbiased=True) / math.sqrt(k))


def lanczos(op: Operator, steps: int, v0: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` Lanczos iterations from ``v0`` with full reorthogonalization (in float64): the nodes
    (eigenvalues of the tridiagonal T) and the quadrature weights (squared first components of its
    eigenvectors). Stops early, with fewer nodes, when the Krylov space is exhausted (β ≈ 0)."""
    n = op.shape[0]
    V = torch.zeros(n, steps, dtype=torch.float64, device=v0.device)
    alpha, beta = [], []
    v = v0.double() / v0.double().norm()
    for j in range(steps):
        V[:, j] = v
        w = op.matvec(v.to(op.dtype)).double()
        alpha.append(float(v @ w))
        # Twice is enough (Giraud et al. 2005, "twice is enough"): keeps V orthonormal to rounding.
        for _ in range(2):
            w = w - V[:, : j + 1] @ (V[:, : j + 1].T @ w)
        b = float(w.norm())
        if j == steps - 1 or b <= 1e-10 * max(1.0, abs(alpha[-1])):
            break
        beta.append(b)
        v = w / b
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    theta, Y = np.linalg.eigh(T)
    return theta, Y[0, :] ** 2


def slq(op: Operator, steps: int = 30, repeats: int = 1, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature nodes and weights, each (repeats, steps): one Lanczos run per repeat
    from a Rademacher start vector drawn from a generator seeded by ``seed`` (so the probe never touches
    the training RNG and the same probe gives the same density). Runs that stop early are padded with
    zero-weight nodes."""
    n = op.shape[0]
    gen = torch.Generator().manual_seed(seed)
    nodes, weights = np.zeros((repeats, steps)), np.zeros((repeats, steps))
    for r in range(repeats):
        theta, tau = lanczos(op, steps, _rademacher(n, 1, gen, op)[:, 0])
        nodes[r, : len(theta)], weights[r, : len(theta)] = theta, tau
        nodes[r, len(theta) :] = theta[-1]
    return nodes, weights


def slq_density(
    nodes: np.ndarray,
    weights: np.ndarray,
    num_points: int = 256,
    *,
    boundaries: tuple[float, float] | None = None,
    width: float = 0.01,
    margin: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Density p(λ) on a grid: each node a Gaussian of standard deviation ``width`` × (range), weighted
    by its quadrature weight, averaged over runs (Ghorbani et al. 2019 eq. 9, who use σ² = 1e-5 on a
    spectrum scaled to [−1, 1]; we widen it to a percent of the range so that 30 nodes on a 256-point
    grid give a smooth curve). The grid spans ``boundaries`` (default: the extreme nodes) widened by
    ``margin`` of the range on each side; ∫p dλ = 1 up to the mass outside the grid."""
    lo, hi = boundaries if boundaries is not None else (float(nodes.min()), float(nodes.max()))
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    grid = np.linspace(lo - margin * span, hi + margin * span, num_points)
    sigma = width * span
    z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
    p = (np.exp(-0.5 * z**2) * weights.reshape(-1)[None, :]).sum(1) / (sigma * np.sqrt(2 * np.pi))
    return grid, p / len(nodes)


def _eig_block(op: Operator, prefix: str, k: int, tol: float, seed: int, out: dict[str, Any]) -> np.ndarray:
    vals, _ = top_eigenpairs(op, k, tol=tol, seed=seed, vectors=False)
    for i, v in enumerate(vals):
        out[f"{prefix}eig_{i + 1}"] = float(v)
    out[f"{prefix}eigenvalues"] = vals.astype(np.float64)
    return vals


def measure(
    model: torch.nn.Module,
    batch: Batch,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.0,
    train_cfg: Any = None,
    top_k: int = 3,
    trace_matvecs: int = 30,
    density: bool = True,
    slq_steps: int = 30,
    slq_repeats: int = 1,
    density_points: int = 256,
    ggn: bool = False,
    preconditioned: bool = True,
    tol: float = 1e-4,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """All curvature measurements on one batch. Floats are metrics; arrays (eigenvalues, the density as
    (2, points) [grid; p], SLQ nodes and weights) are artifacts. Raises :class:`ConfigError` for a
    ``top_k`` (or product count) the model is too small for."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    with math_attention(model):
        obj = Objective(model, batch.inputs, batch.targets, batch.loss_mask, dtype=dtype)
        n = obj.n
        if not 1 <= top_k < n:
            raise ConfigError(
                f"top_k must be between 1 and {n - 1} (the parameter count is {n}), got {top_k}", field="top_k"
            )
        if trace_matvecs // 3 >= n or slq_steps > n:
            raise ConfigError(
                f"trace_matvecs/3 and slq_steps must be below the parameter count {n}", field="trace_matvecs"
            )
        H = HessianOperator(obj)
        out["loss"] = float(H.loss.detach())
        out["grad_norm"] = float(H.gradient.norm())
        vals = _eig_block(H, "", top_k, tol, seed, out)
        out["lambda_max"] = float(vals[0])
        out["trace"], out["trace_stderr"] = hutchpp(H, trace_matvecs, seed=seed)
        if density:
            nodes, weights = slq(H, slq_steps, slq_repeats, seed=seed)
            lo, hi = float(nodes.min()), max(float(nodes.max()), float(vals[0]))
            grid, p = slq_density(nodes, weights, density_points, boundaries=(lo, hi))
            out["density"] = np.stack([grid, p])
            out["slq_nodes"], out["slq_weights"] = nodes, weights
        products = H.n_products
        if preconditioned and optimizer is not None:
            P = adam_preconditioner(optimizer, obj.model_params)
            if P is not None:
                pre = PreconditionedOperator(H, P.to(obj.device))
                pvals, _ = top_eigenpairs(pre, 1, tol=tol, seed=seed + 1, vectors=False)
                out["precond_sharpness"] = float(pvals[0])
                products += pre.n_products
        if ggn:
            G = GGNOperator(obj)
            _eig_block(G, "ggn_", top_k, tol, seed, out)
            out["ggn_trace"], out["ggn_trace_stderr"] = hutchpp(G, trace_matvecs, seed=seed)
            products += G.n_products
    # Thresholds for the step size the next update uses, and the ratio for the run's own optimizer.
    kind = getattr(train_cfg, "optimizer", None)
    thr = eos_thresholds(
        lr,
        beta1=getattr(train_cfg, "beta1", 0.9),
        momentum=getattr(train_cfg, "momentum", 0.0) if kind == "sgd" else 0.0,
    )
    out.update(thr)
    if thr and kind == "sgd":
        out["eos_ratio"] = out["lambda_max"] / thr["threshold_momentum"]
    elif thr and kind == "adamw" and "precond_sharpness" in out:
        out["eos_ratio"] = out["precond_sharpness"] / thr["threshold_adam"]
    out["hvps"] = float(products)
    out["seconds"] = time.perf_counter() - t0
    return out


def _check_options(
    top_k: int, trace_matvecs: int, slq_steps: int, slq_repeats: int, density_points: int, tol: float
) -> None:
    def bad(field: str, msg: str) -> ConfigError:
        return ConfigError(msg, field=f"instruments.curvature.{field}")

    if not isinstance(top_k, int) or top_k < 1:
        raise bad("top_k", f"expected a positive integer, got {top_k!r}")
    if not isinstance(trace_matvecs, int) or trace_matvecs < 6 or trace_matvecs % 3:
        raise bad("trace_matvecs", f"expected a multiple of 3 of at least 6, got {trace_matvecs!r}")
    if not isinstance(slq_steps, int) or slq_steps < 2:
        raise bad("slq_steps", f"expected an integer of at least 2, got {slq_steps!r}")
    if not isinstance(slq_repeats, int) or slq_repeats < 1:
        raise bad("slq_repeats", f"expected a positive integer, got {slq_repeats!r}")
    if not isinstance(density_points, int) or density_points < 8:
        raise bad("density_points", f"expected an integer of at least 8, got {density_points!r}")
    if not (isinstance(tol, (int, float)) and 0 <= tol < 1):
        raise bad("tol", f"expected a number in [0, 1), got {tol!r}")


@register(
    "curvature",
    options={
        "top_k": Option(int, ge=1),
        "trace_matvecs": Option(int, ge=6),  # and a multiple of 3: the factory checks that
        "density": Option(bool),
        "slq_steps": Option(int, ge=2),
        "slq_repeats": Option(int, ge=1),
        "density_points": Option(int, ge=8),
        "ggn": Option(bool),
        "preconditioned": Option(bool),
        "tol": Option(float, ge=0, lt=1),
        "seed": Option(int),
        "index": Option(int, ge=0),
        "float64": Option(bool),
    },
)
def make_curvature(
    top_k: int = 3,
    trace_matvecs: int = 30,
    density: bool = True,
    slq_steps: int = 30,
    slq_repeats: int = 1,
    density_points: int = 256,
    ggn: bool = False,
    preconditioned: bool = True,
    tol: float = 1e-4,
    seed: int = 0,
    index: int = 0,
    float64: bool = False,
):
    """The curvature instrument; options as in :func:`measure`. ``index`` picks the probe batch (fixed per
    run), the common ``batch_size`` its size; ``float64`` runs on a double copy of the model (slower,
    for checks). Cost per probe ≈ (eigsh's ~3k–10k + ``trace_matvecs`` + ``slq_steps`` × ``slq_repeats``)
    HVPs, each ~1.5–2.5 gradients (bench/bench_hvp.py); the count is logged as ``curvature/hvps``."""
    _check_options(top_k, trace_matvecs, slq_steps, slq_repeats, density_points, tol)

    def probe(ctx: ProbeContext) -> dict:
        return measure(
            ctx.model,
            ctx.probe_batch(index),
            optimizer=ctx.optimizer,
            lr=ctx.lr,
            train_cfg=ctx.train_cfg,
            top_k=top_k,
            trace_matvecs=trace_matvecs,
            density=density,
            slq_steps=slq_steps,
            slq_repeats=slq_repeats,
            density_points=density_points,
            ggn=ggn,
            preconditioned=preconditioned,
            tol=tol,
            seed=seed,
            dtype=torch.float64 if float64 else None,
        )

    return probe


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe curvature``).


def probe_run(
    run_dir: str | Path,
    step: int | None = None,
    *,
    top_k: int = 3,
    batch_size: int | None = None,
    trace_matvecs: int = 30,
    density: bool = False,
    ggn: bool = False,
    tol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`measure` on probe batch 0 of a stored run at ``step`` (default: the latest checkpoint), with the
    run's optimizer state where it is stored (the preconditioned sharpness needs it). The density comes as
    ``{"grid": ..., "p": ...}``. Bad arguments raise :class:`ConfigError` naming the argument (``field="top_k"``)."""
    if top_k < 1:
        raise ConfigError(f"expected a positive integer, got {top_k}", field="top_k")
    if trace_matvecs < 6 or trace_matvecs % 3:
        raise ConfigError(f"expected a multiple of 3 of at least 6, got {trace_matvecs}", field="trace_matvecs")
    run = load_run(run_dir, step)
    ctx = ProbeContext.of_run(run, batch_size)
    with torch.random.fork_rng(devices=[]):
        try:
            res = measure(
                run.model,
                ctx.probe_batch(0),
                optimizer=run.optimizer if run.has_optimizer_state else None,
                lr=ctx.lr,
                train_cfg=run.cfg.train,
                top_k=top_k,
                trace_matvecs=trace_matvecs,
                density=density,
                ggn=ggn,
                tol=tol,
                seed=seed,
            )
        except ConfigError as e:
            if e.field == "top_k":  # too large for this model: say which run
                raise ConfigError(e.message, field="top_k", file=run_dir) from None
            raise
    res = {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "params": int(sum(p.numel() for p in run.model.parameters())),
        **res,
    }
    # The arrays last, after the scalars (as the command's JSON output has always listed them).
    res["eigenvalues"] = res.pop("eigenvalues")
    if "density" in res:
        grid, p = res.pop("density")
        res["density"] = {"grid": grid, "p": p}
    if "ggn_eigenvalues" in res:
        res["ggn_eigenvalues"] = res.pop("ggn_eigenvalues")
    return res
