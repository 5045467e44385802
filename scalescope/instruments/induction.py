"""Induction heads: per-head prefix-matching and previous-token scores, and copying, on repeated random
sequences (Olsson et al. 2022, "In-context Learning and Induction Heads", Transformer Circuits Thread).

The probe makes its own sequences from the run's vocabulary, so it works on any token run: a random
prefix, then a span of random tokens x_1 .. x_n, then the same span again,

    [r_1 .. r_p, x_1 .. x_n, x_1 .. x_n],    p = T - 2n,

with n varying from sequence to sequence (in [max(2, T // 4), T // 2]) so that the offset between a token
and its earlier occurrence is not fixed: a head attending at a fixed distance cannot earn the score
(a pitfall others hit). The sequences are seeded (``seed``) and the same at every step of a run.

Scores (Olsson et al. 2022, "Methods: Measuring induction heads"), each a mean attention weight over
every valid query of every probe sequence:

* **prefix matching** of head h: from the i-th token of the repeat (position p + n + i, holding x_i) to
  the token after that token's earlier occurrence (position p + i + 1, holding x_{i+1});
* **previous token**: from position t to t - 1, over all t >= 1;
* **duplicate token**: from the i-th token of the repeat to its earlier occurrence (p + i).

Copying, on the same sequences, is reported with a discontinuous and a continuous metric: the fraction
of repeat positions whose top-1 prediction is the next token of the repeat (``copy_accuracy``) and the
mean log-probability of that token (``copy_logprob``); ``random_*`` are the same on the first, random
occurrence of the span (chance: 1/V and -log V).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..offline import load_run
from .registry import Option, ProbeContext, check_token_input, register

__all__ = [
    "RepeatedProbe",
    "attention_modules",
    "forward_with_patterns",
    "induction_scores",
    "probe_run",
]

# Per-head scalar metrics are written for models up to this many heads in all (the matrices always are).
MAX_HEAD_METRICS = 64


def attention_modules(model: torch.nn.Module, name: str = "induction") -> list[Any]:
    """The attention modules, in layer order, that can record their patterns (``record_pattern``). Typed
    ``Any``: what they offer (``record_pattern``, ``last_pattern``) is checked here, not by their class."""
    blocks = getattr(model, "blocks", None)
    attns: list[Any] = [getattr(b, "attn", None) for b in blocks] if blocks is not None else []
    if not attns or not all(hasattr(a, "record_pattern") for a in attns):
        raise ConfigError(
            "the model exposes no attention patterns (needs blocks[i].attn.record_pattern)", field=f"instruments.{name}"
        )
    return attns


@contextlib.contextmanager
def _recording(attns: list[Any]) -> Iterator[None]:
    for a in attns:
        a.record_pattern = True
    try:
        yield
    finally:
        for a in attns:
            a.record_pattern, a.last_pattern = False, None


@torch.no_grad()
def forward_with_patterns(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: logits (B, T, V) and the attention patterns (n_layer, B, n_head, T, T)."""
    attns = attention_modules(model)
    with _recording(attns):
        logits = model(tokens)
        pats = torch.stack([a.last_pattern for a in attns])
    return logits, pats


