"""Matrix-free curvature on a fixed batch: Hessian-, Gauss-Newton- and preconditioned-vector products.

The shared core of the curvature and gradient-covariance instruments (and of anyone else who needs an
HVP). An :class:`Objective` is a loss L(θ) = ℓ(f(θ; X), Y) on one fixed batch, with θ the model's
parameters flattened in ``named_parameters()`` order (tied weights counted once). Operators built on it
act on flat vectors of that length and expose ``shape``, ``dtype``, ``device`` and ``@``, so they work
with curvlinops' routines (which only need those) and, through :meth:`Operator.to_scipy`, with
``scipy.sparse.linalg`` (ARPACK's ``eigsh``).

Why double backward with a retained graph: Pearlmutter's (1994) R-operator gives Hv = ∇(∇L·v). Building
the gradient with ``create_graph=True`` once and then differentiating ``∇L·v`` for each v costs one
backward pass through the gradient's graph per product; the forward pass and the first backward are
paid once per probe, not once per vector (``bench/bench_hvp.py`` measures this against
forward-over-reverse ``torch.func.jvp(grad(L))``, which redoes everything per vector).

Per-example losses treat one *sequence* as the example: the mean (masked) token cross-entropy of that
sequence. The batch loss is the training loss, ``GPT.loss``: the mean over all (masked) tokens of the
batch; the two agree (the batch loss is the mean of the per-sequence losses) when every sequence has
the same number of counted tokens.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

LossKind = Literal["ce", "mse"]


@contextlib.contextmanager
def math_attention(model: nn.Module) -> Iterator[None]:
    """Route every attention layer through the explicit softmax(QKᵀ/√d)V path while inside.

    SDPA has no double backward; the math path computes the same function with the same weights, so a
    model trained with SDPA can be probed this way and restored afterwards.
    """
    # Any: the attention modules are recognized by their attributes, not their class.
    attns: list[Any] = [m for m in model.modules() if hasattr(m, "math") and hasattr(m, "record_pattern")]
    saved = [a.math for a in attns]
    for a in attns:
        a.math = True
    try:
        yield
    finally:
        for a, s in zip(attns, saved):
            a.math = s


def example_losses(out: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None, kind: LossKind) -> torch.Tensor:
    """Per-example losses, shape (B,).

    ``ce``: one sequence is one example; its loss is the mean next-token cross-entropy over its (masked)
    positions. ``mse``: ½‖f(x) − y‖² per example (summed over output dimensions), so the Hessian of the
    batch mean for a linear model f(x) = Wx is XᵀX/B ⊗ I, with no stray factor 2.
    """
    if kind == "ce":
        per = F.cross_entropy(out.reshape(-1, out.size(-1)), targets.reshape(-1), reduction="none")
        per = per.view(targets.shape).reshape(targets.shape[0], -1)
        if mask is None:
            return per.mean(1)
        m = mask.reshape(mask.shape[0], -1).to(per.dtype)
        return (per * m).sum(1) / m.sum(1).clamp_min(1)
    if kind == "mse":
        diff = (out - targets.to(out.dtype)).reshape(out.shape[0], -1)
        return 0.5 * diff.pow(2).sum(1)
    raise ValueError(f"unknown loss kind {kind!r}")


def batch_loss(out: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None, kind: LossKind) -> torch.Tensor:
    """The training loss of the batch: ``GPT.loss`` for ``ce`` (mean over all counted tokens), the mean
    of the per-example losses for ``mse``."""
    if kind == "ce":
        per = F.cross_entropy(out.reshape(-1, out.size(-1)), targets.reshape(-1), reduction="none")
        if mask is None:
            return per.mean()
        m = mask.reshape(-1).to(per.dtype)
        return (per * m).sum() / m.sum().clamp_min(1)
    return example_losses(out, targets, mask, kind).mean()


class Objective:
    """L(θ) = ℓ(f(θ; X), Y) on one fixed batch, differentiable in the flattened parameters θ.

    ``dtype`` (e.g. ``torch.float64`` for validation) runs on a converted copy of the model; otherwise
    the model's own parameters are used, detached (same storage), so no ``.grad`` is ever written.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        loss: LossKind = "ce",
        dtype: torch.dtype | None = None,
    ):
        if dtype is not None and next(model.parameters()).dtype != dtype:
            model = copy.deepcopy(model).to(dtype)
            if inputs.is_floating_point():
                inputs = inputs.to(dtype)
        self.model, self.inputs, self.targets, self.mask, self.kind = model, inputs, targets, mask, loss
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights once
        self.names = [n for n, _ in named]
        self.model_params = [p for _, p in named]  # the live parameters, e.g. to look up optimizer state
        self.params = [p.detach().requires_grad_(True) for p in self.model_params]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device

    # --- flat <-> per-parameter ------------------------------------------------------------------------
    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """(n,) or (n, K) -> tensors shaped like the parameters (with a leading K for matrices)."""
        if v.dim() == 1:
            return [c.view(s) for c, s in zip(v.split(self.sizes), self.shapes)]
        return [c.T.reshape(v.shape[1], *s) for c, s in zip(v.split(self.sizes), self.shapes)]

    @staticmethod
    def flatten(ts: list[torch.Tensor] | tuple[torch.Tensor, ...], batched: bool = False) -> torch.Tensor:
        if batched:  # (K, *shape) each -> (n, K)
            return torch.cat([t.reshape(t.shape[0], -1) for t in ts], dim=1).T
        return torch.cat([t.reshape(-1) for t in ts])

    def flat_params(self) -> torch.Tensor:
        return self.flatten([p.detach() for p in self.params])

    # --- the function ----------------------------------------------------------------------------------
    def outputs(self, params: list[torch.Tensor] | None = None, inputs: torch.Tensor | None = None) -> torch.Tensor:
        ps = self.params if params is None else params
        return functional_call(self.model, dict(zip(self.names, ps)), (self.inputs if inputs is None else inputs,))

    def loss(self, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        return batch_loss(self.outputs(params), self.targets, self.mask, self.kind)

    def loss_of_outputs(self, out: torch.Tensor) -> torch.Tensor:
        return batch_loss(out, self.targets, self.mask, self.kind)

    def flat_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """L as a function of one flat vector (for ``torch.autograd.functional.hessian`` in checks)."""
        return self.loss(self.unflatten(theta))

    def gradient(self) -> torch.Tensor:
        g = torch.autograd.grad(self.loss(), self.params)
        return self.flatten(g)

    def per_example_gradients(self, chunk_size: int | None = None) -> torch.Tensor:
        """(B, n) gradients of the per-example losses (one sequence = one example, see
        :func:`example_losses`) by ``torch.func.vmap(grad)``: one batched backward, no Python loop."""
        mask = self.mask

        def one(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            out = self.outputs(params, x.unsqueeze(0))
            return example_losses(out, y.unsqueeze(0), None if m is None else m.unsqueeze(0), self.kind)[0]

        detached = [p.detach() for p in self.params]
        g = torch.func.grad(one)
        if mask is None:
            grads = torch.func.vmap(lambda x, y: g(detached, x, y, None), chunk_size=chunk_size)(
                self.inputs, self.targets
            )
        else:
            grads = torch.func.vmap(lambda x, y, m: g(detached, x, y, m), chunk_size=chunk_size)(
                self.inputs, self.targets, mask
            )
        return self.flatten(grads, batched=True).T.contiguous()


class Operator:
    """A symmetric n×n linear operator given by products; counts the products it was asked for."""

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device):
        self.shape = (n, n)
        self.dtype, self.device = dtype, device
        self.n_products = 0

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:  # (n, K) -> (n, K)
        raise NotImplementedError

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.n_products += V.shape[1]
        with torch.enable_grad():
            return self._matmat(V.to(self.dtype)).detach()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v) if v.dim() == 1 else self.matmat(v)

    def dense(self) -> torch.Tensor:
        """The full matrix, one product per column: only for small checks."""
        return self.matmat(torch.eye(self.shape[0], dtype=self.dtype, device=self.device))

    def to_scipy(self) -> Callable:
        """A float64 ``scipy.sparse.linalg.LinearOperator`` (ARPACK works in float64)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device).to(self.dtype)
            out = self.matmat(t.reshape(self.shape[0], -1))
            return out.to(torch.float64).cpu().numpy().reshape(np.shape(x))

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mv, dtype=np.float64)


class HessianOperator(Operator):
    """Hv = ∇(∇L·v) by double backward (Pearlmutter 1994), on a gradient graph built once.

    ``batched=True`` multiplies a block of K vectors in one vmapped backward
    (``autograd.grad(..., is_grads_batched=True)``); bench_hvp.py says whether that pays on this machine.
    """

    def __init__(self, obj: Objective, *, batched: bool = False):
        super().__init__(obj.n, obj.dtype, obj.device)
        self.obj, self.batched = obj, batched
        with torch.enable_grad():
            self.loss = obj.loss()
            self.grads = torch.autograd.grad(self.loss, obj.params, create_graph=True)
        self.gradient = obj.flatten([g.detach() for g in self.grads])

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        p = self.obj.params
        if self.batched and V.shape[1] > 1:
            hv = torch.autograd.grad(self.grads, p, self.obj.unflatten(V), retain_graph=True, is_grads_batched=True)
            return self.obj.flatten(hv, batched=True)
        cols = []
        for j in range(V.shape[1]):
            hv = torch.autograd.grad(self.grads, p, self.obj.unflatten(V[:, j].contiguous()), retain_graph=True)
            cols.append(self.obj.flatten(hv))
        return torch.stack(cols, dim=1)


class GGNOperator(Operator):
    """The generalized Gauss-Newton G = Jᵀ (∇²_f ℓ) J (Schraudolph 2002; Martens 2020 sec. 8).

    J v by forward mode (``torch.func.jvp``), the output-space Hessian ∇²_f ℓ by double backward on the
    (cheap) loss of the outputs, Jᵀ u by a backward pass through a cached forward graph. For softmax
    cross-entropy ∇²_f ℓ is PSD, so G is PSD; for a linear model under squared error G equals H.
    """

    def __init__(self, obj: Objective):
        super().__init__(obj.n, obj.dtype, obj.device)
        self.obj = obj
        with torch.enable_grad():
            self.out = obj.outputs()
            z = self.out.detach().requires_grad_(True)
            self._z = z
            self._gz = torch.autograd.grad(obj.loss_of_outputs(z), z, create_graph=True)[0]

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        o, cols = self.obj, []
        primals = tuple(p.detach() for p in o.params)
        for j in range(V.shape[1]):
            tangents = tuple(o.unflatten(V[:, j].contiguous()))
            jv = torch.func.jvp(lambda *ps: o.outputs(list(ps)), primals, tangents)[1]
            hjv = torch.autograd.grad(self._gz, self._z, jv, retain_graph=True)[0]
            cols.append(o.flatten(torch.autograd.grad(self.out, o.params, hjv, retain_graph=True)))
        return torch.stack(cols, dim=1)


class PreconditionedOperator(Operator):
    """P^(−1/2) A P^(−1/2) for a diagonal P given as ``p`` (n,): same eigenvalues as P⁻¹A, symmetric."""

    def __init__(self, base: Operator, p: torch.Tensor):
        super().__init__(base.shape[0], base.dtype, base.device)
        self.base = base
        self.d = p.to(base.dtype).rsqrt().reshape(-1, 1)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.d * self.base.matmat(self.d * V)


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Adam's current diagonal preconditioner P = √v̂ + ε, v̂ = v / (1 − β₂ᵗ), flattened in ``params``
    order (Kingma & Ba 2015, alg. 1; the P of Cohen et al. 2022's preconditioned sharpness λ₁(P⁻¹H)).

    None when the optimizer is not Adam-like or has taken no step yet (no second moments exist)."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for p in params:
        st = optimizer.state.get(p, {})
        if "exp_avg_sq" not in st or id(p) not in group_of:
            return None
        g = group_of[id(p)]
        t = float(st["step"])
        if t < 1:
            return None
        v_hat = st["exp_avg_sq"].detach().double() / (1.0 - g["betas"][1] ** t)
        parts.append((v_hat.sqrt() + g["eps"]).reshape(-1))
    return torch.cat(parts)


def top_eigenpairs(
    op: Operator, k: int, *, tol: float = 1e-6, seed: int = 0, maxiter: int | None = None, vectors: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """The k largest (algebraic) eigenvalues, descending, and their eigenvectors (n, k), by ARPACK's
    implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``, which="LA"; Lehoucq et al. 1998).

    ``tol`` is ARPACK's relative accuracy of the Ritz values. The start vector is seeded, so the same
    probe gives the same products.
    """
    from scipy.sparse.linalg import eigsh

    n = op.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and {n - 1} (the operator's size minus one), got {k}")
    v0 = np.random.default_rng(seed).standard_normal(n)
    ncv = min(n, max(2 * k + 1, 20))
    if vectors:
        vals, vecs = eigsh(op.to_scipy(), k=k, which="LA", tol=tol, v0=v0, ncv=ncv, maxiter=maxiter)
        order = np.argsort(vals)[::-1]
        return vals[order], vecs[:, order]
    vals = eigsh(op.to_scipy(), k=k, which="LA", tol=tol, v0=v0, ncv=ncv, maxiter=maxiter, return_eigenvectors=False)
    return np.sort(vals)[::-1], None
