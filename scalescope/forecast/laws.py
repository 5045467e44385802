"""Scaling-law forecasts: record a law's prediction of a run's final loss *before* the run exists, score
it after (the ledger: :mod:`scalescope.forecast.ledger`).

A fit that is only ever compared with the points it was fitted on says little about extrapolation. The
ledger makes the check routine: :func:`record_forecast` fits the law on the store's finished runs and
writes ``STORE/forecasts/<id>.json`` (law, fitted-on run ids, target, predicted final val loss, 95%
prediction interval, time, scalescope version); :func:`~scalescope.forecast.ledger.score_store` later
scores every forecast whose target has finished runs and writes the score back.

A target matches a finished run when every given coordinate matches: N and D within a relative
tolerance of 1e-6 (D is compared with both the tokens trained and the run's ``train.tokens`` budget,
which differ when the budget is not a whole number of steps), C within 1% (of ``flops`` or
``train.flops``). Several matching runs (seeds) are averaged.

The id is a hash of what determines the prediction (law, options, target, fitted-on runs, version), so
recording the same forecast twice is a no-op. A target that already has runs at recording time is
allowed, but those runs are left out of the fit and the record says ``"target_existed": true``.
These records have no ``kind`` field (they predate kinds): they are the ledger's default kind,
:data:`RECORD_KIND`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, StoreError
from ..jsonable import jsonable
from ..laws.base import Law
from ..laws.chinchilla import ChinchillaLaw
from ..laws.power import SaturatingPowerLaw
from ..store import load
from ..version import __version__
from .ledger import forecast_id, kind_of, now, register_kind, write_record

__all__ = [
    "LEVEL",
    "RECORD_KIND",
    "X_COORD",
    "final_points",
    "make_forecast",
    "match_mask",
    "record_forecast",
    "score_law_runs",
    "score_record",
    "target_text",
]

RECORD_KIND = "scaling_law"  # records of this kind have no "kind" field: the ledger's default kind
LEVEL = 0.95
N_RTOL = 1e-6  # N and D are integers in practice: "the same run shape"
D_RTOL = 1e-6
C_RTOL = 0.01  # a FLOP budget is hit only to within a step's worth of tokens
X_COORD = {"params": "N", "tokens": "D", "flops": "C"}


# --- the store as points -------------------------------------------------------------------------------


def final_points(runs: pd.DataFrame, count: str = "nonembedding") -> pd.DataFrame:
    """Finished runs with positive N, tokens and final val loss, as columns id, N, D, C, loss (plus the
    configured budgets D_budget, C_budget, NaN when unset). N is non-embedding unless ``count="total"``."""
    if count not in ("nonembedding", "total"):
        raise ConfigError(f"expected nonembedding or total, got {count!r}", field="count")
    cols = {"id": "id", f"params_{count}": "N", "tokens": "D", "flops": "C", "final_val_loss": "loss"}
    if runs.empty or "status" not in runs:
        return pd.DataFrame(columns=[*cols.values(), "D_budget", "C_budget"])
    done = runs[runs["status"] == "finished"]
    pts = done[list(cols)].rename(columns=cols).reset_index(drop=True)
    for c in ("N", "D", "C", "loss"):
        pts[c] = pd.to_numeric(pts[c], errors="coerce").astype(float)
    for src, dst in (("train.tokens", "D_budget"), ("train.flops", "C_budget")):
        vals = done[src].to_numpy() if src in done else [math.nan] * len(done)
        pts[dst] = pd.to_numeric(pd.Series(vals), errors="coerce").astype(float).to_numpy()
    good = np.isfinite(pts[["N", "D", "C", "loss"]].to_numpy()).all(axis=1) & (pts[["N", "D", "loss"]] > 0).all(axis=1)
    return pts[good].reset_index(drop=True)


def _close(a: pd.Series, b: float, rtol: float) -> np.ndarray:
    return np.abs(a.to_numpy(dtype=float) - b) <= rtol * abs(b)


def match_mask(points: pd.DataFrame, target: dict[str, float]) -> np.ndarray:
    """Which points hit ``target`` (keys among N, D, C): every given coordinate must match."""
    mask = np.ones(len(points), dtype=bool)
    if target.get("N") is not None:
        mask &= _close(points["N"], target["N"], N_RTOL)
    if target.get("D") is not None:
        mask &= _close(points["D"], target["D"], D_RTOL) | _close(points["D_budget"], target["D"], D_RTOL)
    if target.get("C") is not None:
        mask &= _close(points["C"], target["C"], C_RTOL) | _close(points["C_budget"], target["C"], C_RTOL)
    return mask


def _store_points(store: str | Path, count: str) -> pd.DataFrame:
    runs = load(store).runs
    pts = final_points(runs, count)
    if pts.empty:
        raise StoreError(f"{store}: no finished runs with a final val loss ({len(runs)} runs in all)")
    return pts


# --- recording ------------------------------------------------------------------------------------------


def _check_target(law: str, x: str | None, target: dict[str, float]) -> None:
    for k, v in target.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"must be a positive number, got {v:g}", field=f"target.{k}")
    if law == "chinchilla":
        if target.get("N") is None or target.get("D") is None:
            raise ConfigError("law='chinchilla' needs target N and D", field="target")
    elif law == "power":
        if x not in X_COORD:
            raise ConfigError(f"expected one of {', '.join(X_COORD)}, got {x!r}", field="x")
        if target.get(X_COORD[x]) is None:
            raise ConfigError(f"law='power' with x={x!r} needs target {X_COORD[x]}", field="target")
    else:
        raise ConfigError(f"expected chinchilla or power, got {law!r}", field="law")


def _fit(law: str, x: str | None, pts: pd.DataFrame, bootstrap: int, seed: int) -> tuple[Law, list[str]]:
    """Fit the law on ``pts``; return it and the feature columns it takes."""
    if law == "chinchilla":
        model: Law = ChinchillaLaw(bootstrap=bootstrap, random_state=seed)
        feats = ["N", "D"]
    else:
        model = SaturatingPowerLaw(bootstrap=bootstrap, random_state=seed)
        feats = [X_COORD[x]]  # type: ignore[index]
    # Bootstrap resamples of few points can send an exponent far out; numpy's overflow warnings there are noise.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        model.fit(pts[feats].to_numpy(dtype=float), pts["loss"].to_numpy(dtype=float))
    return model, feats


def make_forecast(
    store: str | Path,
    target: dict[str, float | None],
    *,
    law: str = "chinchilla",
    x: str | None = None,
    count: str = "nonembedding",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit ``law`` on the store's finished runs and return a forecast record for ``target`` (not written).

    For ``law="power"`` (y = E + A·x^-α in ``x`` ∈ params/tokens/flops), the other given target coordinates
    select the runs fitted on (e.g. ``x="params"`` with a target D fits L(N) at that D).
    """
    given = {k: float(v) for k, v in target.items() if v is not None}
    _check_target(law, x, given)
    if bootstrap < 1:
        raise ConfigError(f"must be >= 1 for an interval, got {bootstrap}", field="bootstrap")
    pts = _store_points(store, count)
    existing = match_mask(pts, given)
    fit_pts = pts[~existing]
    if law == "power":
        others = {k: v for k, v in given.items() if k != X_COORD[x]}  # type: ignore[index]
        fit_pts = fit_pts[match_mask(fit_pts, others)]
    if fit_pts.empty:
        raise StoreError(f"{store}: no finished runs to fit on (other than the target's)")
    model, feats = _fit(law, x, fit_pts, bootstrap, seed)
    Xt = np.array([[given[f] for f in feats]])
    pred = float(model.predict(Xt)[0])
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = model.predict_interval(Xt, LEVEL, kind="prediction")
    content = {
        "law": "chinchilla" if law == "chinchilla" else "saturating_power",
        "x": x if law == "power" else None,
        "count": count,
        "metric": "final_val_loss",
        "target": given,
        "fitted_on": sorted(fit_pts["id"]),
        "bootstrap": bootstrap,
        "seed": seed,
        "scalescope_version": __version__,
    }
    return jsonable(
        {
            "id": forecast_id(content),
            **content,
            "predicted": pred,
            "interval": [float(lo[0]), float(hi[0])],
            "level": LEVEL,
            "interval_kind": "prediction",  # bootstrap of the law plus the fit's residual scatter
            "params": model.params_,
            "ci": model.ci_,
            "r2": model.r2_,
            "rmsle": model.rmsle_,
            "n_points": model.n_points_,
            "target_existed": bool(existing.any()),
            "created_at": now(),
            "score": None,
        }
    )


