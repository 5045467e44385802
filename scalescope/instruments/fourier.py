"""Fourier progress measures of a transformer trained on modular addition (issue 15, grokking).

Nanda, Chan, Lieberum, Smith and Steinhardt 2023 ("Progress measures for grokking via mechanistic
interpretability", sec. 4-5) show that a one-layer transformer that groks a + b mod p embeds each residue x as
cos(w_k x), sin(w_k x) for a few key frequencies w_k = 2πk/p and reads the answer off logits ∝
Σ_k cos(w_k(a + b - c)). The measures here, computed from the model on all p² pairs at each evaluation:

* ``fourier/embed_top_share``: the share of the residue embeddings' squared norm (rows 0..p-1 of the token
  embedding, centred over the residues) in their top-``k`` frequencies, from a DFT over the residue axis in the
  orthonormal real basis (so the k = 1..(p-1)/2 powers sum to the centred norm, Parseval). A random embedding
  puts about 2/p of its norm in each frequency; the Fourier algorithm concentrates it in a few (sec. 4.1).
* ``fourier/restricted_loss`` and ``fourier/excluded_loss`` (sec. 5.1), with the key frequencies taken as the
  embedding's top ``k`` at this step: for each key frequency, the logits' components along cos(w(a+b)) and
  sin(w(a+b)) over the p² pairs, for each answer c (the span that holds cos(w(a+b-c)) = cos(w(a+b))cos(wc) +
  sin(w(a+b))sin(wc) and its sine). *Restricted*: the logits' mean over the pairs plus those components only;
  *excluded*: the logits minus those components. Both losses are cross-entropies over the p residues on the
  TRAINING pairs. The restricted loss falls as the generalizing circuit forms, before the test loss does; the
  excluded loss rises as the model comes to rely on that circuit to fit the training set.
* ``fourier/weight_norm``: the L2 norm of all parameters, the simplest progress measure (weight decay shrinks it
  as memorization is cleaned up; sec. 5). With LayerNorm most weights feed a scale-invariant LayerNorm, so in
  scalescope's GPT this norm is a weaker signal than in their LayerNorm-free model.
* ``fourier/embed_power``: the power per frequency k = 1..(p-1)/2, ((p-1)/2,) float32, stored as an artifact
  (the embedding spectrum whose sparsity Nanda et al. show in sec. 4.1).

How this differs from the paper, and why. Nanda et al.'s code projects the MLP *neuron activations* onto
cos(w(a+b)), sin(w(a+b)) and maps them to logits through the (linear) unembedding; their model has no
LayerNorm. scalescope's GPT has a final LayerNorm, so the logits are not linear in the neuron activations and
the projection is made on the logits themselves. Without a final LayerNorm the two agree up to the path that
bypasses the MLP: the projection over the pairs commutes with a linear map over features, and the embeddings
(functions of a alone or of b alone) have no component along cos(w(a+b)) when k ≠ 0; the attention output may
have one, and here it is treated like the MLP's (the paper keeps it whole in the excluded loss and replaces it
by its mean in the restricted one). We drop the ``=`` token's logit (the
losses are over the p answers, the trainer's over all p + 1 tokens), and the key frequencies follow the
embedding at each step rather than being fixed from the final model, so the measure can run during training
(the paper fixes them post hoc). For subtraction (``op = "-"``) the directions are cos(w(a-b)), sin(w(a-b));
multiplication has no such structure in the residues and is refused.

Cost per evaluation: one forward pass over p² three-token sequences (in chunks) and a (p², 2k) projection.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .registry import Option, ProbeContext, register, requires_data_kind

__all__ = [
    "DEFAULT_K",
    "frequency_power",
    "fourier_metrics",
    "key_directions",
    "restricted_excluded_losses",
    "top_share",
]

DEFAULT_K = 5
# Sequences per forward pass.
_CHUNK = 4096


def frequency_power(w: torch.Tensor) -> torch.Tensor:
    """Squared norm of the rows of ``w`` (p, d), centred over the p rows, per frequency k = 1..(p-1)/2 of the
    DFT over the row axis in the orthonormal real basis: a ((p-1)/2,) float64 tensor summing to the centred
    squared norm (p odd)."""
    p = w.shape[0]
    x = torch.arange(p, dtype=torch.float64)
    k = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64)
    ang = 2 * math.pi * k[:, None] * x[None, :] / p  # (K, p)
    scale = math.sqrt(2.0 / p)  # unit-norm cos and sin rows
    w64 = w.detach().double()
    w64 = w64 - w64.mean(0, keepdim=True)
    cos, sin = (ang.cos() * scale) @ w64, (ang.sin() * scale) @ w64  # (K, d) each
    return cos.pow(2).sum(-1) + sin.pow(2).sum(-1)


def top_share(power: torch.Tensor, k: int) -> tuple[float, list[int]]:
    """(share of the total power in the ``k`` strongest frequencies, those frequencies 1-based, strongest
    first)."""
    total = float(power.sum())
    top = torch.topk(power, min(k, power.numel()))
    share = float(top.values.sum()) / total if total > 0 else 0.0
    return share, [int(i) + 1 for i in top.indices]


def key_directions(p: int, freqs: list[int], op: str = "+") -> torch.Tensor:
    """(p², 2·len(freqs)) float64, orthonormal columns cos(w(a ± b)) and sin(w(a ± b)), w = 2πk/p, over the
    pairs in the order a·p + b. Orthonormal because p is odd and 0 < k < p/2: distinct frequencies and the cos
    and sin of one frequency are orthogonal over the grid, and each has squared norm p²/2 before scaling."""
    a, b = torch.meshgrid(torch.arange(p, dtype=torch.float64), torch.arange(p, dtype=torch.float64), indexing="ij")
    s = (a + b if op == "+" else a - b).reshape(-1)
    cols = []
    for k in freqs:
        ang = 2 * math.pi * k * s / p
        cols += [ang.cos(), ang.sin()]
    return torch.stack(cols, dim=1) * math.sqrt(2.0) / p


def restricted_excluded_losses(
    logits: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, directions: torch.Tensor
) -> tuple[float, float]:
    """(restricted, excluded) loss of ``logits`` (p², p) over the answers, on the pairs where ``train`` (p²,)
    is true, with ``labels`` (p²,) the answers; ``directions`` (p², m) orthonormal, from :func:`key_directions`.
    Restricted logits: the mean over the pairs plus the components along the directions; excluded: the
    logits minus those components (see the module doc)."""
    z = logits.double()
    comp = directions @ (directions.T @ z)  # (p², p): the key components of every answer's logit
    restricted = z.mean(0, keepdim=True) + comp  # the directions are orthogonal to the constant over the pairs
    excluded = z - comp
    y = labels[train]
    return (
        float(F.cross_entropy(restricted[train], y)),
        float(F.cross_entropy(excluded[train], y)),
    )


def _grid(source: Any) -> tuple[int, str, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p, op, inputs (p², 3) in the order a·p + b, labels (p²,), train mask (p²,)) of a modular source."""
    facts = source.describe()
    p, op = int(facts["p"]), str(facts["op"])
    xs = np.concatenate([source.train.x, source.val.x])
    ys = np.concatenate([source.train.y, source.val.y])
    order = np.argsort(xs[:, 0] * p + xs[:, 1])
    is_train = np.zeros(len(xs), dtype=bool)
    is_train[: len(source.train)] = True
    return (
        p,
        op,
        torch.from_numpy(np.ascontiguousarray(xs[order])),
        torch.from_numpy(ys[order].astype(np.int64)),
        torch.from_numpy(is_train[order]),
    )


