"""Crossing forecasts: the scale at which a discontinuous metric will cross a threshold, recorded in
the forecast ledger before the runs that reach it exist, and scored once they do.

:func:`forecast_crossing` fits the continuous metric's smooth trend on smaller runs, maps it through a
link (e.g. :func:`~scalescope.laws.trend.exact_match_link`, Schaeffer et al. 2023 eq. 2) and
predicts the crossing with a bootstrap interval; :func:`record_crossing_forecast` writes it to
``STORE/forecasts/<id>.json`` (:mod:`scalescope.forecast.ledger`) as a record of kind :data:`RECORD_KIND`,
and :func:`score_crossing_runs` scores it once larger runs exist.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..errors import FitError
from ..jsonable import jsonable
from ..laws.base import FloatArray
from ..laws.trend import Direction, SmoothTrend, exact_match_link, infer_direction, sorted_xy
from ..version import __version__
from .ledger import forecast_id, now, register_kind, write_record

__all__ = [
    "INFORMATIVE_DECADES",
    "LINKS",
    "RECORD_KIND",
    "CrossingForecast",
    "crossing_record",
    "forecast_crossing",
    "implied_metric",
    "link_from_record",
    "link_spec_of",
    "observed_crossing",
    "record_crossing_forecast",
    "score_crossing",
    "score_crossing_runs",
    "trend_from_record",
]

RECORD_KIND = "emergence_crossing"
_LN10 = math.log(10.0)
# A crossing interval counts as informative when its half-width is at most half a decade (the scale is
# predicted within a factor of ~3.2 either way): the analogue for a scale of the law forecasts' ±10% on a
# loss. Wider, the forecast cannot tell a researcher which of two adjacent sweep sizes to train, so an
# observation inside it is "uninformative", not a success.
INFORMATIVE_DECADES = 0.5

# Links from a continuous metric's trend to the discontinuous metric, by the name a record's link_spec uses.
LINKS: dict[str, Callable[..., Callable[[FloatArray], FloatArray]]] = {"exact_match": exact_match_link}
# The link text scalescope emergence --forecast writes: exp(-L·(metric)) or exp(-L·(-metric)).
_LINK_TEXT = re.compile(r"exp\(-(\d+)·\((-?)(.*)\)\)")


@dataclass(frozen=True)
class CrossingForecast:
    """The x at which ``link(trend(x))`` first reaches ``threshold`` (inf: not within ``max_decades``)."""

    x_cross: float
    interval: tuple[float, float]
    level: float
    threshold: float
    fraction_crossing: float  # of bootstrap draws that cross within the searched range
    n_points: int
    fit_max_x: float
    direction: str
    trend_params: dict[str, float]
    trend_ci: dict[str, tuple[float, float]]
    bound: float | None = None  # the trend's bound (None: 1 for an increasing metric, 0 for a decreasing one)
    verdict: str = "ok"  # ok / weak / unidentified, as a law's (see crossing_verdict)
    reason: str = ""
    half_width_decades: float = math.nan  # log10(hi/lo)/2; inf when the interval is open-ended


def half_width_decades(interval: tuple[float, float]) -> float:
    """log10(hi/lo)/2 of a positive interval; inf when open-ended, NaN when unknown."""
    lo, hi = interval
    if not (lo is not None and hi is not None and math.isfinite(lo) and lo > 0 and hi == hi):
        return math.nan
    return math.inf if math.isinf(hi) else 0.5 * math.log10(hi / lo)


def crossing_verdict(trend_verdict: str | None, n_draws: int, fraction: float, hw: float) -> tuple[str, str]:
    """One verdict for a crossing forecast: ``unidentified`` when no resample of the trend could be fitted or
    the trend's own fit is unidentified; ``weak`` when the trend's fit is weak, fewer draws cross than the
    interval's level needs (its upper end is then open), or the interval is wider than
    :data:`INFORMATIVE_DECADES`; ``ok`` otherwise."""
    if n_draws == 0:
        return "unidentified", "every bootstrap resample of the trend failed: no interval"
    if trend_verdict == "unidentified":
        return "unidentified", "the trend's fit is unidentified (see trend_diagnostics)"
    weak = []
    if trend_verdict == "weak":
        weak.append("the trend's fit is weak (see trend_diagnostics)")
    if not math.isfinite(hw):
        weak.append(f"only {fraction:.0%} of the trend's resamples cross within the searched range")
    elif hw > INFORMATIVE_DECADES:
        weak.append(f"the interval spans ±{hw:.2f} decades (informative: at most ±{INFORMATIVE_DECADES:g})")
    if weak:
        return "weak", "; ".join(weak)
    return "ok", f"interval ±{hw:.2f} decades, trend pinned"


def _first_crossing(lx: FloatArray, d: FloatArray, threshold: float, rising: bool) -> FloatArray:
    """Per row of ``d`` (B, G): log x of the first grid crossing, linearly interpolated; inf if none."""
    above = (d >= threshold) if rising else (d <= threshold)
    above &= np.isfinite(d)
    hit = above.any(axis=1)
    i = np.argmax(above, axis=1)
    out = np.full(d.shape[0], np.inf)
    for r in np.flatnonzero(hit):
        k = i[r]
        if k == 0:
            out[r] = lx[0]
            continue
        v0, v1 = d[r, k - 1], d[r, k]
        frac = 0.0 if v1 == v0 else (threshold - v0) / (v1 - v0)
        out[r] = lx[k - 1] + min(max(frac, 0.0), 1.0) * (lx[k] - lx[k - 1])
    return out


def forecast_crossing(
    x: ArrayLike,
    continuous: ArrayLike,
    threshold: float,
    *,
    link: Callable[[FloatArray], FloatArray],
    fit_below: float | None = None,
    direction: Direction = "auto",
    bound: float | None = None,
    rising: bool = True,
    max_decades: float = 6.0,
    bootstrap: int = 1000,
    level: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> CrossingForecast:
    """Predict the scale at which a discontinuous metric crosses ``threshold`` from a continuous one's
    smooth trend (Schaeffer et al. 2023: the continuous metric is what scales predictably).

    Fits the saturating power law (Hoffmann et al. 2022 eq. 2 in one variable, on the gap to ``bound``,
    as in :func:`detect_transition`) to the runs with x ≤ ``fit_below`` (all when None), maps the trend
    through ``link`` (continuous → discontinuous, monotone; e.g. :func:`exact_match_link`) and finds the
    first x ≥ min x where it reaches ``threshold`` (from below when ``rising``), searching up to
    ``max_decades`` beyond the largest fitted x. The interval is the percentile interval of the same
    crossing for each bootstrap draw of the trend (draws that never cross count as +inf).

    Pass the metric that is itself a power law: in Schaeffer et al.'s model that is the per-token loss
    (ℓ ∝ N^−α), not the per-token probability p = exp(−ℓ), whose gap 1 − p saturates at small scale.
    """
    xa, ya = sorted_xy(x, continuous, 5, "x", "continuous")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1 for an interval, got {bootstrap}")
    if fit_below is not None:
        keep = xa <= fit_below
        if keep.sum() < 5:
            raise FitError(f"only {int(keep.sum())} runs with x <= fit_below={fit_below:g}; need at least 5")
        xa, ya = xa[keep], ya[keep]
    dirn = infer_direction(xa, ya, direction)
    trend = SmoothTrend(dirn, bound, bootstrap=bootstrap, random_state=random_state).fit(xa, ya)
    lx = np.linspace(math.log(xa.min()), math.log(xa.max()) + max_decades * _LN10, 4001)
    grid = np.exp(lx)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        central = np.asarray(link(trend.predict(grid)), dtype=float)[None, :]
        draws = np.asarray(link(trend.curves(grid)), dtype=float)
    x_cross = float(np.exp(_first_crossing(lx, central, threshold, rising)[0]))
    lxd = _first_crossing(lx, draws, threshold, rising)
    q = [50 * (1 - level), 50 * (1 + level)]
    if len(lxd):
        lo, hi = np.exp(np.percentile(lxd, q, method="inverted_cdf"))  # no interpolation: inf stays inf
        fraction = float(np.mean(np.isfinite(lxd)))
    else:  # every resample of the trend failed: no interval, and the verdict says so
        lo = hi = fraction = math.nan
    hw = half_width_decades((float(lo), float(hi)))
    diag = trend.law.diagnostics_
    verdict, reason = crossing_verdict(diag.verdict if diag else None, len(lxd), fraction, hw)
    return CrossingForecast(
        x_cross=x_cross,
        interval=(float(lo), float(hi)),
        level=level,
        threshold=float(threshold),
        fraction_crossing=fraction,
        n_points=len(xa),
        fit_max_x=float(xa.max()),
        direction=dirn,
        trend_params=dict(trend.law.params_),
        trend_ci=dict(trend.law.ci_),
        bound=bound,
        verdict=verdict,
        reason=reason,
        half_width_decades=hw,
    )


# --- the forecast ledger -------------------------------------------------------------------------------


def observed_crossing(x: ArrayLike, y: ArrayLike, threshold: float, *, rising: bool = True) -> float | None:
    """The first x at which ``y`` (averaged over repeats of one x) reaches ``threshold``, interpolated
    linearly in log x between the runs that bracket it; None if it never does."""
    xa, ya = sorted_xy(x, y, 1)
    ux = np.unique(xa)
    uy = np.array([ya[xa == v].mean() for v in ux])
    lxd = _first_crossing(np.log(ux), uy[None, :], threshold, rising)[0]
    return float(np.exp(lxd)) if math.isfinite(lxd) else None


def crossing_record(
    fc: CrossingForecast,
    *,
    x_column: str,
    metric: str,
    continuous_metric: str,
    fitted_on: Sequence[str] = (),
    link: str = "",
    link_spec: Mapping[str, Any] | None = None,
    rising: bool = True,
) -> dict[str, Any]:
    """A forecast-ledger record (kind :data:`RECORD_KIND`) of ``fc``: the same fields the ledger's
    other records have (``id``, ``law``, ``target``, ``predicted``, ``interval``, ``score``...) so
    ``scalescope forecast --store DIR --score`` lists and scores it. ``x_column`` and ``metric`` name the runs-table
    columns it will be scored on (e.g. ``params_nonembedding`` and ``final_exact_match``).

    ``link`` is the link as text (for people; part of the id) and ``link_spec`` the same link as data,
    ``{"name": "exact_match", "n_tokens": L, "of": "loss", "sign": s}`` (a name of :data:`LINKS`, its
    options, and the sign the continuous metric was multiplied by before the trend was fitted); the
    trend's direction and bound are stored too, so :func:`implied_metric` rebuilds the forecast curve.
    These three fields are not part of the id, so a forecast recorded before they existed keeps its id."""
    content = {
        "kind": RECORD_KIND,
        "law": "emergence_crossing",
        "x_column": x_column,
        "metric": metric,
        "continuous_metric": continuous_metric,
        "link": link,
        "threshold": fc.threshold,
        "rising": rising,
        "fitted_on": sorted(fitted_on),
        "fit_max_x": fc.fit_max_x,
        "trend_params": fc.trend_params,
        "scalescope_version": __version__,
    }
    return jsonable(
        {
            "id": forecast_id(content),
            **content,
            "target": {},
            "predicted": fc.x_cross,
            "interval": list(fc.interval),
            "level": fc.level,
            "interval_kind": "bootstrap of the trend",
            "fraction_crossing": fc.fraction_crossing,
            "n_points": fc.n_points,
            "trend_ci": fc.trend_ci,
            "trend_direction": fc.direction,
            "trend_bound": fc.bound,
            "link_spec": None if link_spec is None else dict(link_spec),
            "verdict": fc.verdict,
            "reason": fc.reason,
            "half_width_decades": fc.half_width_decades,
            "informative_limit_decades": INFORMATIVE_DECADES,
            "informative": fc.half_width_decades <= INFORMATIVE_DECADES,
            "created_at": now(),
            "score": None,
        }
    )


def record_crossing_forecast(store: str | Path, fc: CrossingForecast, **record_options: Any) -> tuple[dict, bool]:
    """Write :func:`crossing_record` to ``STORE/forecasts/<id>.json`` unless that id is already there.
    Returns (record, created), as :func:`scalescope.forecast.laws.record_forecast`."""
    return write_record(store, crossing_record(fc, **record_options))


def score_crossing(rec: dict[str, Any], x: ArrayLike, y: ArrayLike) -> dict[str, Any] | None:
    """Score a crossing record against observed runs (x, discontinuous metric y), or None while no run
    is larger than the largest fitted one. Scored when the observed metric crosses the threshold (then
    ``observed`` is the interpolated crossing and ``covered`` says whether it is in the interval) or when
    runs reach past the interval's upper end without crossing (``observed`` None, not covered).
    Errors are in decades (``log10_error`` = log10 predicted/observed) and relative (``rel_error``).
    ``inside``: the observation lies in the interval; ``informative``: the interval's half-width is at most
    the record's limit (:data:`INFORMATIVE_DECADES`); ``covered``: both; ``status``: ``covered``, ``missed``
    (informative, observation outside) or ``uninformative``, as for law forecasts."""
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0)
    xa, ya = xa[ok], ya[ok]
    if len(xa) == 0 or xa.max() <= float(rec["fit_max_x"]):
        return None
    obs = observed_crossing(xa, ya, float(rec["threshold"]), rising=bool(rec.get("rising", True)))
    lo, hi = rec["interval"]
    hi = math.inf if hi is None else float(hi)
    lo = math.nan if lo is None else float(lo)
    limit = float(rec.get("informative_limit_decades") or INFORMATIVE_DECADES)
    hw = half_width_decades((lo, hi))
    informative = bool(hw <= limit)

    def verdict(inside: bool) -> dict[str, Any]:
        status = "uninformative" if not informative else ("covered" if inside else "missed")
        return {"inside": inside, "informative": informative, "covered": inside and informative, "status": status}

    if obs is None:
        if xa.max() <= hi:
            return None  # not crossed yet, but not past the interval either
        return {
            "observed": None,
            "observed_max_x": float(xa.max()),
            "error": None,
            "rel_error": None,
            "log10_error": None,
            **verdict(False),
            # Runs past the upper end without a crossing: the forecast is wrong however wide it was.
            "status": "missed",
        }
    # A forecast of "never within the searched range" is stored as predicted null.
    pred = math.inf if rec["predicted"] is None else float(rec["predicted"])
    finite = math.isfinite(pred)
    return {
        "observed": obs,
        "observed_max_x": float(xa.max()),
        "error": pred - obs if finite else None,
        "rel_error": (pred - obs) / obs if finite else None,
        "log10_error": math.log10(pred / obs) if finite else None,
        **verdict(bool(math.isfinite(lo) and lo <= obs <= hi)),
    }


def score_crossing_runs(rec: dict[str, Any], runs: pd.DataFrame) -> dict[str, Any] | None:
    """:func:`score_crossing` on a store's runs table (finished runs, the record's ``x_column`` and
    ``metric`` columns); None when those columns or finished runs are missing."""
    if runs.empty or "status" not in runs or rec["x_column"] not in runs or rec["metric"] not in runs:
        return None
    done = runs[runs["status"] == "finished"]
    xs = pd.to_numeric(done[rec["x_column"]], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(done[rec["metric"]], errors="coerce").to_numpy(dtype=float)
    out = score_crossing(rec, xs, ys)
    if out is not None:
        ok = np.isfinite(xs) & np.isfinite(ys)
        out["observed_runs"] = sorted(done["id"][ok])
    return out


# --- rebuilding a record's curves ------------------------------------------------------------------------


def link_spec_of(rec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record's link as data (see :func:`crossing_record`): its ``link_spec``, or, for a record written
    before that field existed, parsed from its ``link`` text (``exp(-L·(...))``, the only form
    ``scalescope emergence --forecast`` wrote); None when neither says."""
    spec = rec.get("link_spec")
    if isinstance(spec, Mapping):
        return dict(spec)
    m = _LINK_TEXT.fullmatch(str(rec.get("link") or ""))
    if m is None:
        return None
    return {"name": "exact_match", "n_tokens": int(m.group(1)), "of": "loss", "sign": -1.0 if m.group(2) else 1.0}


