"""A norm-based generalization bound beside the observed gap (issue 15, "Theory beside reality"): the spectrally
normalized margin bound of Bartlett, Foster and Telgarsky 2017 ("Spectrally-normalized margin bounds for neural
networks", NeurIPS; BFT below), measured on the whole training set of an ``arch = "mlp"`` run.

BFT Theorem 1.1: for ρ_i-Lipschitz activations with σ_i(0) = 0 (ReLU: ρ = 1), with probability >= 1 - δ over the
n training examples, every margin γ > 0 and network F_A with weight matrices A = (A_1, .., A_L) satisfy

    Pr[argmax_j F_A(x)_j != y] <= R̂_γ(F_A) + Õ( ||X||_2 R_A ln(W) / (γ n) + sqrt(ln(1/δ) / n) ),

* margins γ_i = F(x_i)_{y_i} - max_{j != y_i} F(x_i)_j on the training set (with its training labels);
* R̂_γ: the empirical ramp risk, mean of clip(1 - γ_i / γ, 0, 1) (1 below margin 0, 0 above γ);
* R_A = (Π_i ρ_i ||A_i||_σ) · (Σ_i (||A_iᵀ - M_iᵀ||_{2,1} / ||A_i||_σ)^{2/3})^{3/2}, the spectral complexity,
  with reference matrices M_i = 0 here (the bound around the origin, not around the initialization);
  ||·||_σ the spectral norm, ||Aᵀ||_{2,1} the sum of the 2-norms of A's rows (one per output unit: the
  incoming weights of each unit; A is (out, in), PyTorch's layout);
* ||X||_2 = sqrt(Σ_i ||x_i||²), the Frobenius norm of the (n, d) data matrix;
* W: BFT's W is the largest dimension of any weight matrix (the maximal width, input and output included; it
  enters through covering each layer's matrix, ln(2W²)), not the number of parameters. We follow the paper:
  ``width`` is that W, and the parameter count is stored beside it (``n_params``), since Neyshabur et al.'s
  reference code uses ln(#params) instead (a factor ln(85k) / ln(257) ~ 2 on the digits MLP, immaterial next
  to the orders of magnitude between bound and gap).

**No constants.** The Õ hides constants and log factors. BFT's appendix proves an explicit version (numerical
constants, a ln(n) factor, and log terms from a union bound over the norms and γ); the stored copies of the
paper we could read did not show that statement verbatim, so this module invents no constants:
``complexity_noconst`` = ||X||_2 R_A ln(W) / (γ n) + sqrt(ln(1/δ) / n) and ``bound_noconst`` =
R̂_γ + complexity_noconst. The explicit bound is larger by the hidden constants and the ln(n).

**Which γ.** The theorem holds for every γ > 0 at once: the ramp risk pays for the points below γ. We use the
``quantile`` (default 0.1) of the training margins, as Jiang et al. 2020 ("Fantastic generalization measures
and where to find them", ICLR) do for their margin-normalized measures: robust to a few examples that are
not (or barely) fitted, which the minimum margin is not. ``normalized_margin`` =
γ / (R_A ||X||_2 / n), BFT's normalized margin (their margin-distribution figures): invariant to rescaling the last
layer (and, without biases, any layer) by c > 0, since γ and R_A both scale by c.

**Biases** are folded into augmented matrices, so the bound applies exactly to the network: inputs become
[x; 1], every hidden layer [[W_i, b_i], [0, 1]] (ReLU(1) = 1 carries the constant through), the last [W_L, b_L].
Each augmented matrix has spectral norm >= 1 and one more unit row in its (2,1) norm, and ||X||_2 counts the
appended ones. A model without biases is left as it is.

Also the simpler capacity measures of Neyshabur et al. 2017 ("Exploring generalization in deep learning",
NeurIPS, sec. 2): ``prod_spectral`` = Π ||A_i||_σ (the network's Lipschitz bound) and ``prod_frobenius`` =
Π ||A_i||_F, each also over γ (their margin-normalized forms; the bounds scale them further by ||X|| and n).

Results (floats, ``spectral_bound/<name>``): margin, margin_min, margin_median, quantile, ramp_risk,
margin_error (the fraction of margins <= γ), spectral_complexity, prod_spectral, prod_frobenius,
prod_spectral_over_margin, prod_frobenius_over_margin, input_norm, n_train, width, n_params, normalized_margin,
complexity_noconst, bound_noconst, delta. Where γ <= 0 (at least a ``quantile`` share of the training examples
misclassified) the theorem says nothing: the terms that divide by γ are NaN.

Cost: one forward pass over the training set and one SVD per weight matrix (float64): 0.3-0.6 s for the digits
MLP of width 256 on a shared 2-core machine.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .registry import Option, ProbeContext, register

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_QUANTILE",
    "augmented_matrices",
    "bound_terms",
    "margins",
    "norm_2_1",
    "ramp_risk",
    "spectral_complexity",
    "spectral_norm",
]

NAME = "spectral_bound"
DEFAULT_QUANTILE = 0.1
DEFAULT_DELTA = 0.05


# --- norms -----------------------------------------------------------------------------------------------


def spectral_norm(a: torch.Tensor) -> float:
    """||A||_σ, the largest singular value (exact, from the SVD in float64)."""
    return float(torch.linalg.matrix_norm(a.double(), ord=2))


def norm_2_1(a: torch.Tensor) -> float:
    """||Aᵀ||_{2,1} for A (out, in): the sum over output units of the 2-norm of their incoming weights (BFT's
    ||·||_{p,q} is the q-norm of the p-norms of the columns; Aᵀ's columns are A's rows)."""
    return float(a.double().norm(dim=1).sum())


def spectral_complexity(mats: list[torch.Tensor]) -> float:
    """BFT's R_A with ρ_i = 1 and M_i = 0: (Π ||A_i||_σ) · (Σ (||A_iᵀ||_{2,1} / ||A_i||_σ)^{2/3})^{3/2}."""
    s = [spectral_norm(a) for a in mats]
    ratio = sum((norm_2_1(a) / si) ** (2 / 3) for a, si in zip(mats, s))
    return math.prod(s) * ratio**1.5


