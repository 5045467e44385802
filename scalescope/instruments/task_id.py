"""Task identification: accuracy and log-probability of the right output against the number of
demonstrations k, for the model and the exact ideal observers, on seen and unseen tasks (issue 5).

The data are the run's ``discrete_tasks`` source (see :mod:`scalescope.data.discrete_tasks`): one prompt of n
pairs x_1 f(x_1) .. x_n f(x_n) gives the model's prediction of f(x_{k+1}) after every k = 0 .. n-1 at once
(at the position of x_{k+1}). Two sets of prompts, both fixed per run:

* **seen**: tasks of the pretraining pool, from the probe stream. References: ``ideal`` (the exact posterior
  predictive over the K pool tasks, the Bayes-optimal predictor) and ``lookup`` (the family's ideal observer:
  copy an output shown earlier for the same input, else guess uniformly; what in-context lookup alone earns);
* **unseen**: fresh maps of the same family outside the pool. Reference: ``ideal`` = ``lookup``, which is
  Bayes-optimal for a map drawn from the whole family.

Each capability has a discontinuous metric (accuracy: the model's argmax over the vocabulary; the observers'
argmax with ties split evenly) and a continuous one (log-probability of the right output, nats), as Schaeffer
et al. 2023 ask. Results: arrays ``<set>/acc_by_k/<who>`` and ``<set>/logp_by_k/<who>`` (n,) as artifacts;
scalars ``<set>/acc_at_<k>/<who>``, ``<set>/logp_at_<k>/<who>`` at a few k, and ``<set>/demos_needed/<who>``:
the number of demonstrations at which accuracy first reaches ``target`` (default 0.8), interpolated linearly
between the two k that bracket it (NaN when it never does within the context), and its continuous twin
``<set>/demos_needed_logp/<who>``: where the mean log-probability of the right output first reaches ln(target).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..offline import check_batch_options, load_run
from .registry import Option, ProbeContext, register, requires_data_kind

__all__ = [
    "DEFAULT_TARGET",
    "demos_needed",
    "probe_run",
    "reference_prompts",
    "summary",
    "task_id_curves",
]

DEFAULT_TARGET = 0.8
# Probe-stream indices of these batches: away from the small indices other instruments use.
_STREAM = 1 << 27


def _check_source(source: Any, field: str = "instruments.task_id") -> None:
    if not hasattr(source, "pool") or not hasattr(source, "n_outputs"):
        kind = (source.describe() or {}).get("kind", type(source).__name__) if hasattr(source, "describe") else "?"
        raise ConfigError(
            f"task_id needs a discrete_tasks source (data.kind = 'discrete_tasks'), not {kind!r}", field=field
        )


def demos_needed(acc: np.ndarray, target: float) -> float:
    """The first k (number of demonstrations) at which ``acc`` (indexed by k = 0, 1, ...) reaches ``target``,
    interpolated linearly between k - 1 and k; 0 if it starts there, NaN if it never does."""
    a = np.asarray(acc, dtype=float)
    hit = np.nonzero(a >= target)[0]
    if not len(hit):
        return float("nan")
    k = int(hit[0])
    if k == 0:
        return 0.0
    return float(k - 1 + (target - a[k - 1]) / (a[k] - a[k - 1]))


def reference_prompts(source: Any, *, seq_len: int, n_batches: int, batch_size: int) -> list[dict[str, Any]]:
    """The probe prompts of every set, with the ideal observers' accuracy and log-probability on them
    (B, n) each: a fixed function of the source, so an instrument computes it once per run."""
    from ..data.discrete_tasks import accuracy_logprob, lookup_observer, pool_observer

    _check_source(source)
    n_out, n = source.n_outputs, (seq_len + 1) // 2  # queries: the inputs at positions 0, 2, ..
    out = []
    for s in ["seen", "unseen"] if source.has_unseen else ["seen"]:
        for i in range(n_batches):
            xs, ys, _, _ = source.sample("probe", _STREAM + i, batch_size, seq_len, unseen=s == "unseen")
            tok = source.tokens(xs, ys, seq_len)
            xs, ys = xs[:, :n], ys[:, :n]
            refs = {"lookup": accuracy_logprob(lookup_observer(xs, ys, n_out), ys)}
            if s == "seen":
                refs["ideal"] = accuracy_logprob(pool_observer(xs, ys, source.pool, n_out), ys)
            else:  # lookup is the family's ideal observer
                refs = {"ideal": refs["lookup"]}
            out.append({"set": s, "tokens": tok, "ys": ys, "refs": refs})
    return out


@torch.no_grad()
def task_id_curves(
    model: torch.nn.Module,
    source: Any,
    *,
    seq_len: int,
    n_batches: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    prompts: list[dict[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Mean accuracy and log-probability of the right output (n,) against k, keyed ``<set>/<metric>/<who>``
    with set ∈ {seen, unseen}, metric ∈ {acc_by_k, logp_by_k}, who ∈ {model, ideal, lookup} (no unseen/lookup:
    it is unseen/ideal). ``prompts``: :func:`reference_prompts` of the same arguments, when already made."""
    if prompts is None:
        prompts = reference_prompts(source, seq_len=seq_len, n_batches=n_batches, batch_size=batch_size)
    acc: dict[str, list[np.ndarray]] = {}
    logp: dict[str, list[np.ndarray]] = {}
    for pr in prompts:
        tok = torch.as_tensor(pr["tokens"], device=device)
        logits = model(tok[:, :-1]).float()[:, 0::2]  # (B, n) predictions at the inputs' positions
        target = torch.as_tensor(source.n_inputs + pr["ys"], device=device)
        m_logp = F.log_softmax(logits, dim=-1).gather(-1, target[..., None])[..., 0].cpu().numpy()
        m_acc = (logits.argmax(-1) == target).float().cpu().numpy()
        for who, (a, lg) in {"model": (m_acc, m_logp), **pr["refs"]}.items():
            acc.setdefault(f"{pr['set']}/acc_by_k/{who}", []).append(a)
            logp.setdefault(f"{pr['set']}/logp_by_k/{who}", []).append(lg)
    out = {k: np.concatenate(v).mean(axis=0) for k, v in acc.items()}
    out.update({k: np.concatenate(v).mean(axis=0) for k, v in logp.items()})
    return out


