"""The critical batch size measured from a batch-size sweep (Kaplan et al. 2020, sec. 5.1, after
McCandlish et al. 2018), with the gradient noise scale measured at the same loss beside it.

For every target loss L and every run, the steps S at which the (optionally smoothed) loss curve first
reaches L, interpolated linearly between evaluations; per batch size B the best learning rate (fewest
steps; seeds averaged first); E = B·S; the hyperbola (S/S_min − 1)(E/E_min − 1) = 1 (Kaplan eq. 5.1)
fitted per target gives B_crit(L) = E_min/S_min (eq. 5.2) with bootstrap intervals
(:func:`scalescope.laws.critical_batch.fit_steps_examples`); across targets B_crit(L) = B*/L^(1/α_B)
(eq. 5.3, :class:`scalescope.laws.critical_batch.CriticalBatchLaw`).

B_simple at the same loss comes from the ``noise_scale`` instrument's raw per-evaluation estimates of
|G|² and tr(Σ): each run that reaches L contributes both, interpolated at its crossing step, and
B_simple(L) = mean tr(Σ) / mean |G|² over those runs (McCandlish et al. expect the noise scale to depend
on the loss, not on the batch size or learning rate that got there; the ratio of means is their
recommended way to combine noisy estimates). Batch sizes are in sequences (``train.batch_size``); the
``*_tokens`` fields multiply by ``model.seq_len``.

On the command line: ``scalescope critical-batch --store DIR --targets 3.0,2.8``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, FitError
from ..laws.critical_batch import CriticalBatchLaw, fit_steps_examples
from .phase_change import threshold_step

__all__ = [
    "CriticalBatchResult",
    "TargetResult",
    "critical_batch_analysis",
    "run_groups",
    "steps_to_loss",
]

# Config columns that the sweep varies *within* one critical-batch analysis (or that do not change what is
# trained); any other config column that varies splits the runs into separate groups (e.g. model sizes).
WITHIN_GROUP = (
    "train.batch_size",
    "train.lr",
    "train.tokens",
    "train.flops",
    "train.micro_batch_size",
    "train.warmup",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_weights",
    "train.device",
    "seed",
    "instruments",
)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centered running mean over ``window`` evaluation points (shrinking at the ends)."""
    if window <= 1 or len(y) < 2:
        return y
    h = window // 2
    c = np.concatenate([[0.0], np.cumsum(y)])
    lo = np.clip(np.arange(len(y)) - h, 0, len(y))
    hi = np.clip(np.arange(len(y)) + h + 1, 0, len(y))
    return (c[hi] - c[lo]) / (hi - lo)


def steps_to_loss(steps: np.ndarray, loss: np.ndarray, target: float, smooth: int = 1) -> float:
    """First step at which the loss curve reaches ``target``, linear between evaluations (NaN if never;
    0 if the first point is already at or below it)."""
    s = threshold_step(steps, _smooth(np.asarray(loss, dtype=float), smooth), target, rising=False)
    return math.nan if s is None else s


def _interp_at(steps: np.ndarray, values: np.ndarray, at: float) -> float:
    ok = np.isfinite(values)
    if ok.sum() == 0 or not math.isfinite(at):
        return math.nan
    return float(np.interp(at, steps[ok], values[ok]))


@dataclass
class TargetResult:
    """One target loss: the per-batch-size table, the hyperbola fit, and B_simple beside B_crit."""

    target: float
    table: pd.DataFrame  # batch_size, steps, examples, lr, lr_at_grid_edge, n_lrs
    B_crit: float = math.nan
    B_crit_ci: tuple[float, float] = (math.nan, math.nan)
    S_min: float = math.nan
    E_min: float = math.nan
    B_simple: float = math.nan
    B_simple_runs: int = 0
    # The noisy quadratic model's prediction from the covariance instrument at the same loss (if logged).
    B_crit_nqm: float = math.nan
    error: str | None = None
    fit: Any = field(default=None, repr=False)

    @property
    def ratio(self) -> float:
        """B_crit / B_simple at this loss."""
        return self.B_crit / self.B_simple if self.B_simple > 0 else math.nan

    def as_dict(self, seq_len: int | None = None) -> dict[str, Any]:
        d = {
            "target": self.target,
            "B_crit": self.B_crit,
            "B_crit_ci": list(self.B_crit_ci),
            "S_min": self.S_min,
            "E_min": self.E_min,
            "B_simple": self.B_simple,
            "B_simple_runs": self.B_simple_runs,
            "B_crit_over_B_simple": self.ratio,
            "B_crit_nqm": self.B_crit_nqm,
            "error": self.error,
            "points": self.table.to_dict(orient="records"),
        }
        if seq_len:
            d |= {"B_crit_tokens": self.B_crit * seq_len, "B_simple_tokens": self.B_simple * seq_len}
        return d