def augmented_matrices(layers: list[nn.Linear]) -> tuple[list[torch.Tensor], bool]:
    """The layers' weight matrices (out, in), input to output, with biases folded in (module doc); and whether
    they were (then the inputs must get an appended 1)."""
    with_bias = any(layer.bias is not None for layer in layers)
    if not with_bias:
        return [layer.weight.detach().double().cpu() for layer in layers], False
    out = []
    for i, layer in enumerate(layers):
        w = layer.weight.detach().double().cpu()
        b = layer.bias.detach().double().cpu() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        a = torch.cat([w, b[:, None]], dim=1)  # (out, in + 1)
        if i < len(layers) - 1:  # carry the constant 1 to the next layer
            unit = torch.zeros(1, a.shape[1], dtype=a.dtype)
            unit[0, -1] = 1.0
            a = torch.cat([a, unit], dim=0)
        out.append(a)
    return out, True


# --- margins -----------------------------------------------------------------------------------------------


def margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """γ_i = logits_{y_i} - max_{j != y_i} logits_j, (n, C) and (n,) -> (n,) float64."""
    z = logits.double()
    right = z.gather(1, targets[:, None].long())[:, 0]
    others = z.scatter(1, targets[:, None].long(), float("-inf"))
    return right - others.max(dim=1).values


def ramp_risk(m: torch.Tensor, gamma: float) -> float:
    """BFT's R̂_γ: the mean of the ramp loss clip(1 - γ_i / γ, 0, 1) (γ > 0)."""
    return float((1 - m / gamma).clamp(0.0, 1.0).mean())


# --- the bound -----------------------------------------------------------------------------------------------