def link_from_record(rec: Mapping[str, Any]) -> Callable[[FloatArray], FloatArray] | None:
    """The record's link as a function (trend value -> discontinuous metric), or None when unknown."""
    spec = link_spec_of(rec)
    if spec is None or spec.get("name") not in LINKS:
        return None
    options = {k: v for k, v in spec.items() if k not in ("name", "sign")}
    return LINKS[spec["name"]](**options)


def trend_from_record(rec: Mapping[str, Any]) -> SmoothTrend | None:
    """The continuous metric's fitted trend (in the sign-adjusted units it was fitted in), rebuilt from
    the record's ``trend_params``; None when they are missing. A record without ``trend_direction`` was
    written by ``scalescope emergence --forecast`` before it was stored: its trend is a falling loss-like
    quantity with floor 0 (the capability twins' sign makes it so)."""
    p = rec.get("trend_params") or {}
    if not {"E", "A", "alpha"} <= set(p):
        return None
    return SmoothTrend.from_params(rec.get("trend_direction") or "decreasing", p, rec.get("trend_bound"))


def implied_metric(rec: Mapping[str, Any], x: ArrayLike) -> FloatArray | None:
    """The discontinuous metric the forecast implies at scales ``x`` (> 0): ``link(trend(x))``, the curve
    whose crossing of the threshold is the prediction; None when the record's link or trend is unknown."""
    link, trend = link_from_record(rec), trend_from_record(rec)
    if link is None or trend is None:
        return None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.asarray(link(trend.predict(np.asarray(x, dtype=float))), dtype=float)


register_kind(RECORD_KIND, score_crossing_runs)
