"""The gradient noise scale: B_simple and B_noise (McCandlish, Kaplan, Amodei et al. 2018,
"An Empirical Model of Large-Batch Training", arXiv:1812.06162).

Definitions (McCandlish et al. 2018, sec. 2.2). With G the true gradient, Σ the per-example gradient
covariance and H the Hessian of the loss,

    B_noise  = tr(HΣ) / (GᵀHG)       the batch size at which SGD with the optimal step makes half the
                                     progress per step of full-batch SGD (their "noise scale");
    B_simple = tr(Σ) / (GᵀG)         its Hessian-free proxy, equal to B_noise when H ∝ I.

Both are in the unit of the batch: here sequences (one row of ``train.batch_size``); multiply by
``seq_len`` for tokens as Kaplan et al. 2020 quote them.

**Two-batch estimator** (McCandlish et al. 2018, app. A.1). A gradient averaged over B independent
examples satisfies E|G_B|² = |G|² + tr(Σ)/B. From gradients at two batch sizes B_small < B_big,

    |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small),
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big),

both unbiased; B_simple is the ratio of the two, or, during training, the ratio of their separate
exponential moving averages (not the average of ratios, which a near-zero |G|² estimate would wreck).
Here the k micro-batch gradients g_1..g_k of size b give |G_small|² = mean_i |g_i|² (B_small = b) and their
mean ḡ gives |G_big|² = |ḡ|² (B_big = k·b); then tr(Σ) = b/(k−1) Σ_i |g_i − ḡ|², the sample covariance.

**B_noise.** The same construction in the H-norm is unbiased for GᵀHG and tr(HΣ) when H is measured on a
batch independent of the g_i (E[g_iᵀ H g_i] = GᵀHG + tr(HΣ)/b, E[ḡᵀHḡ] = GᵀHG + tr(HΣ)/(kb)):

    tr(HΣ) ≈ b/(k−1) Σ_i (g_i − ḡ)ᵀ H (g_i − ḡ),    GᵀHG ≈ ḡᵀHḡ − tr(HΣ)/(kb).

It costs k Hessian-vector products (Hḡ follows by linearity), taken by double backward on a separate
"Hessian batch" through the model's explicit (math) attention path.

Gradients are the raw loss gradients from ``torch.autograd.grad``: before clipping, without weight decay,
and never written to ``.grad``. Standard errors are jackknife (leave one micro-batch out) estimates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..data.base import Batch
from ..errors import ConfigError
from ..offline import load_run
from .hvp import math_attention
from .registry import Option, ProbeContext, register

__all__ = [
    "NoiseScaleEMA",
    "NoiseScaleEstimate",
    "ema_ratio",
    "estimate_noise_scale",
    "moment_estimates",
    "linear_regression_truth",
    "micro_batch_gradients",
    "probe_run",
    "two_batch_estimates",
]

# Probe-stream indices: far from the small indices other instruments use for their fixed probe batches
# (batch i of a stream is a prefix-compatible draw of index i, so sharing an index would share data).
_GRAD_STREAM = 1 << 30
_HESS_STREAM = 1 << 31


# --------------------------------------------------------------------------------------------------
# The estimators: pure functions of gradient statistics.


def two_batch_estimates(g_small_sq: float, g_big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """Unbiased (|G|², tr(Σ)) from |G_small|² at B_small and |G_big|² at B_big (McCandlish et al. 2018, A.1)."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < B_small < B_big, got {b_small}, {b_big}")
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    tr = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    return float(g2), float(tr)


def _ratio(num: float, den: float) -> float:
    # A non-positive |G|² estimate means "noise swamps the signal at this sample size", not a negative
    # batch size: report no value (the raw statistics are still logged).
    return num / den if den > 0 and math.isfinite(num) else math.nan