@dataclass
class CriticalBatchResult:
    """One group of runs (fixed model, data, optimizer...): per-target results and the B_crit(L) law."""

    group: dict[str, Any]
    metric: str
    seq_len: int | None
    n_runs: int
    targets: list[TargetResult]
    law: dict[str, Any] | None = None  # {"B_star", "alpha_B", "ci": {...}} or None
    law_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "metric": self.metric,
            "unit": "sequences",
            "seq_len": self.seq_len,
            "n_runs": self.n_runs,
            "targets": [t.as_dict(self.seq_len) for t in self.targets],
            "law": self.law,
            "law_error": self.law_error,
        }


def _curves(metrics: pd.DataFrame, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per run: (steps, values) of ``metric``. A ``train_loss`` row at eval step s averages the losses of
    the steps since the previous evaluation, so it is placed at the middle of that interval."""
    out = {}
    for rid, df in metrics[metrics["metric"] == metric].groupby("id"):
        df = df.sort_values("step")
        s = df["step"].to_numpy(dtype=float)
        v = df["value"].to_numpy(dtype=float)
        if metric == "train_loss":
            prev = np.concatenate([[0.0], s[:-1]])
            s = 0.5 * (prev + s - 1)
        out[str(rid)] = (s, v)
    return out


def run_groups(runs: pd.DataFrame, group_by: list[str] | None) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Split the runs into independent critical-batch analyses: by ``group_by``, or by every varying config
    column outside :data:`WITHIN_GROUP` (e.g. model size). Returns (group values, runs) pairs."""
    if group_by is None:
        cfg_cols = [c for c in runs.columns if "." in c or c == "seed"]
        group_by = [c for c in cfg_cols if c not in WITHIN_GROUP and runs[c].astype(str).nunique(dropna=False) > 1]
    if not group_by:
        return [({}, runs)]
    out = []
    for key, df in runs.groupby([runs[c].astype(str) for c in group_by], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append(({c: df[c].iloc[0] for c in group_by}, df))
    return out


def critical_batch_analysis(
    store: str | Path | Any,
    targets: list[float],
    *,
    metric: str = "val_loss",
    smooth: int = 1,
    group_by: list[str] | None = None,
    bootstrap: int = 1000,
    random_state: int | None = 0,
) -> list[CriticalBatchResult]:
    """B_crit(L) per target loss and per group of runs in ``store`` (a path or ``store.load`` tables).

    ``metric``: ``val_loss`` (exact at each evaluation) or ``train_loss``; ``smooth``: a centered running
    mean over that many evaluations before looking for the crossing; ``group_by``: config columns that
    separate independent analyses (default: every varying config column outside :data:`WITHIN_GROUP`).
    """
    if not targets or any(not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0) for t in targets):
        raise ConfigError(f"expected positive target losses, got {targets!r}", field="targets")
    if metric not in ("val_loss", "train_loss"):
        raise ConfigError(f"expected val_loss or train_loss, got {metric!r}", field="metric")
    if smooth < 1:
        raise ConfigError(f"expected a positive integer, got {smooth}", field="smooth")
    if isinstance(store, (str, Path)):
        from ..store import load

        tables = load(store)
    else:
        tables = store
    runs, metrics = tables.runs, tables.metrics
    if len(runs) == 0:
        raise ConfigError("the store has no runs", field="store")
    curves = _curves(metrics, metric)
    noise = {name: _curves(metrics, f"noise_scale/{name}") for name in ("G2", "trace_sigma")}
    noise["nqm_B_crit"] = _curves(metrics, "covariance/nqm_B_crit")
    results = []
    for group, gruns in run_groups(runs, group_by):
        seq = gruns["model.seq_len"].dropna().unique() if "model.seq_len" in gruns else []
        seq_len = int(seq[0]) if len(seq) == 1 else None
        tres = []
        for target in sorted(targets, reverse=True):
            rows = []
            for rec in gruns.to_dict(orient="records"):
                c = curves.get(rec["id"])
                S = steps_to_loss(*c, target, smooth) if c is not None else math.nan
                rows.append(
                    {
                        "id": rec["id"],
                        "batch_size": int(rec["train.batch_size"]),
                        "lr": float(rec["train.lr"]),
                        "seed": rec.get("seed", 0),
                        "steps": S,
                    }
                )
            per_run = pd.DataFrame(rows)
            tres.append(_one_target(target, per_run, noise, bootstrap, random_state))
        res = CriticalBatchResult(group=group, metric=metric, seq_len=seq_len, n_runs=len(gruns), targets=tres)
        ok = [t for t in tres if math.isfinite(t.B_crit) and t.B_crit > 0]
        try:
            law = CriticalBatchLaw(bootstrap=bootstrap, random_state=random_state)
            law.fit(np.array([t.target for t in ok]), np.array([t.B_crit for t in ok]))
            res.law = {**law.params_, "ci": {k: list(v) for k, v in law.ci_.items()}, "n_points": len(ok)}
        except FitError as e:
            res.law_error = str(e)
        results.append(res)
    return results


def _one_target(
    target: float,
    per_run: pd.DataFrame,
    noise: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    bootstrap: int,
    random_state: int | None,
) -> TargetResult:
    # Seeds: a (B, lr) cell that some seed never finished counts as not reached (no optimistic min).
    cell = per_run.groupby(["batch_size", "lr"])["steps"].agg(lambda s: s.mean() if s.notna().all() else np.nan)
    table = []
    for B, sub in cell.groupby(level="batch_size"):
        sub = sub.droplevel("batch_size")
        lrs = sub.index.to_numpy()
        fin = sub[sub.notna() & (sub > 0)]
        if fin.empty:
            continue
        lr = float(fin.idxmin())
        table.append(
            {
                "batch_size": int(B),
                "steps": float(fin.min()),
                "examples": float(fin.min()) * int(B),
                "lr": lr,
                "n_lrs": int(len(lrs)),
                # The optimum on the grid's edge means the grid should be widened for this B.
                "lr_at_grid_edge": bool(len(lrs) > 1 and lr in (lrs.min(), lrs.max())),
            }
        )
    tab = pd.DataFrame(table, columns=["batch_size", "steps", "examples", "lr", "n_lrs", "lr_at_grid_edge"])
    out = TargetResult(target=target, table=tab)
    # B_simple at this loss, pooled over every run that reached it.
    g2s, trs = [], []
    for rec in per_run.to_dict(orient="records"):
        S = rec["steps"]
        if not math.isfinite(S):
            continue
        g, t = noise["G2"].get(rec["id"]), noise["trace_sigma"].get(rec["id"])
        if g is None or t is None:
            continue
        gv, tv = _interp_at(*g, S), _interp_at(*t, S)
        if math.isfinite(gv) and math.isfinite(tv):
            g2s.append(gv)
            trs.append(tv)
    nqm = [
        _interp_at(*noise["nqm_B_crit"][r["id"]], r["steps"])
        for r in per_run.to_dict(orient="records")
        if math.isfinite(r["steps"]) and r["id"] in noise["nqm_B_crit"]
    ]
    nqm = [v for v in nqm if math.isfinite(v)]
    if nqm:  # a geometric mean: the prediction is a scale, and noisy by factors rather than offsets
        out.B_crit_nqm = float(np.exp(np.mean(np.log(np.clip(nqm, 1e-300, None)))))
    if g2s:
        out.B_simple_runs = len(g2s)
        g2 = float(np.mean(g2s))
        out.B_simple = float(np.mean(trs)) / g2 if g2 > 0 else math.nan
    try:
        fit = fit_steps_examples(
            tab["steps"].to_numpy(), tab["examples"].to_numpy(), bootstrap=bootstrap, random_state=random_state
        )
        out.fit, out.B_crit, out.B_crit_ci = fit, fit.B_crit, fit.ci["B_crit"]
        out.S_min, out.E_min = fit.S_min, fit.E_min
    except FitError as e:
        out.error = f"{e} (batch sizes reaching the target: {len(tab)})"
    return out