@torch.no_grad()
def bound_terms(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    quantile: float = DEFAULT_QUANTILE,
    delta: float = DEFAULT_DELTA,
) -> dict[str, float]:
    """The bound's terms (module doc) for an MLP (``linear_layers()``: nn.Linear input -> output, ReLU between)
    on ``inputs`` (n, 1, d) or (n, d) with labels ``targets`` (n, 1) or (n,); keys without the instrument prefix."""
    layers = model.linear_layers()  # type: ignore[operator]
    x = inputs.reshape(inputs.shape[0], -1)
    y = targets.reshape(-1)
    n = x.shape[0]
    logits = model(x).reshape(n, -1)
    m = margins(logits, y).cpu()
    mats, with_bias = augmented_matrices(layers)
    x2 = float((x.double() ** 2).sum().cpu()) + (n if with_bias else 0)  # the appended ones
    input_norm = math.sqrt(x2)
    r_a = spectral_complexity(mats)
    spec = math.prod(spectral_norm(a) for a in mats)
    frob = math.prod(float(a.norm()) for a in mats)
    width = max(max(a.shape) for a in mats)
    n_params = sum(p.numel() for layer in layers for p in layer.parameters())
    gamma = float(np.quantile(m.numpy(), quantile))  # linear interpolation between order statistics
    nan = float("nan")
    ok = gamma > 0
    complexity = input_norm * r_a * math.log(width) / (gamma * n) + math.sqrt(math.log(1 / delta) / n) if ok else nan
    ramp = ramp_risk(m, gamma) if ok else nan
    return {
        "margin": gamma,
        "margin_min": float(m.min()),
        "margin_median": float(m.median()),
        "quantile": quantile,
        "ramp_risk": ramp,
        "margin_error": float((m <= gamma).double().mean()),
        "spectral_complexity": r_a,
        "prod_spectral": spec,
        "prod_frobenius": frob,
        "prod_spectral_over_margin": spec / gamma if ok else nan,
        "prod_frobenius_over_margin": frob / gamma if ok else nan,
        "input_norm": input_norm,
        "n_train": float(n),
        "width": float(width),
        "n_params": float(n_params),
        "normalized_margin": gamma * n / (r_a * input_norm),
        "complexity_noconst": complexity,
        "bound_noconst": ramp + complexity if ok else nan,
        "delta": delta,
    }


def _check_model(model: nn.Module) -> None:
    if not callable(getattr(model, "linear_layers", None)):
        raise ConfigError(
            f"{NAME} needs model.arch = 'mlp' (a ReLU MLP whose weight matrices it multiplies), "
            f"not a {type(model).__name__}",
            field=f"instruments.{NAME}",
        )


@register(NAME, options={"quantile": Option(float, gt=0, lt=1), "delta": Option(float, gt=0, lt=1)})
def make(quantile: float = DEFAULT_QUANTILE, delta: float = DEFAULT_DELTA) -> Any:
    """BFT's spectrally normalized margin bound, without its constants, on the whole training set (options:
    ``quantile`` of the training margins used as γ; ``delta`` the bound's failure probability)."""

    def probe(ctx: ProbeContext) -> dict[str, float]:
        _check_model(ctx.model)
        full = getattr(ctx.source, "full", None)
        if not callable(full):
            raise ConfigError(f"{NAME} needs a finite data set (data.kind = 'digits' or 'gaussian_mixture')",
                              field=f"instruments.{NAME}")  # fmt: skip
        b = full("train", ctx.step)  # the training labels in force at this step (a random-label phase too)
        b = b.to(ctx.device)
        out = bound_terms(ctx.model, b.inputs, b.targets, quantile=quantile, delta=delta)
        return {f"{NAME}/{k}": v for k, v in out.items()}

    def check_config(cfg: Any) -> None:
        """At load time: only an MLP has the weight matrices the bound multiplies."""
        if cfg.model.arch != "mlp":
            raise ConfigError(
                f"{NAME} needs model.arch = 'mlp' (a ReLU MLP whose weight matrices it multiplies), "
                f"not {cfg.model.arch!r}",
                field=f"instruments.{NAME}",
            )

    probe.check_config = check_config  # type: ignore[attr-defined]
    return probe
