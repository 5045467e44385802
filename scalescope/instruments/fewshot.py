"""In-context vs in-weights learning in bursty few-shot classification (Chan et al. 2022, fig. 2; Reddy 2023,
fig. 1b), each reported with a discontinuous and a continuous metric.

On a ``bursty_classification`` source (``scalescope.data.bursty``) the probe measures, on fixed probe streams:

* ``icl/accuracy``, ``icl/logp``: top-1 accuracy and mean log-probability (nats) of the right label on bursty
  sequences of *novel* classes (fresh centres, labels assigned at random per sequence): only the context can
  tell the label (Chan et al.'s holdout classes);
* ``iwl/accuracy``, ``iwl/logp``: the same on queries of training classes (drawn from the Zipf law) whose class
  is absent from the context: only the weights can tell the label;
* ``train_dist/accuracy``, ``train_dist/logp``: the same on the training distribution itself.

Exact references on the same sequences: ``chance/accuracy`` = 1/L and ``chance/logp`` = -log L (the
predictor that ignores everything); ``icl/nearest_item_accuracy``, the label of the context item nearest (in
Euclidean distance) to the query, a simple in-context learner needing no training; ``iwl/nearest_centre_accuracy``,
the label of the nearest true class centre, what a learner that knew the whole mixture would score;
``icl/context_label_accuracy``, a uniform guess among the labels shown in the context (1 / (N / B) when they
are distinct): the plateau a model that copies *some* context label, without matching the query to its
item, sits on before the induction head forms (Reddy 2023, sec. 3).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..offline import check_batch_options, load_run
from .registry import Option, ProbeContext, register, requires_data_kind

__all__ = ["fewshot_metrics", "probe_run"]

_MODES = ("icl", "iwl", "train")


def _check_source(source: Any, field: str = "instruments.fewshot") -> None:
    from ..data.bursty import BurstyClassificationSource

    if not isinstance(source, BurstyClassificationSource):
        kind = source.describe().get("kind", type(source).__name__) if hasattr(source, "describe") else "?"
        raise ConfigError(
            f"fewshot needs a bursty_classification source (data.kind = 'bursty_classification'), not {kind!r}",
            field=field,
        )


def _nearest_item(items: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label of the context item nearest to the query (items (n, N+1, D), query last)."""
    d2 = ((items[:, :-1] - items[:, -1:]) ** 2).sum(-1)  # (n, N)
    return labels[np.arange(len(labels)), d2.argmin(1)]


def _context_label(labels: np.ndarray) -> np.ndarray:
    """Expected accuracy of guessing uniformly among the distinct labels of the context: 1 / (their number)
    when the query's label is among them, else 0 (labels (n, N+1), query last)."""
    ctx, q = labels[:, :-1], labels[:, -1]
    distinct = 1 + (np.diff(np.sort(ctx, axis=1), axis=1) != 0).sum(1)
    return (ctx == q[:, None]).any(1) / distinct


def _nearest_centre(source: Any, query: np.ndarray) -> np.ndarray:
    """Label of the class whose (scaled) centre is nearest to each query (n, D)."""
    c = source.centres / math.sqrt(1.0 + source.eps**2)  # E[item | class k]
    d2 = (query**2).sum(1)[:, None] - 2 * query @ c.T + (c**2).sum(1)[None, :]
    return source.class_labels[d2.argmin(1)]


@torch.no_grad()
def fewshot_metrics(
    model: torch.nn.Module,
    source: Any,
    *,
    seq_len: int,
    n_batches: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """ICL / IWL / training-distribution accuracy and log-probability of the right label, and the exact
    references of the module doc, over ``n_batches`` probe batches of each distribution."""
    _check_source(source)
    out: dict[str, float] = {}
    for mode in _MODES:
        hits = logp = 0.0
        ref_hits = copy_hits = 0.0
        count = 0
        for i in range(n_batches):
            if mode == "train":  # the training distribution, on the probe split's stream
                s = source.sample("probe", i, batch_size)
                b = source.layout(s, seq_len)
            else:
                b, s = source.probe_batch(mode, i, batch_size, seq_len)
            b = b.to(device)
            q = 2 * source.n_pairs  # the query's position
            lp = torch.log_softmax(model(b.inputs)[:, q].float(), dim=-1)  # (n, L)
            y = b.targets[:, q]
            hits += float((lp.argmax(-1) == y).sum())
            logp += float(lp.gather(1, y[:, None]).sum())
            count += len(y)
            if mode == "icl":
                ref_hits += float((_nearest_item(s["items"], s["labels"]) == s["labels"][:, -1]).sum())
                copy_hits += float(_context_label(s["labels"]).sum())
            elif mode == "iwl":
                ref_hits += float((_nearest_centre(source, s["items"][:, -1]) == s["labels"][:, -1]).sum())
        name = "train_dist" if mode == "train" else mode
        out[f"{name}/accuracy"], out[f"{name}/logp"] = hits / count, logp / count
        if mode == "icl":
            out["icl/nearest_item_accuracy"] = ref_hits / count
            out["icl/context_label_accuracy"] = copy_hits / count
        elif mode == "iwl":
            out["iwl/nearest_centre_accuracy"] = ref_hits / count
    L = source.n_labels
    out["chance/accuracy"], out["chance/logp"] = 1.0 / L, -math.log(L)
    return out


def _check_n_batches(n_batches: Any, field: str) -> None:
    if not isinstance(n_batches, int) or isinstance(n_batches, bool) or n_batches < 1:
        raise ConfigError(f"expected a positive integer, got {n_batches!r}", field=field)


@register("fewshot", options={"n_batches": Option(int, ge=1)})
def make(n_batches: int = 2) -> Any:
    """ICL and IWL accuracy and log-probability beside exact references (option: ``n_batches`` probe batches
    of each distribution; the common ``batch_size`` sets sequences per batch)."""
    _check_n_batches(n_batches, "instruments.fewshot.n_batches")

    def probe(ctx: ProbeContext) -> dict[str, Any]:
        return fewshot_metrics(
            ctx.model,
            ctx.source,
            seq_len=ctx.seq_len,
            n_batches=n_batches,
            batch_size=ctx.batch_size,
            device=ctx.device,
        )

    return requires_data_kind(probe, "bursty_classification", "fewshot")


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe fewshot``).


def probe_run(
    run_dir: str | Path, step: int | None = None, *, n_batches: int = 4, batch_size: int | None = None
) -> dict[str, Any]:
    """The fewshot metrics of a stored run at ``step`` (default: the latest checkpoint)."""
    check_batch_options(n_batches, batch_size)
    run = load_run(run_dir, step, attention=None)
    _check_source(run.source, field="data.kind")
    ctx = ProbeContext.of_run(run, batch_size)
    with torch.random.fork_rng(devices=[]):
        m = fewshot_metrics(
            run.model,
            run.source,
            seq_len=ctx.seq_len,
            n_batches=n_batches,
            batch_size=ctx.batch_size,
            device=run.device,
        )
    return {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "sequences": n_batches * ctx.batch_size,
        "source": run.source.describe(),
        **m,
    }
