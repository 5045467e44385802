"""The induction-head phase change: when does a capability appear during training?

Olsson et al. 2022 ("In-context Learning and Induction Heads") report a *phase change*: early in
training, induction heads form (their prefix-matching score jumps) at the same time as the in-context
learning score drops. The functions here locate such a change in a metric's history, so the two steps
can be compared:

* :func:`transition_step`: the step at which a metric has covered a given fraction (default half) of
  its total change, from its first value to its final level, interpolated linearly between evaluations;
* :func:`threshold_step`: the first step at which a metric crosses a fixed level (e.g. a prefix-matching
  score of 0.4), interpolated the same way;
* :func:`phase_change`: both, for the induction score and the ICL score of one stored run;
* :func:`phase_rows`: :func:`phase_change` for every run of a store that ran those instruments.

Across scale (N, D, C) or steps, :mod:`scalescope.analyses.transitions` asks whether a change is abrupt
and :mod:`scalescope.analyses.emergence` applies it to a store.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import store as _store
from ..jsonable import jsonable
from ..rundir import RunDir

__all__ = ["phase_change", "phase_rows", "threshold_step", "transition_step"]


def _crossing(steps: np.ndarray, values: np.ndarray, level: float, rising: bool) -> float | None:
    above = values >= level if rising else values <= level
    if not above.any():
        return None
    i = int(np.argmax(above))
    if i == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    frac = 0.0 if v1 == v0 else (level - v0) / (v1 - v0)
    return float(s0 + min(max(frac, 0.0), 1.0) * (s1 - s0))


def threshold_step(steps: ArrayLike, values: ArrayLike, level: float, *, rising: bool = True) -> float | None:
    """The first step at which ``values`` reach ``level`` (from below when ``rising``, else from above),
    linearly interpolated between the two evaluations that bracket it; None if never."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    return _crossing(s[ok], v[ok], level, rising)


def transition_step(
    steps: ArrayLike, values: ArrayLike, *, fraction: float = 0.5, final_points: int = 3
) -> float | None:
    """The first step at which ``values`` have covered ``fraction`` of their change from the first value
    to the final level (the mean of the last ``final_points`` values), interpolated; None without a
    change."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    s, v = s[ok], v[ok]
    if len(v) < 2:
        return None
    start, end = v[0], float(np.mean(v[-min(final_points, len(v) - 1) :]))
    if start == end:
        return None
    return _crossing(s, v, start + fraction * (end - start), end > start)


def _series(rows: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((r["step"], r["value"]) for r in rows if r["metric"] == metric and r["value"] is not None)
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def phase_change(run_dir: str | Path, *, threshold: float = 0.4) -> dict[str, Any]:
    """The induction-head phase change of one stored run with the ``induction`` and ``icl`` instruments.

    Returns ``max_prefix_matching`` (the best head's score at the end and at its maximum), the step at
    which it first exceeds ``threshold`` (``induction_step``), the half-way steps of the prefix-matching
    score (``induction_transition_step``) and of the ICL score (``icl_transition_step``), and the ICL
    score at the first and last evaluations (``icl_before``, ``icl_after``). Steps are None when the
    metric never gets there.
    """
    rows = RunDir(Path(run_dir)).read_metrics()
    ps, pm = _series(rows, "induction/max_prefix_matching")
    is_, icl = _series(rows, "icl/score")
    out: dict[str, Any] = {"run_dir": str(run_dir), "threshold": threshold}
    if len(pm):
        out |= {
            "max_prefix_matching_final": float(pm[-1]),
            "max_prefix_matching_max": float(pm.max()),
            "induction_step": threshold_step(ps, pm, threshold),
            "induction_transition_step": transition_step(ps, pm),
        }
    if len(icl):
        out |= {
            "icl_before": float(icl[0]),
            "icl_after": float(icl[-1]),
            "icl_transition_step": transition_step(is_, icl),
        }
    a, b = out.get("induction_transition_step"), out.get("icl_transition_step")
    out["transition_gap"] = None if a is None or b is None else abs(a - b)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def phase_rows(store: str | Path, threshold: float = 0.4, tables: Any = None) -> list[dict[str, Any]]:
    """One row per run that ran the ``induction`` or ``icl`` instrument: its model shape, positions and
    seed, and :func:`phase_change`'s numbers. ``tables``: the store's tables when already loaded."""
    t = tables if tables is not None else _store.load(store)  # looked up at call time: tests substitute it
    out = []
    for rec in t.runs.to_dict(orient="records"):
        cfg = rec.get("config") or {}
        if not isinstance(cfg, dict):
            continue
        r = phase_change(Path(store) / "runs" / rec["id"], threshold=threshold)
        if "max_prefix_matching_final" not in r and "icl_before" not in r:
            continue
        m = cfg.get("model", {})
        out.append(
            {
                "id": rec["id"],
                "n_layer": m.get("n_layer"),
                "d_model": m.get("d_model"),
                "positions": m.get("positions", "learned"),
                "seed": cfg.get("seed"),
                "params_nonembedding": jsonable(rec.get("params_nonembedding")),
                **{k: v for k, v in r.items() if k != "run_dir"},
            }
        )
    return out
