"""The gradient covariance on a probe batch: its spectrum, and how it sits relative to the Hessian.

Definitions. On a probe batch of B examples (one sequence = one example, as in
:func:`scalescope.instruments.hvp.example_losses`) let g_i ∈ ℝⁿ be the gradient of example i's loss with
respect to the n flattened parameters, ḡ = (1/B) Σ_i g_i their mean, and

    Σ = 1/(B−1) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ = CᵀC,    C = (G − 1ḡᵀ)/√(B−1)  (B × n),

the unbiased sample covariance of the per-example gradients (the convention of ``np.cov``, ddof = 1; the
gradient noise scale of :mod:`.noise_scale` uses the same Σ). It has rank at most B − 1. H is the Hessian
of the batch loss (the training loss), U_H (n × k) its top-k eigenvectors, U_Σ those of Σ.

- **Spectrum of Σ**: its eigenvalues (all of them, at most min(n, B−1) nonzero), ``sigma_trace`` = tr Σ and
  the ``effective_rank`` (Σλ)²/Σλ², the participation ratio of the spectrum (1 for a rank-one Σ, r for r
  equal eigenvalues; e.g. Gao et al. 2017, "A theory of multineuronal dimensionality").
  When n > B it comes from the B × B Gram matrix CCᵀ, never the n × n Σ: CCᵀv = λv gives CᵀC(Cᵀv) =
  λ(Cᵀv), so the nonzero eigenvalues agree and U_Σ = Cᵀv/√λ (the "snapshot method", Sirovich 1987).
- **Top Hessian eigenpairs**: ARPACK's Lanczos (:func:`.hvp.top_eigenpairs`) on double-backward
  Hessian-vector products.
- **Co-diagonalizability** (is Σ ≈ f(H), as the noisy quadratic model of Zhang et al. 2019 assumes, or
  Σ ≈ H near a minimum of a well-specified likelihood?):
  ``overlap`` = ‖U_Hᵀ U_Σ‖²_F / k, the mean squared cosine of the principal angles between the two top-k
  subspaces: 1 when they coincide, ≈ k/n for independent random ones;
  ``commutator`` = ‖[H_k, Σ_k]‖_F / (√2 ‖H_k°‖_F ‖Σ_k°‖_F) with H_k = U_Hᵀ H U_H and Σ_k = U_Hᵀ Σ U_H the
  restrictions to the top-k Hessian eigenspace and A° = A − (tr A / k) I the traceless part: 0 exactly
  when the restrictions commute (share eigenvectors), at most 1 by the Böttcher–Wenzel inequality
  ‖XY − YX‖_F ≤ √2 ‖X‖_F ‖Y‖_F (Böttcher & Wenzel 2008) applied to [H_k, Σ_k] = [H_k°, Σ_k°]. For k = 2
  it is |sin 2φ|, φ the angle between the two eigenbases. (Why not ‖[H_k, Σ_k]‖_F / (2‖H_k‖_F‖Σ_k‖_F):
  the top Hessian eigenvalues are often of one size, H_k ≈ cI, and that ratio then reads ≈ 0 whatever
  the eigenbases; removing the trace makes it invariant to shifts as well as scales of either matrix.)
  Defined as 0 when either restriction is a multiple of I (every basis diagonalizes it).
  Every term is invariant under a rotation of the basis inside the subspace, so the value does not
  depend on which eigenvectors ARPACK returns for a degenerate eigenvalue.
- **Noisy quadratic model** (Zhang et al. 2019, :mod:`scalescope.laws.nqm`): the top-k Hessian eigenvalues,
  the noise uᵢᵀΣuᵢ and the gradient uᵢᵀḡ along each eigenvector define a k-dimensional NQM whose
  predicted critical batch size (``nqm_B_crit``, SGD, per sequence) goes beside the measured one in
  ``scalescope critical-batch``.
- **Gradient in the top subspace**: ``grad_fraction`` = ‖U_Hᵀ ḡ‖² / ‖ḡ‖², the fraction of the (mean)
  gradient's squared norm inside the top-k Hessian eigenspace (Gur-Ari, Roberts & Dyer 2018, "Gradient
  descent happens in a tiny subspace", arXiv:1812.04754, who take k = the number of classes).

ḡ is the mean of the per-example gradients; it equals the gradient of the batch loss when every example
counts the same number of tokens (no loss mask, or equal masks).

Per-example gradients come from ``torch.func.vmap(grad)`` (:meth:`.hvp.Objective.per_example_gradients`):
one batched backward pass, B × n numbers held at once (plus a float64 copy of C). Cost per probe: that,
the eigensolver's Hessian-vector products (typically tens to a few hundred, each ~1.5–2.5 gradients,
bench/bench_hvp.py) and k more for H_k.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..data.base import Batch
from ..errors import ConfigError
from ..offline import load_run
from .hvp import HessianOperator, LossKind, Objective, math_attention, top_eigenpairs
from .registry import Option, ProbeContext, register

__all__ = [
    "covariance_factor",
    "make_covariance",
    "measure",
    "normalized_commutator",
    "probe_run",
    "sigma_eigenpairs",
]

Route = Literal["auto", "gram", "direct"]


def covariance_factor(grads: torch.Tensor) -> torch.Tensor:
    """C = (G − 1ḡᵀ)/√(B−1) in float64, so that Σ = CᵀC (``grads``: (B, n) per-example gradients)."""
    B = grads.shape[0]
    if B < 2:
        raise ValueError(f"a covariance needs at least 2 examples, got {B}")
    G = grads.to(torch.float64)
    return (G - G.mean(0, keepdim=True)) / math.sqrt(B - 1)


def sigma_eigenpairs(C: torch.Tensor, k: int, *, route: Route = "auto") -> tuple[np.ndarray, torch.Tensor]:
    """The spectrum of Σ = CᵀC and its top-k eigenvectors.

    Returns the min(n, B−1) leading eigenvalues (descending, rounding negatives clipped to 0: Σ is PSD
    and the rest are exactly 0) and U_Σ (n, k) float64. ``route``: ``"gram"`` diagonalizes the B × B CCᵀ,
    ``"direct"`` the n × n CᵀC, ``"auto"`` the smaller. A direction with a (numerically) zero eigenvalue
    has no defined eigenvector on the Gram route; its column is left zero there, so that the top-k
    subspace of a Σ of rank r < k holds only its r-dimensional range.
    """
    B, n = C.shape
    if not 1 <= k <= min(n, B - 1):
        raise ValueError(f"k must be between 1 and min(n, B − 1) = {min(n, B - 1)}, got {k}")
    gram = route == "gram" or (route == "auto" and n > B)
    if gram:
        lam, V = torch.linalg.eigh(C @ C.T)  # ascending
    else:
        lam, V = torch.linalg.eigh(C.T @ C)
    lam, V = lam.flip(0), V.flip(1)
    # Below this, an eigenvalue is rounding noise (numpy.linalg.matrix_rank's default threshold).
    cutoff = float(lam[0].clamp_min(0)) * max(B, n) * np.finfo(np.float64).eps
    if gram:
        top = lam[:k]
        live = top > cutoff
        U = (C.T @ V[:, :k]) / top.clamp_min(cutoff).sqrt()
        U = U * live.to(U.dtype)
    else:
        U = V[:, :k]
    spectrum = lam[: min(n, B - 1)].clamp_min(0).cpu().numpy()
    return spectrum, U


def normalized_commutator(A: torch.Tensor, B: torch.Tensor) -> float:
    """‖AB − BA‖_F / (√2 ‖A°‖_F ‖B°‖_F) ∈ [0, 1] for square A, B, with X° = X − (tr X / k) I (module doc);
    0 when either is a multiple of I."""
    k = A.shape[0]
    eye = torch.eye(k, dtype=A.dtype, device=A.device)
    A0, B0 = A - A.trace() / k * eye, B - B.trace() / k * eye
    den = math.sqrt(2) * float(torch.linalg.matrix_norm(A0)) * float(torch.linalg.matrix_norm(B0))
    num = float(torch.linalg.matrix_norm(A0 @ B0 - B0 @ A0))
    return min(num / den, 1.0) if den > 0 else 0.0


def _effective_rank(lam: np.ndarray) -> float:
    s, s2 = float(lam.sum()), float((lam**2).sum())
    return s * s / s2 if s2 > 0 else math.nan


def measure(
    model: torch.nn.Module,
    batch: Batch,
    *,
    top_k: int = 5,
    tol: float = 1e-4,
    seed: int = 0,
    loss: LossKind = "ce",
    dtype: torch.dtype | None = None,
    route: Route = "auto",
    nqm: bool = True,
) -> dict[str, Any]:
    """All gradient-covariance measurements on one batch (see the module doc). Floats are metrics; the
    arrays ``sigma_eigenvalues`` (the full Σ spectrum) and ``hess_eigenvalues`` (top k) are artifacts.
    Raises :class:`ConfigError` (field ``top_k``) when ``top_k`` is not below the parameter count or
    above B − 1, the largest possible rank of Σ."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    B = int(batch.inputs.shape[0])
    with math_attention(model):
        obj = Objective(model, batch.inputs, batch.targets, batch.loss_mask, loss=loss, dtype=dtype)
        n = obj.n
        if not 1 <= top_k < n:
            raise ConfigError(
                f"top_k must be between 1 and {n - 1} (the parameter count is {n}), got {top_k}", field="top_k"
            )
        if top_k > B - 1:
            raise ConfigError(
                f"top_k must be at most {B - 1}: the covariance of B = {B} per-example gradients has "
                f"rank at most B − 1 (raise the probe batch size), got {top_k}",
                field="top_k",
            )
        # Σ first: its B × n gradients are freed before the Hessian's retained graph is built.
        G = obj.per_example_gradients()  # (B, n)
        gbar = G.to(torch.float64).mean(0)
        C = covariance_factor(G)
        del G
        sig, U_sig = sigma_eigenpairs(C, top_k, route=route)
        H = HessianOperator(obj)
        hess, vecs = top_eigenpairs(H, top_k, tol=tol, seed=seed)
        U = torch.as_tensor(np.ascontiguousarray(vecs), dtype=torch.float64, device=C.device)  # (n, k)
        HU = H.matmat(U.to(H.dtype)).to(torch.float64)
        out["loss"] = float(H.loss.detach())
    for i, v in enumerate(sig[:top_k]):
        out[f"sigma_eig_{i + 1}"] = float(v)
    out["sigma_trace"] = float(sig.sum())
    out["effective_rank"] = _effective_rank(sig)
    for i, v in enumerate(hess):
        out[f"hess_eig_{i + 1}"] = float(v)
    out["overlap"] = float((U.T @ U_sig).pow(2).sum()) / top_k
    Hk = U.T @ HU
    Hk = (Hk + Hk.T) / 2  # symmetric up to rounding; U_Hᵀ H U_H ≈ diag(hess) up to ARPACK's residual
    CU = C @ U  # (B, k)
    Sk = CU.T @ CU  # U_Hᵀ Σ U_H
    out["commutator"] = normalized_commutator(Hk, Sk)
    g2 = float(gbar @ gbar)
    out["grad_fraction"] = float((U.T @ gbar).pow(2).sum()) / g2 if g2 > 0 else math.nan
    out["sigma_eigenvalues"] = sig.astype(np.float64)
    out["hess_eigenvalues"] = np.asarray(hess, dtype=np.float64)
    # The noise and the gradient along each top Hessian eigenvector (uᵢᵀΣuᵢ, uᵢᵀḡ): what the noisy
    # quadratic model of Zhang et al. 2019 needs, stored so it can be rebuilt offline.
    noise = torch.diagonal(Sk).cpu().numpy().astype(np.float64)
    grad = (U.T @ gbar).cpu().numpy().astype(np.float64)
    out["hess_noise"], out["hess_grad"] = noise, grad
    if nqm:
        out.update(_nqm_prediction(np.asarray(hess, dtype=np.float64), noise, grad))
    out["seconds"] = time.perf_counter() - t0
    return out