class RepeatedProbe:
    """Repeated random sequences and the index sets the scores average over (see the module doc)."""

    def __init__(self, vocab_size: int, seq_len: int, n_sequences: int = 64, seed: int = 0):
        T = int(seq_len)
        if T < 4:
            raise ConfigError(f"seq_len {T} is too short for repeated sequences (at least 4)", field="model.seq_len")
        if vocab_size < 2:
            raise ConfigError(
                f"a vocabulary of {vocab_size} tokens cannot make random sequences", field="data.vocab_size"
            )
        rng = np.random.default_rng([int(seed), 0x1D])
        lo, hi = max(2, T // 4), T // 2
        self.n = rng.integers(lo, hi + 1, size=n_sequences)
        self.p = T - 2 * self.n
        tokens = rng.integers(0, vocab_size, size=(n_sequences, T))
        b_idx, q_idx, k_idx = [], [], []
        for b, (n, p) in enumerate(zip(self.n.tolist(), self.p.tolist())):
            tokens[b, p + n :] = tokens[b, p : p + n]
            i = np.arange(n - 1)  # repeat tokens whose next token is still inside the sequence
            b_idx.append(np.full(n - 1, b))
            q_idx.append(p + n + i)
            k_idx.append(p + i + 1)
        self.tokens = torch.as_tensor(tokens, dtype=torch.long)
        self.b, self.q, self.k = (torch.as_tensor(np.concatenate(x)) for x in (b_idx, q_idx, k_idx))
        # Positions in the first occurrence that predict a token of the first occurrence (random baseline).
        rb, rq = [], []
        for b, (n, p) in enumerate(zip(self.n.tolist(), self.p.tolist())):
            rb.append(np.full(n - 1, b))
            rq.append(p + np.arange(n - 1))
        self.rb, self.rq = (torch.as_tensor(np.concatenate(x)) for x in (rb, rq))
        self.vocab_size, self.seq_len = int(vocab_size), T


@torch.no_grad()
def induction_scores(
    model: torch.nn.Module, probe: RepeatedProbe, device: torch.device | str = "cpu", batch_size: int = 64
) -> dict[str, Any]:
    """Prefix-matching, previous-token and duplicate-token scores, each (n_layer, n_head), and copying.

    See the module doc for the definitions (Olsson et al. 2022).
    """
    pm_sum = prev_sum = dup_sum = None
    n_pairs = n_prev = 0
    copy_hit = copy_lp = rand_hit = rand_lp = 0.0
    n_rand = 0
    P = probe.tokens.shape[0]
    for a in range(0, P, batch_size):
        x = probe.tokens[a : a + batch_size].to(device)
        logits, pats = forward_with_patterns(model, x)  # (L, B, H, T, T)
        pats = pats.double()
        sel = (probe.b >= a) & (probe.b < a + x.shape[0])
        b, q, k = probe.b[sel] - a, probe.q[sel], probe.k[sel]
        b, q, k = b.to(device), q.to(device), k.to(device)
        pm = pats[:, b, :, q, k].sum(0)  # advanced indices first: (N, L, H) -> (L, H)
        dup = pats[:, b, :, q, k - 1].sum(0)
        prev = torch.diagonal(pats, offset=-1, dim1=-2, dim2=-1).sum(dim=(1, 3))  # (L, H)
        pm_sum = pm if pm_sum is None else pm_sum + pm
        dup_sum = dup if dup_sum is None else dup_sum + dup
        prev_sum = prev if prev_sum is None else prev_sum + prev
        n_pairs += int(b.numel())
        n_prev += x.shape[0] * (x.shape[1] - 1)
        logp = F.log_softmax(logits.double(), dim=-1)
        tgt = x[b, k]
        copy_hit += float((logits[b, q].argmax(-1) == tgt).sum())
        copy_lp += float(logp[b, q, tgt].sum())
        rsel = (probe.rb >= a) & (probe.rb < a + x.shape[0])
        rb, rq = (probe.rb[rsel] - a).to(device), probe.rq[rsel].to(device)
        rt = x[rb, rq + 1]
        rand_hit += float((logits[rb, rq].argmax(-1) == rt).sum())
        rand_lp += float(logp[rb, rq, rt].sum())
        n_rand += int(rb.numel())
    assert pm_sum is not None and prev_sum is not None and dup_sum is not None
    return {
        "prefix_matching": (pm_sum / n_pairs).cpu().numpy(),
        "previous_token": (prev_sum / n_prev).cpu().numpy(),
        "duplicate_token": (dup_sum / n_pairs).cpu().numpy(),
        "copy_accuracy": copy_hit / n_pairs,
        "copy_logprob": copy_lp / n_pairs,
        "random_accuracy": rand_hit / n_rand,
        "random_logprob": rand_lp / n_rand,
        "chance_logprob": -math.log(probe.vocab_size),
    }


def _flatten(scores: dict[str, Any], per_head: bool) -> dict[str, float | np.ndarray]:
    """Instrument results: the matrices as artifacts, their maxima and the copying numbers as metrics."""
    out: dict[str, float | np.ndarray] = {}
    for key in ("prefix_matching", "previous_token", "duplicate_token"):
        m = np.asarray(scores[key], dtype=np.float64)
        out[key] = m.astype(np.float32)
        out[f"max_{key}"] = float(m.max())
        layer, head = np.unravel_index(int(m.argmax()), m.shape)
        if key == "prefix_matching":
            out["max_prefix_matching_layer"] = float(layer)
            out["max_prefix_matching_head"] = float(head)
        if per_head and key != "duplicate_token":
            for (li, hi), v in np.ndenumerate(m):
                out[f"{key}/l{li}h{hi}"] = float(v)
    for key in ("copy_accuracy", "copy_logprob", "random_accuracy", "random_logprob"):
        out[key] = float(scores[key])
    return out


def _check_int(v: Any, name: str, lo: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"expected an integer >= {lo}, got {v!r}", field=f"instruments.induction.{name}")


def _vocab(source: Any) -> int:
    v = getattr(source, "vocab_size", None)
    if not isinstance(v, int):
        raise ConfigError(
            "the run's data source has no token vocabulary; induction needs token data", field="instruments.induction"
        )
    return v


@register(
    "induction",
    options={"n_sequences": Option(int, ge=1), "seed": Option(int, ge=0), "per_head": Option(bool)},
)
def make_induction(n_sequences: int = 64, seed: int = 0, per_head: bool = True):
    """Induction-head scores on ``n_sequences`` repeated random sequences (see the module doc).

    Metrics (``induction/<key>``): ``max_prefix_matching`` (and the ``_layer``/``_head`` holding it),
    ``max_previous_token``, ``max_duplicate_token``, ``copy_accuracy``, ``copy_logprob``,
    ``random_accuracy``, ``random_logprob``, and with ``per_head`` every head's
    ``prefix_matching/l<layer>h<head>`` and ``previous_token/l<layer>h<head>``. Artifacts: the
    (n_layer, n_head) matrices ``prefix_matching``, ``previous_token``, ``duplicate_token``.

    Cost: one forward pass over ``n_sequences`` sequences through the explicit attention path.
    """
    _check_int(n_sequences, "n_sequences", 1)
    _check_int(seed, "seed", 0)
    cache: dict[tuple[int, int], RepeatedProbe] = {}

    def probe(ctx: ProbeContext) -> dict[str, float | np.ndarray]:
        key = (_vocab(ctx.source), ctx.seq_len)
        if key not in cache:
            cache[key] = RepeatedProbe(*key, n_sequences=n_sequences, seed=seed)
        scores = induction_scores(ctx.model, cache[key], ctx.device, ctx.batch_size)
        n_heads = scores["prefix_matching"].size
        return _flatten(scores, per_head and n_heads <= MAX_HEAD_METRICS)

    probe.check_config = lambda cfg: check_token_input(cfg, "induction")  # type: ignore[attr-defined]
    return probe


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe induction``).


