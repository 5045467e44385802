"""In-context learning: loss against context position and the in-context learning score (Olsson et al.
2022, "In-context Learning and Induction Heads", Transformer Circuits Thread).

Olsson et al. define the **in-context learning score** as the loss at a late token of the context minus
the loss at an early one (the 500th minus the 50th token of 512-token contexts): how much the model
gains from having seen more of its context. It is negative when later tokens are predicted better, and
drops sharply when induction heads form. Here the positions are configurable and default to the same
ratio scaled to the run's context T: ``late`` = T - 1, ``early`` = T // 10 (input positions, 0-based: the
loss at position t is that of predicting token t + 1 from tokens 0 .. t).

Every quantity comes with a continuous and a discontinuous metric: the per-token loss (minus the
log-probability of the right token) and the top-1 accuracy, per position and as the score (late minus
early). The data are the run's own source on its fixed probe stream, so the score is measured on the
distribution the model learns. A source that knows its ideal loss per position
(``ideal_loss_by_position(seq_len)``) also gets the ideal score to compare with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..offline import check_batch_options, load_run
from .registry import Option, ProbeContext, check_token_input, register

__all__ = ["icl_curves", "icl_summary", "probe_run", "resolve_positions"]

# Probe-stream indices of the ICL batches: away from the small indices other instruments use.
_ICL_STREAM = 1 << 29


def resolve_positions(
    seq_len: int, early: int | None, late: int | None, *, field: str = "instruments.icl"
) -> tuple[int, int]:
    """(early, late) input positions in [0, seq_len): defaults T // 10 and T - 1; negatives count from the
    end. A context too short for them raises :class:`ConfigError`."""
    T = int(seq_len)
    e = T // 10 if early is None else (early + T if early < 0 else early)
    la = T - 1 if late is None else (late + T if late < 0 else late)
    if not 0 <= e < la < T:
        raise ConfigError(
            f"the context (seq_len {T}) is too short for the requested positions: need 0 <= early ({e}) "
            f"< late ({la}) < {T}",
            field=field,
        )
    return e, la


@torch.no_grad()
def icl_curves(model: torch.nn.Module, batches: list[Any]) -> dict[str, np.ndarray]:
    """Mean loss (nats), log-probability of the right token and top-1 accuracy at every position, (T,)
    each, over the (masked) targets of ``batches`` (token batches on the model's device)."""
    loss_sum = acc_sum = count = None
    for b in batches:
        if b.inputs.dtype != torch.long:
            raise ConfigError(
                "the run's data source does not give token sequences; icl needs token data", field="instruments.icl"
            )
        logits = model(b.inputs).double()  # (B, T, V)
        loss = F.cross_entropy(logits.transpose(1, 2), b.targets, reduction="none")  # (B, T)
        acc = (logits.argmax(-1) == b.targets).double()
        m = torch.ones_like(loss) if b.loss_mask is None else b.loss_mask.to(loss.dtype)
        ls, ac, ct = (loss * m).sum(0), (acc * m).sum(0), m.sum(0)
        loss_sum = ls if loss_sum is None else loss_sum + ls
        acc_sum = ac if acc_sum is None else acc_sum + ac
        count = ct if count is None else count + ct
    assert loss_sum is not None and acc_sum is not None and count is not None
    c = count.clamp_min(1)
    loss_by_pos = (loss_sum / c).cpu().numpy()
    loss_by_pos[count.cpu().numpy() == 0] = np.nan
    acc_by_pos = (acc_sum / c).cpu().numpy()
    acc_by_pos[count.cpu().numpy() == 0] = np.nan
    return {"loss_by_position": loss_by_pos, "accuracy_by_position": acc_by_pos}


def icl_summary(
    curves: dict[str, np.ndarray], early: int, late: int, ideal: np.ndarray | None = None
) -> dict[str, float]:
    """The ICL score (loss at ``late`` minus loss at ``early``, Olsson et al. 2022) and its accuracy
    counterpart (accuracy at ``late`` minus at ``early``; positive with ICL), with the values they come from."""
    loss, acc = curves["loss_by_position"], curves["accuracy_by_position"]
    out = {
        "score": float(loss[late] - loss[early]),
        "loss_early": float(loss[early]),
        "loss_late": float(loss[late]),
        "logprob_early": float(-loss[early]),
        "logprob_late": float(-loss[late]),
        "accuracy_score": float(acc[late] - acc[early]),
        "accuracy_early": float(acc[early]),
        "accuracy_late": float(acc[late]),
        "early": float(early),
        "late": float(late),
        "loss_mean": float(np.nanmean(loss)),
    }
    if ideal is not None:
        out["ideal_score"] = float(ideal[late] - ideal[early])
    return out


def _ideal(source: Any, seq_len: int) -> np.ndarray | None:
    fn = getattr(source, "ideal_loss_by_position", None)
    return None if fn is None else np.asarray(fn(seq_len), dtype=np.float64)


def _check_int(v: Any, name: str, lo: int | None) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo):
        need = "an integer" if lo is None else f"an integer >= {lo}"
        raise ConfigError(f"expected {need}, got {v!r}", field=f"instruments.icl.{name}")