@torch.no_grad()
def fourier_metrics(model: torch.nn.Module, source: Any, *, k: int = DEFAULT_K, device: Any = "cpu") -> dict[str, Any]:
    """The measures of the module doc for ``model`` on a modular ``source`` (a scalescope GPT: its token
    embedding is ``tok_emb``)."""
    emb = getattr(model, "tok_emb", None)
    if not isinstance(emb, torch.nn.Embedding):
        raise ConfigError("fourier needs a model with a token embedding (model.arch = 'gpt')", field="model.arch")
    p, op, inputs, labels, train = _grid(source)
    power = frequency_power(emb.weight[:p])
    share, freqs = top_share(power, k)
    logits = torch.cat(
        [model(inputs[i : i + _CHUNK].to(device))[:, -1, :p].cpu() for i in range(0, len(inputs), _CHUNK)]
    )
    restricted, excluded = restricted_excluded_losses(logits, labels, train, key_directions(p, freqs, op))
    norm = math.sqrt(sum(float(q.detach().double().pow(2).sum()) for q in model.parameters()))
    return {
        "fourier/embed_top_share": share,
        "fourier/restricted_loss": restricted,
        "fourier/excluded_loss": excluded,
        "fourier/weight_norm": norm,
        "fourier/embed_power": power.float().numpy(),
    }


@register("fourier", options={"k": Option(int, ge=1)})
def make(k: int = DEFAULT_K) -> Any:
    """Fourier progress measures on a ``modular`` source (option ``k``: the number of key frequencies)."""

    def probe(ctx: ProbeContext) -> dict[str, Any]:
        return fourier_metrics(ctx.model, ctx.source, k=k, device=ctx.device)

    checked = requires_data_kind(probe, "modular", "fourier")
    check_kind = checked.check_config  # type: ignore[attr-defined]

    def check_config(cfg: Any) -> None:
        check_kind(cfg)
        if cfg.data.op == "*":
            raise ConfigError(
                "fourier's key frequencies are those of a + b or a - b; data.op = '*' has no such structure",
                field="instruments.fourier",
            )
        if k > (cfg.data.p - 1) // 2:
            raise ConfigError(
                f"p = {cfg.data.p} has {(cfg.data.p - 1) // 2} nonzero frequencies, got k = {k}",
                field="instruments.fourier.k",
            )

    checked.check_config = check_config  # type: ignore[attr-defined]
    return checked