def _nqm_prediction(h: np.ndarray, c: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """The NQM's critical batch (SGD, half the model's excess loss; per sequence) and its noise scales,
    built on the top-k Hessian directions alone: a k-dimensional quadratic, so a coarse prediction to put
    beside the measured B_crit, not a substitute for it. NaN when no eigenvalue is positive."""
    from ..laws.nqm import Optimizer, nqm_from_measurements

    try:
        r = nqm_from_measurements(h, c, grad_in_eigenbasis=g, optimizers={"sgd": Optimizer()})
    except ValueError:
        return {"nqm_B_crit": math.nan, "nqm_B_simple": math.nan, "nqm_B_noise": math.nan}
    return {"nqm_B_crit": float(r["B_crit"]), "nqm_B_simple": float(r["B_simple"]), "nqm_B_noise": float(r["B_noise"])}


def _check_options(top_k: Any, tol: Any, seed: Any, index: Any, float64: Any) -> None:
    def bad(field: str, msg: str) -> ConfigError:
        return ConfigError(msg, field=f"instruments.covariance.{field}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(top_k) or top_k < 1:
        raise bad("top_k", f"expected a positive integer, got {top_k!r}")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and 0 <= tol < 1):
        raise bad("tol", f"expected a number in [0, 1), got {tol!r}")
    if not is_int(seed):
        raise bad("seed", f"expected an integer, got {seed!r}")
    if not is_int(index) or index < 0:
        raise bad("index", f"expected a non-negative integer, got {index!r}")
    if not isinstance(float64, bool):
        raise bad("float64", f"expected true or false, got {float64!r}")


@register(
    "covariance",
    options={
        "top_k": Option(int, ge=1),
        "tol": Option(float, ge=0, lt=1),
        "seed": Option(int),
        "index": Option(int, ge=0),
        "float64": Option(bool),
        "nqm": Option(bool),
    },
)
def make_covariance(
    top_k: int = 5, tol: float = 1e-4, seed: int = 0, index: int = 0, float64: bool = False, nqm: bool = True
):
    """The gradient-covariance instrument; options as in :func:`measure`. ``index`` picks the probe batch
    (fixed per run; the default 0 is the curvature instrument's batch, so the two compare), the common
    ``batch_size`` its size B, which must exceed ``top_k``; ``float64`` runs on a double copy of the
    model (slower, for checks).

    Metrics (``covariance/<name>``): ``sigma_eig_1..k``, ``sigma_trace``, ``effective_rank``,
    ``hess_eig_1..k``, ``overlap``, ``commutator``, ``grad_fraction``, ``loss``, ``seconds``, and with
    ``nqm`` (default on) the noisy quadratic model's ``nqm_B_crit``, ``nqm_B_simple``, ``nqm_B_noise``
    built on the top-k Hessian directions; artifacts ``sigma_eigenvalues``, ``hess_eigenvalues``,
    ``hess_noise`` (uᵢᵀΣuᵢ) and ``hess_grad`` (uᵢᵀḡ)."""
    _check_options(top_k, tol, seed, index, float64)
    if not isinstance(nqm, bool):
        raise ConfigError(f"expected true or false, got {nqm!r}", field="instruments.covariance.nqm")

    def probe(ctx: ProbeContext) -> dict:
        try:
            return measure(
                ctx.model,
                ctx.probe_batch(index),
                top_k=top_k,
                tol=tol,
                seed=seed,
                dtype=torch.float64 if float64 else None,
                nqm=nqm,
            )
        except ConfigError as e:
            if e.field == "top_k":
                raise ConfigError(str(e).removeprefix("top_k: "), field="instruments.covariance.top_k") from None
            raise

    return probe


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe covariance``).


