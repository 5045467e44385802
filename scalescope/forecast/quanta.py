"""Skills forecasts (``scalescope quanta --forecast``): which skills a larger model will have learned, scored
once a finished run of its size exists. Recorded by :func:`scalescope.analyses.quanta.record_forecast` (it needs
the fits); read and scored here, where the ledger finds every record kind (:mod:`scalescope.forecast`).

A record predicts the number of skills learned at the target size (with an interval; informative when its
half-width is at most 10%, as law forecasts) and that they are the ``predicted_top`` most frequent ones. The
score compares the count (covered / missed / uninformative) and, from the run's per-skill artifacts, the
predicted set against the learned set (precision, recall, Jaccard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import store as _store
from ..jsonable import jsonable
from ..rundir import RunDir, atomic_write_json
from .ledger import forecasts_dir, load_forecasts, now, register_kind

__all__ = [
    "ACC",
    "LEARNED",
    "LOSS",
    "RECORD_KIND",
    "SkillCurves",
    "match_runs",
    "score_forecast",
    "score_forecasts",
    "skill_curves",
]

# The per-skill instrument's names (scalescope/instruments/quanta.py).
ACC, LOSS = "quanta/skill_acc", "quanta/skill_loss"
LEARNED = "quanta/skills_learned"
RECORD_KIND = "quanta_skills"


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


@dataclass(frozen=True)
class SkillCurves:
    """One run's per-skill probe results: ``steps`` (S,), ``acc`` and ``loss`` (S, n_skills), skills in
    frequency order (index 0 the most frequent); ``loss`` is None when the run stored no skill losses."""

    steps: np.ndarray
    acc: np.ndarray
    loss: np.ndarray | None

    @property
    def final_acc(self) -> np.ndarray:
        return self.acc[-1]

    @property
    def n_skills(self) -> int:
        return int(self.acc.shape[1])


# Every artifact file left out of a run's curves (unreadable, wrong shape, values no probe can give): path ->
# why. Readers of the curves (scalescope quanta, the report) show them, so a damaged store is never silent.
DROPPED: dict[str, str] = {}


def _stack(rd: RunDir, name: str, n_skills: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The artifact's arrays by step as (steps, (S, K) matrix), K the run's skill count (``n_skills`` from its
    meta.json, else the most common length). A file that cannot be read, has another shape, or holds values a
    probe cannot give (non-finite; an accuracy outside [0, 1]; a negative loss) is left out and recorded in
    :data:`DROPPED`; None when no file is left."""
    steps, rows = [], []
    for step, path in rd.artifact_steps(name).items():
        try:
            a = np.load(path, allow_pickle=False)
            row = np.asarray(a, dtype=float)
        except Exception as e:  # OSError, ValueError, EOFError (an empty file), a non-numeric array
            DROPPED[str(path)] = f"unreadable ({type(e).__name__})"
            continue
        steps.append(step)
        rows.append(row)
    lengths = [r.size for r in rows if r.ndim == 1]
    if not lengths:
        return None
    k = n_skills if n_skills else max(set(lengths), key=lengths.count)
    keep = []
    for i, r in enumerate(rows):
        hi = 1.0 if name == ACC else np.inf
        if r.ndim != 1 or r.size != k:
            DROPPED[str(rd.artifact_path(name, steps[i]))] = f"shape {r.shape}, expected ({k},)"
        elif not (np.all(np.isfinite(r)) and np.all(r >= 0) and np.all(r <= hi)):
            DROPPED[str(rd.artifact_path(name, steps[i]))] = "values no probe can give (non-finite or out of range)"
        else:
            keep.append(i)
    if not keep:
        return None
    return np.array([steps[i] for i in keep], dtype=float), np.stack([rows[i] for i in keep])


def skill_curves(store: str | Path, run_id: str) -> SkillCurves | None:
    """The run's ``quanta/skill_acc`` (and ``quanta/skill_loss``) artifacts, or None when it has none."""
    rd = _store.Store(store).run_dir(run_id)
    source = (rd.read_meta() or {}).get("source") or {}
    n_skills = source.get("n_skills") if isinstance(source.get("n_skills"), int) else None
    acc = _stack(rd, ACC, n_skills)
    if acc is None:
        return None
    steps, a = acc
    loss = _stack(rd, LOSS, n_skills)
    lmat = None
    if loss is not None and loss[1].shape[1] == a.shape[1]:
        common = np.intersect1d(steps, loss[0])
        steps, a = common, a[np.isin(steps, common)]
        lmat = loss[1][np.isin(loss[0], common)]
    return SkillCurves(steps, a, lmat)