def resolve_ks(ks: list[int] | None, n: int, field: str = "instruments.task_id.ks") -> list[int]:
    """The k's to report scalars at: default 0, 1, 2, 4, ... below n; a k beyond the context is an error."""
    if ks is None:
        return [0] + [2**i for i in range(int(math.log2(max(n - 1, 1))) + 1) if 2**i < n]
    bad = [k for k in ks if not isinstance(k, int) or not 0 <= k < n]
    if bad:
        raise ConfigError(f"the context holds {n} queries (k = 0 .. {n - 1}), too short for k = {bad}", field=field)
    return list(ks)


def summary(curves: dict[str, np.ndarray], target: float, ks: list[int] | None = None) -> dict[str, float]:
    """Scalars: accuracy and log-probability at the k's of ``ks`` (see :func:`resolve_ks`) and the
    demonstrations needed to reach ``target`` accuracy, for every set and reference in ``curves``."""
    n = len(curves["seen/acc_by_k/model"])
    ks = resolve_ks(ks, n)
    out: dict[str, float] = {"target": float(target)}
    for key, c in curves.items():
        s, metric, who = key.split("/")
        short = metric.removesuffix("_by_k")
        for k in ks:
            out[f"{s}/{short}_at_{k}/{who}"] = float(c[k])
        if metric == "acc_by_k":
            out[f"{s}/demos_needed/{who}"] = demos_needed(c, target)
        else:  # the continuous twin: mean log-probability of the right output reaching ln(target)
            out[f"{s}/demos_needed_logp/{who}"] = demos_needed(c, math.log(target))
    return out


def _check_options(n_batches: Any, target: Any, prefix: str = "") -> None:
    """``prefix``: what the field names of the errors start with (``"instruments.task_id."``; none for the
    arguments of :func:`probe_run`)."""
    if not isinstance(n_batches, int) or n_batches < 1:
        raise ConfigError(f"expected a positive integer, got {n_batches!r}", field=f"{prefix}n_batches")
    if not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ConfigError(f"expected an accuracy in (0, 1], got {target!r}", field=f"{prefix}target")


@register(
    "task_id",
    options={
        "n_batches": Option(int, ge=1),
        "target": Option(float, gt=0, le=1),
        # Query counts k of the summaries; their upper bound is the context, checked per run (resolve_ks).
        "ks": Option(list, item=int, ge=0, optional=True),
    },
)
def make(n_batches: int = 2, target: float = DEFAULT_TARGET, ks: list[int] | None = None) -> Any:
    """Task-identification curves (options: ``n_batches`` probe batches per set, ``target`` accuracy for
    demos_needed, ``ks`` the k's of the scalar summaries)."""
    _check_options(n_batches, target, "instruments.task_id.")

    cache: dict[tuple, list[dict[str, Any]]] = {}  # the prompts and observers, made once per run

    def probe(ctx: ProbeContext) -> dict[str, Any]:
        key = (id(ctx.source), ctx.seq_len, ctx.batch_size)
        if key not in cache:
            cache.clear()
            cache[key] = reference_prompts(
                ctx.source, seq_len=ctx.seq_len, n_batches=n_batches, batch_size=ctx.batch_size
            )
        curves = task_id_curves(
            ctx.model,
            ctx.source,
            seq_len=ctx.seq_len,
            n_batches=n_batches,
            batch_size=ctx.batch_size,
            device=ctx.device,
            prompts=cache[key],
        )
        out: dict[str, Any] = dict(curves)
        out.update(summary(curves, float(target), ks))
        return out

    return requires_data_kind(probe, "discrete_tasks", "task_id")


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe task-id``).


def probe_run(
    run_dir: str | Path,
    step: int | None = None,
    *,
    n_batches: int = 4,
    batch_size: int | None = None,
    target: float = DEFAULT_TARGET,
) -> dict[str, Any]:
    """Task-identification curves and summaries of a stored run's model at ``step`` (default: latest). Bad
    arguments raise :class:`ConfigError` naming the argument (``field="target"``)."""
    check_batch_options(n_batches, batch_size)
    _check_options(n_batches, target)
    run = load_run(run_dir, step, attention=None)
    _check_source(run.source, field="data.kind")
    ctx = ProbeContext.of_run(run, batch_size)
    with torch.random.fork_rng(devices=[]):
        curves = task_id_curves(
            run.model,
            run.source,
            seq_len=ctx.seq_len,
            n_batches=n_batches,
            batch_size=ctx.batch_size,
            device=run.device,
        )
    src: Any = run.source  # a DiscreteTasksSource (checked above)
    return {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "n_tasks": src.n_tasks,
        "n_inputs": src.n_inputs,
        "n_outputs": src.n_outputs,
        "prompts_per_set": n_batches * ctx.batch_size,
        **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary(curves, target).items()},
        "curves": {k: [float(x) for x in c] for k, c in curves.items()},
    }