def probe_run(run_dir: str | Path, step: int | None = None, *, n_sequences: int = 64, seed: int = 0) -> dict[str, Any]:
    """Every head's scores and the copying metrics of a stored run at ``step`` (default: latest). Bad
    arguments raise :class:`ConfigError` naming the argument (``field="n_sequences"``)."""
    if n_sequences < 1:
        raise ConfigError(f"expected a positive integer, got {n_sequences}", field="n_sequences")
    run = load_run(run_dir, step)
    check_token_input(run.cfg, "induction")
    probe = RepeatedProbe(_vocab(run.source), run.cfg.model.seq_len, n_sequences, seed)
    with torch.random.fork_rng(devices=[]):
        s = induction_scores(run.model, probe, run.device)
    pm = s["prefix_matching"]
    layer, head = np.unravel_index(int(pm.argmax()), pm.shape)
    return {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "n_layer": pm.shape[0],
        "n_head": pm.shape[1],
        "n_sequences": n_sequences,
        "seed": seed,
        "prefix_matching": s["prefix_matching"].tolist(),
        "previous_token": s["previous_token"].tolist(),
        "duplicate_token": s["duplicate_token"].tolist(),
        "max_prefix_matching": float(pm.max()),
        "max_prefix_matching_layer": int(layer),
        "max_prefix_matching_head": int(head),
        "max_previous_token": float(s["previous_token"].max()),
        **{
            k: float(s[k])
            for k in ("copy_accuracy", "copy_logprob", "random_accuracy", "random_logprob", "chance_logprob")
        },
    }