def match_runs(runs: pd.DataFrame, match: dict[str, Any]) -> pd.Series:
    """Runs whose columns equal ``match`` (numbers to 1e-6 relative, anything else as text)."""
    keep = pd.Series(True, index=runs.index)
    for col, v in match.items():
        if col not in runs:
            return pd.Series(False, index=runs.index)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            keep &= np.isclose(pd.to_numeric(runs[col], errors="coerce"), float(v), rtol=1e-6, atol=0)
        else:
            keep &= runs[col].map(lambda c: str(jsonable(c))) == str(v)
    return keep


def _observed_finals(rec: dict[str, Any], runs: pd.DataFrame, store: str | Path | None) -> Any:
    """The target runs (finished, matching the record's group and budget, N = its target) and their
    final per-skill accuracy (mean over replicates) or, without artifacts, their own skill counts."""
    if runs.empty or "status" not in runs or "params_nonembedding" not in runs:
        return None
    cand = runs[(runs["status"] == "finished") & match_runs(runs, rec.get("match") or {})]
    cand = cand[np.isclose(_num(cand, "params_nonembedding"), float(rec["target"]["N"]), rtol=1e-6, atol=0)]
    if cand.empty:
        return None
    ids = sorted(str(i) for i in cand["id"])
    where = store if store is not None else rec.get("store")
    finals = [c.final_acc for c in (skill_curves(where, i) for i in ids) if c is not None] if where else []
    if finals and len({len(f) for f in finals}) == 1:
        return ids, np.mean(finals, axis=0), None
    counts = pd.to_numeric(cand.get(f"final_{LEARNED}", pd.Series(dtype=float)), errors="coerce").dropna()
    return (ids, None, float(counts.mean())) if len(counts) else None


def score_forecast(rec: dict[str, Any], runs: pd.DataFrame, store: str | Path | None = None) -> dict[str, Any] | None:
    """Score a skills forecast once a finished run of its target size exists (None until then): the number
    learned (``observed``, inside the interval, covered when the interval is also informative: ±10%) and,
    with the run's per-skill artifacts (read from ``store``, else the store recorded in ``rec``), the
    predicted set (the ``predicted_top`` most frequent skills) against the learned set."""
    got = _observed_finals(rec, runs, store)
    if got is None:
        return None
    ids, acc, count = got
    n_obs = float(np.sum(acc >= float(rec["threshold"]))) if acc is not None else count
    lo, hi = (math.nan if v is None else float(v) for v in rec["interval"])
    inside = bool(lo <= n_obs <= hi)
    informative = bool(rec.get("informative"))
    pred = float(rec["predicted"])
    out: dict[str, Any] = {
        "observed": n_obs,
        "observed_runs": ids,
        "count_from": "artifacts" if acc is not None else f"the runs' {LEARNED} (the instrument's threshold)",
        "error": pred - n_obs,
        "rel_error": (pred - n_obs) / n_obs if n_obs else None,
        "inside": inside,
        "informative": informative,
        "covered": inside and informative,
        "status": "uninformative" if not informative else ("covered" if inside else "missed"),
    }
    if acc is not None:
        learned = acc >= float(rec["threshold"])
        predicted = np.arange(len(acc)) < int(rec["predicted_top"])
        both = int(np.sum(learned & predicted))
        union = int(np.sum(learned | predicted))
        out["skills"] = {
            "precision": both / int(predicted.sum()) if predicted.any() else None,
            "recall": both / int(learned.sum()) if learned.any() else None,
            "jaccard": both / union if union else None,
            "accuracy": float(np.mean(learned == predicted)),
            "learned_outside_prediction": int(np.sum(learned & ~predicted)),
        }
    return jsonable(out)


def score_forecasts(store: str | Path, runs: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Score the store's skills forecasts that can be scored now (artifacts read from ``store`` itself),
    write changed scores back, and return all of them (as :func:`scalescope.forecast.ledger.score_store`
    does for every kind)."""
    recs = [r for r in load_forecasts(store) if r.get("kind") == RECORD_KIND]
    if not recs:
        return []
    runs = runs if runs is not None else _store.load(store).runs
    for rec in recs:
        new = score_forecast(rec, runs, store)
        old = rec.get("score")
        if new is None or (old and {k: v for k, v in old.items() if k != "scored_at"} == new):
            continue
        rec["score"] = {**new, "scored_at": now()}
        atomic_write_json(forecasts_dir(store) / f"{rec['id']}.json", rec)
    return recs


register_kind(RECORD_KIND, score_forecast)