def probe_run(
    run_dir: str | Path,
    step: int | None = None,
    *,
    top_k: int = 5,
    batch_size: int | None = None,
    index: int = 0,
    tol: float = 1e-4,
    seed: int = 0,
    float64: bool = False,
) -> dict[str, Any]:
    """:func:`measure` on probe batch ``index`` (of ``batch_size`` sequences, default the run's micro-batch)
    of a stored run at ``step`` (default: the latest checkpoint). Bad arguments raise :class:`ConfigError`
    naming the argument (``field="top_k"``)."""
    if top_k < 1:
        raise ConfigError(f"expected a positive integer, got {top_k}", field="top_k")
    if batch_size is not None and batch_size < 2:
        raise ConfigError(f"expected an integer >= 2, got {batch_size}", field="batch_size")
    if index < 0:
        raise ConfigError(f"expected a non-negative integer, got {index}", field="index")
    run = load_run(run_dir, step)
    ctx = ProbeContext.of_run(run, batch_size)
    with torch.random.fork_rng(devices=[]):
        try:
            res = measure(
                run.model,
                ctx.probe_batch(index),
                top_k=top_k,
                tol=tol,
                seed=seed,
                dtype=torch.float64 if float64 else None,
            )
        except ConfigError as e:
            if e.field == "top_k":  # too large for this model or batch: say which run
                raise ConfigError(e.message, field="top_k", file=run_dir) from None
            raise
    return {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "batch_size": ctx.batch_size,
        "params": int(sum(p.numel() for p in run.model.parameters())),
        **res,
    }