@register(
    "icl",
    options={
        # Input positions; negative counts from the end of the context (checked against seq_len per run).
        "early": Option(int, optional=True),
        "late": Option(int, optional=True),
        "n_batches": Option(int, ge=1),
        "fresh": Option(bool),
    },
)
def make_icl(early: int | None = None, late: int | None = None, n_batches: int = 4, fresh: bool = False):
    """In-context learning score and loss against position (see the module doc).

    Options: ``early``, ``late``: input positions (default T // 10 and T - 1; negative counts from the
    end); ``n_batches`` probe batches of the instrument's ``batch_size`` sequences; ``fresh``: new probe
    data at every evaluation (default False: the same sequences every time, so the curve's changes are
    the model's).

    Metrics (``icl/<key>``): ``score`` (loss late - loss early, nats; negative with ICL), ``loss_early``,
    ``loss_late``, ``logprob_early``, ``logprob_late``, ``accuracy_score`` (accuracy late - early),
    ``accuracy_early``, ``accuracy_late``, ``loss_mean``, ``early``, ``late`` and, when the source knows
    it, ``ideal_score``. Artifacts: ``loss_by_position``, ``accuracy_by_position`` (T,).
    """
    for v, name in ((early, "early"), (late, "late")):
        if v is not None:
            _check_int(v, name, None)
    _check_int(n_batches, "n_batches", 1)
    if not isinstance(fresh, bool):
        raise ConfigError(f"expected true or false, got {fresh!r}", field="instruments.icl.fresh")
    if early is not None and late is not None and (early >= 0) == (late >= 0) and early >= late:
        raise ConfigError(f"early ({early}) must come before late ({late})", field="instruments.icl.early")

    def probe(ctx: ProbeContext) -> dict[str, float | np.ndarray]:
        e, la = resolve_positions(ctx.seq_len, early, late)
        base = _ICL_STREAM + (ctx.step * n_batches if fresh else 0)
        batches = [ctx.probe_batch(base + i) for i in range(n_batches)]
        curves = icl_curves(ctx.model, batches)
        out: dict[str, float | np.ndarray] = dict(icl_summary(curves, e, la, _ideal(ctx.source, ctx.seq_len)))
        out.update({k: v.astype(np.float32) for k, v in curves.items()})
        return out

    def check_config(cfg: Any) -> None:  # when the experiment loads, not when the run starts
        check_token_input(cfg, "icl")
        resolve_positions(cfg.model.seq_len, early, late)

    probe.check_config = check_config  # type: ignore[attr-defined]
    return probe


# --------------------------------------------------------------------------------------------------
# Offline, on a stored run (``scalescope probe icl``).


def probe_run(
    run_dir: str | Path,
    step: int | None = None,
    *,
    early: int | None = None,
    late: int | None = None,
    n_batches: int = 4,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The ICL score and loss/accuracy against position of a stored run at ``step`` (default: latest). Bad
    arguments raise :class:`ConfigError` naming the argument (``field="early"``)."""
    check_batch_options(n_batches, batch_size)
    run = load_run(run_dir, step, attention=None)
    T = run.cfg.model.seq_len
    e, la = resolve_positions(T, early, late, field="early" if early is not None else "late")
    ctx = ProbeContext.of_run(run, batch_size)
    with torch.random.fork_rng(devices=[]):
        curves = icl_curves(run.model, [ctx.probe_batch(_ICL_STREAM + i) for i in range(n_batches)])
    ideal = _ideal(run.source, T)
    out: dict[str, Any] = {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "seq_len": T,
        "sequences": n_batches * ctx.batch_size,
        **icl_summary(curves, e, la, ideal),
    }
    out["early"], out["late"] = e, la
    out.update({k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in curves.items()})
    if ideal is not None:
        out["ideal_loss_by_position"] = ideal.tolist()
    return out
