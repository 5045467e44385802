"""How long must a prompt be? Demonstrations needed to identify one of K tasks, against K (issue 5).

Each run of a ``discrete_tasks`` sweep over K (``scalescope/experiments/prompt_length.toml``) records, through
the ``task_id`` instrument, the number of demonstrations at which accuracy first reaches a target
(``task_id/<set>/demos_needed/<who>``, set ∈ {seen, unseen}, who ∈ {model, ideal, lookup}). This module reads
them from a store (the last evaluation of every run) and fits three growth forms, each with two parameters
and fitted by least squares on the demonstrations themselves, so they compete on equal footing:

* logarithmic  d(K) = a + b ln K      (the ideal observer's law: a wrong task survives a pair w.p. 1/n_out,
  so about ln K / ln n_out pairs single out the task);
* power law    d(K) = a K^b;
* linear       d(K) = a + b K;

and, as the null, a constant d(K) = a (prompts need not grow at all: e.g. a model that only looks up
inputs shown earlier, whose needs do not depend on K). Forms are compared by AIC (n ln(RSS/n) + 2p) and by
leave-one-K-out error (every run at one K held out, predicted from the others: the extrapolation test
Caballero et al. 2022 use to judge functional forms). The held-out error decides the winner; near-ties
(within 2%) go to the simpler form.

On the command line: ``scalescope prompt-length --store DIR [--json]``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeWarning, curve_fit

from ..errors import ConfigError

__all__ = ["FORMS", "GrowthComparison", "GrowthFit", "analyze", "compare_growth", "demos_table", "fit_form"]

PREFIX = "task_id/"


def _constant(K: np.ndarray, a: float) -> np.ndarray:
    return np.full(np.shape(K), a, dtype=float)


def _log(K: np.ndarray, a: float, b: float) -> np.ndarray:
    return a + b * np.log(K)


def _power(K: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.power(K, b)


def _linear(K: np.ndarray, a: float, b: float) -> np.ndarray:
    return a + b * K


FORMS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "constant": (_constant, "a"),
    "log": (_log, "a + b ln K"),
    "power": (_power, "a K^b"),
    "linear": (_linear, "a + b K"),
}


def fit_form(form: str, K: ArrayLike, d: ArrayLike) -> np.ndarray:
    """Least-squares parameters ((a,) or (a, b)) of ``form`` to demonstrations ``d`` at task counts ``K``."""
    K, d = np.asarray(K, float), np.asarray(d, float)
    if form == "constant":
        return np.array([d.mean()])
    if form == "log":
        return np.polyfit(np.log(K), d, 1)[::-1]
    if form == "linear":
        return np.polyfit(K, d, 1)[::-1]
    pos = d > 0
    if pos.sum() >= 2 and np.ptp(K[pos]) > 0:  # start from the log-log line, then fit in linear space
        b0, la0 = np.polyfit(np.log(K[pos]), np.log(d[pos]), 1)
        p0 = [math.exp(la0), b0]
    else:
        p0 = [max(float(d.mean()), 1e-3), 0.0]
    try:
        with warnings.catch_warnings():  # an exact fit has no covariance estimate; only p is used
            warnings.simplefilter("ignore", OptimizeWarning)
            p, _ = curve_fit(_power, K, d, p0=p0, maxfev=20000)
    except RuntimeError:
        p = np.asarray(p0)
    return np.asarray(p, float)


@dataclass
class GrowthFit:
    """One form fitted to (K, demonstrations): parameters, in-sample RSS and AIC, leave-one-K-out RMSE."""

    form: str
    params: np.ndarray
    rss: float
    aic: float
    heldout_rmse: float
    n: int

    def predict(self, K: ArrayLike) -> np.ndarray:
        return FORMS[self.form][0](np.asarray(K, float), *self.params)

    def as_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "equation": FORMS[self.form][1],
            "a": float(self.params[0]),
            "b": float(self.params[1]) if len(self.params) > 1 else None,
            "rss": self.rss,
            "aic": self.aic,
            "heldout_rmse": self.heldout_rmse,
            "n": self.n,
        }


@dataclass
class GrowthComparison:
    """All forms fitted to one series; ``winner``: least held-out error (near-ties: the simpler form);
    ``winner_aic``: least AIC."""

    fits: dict[str, GrowthFit]
    winner: str
    winner_aic: str
    K: np.ndarray = field(repr=False)
    demos: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "winner_aic": self.winner_aic,
            "fits": {k: f.as_dict() for k, f in self.fits.items()},
        }


def compare_growth(K: ArrayLike, demos: ArrayLike) -> GrowthComparison:
    """Fit every form of :data:`FORMS` to (K, demos) (repeats at one K allowed) and compare them by AIC and by
    leave-one-K-out RMSE; needs at least 3 distinct K."""
    Ks, d = np.asarray(K, float), np.asarray(demos, float)
    ok = np.isfinite(Ks) & np.isfinite(d) & (Ks > 0)
    Ks, d = Ks[ok], d[ok]
    uk = np.unique(Ks)
    if len(uk) < 3:
        raise ValueError(f"need demonstrations at 3 or more distinct K to compare growth forms, got {len(uk)}")
    fits = {}
    n = len(d)
    for form in FORMS:
        p = fit_form(form, Ks, d)
        rss = float(((FORMS[form][0](Ks, *p) - d) ** 2).sum())
        aic = n * math.log(max(rss, 1e-12) / n) + 2 * len(p)
        errs = []
        for k in uk:
            test = Ks == k
            q = fit_form(form, Ks[~test], d[~test])
            errs.append((FORMS[form][0](Ks[test], *q) - d[test]) ** 2)
        fits[form] = GrowthFit(form, p, rss, aic, float(math.sqrt(np.concatenate(errs).mean())), n)
    # Ties in held-out error (within 2% + 1e-9: e.g. a flat series, which every form fits) go to the simpler
    # form, in the order of FORMS (constant, then the two-parameter forms).
    best = min(f.heldout_rmse for f in fits.values())
    winner = next(f for f in FORMS if fits[f].heldout_rmse <= best * 1.02 + 1e-9)
    winner_aic = min(fits, key=lambda f: fits[f].aic)
    return GrowthComparison(fits, winner, winner_aic, Ks, d)


def demos_table(runs: pd.DataFrame, metrics: pd.DataFrame, *, metric: str = "demos_needed") -> pd.DataFrame:
    """One row per (run, series): K, seed, demonstrations needed at the run's last task_id evaluation (NaN:
    not reached within the context), and the target accuracy. Empty when no run measured task_id.
    ``metric``: ``"demos_needed"`` (accuracy reaches the target) or ``"demos_needed_logp"`` (mean
    log-probability of the right output reaches ln(target): the continuous twin)."""
    cols = ["id", "K", "seed", "series", "demos", "target", "step"]
    if not len(metrics):
        return pd.DataFrame(columns=cols)
    m = metrics[metrics["metric"].astype(str).str.startswith(PREFIX)]
    dm = m[m["metric"].str.contains(f"/{metric}/", regex=False)]
    if not len(dm):
        return pd.DataFrame(columns=cols)
    last = dm.groupby("id")["step"].transform("max")
    dm = dm[dm["step"] == last]
    tgt = m[m["metric"] == PREFIX + "target"].groupby("id")["value"].last()
    info = runs.set_index("id")
    rows = []
    for r in dm.itertuples(index=False):
        s, _, who = r.metric[len(PREFIX) :].split("/")
        K = info["data.n_tasks"].get(r.id) if "data.n_tasks" in info else None
        if K is None or (isinstance(K, float) and math.isnan(K)):
            continue
        rows.append(
            {
                "id": r.id,
                "K": int(K),
                "seed": info["seed"].get(r.id) if "seed" in info else None,
                "series": f"{s}/{who}",
                "demos": r.value,
                "target": tgt.get(r.id, float("nan")),
                "step": r.step,
            }
        )
    return pd.DataFrame(rows, columns=cols).sort_values(["series", "K", "seed"]).reset_index(drop=True)


def analyze(
    store: str | Path | None = None, *, table: pd.DataFrame | None = None, metric: str = "demos_needed"
) -> dict[str, Any]:
    """Demonstrations needed against K for every series of a store (or of ``table``, see
    :func:`demos_table`), and the growth-form comparison of each series with 3 or more K reached."""
    if table is None:
        from ..store import load

        if store is None:
            raise ConfigError("give a store or a table", field="store")
        t = load(store)
        table = demos_table(t.runs, t.metrics, metric=metric)
    out: dict[str, Any] = {"metric": metric, "target": None, "series": {}}
    if len(table):
        out["target"] = float(table["target"].dropna().iloc[0]) if table["target"].notna().any() else None
    for s, g in table.groupby("series", sort=False):
        by_k = g.groupby("K")["demos"]
        entry: dict[str, Any] = {
            "K": [int(k) for k in by_k.mean().index],
            "demos_mean": [None if math.isnan(v) else float(v) for v in by_k.mean()],
            "runs": [int(c) for c in by_k.size()],
            "not_reached": [int(v) for v in by_k.apply(lambda x: int(x.isna().sum()))],
        }
        try:
            entry["fit"] = compare_growth(g["K"], g["demos"]).as_dict()
        except ValueError as e:
            entry["fit"] = None
            entry["fit_note"] = str(e)
        out["series"][s] = entry
    return out
