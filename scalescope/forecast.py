"""The forecast ledger: record a scaling-law prediction *before* the target run exists, score it after.

A fit that is only ever compared with the points it was fitted on says little about extrapolation. The
ledger makes the check routine: ``scalescope forecast --store DIR --target-n N --target-d D`` fits the law
on the store's finished runs and writes ``DIR/forecasts/<id>.json`` (law, fitted-on run ids, target,
predicted final val loss, 95% prediction interval, time, scalescope version); ``scalescope forecast
--score DIR`` later scores every forecast whose target has finished runs and writes the score back.

A target matches a finished run when every given coordinate matches: N and D within a relative
tolerance of 1e-6 (D is compared with both the tokens trained and the run's ``train.tokens`` budget,
which differ when the budget is not a whole number of steps), C within 1% (of ``flops`` or
``train.flops``). Several matching runs (seeds) are averaged.

A forecast is never rewritten except to add its score: the id is a hash of what determines the
prediction (law, options, target, fitted-on runs, version), so recording the same forecast twice is a
no-op. A target that already has runs at recording time is allowed, but those runs are left out of the
fit and the record says ``"target_existed": true``.

Records of kind ``"emergence_crossing"`` (written by
:func:`scalescope.emergence.transitions.record_crossing_forecast`) predict the *scale* at which a metric
crosses a threshold; ``--score`` scores them once runs larger than those fitted on exist.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .config import ConfigError
from .laws.base import FitError, Law
from .rundir import atomic_write_json
from .store import StoreError, load

__all__ = [
    "add_forecast_parser",
    "final_points",
    "load_forecasts",
    "make_forecast",
    "match_mask",
    "record_forecast",
    "run_forecast",
    "score_record",
    "target_text",
    "score_store",
]

LEVEL = 0.95
N_RTOL = 1e-6  # N and D are integers in practice: "the same run shape"
D_RTOL = 1e-6
C_RTOL = 0.01  # a FLOP budget is hit only to within a step's worth of tokens
X_COORD = {"params": "N", "tokens": "D", "flops": "C"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null so the files are strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# --- the store as points -------------------------------------------------------------------------------


def final_points(runs: pd.DataFrame, count: str = "nonembedding") -> pd.DataFrame:
    """Finished runs with positive N, tokens and final val loss, as columns id, N, D, C, loss (plus the
    configured budgets D_budget, C_budget, NaN when unset). N is non-embedding unless ``count="total"``."""
    if count not in ("nonembedding", "total"):
        raise ConfigError(f"expected nonembedding or total, got {count!r}", field="--count")
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
            raise ConfigError(f"must be a positive number, got {v:g}", field=f"--target-{k.lower()}")
    if law == "chinchilla":
        if target.get("N") is None or target.get("D") is None:
            raise ConfigError("the chinchilla law needs --target-n and --target-d", field="forecast")
    elif law == "power":
        if x not in X_COORD:
            raise ConfigError(f"expected one of {', '.join(X_COORD)}, got {x!r}", field="--x")
        if target.get(X_COORD[x]) is None:
            raise ConfigError(f"--law power --x {x} needs --target-{X_COORD[x].lower()}", field="forecast")
    else:
        raise ConfigError(f"expected chinchilla or power, got {law!r}", field="--law")


def _fit(law: str, x: str | None, pts: pd.DataFrame, bootstrap: int, seed: int) -> tuple[Law, list[str]]:
    """Fit the law on ``pts``; return it and the feature columns it takes."""
    from .laws import ChinchillaLaw, SaturatingPowerLaw

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


def forecast_id(content: dict[str, Any]) -> str:
    """Short content hash (12 hex digits) of what determines a prediction."""
    return hashlib.sha256(json.dumps(_jsonable(content), sort_keys=True).encode()).hexdigest()[:12]


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
    target = {k: float(v) for k, v in target.items() if v is not None}
    _check_target(law, x, target)
    if bootstrap < 1:
        raise ConfigError(f"must be >= 1 for an interval, got {bootstrap}", field="--bootstrap")
    pts = _store_points(store, count)
    existing = match_mask(pts, target)
    fit_pts = pts[~existing]
    if law == "power":
        others = {k: v for k, v in target.items() if k != X_COORD[x]}  # type: ignore[index]
        fit_pts = fit_pts[match_mask(fit_pts, others)]
    if fit_pts.empty:
        raise StoreError(f"{store}: no finished runs to fit on (other than the target's)")
    model, feats = _fit(law, x, fit_pts, bootstrap, seed)
    Xt = np.array([[target[f] for f in feats]])
    pred = float(model.predict(Xt)[0])
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = model.predict_interval(Xt, LEVEL, kind="prediction")
    content = {
        "law": "chinchilla" if law == "chinchilla" else "saturating_power",
        "x": x if law == "power" else None,
        "count": count,
        "metric": "final_val_loss",
        "target": target,
        "fitted_on": sorted(fit_pts["id"]),
        "bootstrap": bootstrap,
        "seed": seed,
        "scalescope_version": __version__,
    }
    return _jsonable(
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
            "created_at": _now(),
            "score": None,
        }
    )


def forecasts_dir(store: str | Path) -> Path:
    return Path(store) / "forecasts"


def record_forecast(store: str | Path, target: dict[str, float | None], **options: Any) -> tuple[dict, bool]:
    """Make a forecast and write it to ``STORE/forecasts/<id>.json`` unless that id is already recorded.
    Returns (record, created); an existing record is returned unchanged (its created time is kept)."""
    rec = make_forecast(store, target, **options)
    path = forecasts_dir(store) / f"{rec['id']}.json"
    if path.exists():
        return json.loads(path.read_text()), False
    atomic_write_json(path, rec)
    return rec, True


# --- scoring --------------------------------------------------------------------------------------------


def load_forecasts(store: str | Path) -> list[dict[str, Any]]:
    """Every record in ``STORE/forecasts``, oldest first (unreadable files are skipped with a note)."""
    recs = []
    for p in sorted(forecasts_dir(store).glob("*.json")):
        try:
            recs.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"note: skipped unreadable forecast {p}: {err}", file=sys.stderr)
    return sorted(recs, key=lambda r: (r.get("created_at") or "", r.get("id") or ""))


def score_record(rec: dict[str, Any], points: pd.DataFrame) -> dict[str, Any] | None:
    """The score of ``rec`` against finished runs ``points`` (see :func:`final_points`), or None when
    its target has no finished run yet. Pure: ``scored_at`` is left to the caller."""
    if rec.get("kind") == "emergence_crossing":  # a scale, not a loss: see score_crossing_runs
        return None
    pts = points
    if pts.empty:
        return None
    hit = pts[match_mask(pts, rec["target"])]
    if hit.empty:
        return None
    obs = float(hit["loss"].mean())
    pred, (lo, hi) = float(rec["predicted"]), rec["interval"]
    return _jsonable(
        {
            "observed": obs,
            "observed_runs": sorted(hit["id"]),
            "error": pred - obs,
            "rel_error": (pred - obs) / obs,
            "covered": bool(lo is not None and hi is not None and lo <= obs <= hi),
        }
    )


def score_store(store: str | Path) -> list[dict[str, Any]]:
    """Score every recorded forecast of ``store`` whose target now has finished runs, write the scores
    back (``score.scored_at``), and return all records. Idempotent: an unchanged score is not rewritten."""
    if not Path(store).is_dir():
        raise StoreError(f"{store}: no such store directory")
    recs = load_forecasts(store)
    if not recs:
        return []
    runs = load(store).runs
    points = {c: final_points(runs, c) for c in ("nonembedding", "total")}
    for rec in recs:
        if rec.get("kind") == "emergence_crossing":  # the scale at which a metric crosses a threshold
            from .emergence.transitions import score_crossing_runs

            new = score_crossing_runs(rec, runs)
        else:
            new = score_record(rec, points[rec.get("count", "nonembedding")])
        old = rec.get("score")
        if new is None or (old and {k: v for k, v in old.items() if k != "scored_at"} == new):
            continue
        rec["score"] = {**new, "scored_at": _now()}
        atomic_write_json(forecasts_dir(store) / f"{rec['id']}.json", rec)
    return recs


# --- command line ---------------------------------------------------------------------------------------


def add_forecast_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``forecast`` to an argparse subparsers object (handler in ``fn``); return its parser."""
    p = subparsers.add_parser(
        "forecast",
        help="record a scaling-law prediction before the run exists, or score recorded ones",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--store", metavar="DIR", help="record a forecast fitted on DIR's finished runs")
    mode.add_argument("--score", metavar="DIR", help="score DIR's recorded forecasts whose targets now exist")
    p.add_argument(
        "--law",
        choices=["chinchilla", "power"],
        default="chinchilla",
        help="chinchilla: L(N, D) = E + A/N^a + B/D^b; power: L = E + A x^-a in one variable",
    )
    p.add_argument("--x", choices=list(X_COORD), default=None, help="with --law power: the variable")
    p.add_argument("--target-n", type=float, default=None, metavar="N", help="target parameter count")
    p.add_argument("--target-d", type=float, default=None, metavar="D", help="target training tokens")
    p.add_argument("--target-flops", type=float, default=None, metavar="C", help="target training FLOPs")
    p.add_argument(
        "--count",
        choices=["nonembedding", "total"],
        default="nonembedding",
        help="which parameter count N is (default nonembedding, as Kaplan et al.)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, metavar="K", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(fn=run_forecast)
    return p


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def target_text(t: dict[str, float]) -> str:
    """``N=1.2e+04 D=1e+04`` (in N, D, C order, whatever order the record's keys are in)."""
    return " ".join(f"{k}={t[k]:.4g}" for k in ("N", "D", "C") if t.get(k) is not None)


def _print_scores(recs: list[dict[str, Any]]) -> None:
    rows = [["id", "law", "target", "predicted", "95% interval", "observed", "rel.err", "covered"]]
    for r in recs:
        s = r.get("score") or {}
        lo, hi = r["interval"]
        rows.append(
            [
                r["id"],
                r["law"],
                target_text(r["target"]),
                _fmt(r["predicted"]),
                f"[{_fmt(lo)}, {_fmt(hi)}]",
                _fmt(s.get("observed")),
                _fmt(s.get("rel_error"), "+.2%") if s else "-",
                ("yes" if s["covered"] else "no") if s else "pending",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def run_forecast(args: argparse.Namespace) -> int:
    """Handler of ``scalescope forecast``; user errors raise ConfigError/StoreError/FitError (one line)."""
    if args.score is not None:
        recs = score_store(args.score)
        if args.json:
            print(json.dumps(recs, indent=1))
        elif not recs:
            print(f"{args.score}: no forecasts recorded")
        else:
            _print_scores(recs)
        return 0
    target = {"N": args.target_n, "D": args.target_d, "C": args.target_flops}
    try:
        rec, created = record_forecast(
            args.store, target, law=args.law, x=args.x, count=args.count, bootstrap=args.bootstrap, seed=args.seed
        )
    except FitError as err:
        raise FitError(f"cannot fit {args.law} on {args.store}: {err}") from None
    if args.json:
        print(json.dumps(rec, indent=1))
        return 0
    where = forecasts_dir(args.store) / f"{rec['id']}.json"
    print(f"forecast {rec['id']} {'recorded in' if created else 'was already recorded in'} {where}")
    lo, hi = rec["interval"]
    print(
        f"  {rec['law']} law fitted on {rec['n_points']} finished runs (N {rec['count']}); "
        f"target {target_text(rec['target'])}"
    )
    print(f"  predicted final val loss {rec['predicted']:.4f} nats, 95% prediction interval [{lo:.4f}, {hi:.4f}]")
    if rec["target_existed"]:
        print(
            "  note: the target already had finished runs; they were left out of the fit (recorded as target_existed)"
        )
    return 0