def moment_estimates(sq: np.ndarray, dots: np.ndarray, b: int) -> dict[str, float]:
    """Two-batch estimates, with jackknife standard errors, from k micro-batch gradients g_i of b examples
    each, given through ``sq[i] = ⟨g_i, g_i⟩`` and ``dots[i] = ⟨g_i, s⟩`` with s = Σ_j g_j. Any inner
    product works: the Euclidean one gives |G|² and tr(Σ), ⟨u, v⟩ = uᵀHv gives GᵀHG and tr(HΣ).

    Returns ``small_sq`` = mean_i ⟨g_i, g_i⟩, ``big_sq`` = ⟨ḡ, ḡ⟩, the unbiased ``G2`` and ``trace``
    (per-example), their ``ratio`` and ``*_stderr`` (jackknife, leaving one micro-batch out: every
    leave-one-out sum follows from these O(k) numbers; NaN for k < 3).
    """
    sq, dots = np.asarray(sq, dtype=float), np.asarray(dots, dtype=float)
    k = sq.size

    def est(sq_sum, all_sum, n):
        small, big = sq_sum / n, all_sum / n**2
        tr = (small - big) / (1.0 / b - 1.0 / (n * b))
        return small, big, big - tr / (n * b), tr

    sq_sum, total = sq.sum(), dots.sum()  # total = ⟨s, s⟩
    small, big, g2, tr = est(sq_sum, total, k)
    out = {"small_sq": small, "big_sq": big, "G2": g2, "trace": tr, "ratio": _ratio(tr, g2)}
    nan3 = {"G2_stderr": math.nan, "trace_stderr": math.nan, "ratio_stderr": math.nan}
    if k >= 3:
        # Without micro-batch j: ⟨s − g_j, s − g_j⟩ = total − 2 dots_j + sq_j.
        _, _, g2_j, tr_j = est(sq_sum - sq, total - 2 * dots + sq, k - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_j = np.where(g2_j > 0, tr_j / g2_j, np.nan)

        def jk(v: np.ndarray) -> float:
            return float(np.sqrt((k - 1) / k * np.sum((v - v.mean()) ** 2))) if np.all(np.isfinite(v)) else math.nan

        out |= {"G2_stderr": jk(g2_j), "trace_stderr": jk(tr_j), "ratio_stderr": jk(ratio_j)}
    else:
        out |= nan3
    return {key: float(v) for key, v in out.items()}


@dataclass(frozen=True)
class NoiseScaleEstimate:
    """One measurement. Batch sizes (``b_small``, ``b_big``, the noise scales) are in sequences."""

    g_small_sq: float  # mean_i |g_i|², micro-batches of b_small
    g_big_sq: float  # |mean_i g_i|², the batch of b_big = n_micro * b_small
    b_small: int
    b_big: int
    n_micro: int
    G2: float  # unbiased |G|²
    trace_sigma: float  # unbiased tr(Σ), per-example covariance
    B_simple: float
    G2_stderr: float
    trace_sigma_stderr: float
    B_simple_stderr: float
    # Hessian-weighted (NaN when not measured)
    gHg: float = math.nan  # unbiased GᵀHG
    trace_HSigma: float = math.nan  # unbiased tr(HΣ)
    B_noise: float = math.nan
    B_noise_stderr: float = math.nan
    hessian_batch_size: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _unflat(v: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in params:
        out.append(v[i : i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    return out


def _loss(model: torch.nn.Module, b: Batch) -> torch.Tensor:
    return model.loss(b.inputs, b.targets, b.loss_mask)  # type: ignore[operator]  # a GPT method, not nn.Module's


def _split(batch: Batch, n: int) -> list[Batch]:
    m = batch.inputs.shape[0] // n
    sl = [slice(i * m, (i + 1) * m) for i in range(n)]
    return [
        Batch(batch.inputs[s], batch.targets[s], None if batch.loss_mask is None else batch.loss_mask[s]) for s in sl
    ]


def _hvps(model: torch.nn.Module, params: list[torch.nn.Parameter], batch: Batch, V: torch.Tensor) -> torch.Tensor:
    """Rows of H·Vᵀ (H: the Hessian of the loss on ``batch``) by double backward: the gradient graph is
    built once and each product is one backward pass through it."""
    with math_attention(model):
        grads = torch.autograd.grad(_loss(model, batch), params, create_graph=True)
        out = torch.empty_like(V)
        for i in range(V.shape[0]):
            hv = torch.autograd.grad(
                grads, params, grad_outputs=_unflat(V[i], params), retain_graph=i < len(V) - 1, allow_unused=True
            )
            out[i] = _flat(hv, params).to(V.dtype)
    return out


def micro_batch_gradients(model: torch.nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """(k, n_params) float32 matrix of the loss gradients on each batch (``.grad`` is left untouched)."""
    params = _params(model)
    n = sum(p.numel() for p in params)
    G = torch.empty(len(batches), n, dtype=torch.float32, device=params[0].device)
    for i, b in enumerate(batches):
        G[i] = _flat(torch.autograd.grad(_loss(model, b), params, allow_unused=True), params).float()
    return G


def estimate_noise_scale(
    model: torch.nn.Module, batch: Batch, n_micro: int, hessian_batch: Batch | None = None
) -> NoiseScaleEstimate:
    """Split ``batch`` into ``n_micro`` equal micro-batches, and estimate |G|², tr(Σ), B_simple (and, with a
    ``hessian_batch`` independent of ``batch``, GᵀHG, tr(HΣ), B_noise); see the module doc for the formulas."""
    B = batch.inputs.shape[0]
    if n_micro < 2 or B % n_micro:
        raise ValueError(f"need n_micro >= 2 dividing the batch size, got n_micro={n_micro}, batch={B}")
    b = B // n_micro
    G = micro_batch_gradients(model, _split(batch, n_micro))
    Gd = G.double()  # float64 sums: tr(Σ) is a small difference of two large numbers when B_simple >> b
    tot = Gd.sum(0)
    s = moment_estimates((Gd * Gd).sum(1).cpu().numpy(), (Gd @ tot).cpu().numpy(), b)
    extra: dict[str, Any] = {}
    if hessian_batch is not None:
        HG = _hvps(model, _params(model), hessian_batch, G).double()
        h = moment_estimates((Gd * HG).sum(1).cpu().numpy(), (HG @ tot).cpu().numpy(), b)
        extra = {
            "gHg": h["G2"],
            "trace_HSigma": h["trace"],
            "B_noise": h["ratio"],
            "B_noise_stderr": h["ratio_stderr"],
            "hessian_batch_size": int(hessian_batch.inputs.shape[0]),
        }
    return NoiseScaleEstimate(
        g_small_sq=s["small_sq"],
        g_big_sq=s["big_sq"],
        b_small=b,
        b_big=B,
        n_micro=n_micro,
        G2=s["G2"],
        trace_sigma=s["trace"],
        B_simple=s["ratio"],
        G2_stderr=s["G2_stderr"],
        trace_sigma_stderr=s["trace_stderr"],
        B_simple_stderr=s["ratio_stderr"],
        **extra,
    )


# --------------------------------------------------------------------------------------------------
# Smoothing over evaluations.


class NoiseScaleEMA:
    """Separate bias-corrected exponential moving averages of the |G|² and tr(Σ) estimates; B_simple is the
    ratio of the two averages (McCandlish et al. 2018, app. A.1). ``decay`` is per update (per evaluation
    here); the bias correction (as in Adam) keeps the first values from being pulled toward zero."""

    def __init__(self, decay: float = 0.8):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.n = 0
        self._g2 = 0.0
        self._tr = 0.0

    def update(self, G2: float, trace_sigma: float) -> tuple[float, float, float]:
        """Add one pair of estimates; return (|G|² EMA, tr(Σ) EMA, their ratio)."""
        self.n += 1
        self._g2 = self.decay * self._g2 + (1 - self.decay) * G2
        self._tr = self.decay * self._tr + (1 - self.decay) * trace_sigma
        corr = 1 - self.decay**self.n
        g2, tr = self._g2 / corr, self._tr / corr
        return g2, tr, _ratio(tr, g2)


def ema_ratio(G2: Sequence[float], trace_sigma: Sequence[float], decay: float = 0.8) -> np.ndarray:
    """B_simple from the ratio of EMAs over a logged series (offline recomputation, e.g. with another
    ``decay``); rows with a missing value are skipped in the averages and get NaN."""
    ema = NoiseScaleEMA(decay)
    out = np.full(len(G2), np.nan)
    for i, (g, t) in enumerate(zip(G2, trace_sigma)):
        if g is None or t is None or not (math.isfinite(g) and math.isfinite(t)):
            continue
        out[i] = ema.update(g, t)[2]
    return out


# --------------------------------------------------------------------------------------------------
# Ground truth: least squares with Gaussian inputs.


def linear_regression_truth(S: np.ndarray, delta: np.ndarray, noise_var: float) -> dict[str, float]:
    """Exact |G|², tr(Σ), GᵀHG, tr(HΣ), B_simple, B_noise for the loss ½(θᵀx − y)², y = wᵀx + ε,
    x ~ N(0, S), ε ~ N(0, σ²), at a point θ with δ = θ − w.

    Per-example gradient g = r x with r = δᵀx − ε. Then G = E[g] = Sδ, H = S, and by Isserlis' theorem
    E[(δᵀx)² x xᵀ] = (δᵀSδ) S + 2 SδδᵀS, so E[g gᵀ] = (δᵀSδ + σ²) S + 2 SδδᵀS and

        Σ = (δᵀSδ + σ²) S + SδδᵀS,
        |G|² = δᵀS²δ,            tr(Σ) = (δᵀSδ + σ²) tr S + δᵀS²δ,
        GᵀHG = δᵀS³δ,            tr(HΣ) = (δᵀSδ + σ²) tr S² + δᵀS³δ.
    """
    S = np.asarray(S, dtype=float)
    d = np.asarray(delta, dtype=float)
    Sd = S @ d
    q = float(d @ Sd) + noise_var
    g2, gHg = float(Sd @ Sd), float(Sd @ S @ Sd)
    tr = q * float(np.trace(S)) + g2
    trH = q * float(np.trace(S @ S)) + gHg
    return {"G2": g2, "trace_sigma": tr, "gHg": gHg, "trace_HSigma": trH, "B_simple": tr / g2, "B_noise": trH / gHg}


# --------------------------------------------------------------------------------------------------
# The instrument.


def _check_int(v: Any, name: str, lo: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"expected an integer >= {lo}, got {v!r}", field=f"instruments.noise_scale.{name}")


def _batches(
    ctx: ProbeContext, n_micro: int, micro: int | None, hess_bs: int | None, hess: bool, fresh: bool
) -> tuple[Batch, Batch | None]:
    b_big = micro * n_micro if micro else ctx.batch_size
    if b_big < n_micro or b_big % n_micro:
        raise ConfigError(
            f"batch size {b_big} cannot be split into n_micro={n_micro} equal micro-batches",
            field="instruments.noise_scale.n_micro",
        )
    # From the probe stream, never the train stream: the probe must not reuse the data training sees. A
    # fresh draw per evaluation makes successive estimates independent, which is what the EMA assumes.
    idx = ctx.step if fresh else 0
    batch = ctx.probe_batch(_GRAD_STREAM + idx, b_big)
    # Default Hessian batch: one micro-batch's worth. Any independent batch keeps the estimates unbiased;
    # a smaller one is noisier but makes each HVP (~3.4 gradients of that batch) proportionally cheaper.
    hb = ctx.probe_batch(_HESS_STREAM + idx, hess_bs or b_big // n_micro) if hess else None
    return batch, hb


@register(
    "noise_scale",
    options={
        "n_micro": Option(int, ge=2),
        "micro_batch_size": Option(int, ge=1, optional=True),
        "ema": Option(float, ge=0, lt=1),
        "hessian_every": Option(int, ge=0),
        "hessian_batch_size": Option(int, ge=1, optional=True),
        "fresh": Option(bool),
    },
)
def make_noise_scale(
    n_micro: int = 4,
    micro_batch_size: int | None = None,
    ema: float = 0.8,
    hessian_every: int = 10,
    hessian_batch_size: int | None = None,
    fresh: bool = True,
):
    """Gradient noise scale on the evaluation schedule (see the module doc).

    Options: ``n_micro`` micro-batches of ``micro_batch_size`` sequences (default: the instrument's
    ``batch_size`` — else the training micro-batch or batch size — split in ``n_micro``); ``ema``: decay of
    the moving averages per evaluation; ``hessian_every``: also measure B_noise on every n-th call (the first
    included; 0: never; it costs ``n_micro`` Hessian-vector products on a batch of ``hessian_batch_size`` sequences,
    default one micro-batch); ``fresh``: new probe data at every evaluation (False: the same batch each
    time).

    Cost (bench/bench_noise_scale.py, 4-layer d128 model, batch 32): the B_simple probe costs one
    training step; with B_noise about 4 steps at the default Hessian batch. Every evaluation at
    ``eval_every = 100`` is 1-2% of training time for runs of 1,000+ steps, and B_noise on every 10th
    call (the default) adds about 0.5%.

    Metrics (``noise_scale/<key>``): ``B_simple`` (ratio of the EMAs), ``B_simple_eval`` (this evaluation
    alone) and its ``B_simple_stderr``, ``G2``, ``trace_sigma`` (this evaluation), ``G2_ema``,
    ``trace_sigma_ema``, and the raw ``g_small_sq``, ``g_big_sq``, ``b_small``, ``b_big`` to recompute all of
    it offline; with the Hessian: ``B_noise``, ``B_noise_stderr``, ``gHg``, ``trace_HSigma``.

    The EMA lives in the probe: a resumed run restarts it (the raw statistics in the metrics do not
    change; :func:`ema_ratio` recomputes the series).
    """
    _check_int(n_micro, "n_micro", 2)
    if micro_batch_size is not None:
        _check_int(micro_batch_size, "micro_batch_size", 1)
    _check_int(hessian_every, "hessian_every", 0)
    if hessian_batch_size is not None:
        _check_int(hessian_batch_size, "hessian_batch_size", 1)
    if not isinstance(ema, (int, float)) or not 0 <= ema < 1:
        raise ConfigError(f"expected a number in [0, 1), got {ema!r}", field="instruments.noise_scale.ema")
    avg = NoiseScaleEMA(float(ema))
    calls = 0

    def probe(ctx: ProbeContext) -> dict[str, float]:
        nonlocal calls
        hess = hessian_every > 0 and calls % hessian_every == 0
        calls += 1
        batch, hb = _batches(ctx, n_micro, micro_batch_size, hessian_batch_size, hess, fresh)
        est = estimate_noise_scale(ctx.model, batch, n_micro, hb)
        g2_ema, tr_ema, b_ema = avg.update(est.G2, est.trace_sigma)
        out = {
            "B_simple": b_ema,
            "B_simple_eval": est.B_simple,
            "B_simple_stderr": est.B_simple_stderr,
            "G2": est.G2,
            "trace_sigma": est.trace_sigma,
            "G2_ema": g2_ema,
            "trace_sigma_ema": tr_ema,
            "g_small_sq": est.g_small_sq,
            "g_big_sq": est.g_big_sq,
            "b_small": est.b_small,
            "b_big": est.b_big,
        }
        if hb is not None:
            out |= {
                "B_noise": est.B_noise,
                "B_noise_stderr": est.B_noise_stderr,
                "gHg": est.gHg,
                "trace_HSigma": est.trace_HSigma,
            }
        return {k: float(v) for k, v in out.items()}

    return probe


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe noise-scale``).


def probe_run(
    run_dir: str,
    step: int | None = None,
    *,
    n_micro: int = 16,
    micro_batch_size: int | None = None,
    hessian: bool = True,
    hessian_batch_size: int | None = None,
) -> dict[str, Any]:
    """B_simple, B_noise, |G|², tr(Σ) (and more) of a stored run at ``step`` (default: latest checkpoint).
    Bad arguments raise :class:`ConfigError` naming the argument (``field="n_micro"``)."""
    if n_micro < 2:
        raise ConfigError(f"expected an integer >= 2, got {n_micro}", field="n_micro")
    for v, name in ((micro_batch_size, "micro_batch_size"), (hessian_batch_size, "hessian_batch_size")):
        if v is not None and v < 1:
            raise ConfigError(f"expected a positive integer, got {v}", field=name)
    run = load_run(run_dir, step)
    ctx = ProbeContext.of_run(run)
    micro = micro_batch_size or ctx.batch_size
    with torch.random.fork_rng(devices=[]):
        batch, hb = _batches(ctx, n_micro, micro, hessian_batch_size or micro * n_micro, hessian, True)
        est = estimate_noise_scale(run.model, batch, n_micro, hb)
    T = run.cfg.model.seq_len
    return {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "unit": "sequences",
        "seq_len": T,
        **est.as_dict(),
        "B_simple_tokens": est.B_simple * T,
        "B_noise_tokens": est.B_noise * T,
    }
