"""Emergence across runs: which capabilities change abruptly over scale or training steps, is a jump
real or a metric artifact, and when will a metric cross a threshold?

* Per run: the induction-head phase change (Olsson et al. 2022; :mod:`scalescope.analyses.phase_change`).
* Across runs: the finished runs are grouped by the config fields that vary other than scale, and within
  each group every capability metric the runs logged is tested for an abrupt change over scale (N
  non-embedding parameters, D tokens or C FLOPs: whichever varies; :func:`detect_transition`, a sigmoid in
  log x against a smooth power law on held-out points, with bootstrap intervals), and a discontinuous
  metric with a continuous twin (top-1 copy accuracy and copy log-probability) gets the metric-robustness
  test of Schaeffer et al. 2023 (:func:`metric_robustness`): :func:`analyze`, :func:`scale_analysis`,
  :func:`step_analysis`, :func:`across_scale` (any runs-table column).
* :func:`record_forecast`: fit a continuous twin's power-law trend on the smaller runs, predict the scale
  at which the discontinuous metric crosses a threshold (:func:`forecast_crossing`) and record it in the
  forecast ledger (``STORE/forecasts/``), which scores it once larger runs exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import store as _store
from ..errors import ConfigError, FitError, StoreError
from ..forecast.crossing import RECORD_KIND, forecast_crossing, record_crossing_forecast
from ..forecast.ledger import load_forecasts
from ..jsonable import jsonable
from ..laws.trend import SmoothTrend, exact_match_link, infer_direction
from .phase_change import phase_rows
from .transitions import detect_transition, metric_robustness

__all__ = [
    "CAPABILITIES",
    "SCALE_COLUMNS",
    "Capability",
    "across_scale",
    "analyze",
    "capability",
    "record_forecast",
    "scale_analysis",
    "scale_groups",
    "step_analysis",
]

# x columns of the runs table, by what they measure (Kaplan et al. 2020's N, D, C).
SCALE_COLUMNS = {"params_nonembedding": "N", "tokens": "D", "flops": "C"}
# Config fields that set the scale; runs differing only in these (and the seed) form one group.
SCALE_FIELDS = ("model.d_model", "model.n_layer", "model.n_head", "model.d_ff", "train.tokens", "seed")
QUIET_FIELDS = (
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_weights",
    "train.device",
    "train.total_steps",
)
MIN_RUNS = 6  # detect_transition's minimum: 4 sigmoid parameters plus held-out points


@dataclass(frozen=True)
class Capability:
    """A capability measured by a discontinuous ``metric`` (metrics-table name) and, optionally, a continuous
    twin of the same outputs. ``sign`` turns the twin into a loss-like quantity (falling to a floor of 0:
    ``-1`` for a log-probability), which is what scales as a power law (Schaeffer et al. 2023, sec. 2);
    ``n_tokens`` is the answer length L of the link accuracy ≈ exp(-L·loss) (their eq. 2)."""

    name: str
    metric: str
    continuous: str | None = None
    sign: float = 1.0
    n_tokens: int = 1
    description: str = ""


CAPABILITIES: tuple[Capability, ...] = (
    Capability(
        "copy",
        "induction/copy_accuracy",
        "induction/copy_logprob",
        sign=-1.0,
        n_tokens=1,
        description="top-1 copying of a repeated span; twin: log-prob of the copied token",
    ),
    Capability(
        "prefix_matching",
        "induction/max_prefix_matching",
        description="best head's prefix-matching attention (an induction head)",
    ),
    Capability("icl_accuracy", "icl/accuracy_score", description="top-1 accuracy late in the context minus early"),
    Capability("exact_match", "exact_match", "val_loss", sign=1.0, description="exact match; twin: validation loss"),
    Capability(
        "fewshot_icl",
        "fewshot/icl/accuracy",
        "fewshot/icl/logp",
        sign=-1.0,
        n_tokens=1,
        description="label of a novel class from its context (Chan et al. 2022); twin: its log-prob",
    ),
    Capability(
        "fewshot_iwl",
        "fewshot/iwl/accuracy",
        "fewshot/iwl/logp",
        sign=-1.0,
        n_tokens=1,
        description="label of a class absent from the context (in weights); twin: its log-prob",
    ),
    Capability(
        "task_id",
        "task_id/seen/acc_at_4/model",
        "task_id/seen/logp_at_4/model",
        sign=-1.0,
        n_tokens=1,
        description="output of a pool task after 4 demonstrations; twin: its log-prob",
    ),
)


def capability(name: str, *, twin: bool = False) -> Capability | None:
    """The capability with this name or discontinuous metric (with or without ``final_``; with ``twin``
    also its continuous twin), or None."""
    key = name.removeprefix("final_")
    for c in CAPABILITIES:
        if key in (c.name, c.metric) or (twin and key == c.continuous):
            return c
    return None


# --- across runs: transitions over scale ----------------------------------------------------------------


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "status" not in runs:
        return runs.iloc[0:0]
    return runs[runs["status"] == "finished"]


def _group_fields(runs: pd.DataFrame) -> list[str]:
    """Config columns that vary across ``runs`` other than the scale fields and bookkeeping."""
    cols = [
        c
        for c in runs.columns
        if "." in c and not c.startswith("final_") and c not in SCALE_FIELDS and c not in QUIET_FIELDS
    ]
    return [c for c in cols if runs[c].astype(str).nunique(dropna=False) > 1]


def _x_column(runs: pd.DataFrame) -> str | None:
    """N when only N varies, D when only D varies, C when both do; None when neither does."""

    def varies(col: str) -> bool:
        return col in runs and pd.to_numeric(runs[col], errors="coerce").dropna().nunique() > 1

    n, d = varies("params_nonembedding"), varies("tokens")
    if n and d:
        return "flops"
    return "params_nonembedding" if n else ("tokens" if d else None)


def scale_groups(runs: pd.DataFrame, x: str | None = None) -> list[tuple[dict[str, Any], str | None, pd.DataFrame]]:
    """The finished runs split by the non-scale config fields that vary: (group's field values, its x
    column (``x``, or chosen by :func:`_x_column`), its runs)."""
    done = _finished(runs)
    if done.empty:
        return []
    fields = _group_fields(done)
    out = []
    if fields:
        keys = done[fields].astype(str)
        for _, idx in keys.groupby(fields if len(fields) > 1 else fields[0], sort=True).groups.items():
            g = done.loc[idx]
            out.append(({f: jsonable(g[f].iloc[0]) for f in fields}, x or _x_column(g), g))
    else:
        out.append(({}, x or _x_column(done), done))
    return out


def _cols(runs: pd.DataFrame, *cols: str) -> pd.DataFrame:
    return runs[list(cols)].apply(pd.to_numeric, errors="coerce").dropna()


def _smooth_trend(x: Any, y: Any) -> dict[str, Any] | None:
    """Direction and parameters of :func:`detect_transition`'s smooth trend (a saturating power law on the
    gap to the default bound) of (x, y), or None when it cannot be fitted."""

    try:
        d = infer_direction(x, y, "auto")
        return {"direction": d, "smooth": dict(SmoothTrend(d).fit(x, y).law.params_)}
    except (FitError, ValueError):
        return None


def _analyze_capability(g: pd.DataFrame, x: str, cap: Capability, bootstrap: int, seed: int) -> dict[str, Any]:

    d_col = f"final_{cap.metric}"
    c_col = f"final_{cap.continuous}" if cap.continuous else None
    if c_col is not None and (c_col not in g or g[c_col].isna().all()):
        c_col = None
    out: dict[str, Any] = {
        "capability": cap.name,
        "metric": cap.metric,
        "continuous": cap.continuous if c_col else None,
    }
    tab = _cols(g, x, d_col, *([c_col] if c_col else []))
    tab = tab[tab[x] > 0]
    out["n_runs"] = len(tab)
    out["points"] = {
        "x": tab[x].tolist(),
        "metric": tab[d_col].tolist(),
        "continuous": tab[c_col].tolist() if c_col else None,
    }
    if len(tab) < MIN_RUNS or tab[x].nunique() < 3:
        out["error"] = f"{len(tab)} finished runs at {tab[x].nunique()} scales; the transition test needs {MIN_RUNS}"
        return out
    xs, ys = tab[x].to_numpy(float), tab[d_col].to_numpy(float)
    opts: dict[str, Any] = {"bootstrap": bootstrap, "random_state": seed}
    try:
        if c_col:
            r = metric_robustness(xs, ys, cap.sign * tab[c_col].to_numpy(float), **opts)
            out |= {
                "verdict": r.verdict,
                "reason": r.reason,
                "transition": r.discontinuous.as_dict(),
                "continuous_transition": None if r.continuous is None else r.continuous.as_dict(),
            }
            # The continuous twin's smooth trend (what a forecast extrapolates), also when it was not tested.
            ct = out["continuous_transition"]
            out["continuous_trend"] = (
                {"direction": ct["direction"], "smooth": ct["smooth"]}
                if ct
                else _smooth_trend(xs, cap.sign * tab[c_col].to_numpy(float))
            )
        else:
            t = detect_transition(xs, ys, **opts)
            out |= {"verdict": "abrupt" if t.abrupt else "smooth", "reason": t.reason, "transition": t.as_dict()}
    except (FitError, ValueError) as err:
        out["error"] = f"fit failed: {err}"
    return out


def analyze(
    store: str | Path,
    *,
    threshold: float = 0.4,
    x: str | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    steps: bool = False,
    tables: Any = None,
) -> dict[str, Any]:
    """Everything ``scalescope emergence --store DIR --json`` prints: ``runs`` (:func:`phase_rows`), ``scale``
    (per group of runs and capability metric the store has: the transition test over scale and, with a
    continuous twin, the metric-robustness verdict), ``steps`` (with ``steps``: the same tests over each
    run's training steps, :func:`step_analysis`) and the store's ``forecasts`` of crossings."""

    t = tables if tables is not None else _store.load(store)
    scale = scale_analysis(t.runs, x=x, bootstrap=bootstrap, seed=seed)
    done = set(_finished(t.runs)["id"].astype(str)) if len(t.runs) else set()
    over_steps = (
        step_analysis(t.metrics[t.metrics["id"].astype(str).isin(done)], bootstrap=bootstrap, seed=seed)
        if steps
        else []
    )
    forecasts = [r for r in load_forecasts(store) if r.get("kind") == RECORD_KIND] if Path(store).is_dir() else []
    return {
        "store": str(store),
        "threshold": threshold,
        "runs": phase_rows(store, threshold, t),
        "scale": scale,
        "steps": over_steps,
        "forecasts": forecasts,
    }


def step_analysis(metrics: pd.DataFrame, *, bootstrap: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Per run of ``metrics`` (pass finished runs': a run in progress has a truncated series) that logged a
    capability metric at 6 or more steps > 0: the transition test of each
    capability over training steps (x = step, log-spaced evaluations), with the metric-robustness verdict
    when the continuous twin was logged too; entries shaped as :func:`scale_analysis`'s."""
    out: list[dict[str, Any]] = []
    if metrics is None or metrics.empty:
        return out
    names = {c.metric for c in CAPABILITIES} | {c.continuous for c in CAPABILITIES if c.continuous}
    sub = metrics[metrics["metric"].isin(names)]
    for rid, m in sub.groupby("id", sort=True):
        wide = (
            m.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
            .add_prefix("final_")
            .reset_index()
        )
        caps = [c for c in CAPABILITIES if f"final_{c.metric}" in wide]
        if caps:
            out.append(
                {
                    "id": str(rid),
                    "x": "step",
                    "capabilities": [_analyze_capability(wide, "step", c, bootstrap, seed) for c in caps],
                }
            )
    return out


def scale_analysis(
    runs: pd.DataFrame, *, x: str | None = None, bootstrap: int = 200, seed: int = 0
) -> list[dict[str, Any]]:
    """Per group of finished runs (:func:`scale_groups`) that logged a capability metric: its x column and,
    per capability, the transition test over x (and the metric-robustness verdict with a continuous twin).
    Each capability entry has ``points`` (x, metric, continuous) and either ``transition`` (and
    ``continuous_transition``) or ``error`` (too few runs, or a failed fit)."""
    if x is not None and x not in SCALE_COLUMNS:
        raise ConfigError(f"expected one of {', '.join(SCALE_COLUMNS)}, got {x!r}", field="x")
    scale = []
    for fields, xcol, g in scale_groups(runs, x):
        caps = [c for c in CAPABILITIES if f"final_{c.metric}" in g and g[f"final_{c.metric}"].notna().any()]
        if not caps:
            continue
        entry: dict[str, Any] = {"group": fields, "x": xcol, "n_runs": len(g), "capabilities": []}
        if xcol is None:
            entry["error"] = "no scale (N, D or C) varies across these runs"
        else:
            entry["capabilities"] = [_analyze_capability(g, xcol, c, bootstrap, seed) for c in caps]
        scale.append(entry)
    return scale


def across_scale(
    store: str | Path,
    metric: str,
    continuous: str | None = None,
    across: str = "params_nonembedding",
    bootstrap: int = 500,
) -> dict[str, Any]:
    """:func:`detect_transition` (or :func:`metric_robustness` with ``continuous``) of runs-table column
    ``metric`` over column ``across``, on the store's finished runs."""

    runs = _store.load(store).runs
    cols = [across, metric] + ([continuous] if continuous else [])
    missing = [c for c in cols if c not in runs]
    if missing:
        raise StoreError(f"{store}: no runs-table column(s) {', '.join(missing)}")
    tab = _cols(_finished(runs), *cols)
    xs, ys = tab[across].to_numpy(float), tab[metric].to_numpy(float)
    if continuous:
        return metric_robustness(xs, ys, tab[continuous].to_numpy(float), bootstrap=bootstrap, random_state=0).as_dict()
    return detect_transition(xs, ys, bootstrap=bootstrap, random_state=0).as_dict()


# --- forecasting a crossing -----------------------------------------------------------------------------


def record_forecast(
    store: str | Path,
    metric: str,
    threshold: float,
    *,
    x: str = "params_nonembedding",
    up_to: float | None = None,
    continuous: str | None = None,
    sign: float | None = None,
    n_tokens: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    tables: Any = None,
) -> tuple[dict[str, Any], bool]:
    """Fit ``continuous``'s smooth trend (the capability's twin by default) on the finished runs with x <=
    ``up_to``, forecast the x at which ``metric`` crosses ``threshold`` through the link accuracy ≈
    exp(-L·sign·continuous) (Schaeffer et al. 2023 eq. 2; :func:`forecast_crossing`) and record it in the
    ledger (:func:`record_crossing_forecast`). Returns (record, created)."""

    if x not in SCALE_COLUMNS:
        raise ConfigError(f"expected one of {', '.join(SCALE_COLUMNS)}, got {x!r}", field="x")
    if not math.isfinite(threshold):
        raise ConfigError(f"expected a finite number, got {threshold}", field="threshold")
    cap = capability(metric)
    runs = (tables if tables is not None else _store.load(store)).runs
    d_col = metric if metric in runs else f"final_{cap.metric if cap else metric}"
    cont = continuous or (cap.continuous if cap else None)
    if cap is None and d_col not in runs:
        known = ", ".join(c.metric for c in CAPABILITIES if c.continuous)
        raise ConfigError(f"unknown metric {metric!r}: expected a runs-table column or one of {known}", field="metric")
    if cont is None:
        raise ConfigError(f"{metric!r} has no known continuous twin: name one", field="continuous")
    c_col = cont if cont in runs else f"final_{cont}"
    for col, what in ((d_col, "metric"), (c_col, "continuous")):
        if col not in runs:
            raise StoreError(f"{store}: no run logged {col.removeprefix('final_')} ({what})")
    sgn = sign if sign is not None else (cap.sign if cap and cont == cap.continuous else 1.0)
    L = n_tokens if n_tokens is not None else (cap.n_tokens if cap else 1)
    if L < 1:
        raise ConfigError(f"expected an integer >= 1, got {L}", field="n_tokens")
    tab = _cols(_finished(runs).set_index("id"), x, c_col)
    tab = tab[tab[x] > 0]
    fit = tab if up_to is None else tab[tab[x] <= up_to]
    if len(fit) < 5:
        where = "" if up_to is None else f" with {x} <= {up_to:g}"
        raise StoreError(
            f"{store}: {len(fit)} finished runs{where} logged {c_col.removeprefix('final_')}; "
            "the forecast needs at least 5"
        )
    fc = forecast_crossing(
        fit[x].to_numpy(float),
        sgn * fit[c_col].to_numpy(float),
        threshold,
        link=exact_match_link(L),
        rising=True,
        bootstrap=bootstrap,
        random_state=seed,
    )
    link = f"exp(-{L}·({'-' if sgn < 0 else ''}{c_col.removeprefix('final_')}))"
    return record_crossing_forecast(
        store,
        fc,
        x_column=x,
        metric=d_col,
        continuous_metric=c_col,
        fitted_on=[str(i) for i in fit.index],
        link=link,
        link_spec={"name": "exact_match", "n_tokens": L, "of": "loss", "sign": sgn},
        rising=True,
    )