def record_forecast(store: str | Path, target: dict[str, float | None], **options: Any) -> tuple[dict, bool]:
    """Make a forecast and write it to ``STORE/forecasts/<id>.json`` unless that id is already recorded.
    Returns (record, created); an existing record is returned unchanged (its created time is kept)."""
    return write_record(store, make_forecast(store, target, **options))


# --- scoring --------------------------------------------------------------------------------------------


def score_record(rec: dict[str, Any], points: pd.DataFrame) -> dict[str, Any] | None:
    """The score of ``rec`` against finished runs ``points`` (see :func:`final_points`), or None when
    its target has no finished run yet. Pure: ``scored_at`` is left to the caller."""
    if kind_of(rec) != RECORD_KIND:  # e.g. a crossing forecast predicts a scale, not a loss
        return None
    pts = points
    if pts.empty:
        return None
    hit = pts[match_mask(pts, rec["target"])]
    if hit.empty:
        return None
    obs = float(hit["loss"].mean())
    pred, (lo, hi) = float(rec["predicted"]), rec["interval"]
    return jsonable(
        {
            "observed": obs,
            "observed_runs": sorted(hit["id"]),
            "error": pred - obs,
            "rel_error": (pred - obs) / obs,
            "covered": bool(lo is not None and hi is not None and lo <= obs <= hi),
        }
    )


def target_text(t: dict[str, float]) -> str:
    """``N=1.2e+04 D=1e+04`` (in N, D, C order, whatever order the record's keys are in)."""
    return " ".join(f"{k}={t[k]:.4g}" for k in ("N", "D", "C") if t.get(k) is not None)


def score_law_runs(rec: dict[str, Any], runs: pd.DataFrame) -> dict[str, Any] | None:
    """:func:`score_record` on a store's runs table (points counted as the record says): the ledger's
    scorer of this kind."""
    return score_record(rec, final_points(runs, rec.get("count", "nonembedding")))


register_kind(RECORD_KIND, score_law_runs, default=True)
