"""The quantization model of neural scaling checked on ground truth (issue 14, item 3).

Michaud, Liu, Girit & Tegmark 2023 ("The Quantization Model of Neural Scaling", arXiv 2303.13506, sec. 2):
the data are a mixture of skills ("quanta") k = 1, 2, ... used with Zipf frequencies p_k ∝ k^-(α+1); a
model that has learned the n most frequent ones has mean loss L - E ∝ Σ_{k>n} p_k ∝ n^-α. Two ways to set n:

* capacity: each quantum costs a fixed number of parameters, so n ∝ N and L(N) - E ∝ N^-α;
* data: a quantum is learned once it has been seen τ times, D·p_k ≥ τ, so n ∝ D^(1/(α+1)) and
  L(D) - E ∝ D^-α/(α+1) (their "single-epoch" idealization; the same holds for training steps).

What this module measures on a store of runs of the quanta source (``data.kind = "quanta"``), per group of
runs that share one language (:func:`scalescope.analyses.emergence.scale_groups`):

* **sweeps**: the N sweep is the runs at one token budget whose model sizes vary (the budget with the most
  sizes, then the largest: data plentiful); the D sweep the runs of one model size whose token budgets
  vary (the size with the most budgets, then the largest: capacity plentiful);
* **mean loss**: ``final quanta/mean_loss`` (else ``final val_loss``) against N and D, fitted with
  :class:`~scalescope.laws.power.SaturatingPowerLaw` (E + A·x^-a, bootstrap intervals, fit verdict), beside
  the theory's a = α (N) and α/(α+1) (D), and E beside the exact entropy rate;
* **skills learned**: skill k is *learned* when its accuracy on the instrument's probe set is at least
  ``threshold`` (default 0.9, against a chance level of 0.5 for a parity answer); the number learned at the
  end of each run against N and D, a :class:`~scalescope.laws.power.PowerLaw` n = A·x^b, beside the
  theory's b = 1 (N) and 1/(α+1) (D);
* **order**: Spearman's ρ between frequency rank and the scale at which each skill is learned (the smallest
  N or D of the sweep whose run has it at the end; replicates averaged) and, per run, the first evaluation
  step at which it is (ρ over the skills learned at all), with percentile bootstrap intervals over skills;
* **the seed question** (abrupt skills, smooth mean loss): on up to ``transition_skills`` skills, each
  skill's accuracy curve (over N, over D with 6 or more sizes, and over the steps of the run that learned
  most) is tested for an abrupt transition (:func:`~scalescope.analyses.transitions.metric_robustness`:
  accuracy the discontinuous metric, the skill's loss the continuous one, its floor the entropy rate), and
  the mean loss over the same axis by :func:`~scalescope.analyses.transitions.detect_transition`; over
  steps, from the evaluation at which the model answers with bits at all (see :func:`_step_seed_question`);
* **forecast** (:func:`record_forecast`): the skills a larger model will have learned, from n(N) fitted on
  smaller runs, recorded in the forecast ledger as kind :data:`RECORD_KIND` and scored when it exists.

On the command line: ``scalescope quanta --store DIR [--json] [--forecast]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .. import store as _store
from ..errors import ConfigError, FitError, StoreError
from ..forecast.laws import INFORMATIVE_LIMIT
from ..forecast.ledger import forecast_id, load_forecasts, now, write_record
from ..forecast.quanta import (
    ACC,
    DROPPED,
    LEARNED,
    LOSS,
    RECORD_KIND,
    SkillCurves,
    score_forecast,
    score_forecasts,
    skill_curves,
)
from ..jsonable import finite_float, jsonable
from ..laws.power import PowerLaw, SaturatingPowerLaw
from ..version import __version__
from .emergence import scale_groups
from .transitions import detect_transition, metric_robustness

__all__ = [
    "ACC",
    "DEFAULT_THRESHOLD",
    "LOSS",
    "RECORD_KIND",
    "SkillCurves",
    "TARGETS",
    "analyze",
    "choose_sweeps",
    "final_skill_matrix",
    "is_quanta",
    "learned_at",
    "record_forecast",
    "score_forecast",
    "score_forecasts",
    "skill_curves",
    "spearman",
    "theory",
    "wilson",
    "zipf_probs",
]

MEAN_LOSS = "quanta/mean_loss"
DEFAULT_THRESHOLD = 0.9  # learned: clean-rule accuracy >= 0.9, far above the 0.5 chance level of a parity bit
LEVEL = 0.95
# The validation targets: R² (log) of the mean-loss law, E within 2% of the entropy rate, exponents
# within 25% of the theory, skills learned in frequency order with ρ >= 0.8.
TARGETS = {"r2_log": 0.95, "E_rel": 0.02, "exponent_rel": 0.25, "rho": 0.8}
# The quanta source's answers are one bit: ln 2 is the loss of a skill answered at chance (the theory's
# unlearned skill), and a median skill accuracy of 0.4 (chance 0.5, less the probe's sampling noise) says the
# model answers with bits at all: the seed question's step axis starts there (see _step_seed_question).
CHANCE_LOSS = math.log(2)
FORMAT_ACC = 0.4
MIN_TRANSITION_POINTS = 6  # detect_transition's minimum: 4 sigmoid parameters plus held-out points
LOO_MAX_POINTS = 12  # transition tests hold out each point in turn up to this many points, every third beyond
SWEEPS = {"N": ("params_nonembedding", "tokens"), "D": ("tokens", "params_nonembedding")}
THEORY_TEXT = (
    "Michaud et al. 2023 sec. 2: p_k ∝ k^-(alpha+1); learning the n most frequent skills leaves L - E ∝ n^-alpha; "
    "n ∝ N (a fixed number of parameters per skill) gives L(N) - E ∝ N^-alpha; a skill learned once seen tau "
    "times (D·p_k >= tau) gives n ∝ D^(1/(alpha+1)) and L(D) - E ∝ D^-alpha/(alpha+1)"
)


def zipf_probs(alpha: float, n_skills: int) -> np.ndarray:
    """p_k ∝ k^-(α+1) for k = 1..n_skills, normalized (Michaud et al. 2023 sec. 2)."""
    p = np.arange(1, n_skills + 1, dtype=float) ** -(alpha + 1.0)
    return p / p.sum()


def theory(alpha: float) -> dict[str, float]:
    """The quantization model's exponents for Zipf exponent α (see the module docstring): mean loss
    L - E ∝ N^-alpha_N and D^-alpha_D; skills learned n ∝ N^skills_N and D^skills_D."""
    return {"alpha_N": alpha, "alpha_D": alpha / (alpha + 1.0), "skills_N": 1.0, "skills_D": 1.0 / (alpha + 1.0)}


# --- reading the store ----------------------------------------------------------------------------------


def is_quanta(runs: pd.DataFrame) -> pd.Series:
    """Runs of the quanta source: ``data.kind == "quanta"``, or a logged ``quanta/mean_loss``."""
    mask = pd.Series(False, index=runs.index)
    if "data.kind" in runs:
        mask |= runs["data.kind"].astype(str) == "quanta"
    if f"final_{MEAN_LOSS}" in runs:
        mask |= pd.to_numeric(runs[f"final_{MEAN_LOSS}"], errors="coerce").notna()
    return mask


def _language(store: str | Path, g: pd.DataFrame) -> dict[str, Any]:
    """α, the number of skills and the entropy rate of a group's source: meta.json's ``source`` first, the
    config's ``data.*`` fields next; each with where it came from."""
    src = _store.source_meta(store, str(g["id"].iloc[0]))
    out: dict[str, Any] = {}
    for key in ("alpha", "n_skills"):
        v, where = finite_float(src.get(key)), "meta.json source"
        if v is None and f"data.{key}" in g:
            v, where = finite_float(g[f"data.{key}"].iloc[0]), f"config data.{key}"
        out[key], out[f"{key}_from"] = v, where if v is not None else None
    h = pd.to_numeric(g.get("entropy_rate", pd.Series(dtype=float)), errors="coerce").dropna()
    out["entropy_rate"] = float(h.iloc[0]) if len(h) else finite_float(src.get("entropy_rate"))
    return out


def final_skill_matrix(
    store: str | Path, ids_by_x: list[list[str]], curves: dict[str, SkillCurves | None] | None = None
) -> np.ndarray | None:
    """Final per-skill accuracy, one row per scale: the mean over that scale's runs (replicates) of each
    run's last ``quanta/skill_acc``; NaN rows where no run has one; None when no run has any. ``curves``:
    runs' :func:`skill_curves` already read (the others are read from ``store``)."""
    known = curves or {}
    rows: list[np.ndarray | None] = []
    for ids in ids_by_x:
        read = (known[i] if i in known else skill_curves(store, i) for i in ids)
        finals = [c.final_acc for c in read if c is not None]
        rows.append(np.mean(finals, axis=0) if finals and len({len(f) for f in finals}) == 1 else None)
    widths = {len(r) for r in rows if r is not None}
    if len(widths) != 1:
        return None
    (k,) = widths
    return np.stack([r if r is not None else np.full(k, np.nan) for r in rows])


# --- statistics ------------------------------------------------------------------------------------------


def learned_at(x: np.ndarray, acc: np.ndarray, threshold: float) -> np.ndarray:
    """Per skill (columns of ``acc``, rows at ascending ``x``), the first x at which its accuracy reaches
    ``threshold``; inf for a skill never learned."""
    hit = np.nan_to_num(acc, nan=-np.inf) >= threshold
    first = np.argmax(hit, axis=0)
    return np.where(hit.any(axis=0), np.asarray(x, dtype=float)[first], np.inf)


def spearman(a: np.ndarray, b: np.ndarray, *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Spearman's ρ of (a, b) (ties ranked by their mean) with a percentile bootstrap interval over the
    pairs (Efron & Tibshirani 1993 ch. 13); ρ is None when either side is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    out: dict[str, Any] = {"rho": None, "ci": [None, None], "n": n}
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    out["rho"] = float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])
    if bootstrap > 0:
        rng, draws = np.random.default_rng(seed), []
        for start in range(0, bootstrap, 100):  # blocks of 100 resamples: memory stays small for 10^4 skills
            idx = rng.integers(0, n, size=(min(100, bootstrap - start), n))
            ra, rb = rankdata(a[idx], axis=1), rankdata(b[idx], axis=1)
            ra -= ra.mean(axis=1, keepdims=True)
            rb -= rb.mean(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                draws.append((ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1)))
        r = np.concatenate(draws)
        if np.isfinite(r).any():
            lo, hi = np.nanpercentile(r, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
            out["ci"] = [float(lo), float(hi)]
    return out


def wilson(k: int, n: int) -> list[float | None]:
    """Wilson's score interval (95%) of a binomial proportion k/n (Wilson 1927)."""
    if n == 0:
        return [None, None]
    z, p = 1.959963984540054, k / n
    mid, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, mid - half / (1 + z * z / n)), min(1.0, mid + half / (1 + z * z / n))]


def _rel(value: float | None, ref: float | None) -> float | None:
    return None if value is None or not ref else (value - ref) / ref


def _law_summary(law: Any) -> dict[str, Any]:
    diag = law.diagnostics_
    return {
        "params": dict(law.params_),
        "ci": {k: list(v) for k, v in law.ci_.items()},
        "r2_log": law.r2_,
        "n_points": law.n_points_,
        "verdict": None if diag is None else diag.verdict,
        "reason": None if diag is None else diag.reason,
    }


def _loss_fit(x: np.ndarray, y: np.ndarray, exponent: float | None, H: float | None, bootstrap: int, seed: int) -> Any:
    """E + A·x^-a on the mean losses, beside the theory's exponent and the entropy rate."""
    try:
        with np.errstate(all="ignore"):
            law = SaturatingPowerLaw(bootstrap=bootstrap, random_state=seed).fit(x, y)
    except FitError as err:
        return {"error": str(err)}
    out = _law_summary(law)
    a, (alo, ahi) = law.params_["alpha"], law.ci_["alpha"]
    E, (elo, ehi) = law.params_["E"], law.ci_["E"]
    out |= {
        "alpha": a,
        "alpha_ci": [alo, ahi],
        "theory_alpha": exponent,
        "alpha_rel_dev": _rel(a, exponent),
        "theory_in_ci": None if exponent is None else bool(alo <= exponent <= ahi),
        "E": E,
        "E_ci": [elo, ehi],
        "entropy_rate": H,
        "E_rel_dev": _rel(E, H),
        "entropy_in_ci": None if H is None else bool(elo <= H <= ehi),
    }
    # The same law with E held at the exact entropy rate: the exponent the data give once the floor is known.
    if H is not None and np.all(y > H) and len(x) >= 3:
        try:
            with np.errstate(all="ignore"):
                fixed = PowerLaw(bootstrap=bootstrap, random_state=seed).fit(x, y - H)
            out["fixed_E"] = {
                "alpha": fixed.params_["alpha"],
                "alpha_ci": list(fixed.ci_["alpha"]),
                "alpha_rel_dev": _rel(fixed.params_["alpha"], exponent),
                "r2_log": fixed.r2_,
                "verdict": None if fixed.diagnostics_ is None else fixed.diagnostics_.verdict,
            }
        except FitError as err:
            out["fixed_E"] = {"error": str(err)}
    return out


def _count_fit(x: np.ndarray, n: np.ndarray, n_skills: int, exponent: float | None, bootstrap: int, seed: int) -> Any:
    """n = A·x^b on the runs that learned some but not all skills (a count of 0 has no log; n_skills is a
    ceiling the power law does not know), beside the theory's b."""
    inside = (n > 0) & (n < n_skills)
    out: dict[str, Any] = {
        "theory_exponent": exponent,
        "excluded_none_learned": int(np.sum(n == 0)),
        "excluded_all_learned": int(np.sum(n >= n_skills)),
    }
    if np.unique(x[inside]).size < 2 or inside.sum() < 3:
        return out | {"error": f"{int(inside.sum())} runs learned some but not all skills; the fit needs 3 at 2 scales"}
    try:
        with np.errstate(all="ignore"):
            law = PowerLaw(bootstrap=bootstrap, random_state=seed).fit(x[inside], n[inside])
    except FitError as err:
        return out | {"error": str(err)}
    b, (lo, hi) = -law.params_["alpha"], law.ci_["alpha"]
    return (
        out
        | _law_summary(law)
        | {
            "exponent": b,
            "exponent_ci": [-hi, -lo],
            "exponent_rel_dev": _rel(b, exponent),
            "theory_in_ci": None if exponent is None else bool(-hi <= exponent <= -lo),
        }
    )


# --- transitions: the seed question ----------------------------------------------------------------------


def _pick(candidates: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` of ``candidates`` (skill indices in rank order), evenly spread over them."""
    if k <= 0 or len(candidates) == 0:
        return candidates[:0]
    return candidates[np.unique(np.linspace(0, len(candidates) - 1, min(k, len(candidates))).round().astype(int))]


def _transition_brief(t: Any) -> dict[str, Any]:
    return {"abrupt": t.abrupt, "x0": t.x0, "x0_ci": list(t.x0_ci), "width_decades": t.width, "reason": t.reason}


def _seed_question(
    x: np.ndarray,
    acc: np.ndarray,
    loss: np.ndarray | None,
    mean_loss: tuple[np.ndarray, np.ndarray] | None,
    gr: _Group,
    opts: dict[str, Any],
) -> dict[str, Any]:
    """Which of up to ``opts["transition_skills"]`` skills learned inside the range of ``x`` jump, is each jump
    real by the metric-robustness test (accuracy against the skill's loss, whose floor is the entropy rate),
    and is the mean loss (its (x, y)) smooth over the same axis. Rows of ``acc``/``loss`` are at ascending
    ``x``. Inside means at least two points before the first learned one and one after it: the transition
    test holds out interior points, so a jump at either end cannot be told from a smooth trend."""
    out: dict[str, Any] = {"n_points": len(x)}
    if len(x) < MIN_TRANSITION_POINTS or np.unique(x).size < MIN_TRANSITION_POINTS - 1:
        return out | {"error": f"{len(x)} points; the transition test needs {MIN_TRANSITION_POINTS}"}
    H, probs = gr.lang["entropy_rate"], gr.probs
    k = opts["transition_skills"]
    # Leave-one-out over a sweep's few sizes; one fold of every third interior point over a training curve's
    # tens of evaluations (detect_transition's "interleaved"): a tenth of the fits, still 8+ held-out points.
    holdout = "loo" if len(x) <= LOO_MAX_POINTS else "interleaved"
    fit_opts: dict[str, Any] = {
        "bootstrap": opts["transition_bootstrap"],
        "random_state": opts["seed"],
        "holdout": holdout,
    }
    if mean_loss is not None:
        mx, my = mean_loss
        ok = np.isfinite(my) & (mx > 0)
        try:
            t = detect_transition(mx[ok], my[ok], bound=H, direction="decreasing", **fit_opts)
            out["mean_loss"] = _transition_brief(t)
        except (FitError, ValueError) as err:
            out["mean_loss"] = {"error": f"fit failed: {err}"}
    at = learned_at(x, acc, gr.threshold)
    first = np.searchsorted(x, at)  # index of the first learned point (len(x) for a skill never learned)
    candidates = np.flatnonzero((first >= 2) & (first <= len(x) - 2))
    chosen = _pick(candidates, k)
    if loss is not None and H is not None:
        # A skill's expected loss is >= the entropy rate exactly; float32 storage can round it just below.
        loss = np.maximum(loss, H)
    skills, verdicts = [], {"real": 0, "metric artifact": 0, "no jump": 0, "error": 0}
    for i in chosen:
        row: dict[str, Any] = {"rank": int(i) + 1, "p": float(probs[i]) if i < len(probs) else None}
        try:
            if loss is not None:
                r = metric_robustness(x, np.clip(acc[:, i], 0, 1), loss[:, i], continuous_bound=H, **fit_opts)
                row |= {"verdict": r.verdict, "acc": _transition_brief(r.discontinuous)}
                row["loss"] = None if r.continuous is None else _transition_brief(r.continuous)
            else:
                t = detect_transition(x, np.clip(acc[:, i], 0, 1), **fit_opts)
                row |= {"verdict": "abrupt" if t.abrupt else "no jump", "acc": _transition_brief(t), "loss": None}
            verdicts[row["verdict"]] = verdicts.get(row["verdict"], 0) + 1
        except (FitError, ValueError) as err:
            row["error"] = f"fit failed: {err}"
            verdicts["error"] += 1
        skills.append(row)
    n_abrupt = sum(1 for s in skills if s.get("acc", {}).get("abrupt"))
    tested = sum(1 for s in skills if "acc" in s)
    ml = out.get("mean_loss") or {}
    out |= {
        "n_candidates": len(candidates),
        "n_tested": tested,
        "n_abrupt": n_abrupt,
        "fraction_abrupt": n_abrupt / tested if tested else None,
        "fraction_ci": wilson(n_abrupt, tested),
        "verdicts": verdicts,
        "mean_loss_smooth": None if "abrupt" not in ml else not ml["abrupt"],
        "skills": skills,
    }
    if not tested:
        out["error"] = "no skill is learned inside the range (two points before it, one after)"
    return out


# --- per group ------------------------------------------------------------------------------------------


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def choose_sweeps(g: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The N sweep (runs at one token budget, sizes varying) and the D sweep (one model size, budgets
    varying) of a group: for each, the fixed value with the most distinct scales, then the largest one (data
    or capacity most plentiful). ``runs`` is the chosen runs, sorted by scale."""
    out: dict[str, dict[str, Any]] = {}
    for axis, (xcol, fixcol) in SWEEPS.items():
        if xcol not in g or fixcol not in g:
            continue
        t = g.assign(_x=_num(g, xcol), _f=_num(g, fixcol))
        t = t[(t["_x"] > 0) & (t["_f"] > 0)]
        best: tuple[tuple[int, float], pd.DataFrame] | None = None
        for fixed, sub in t.groupby("_f"):
            key = (int(sub["_x"].nunique()), float(fixed))
            if key[0] >= 2 and (best is None or key > best[0]):
                best = (key, sub)
        if best is not None:
            (n_x, fixed), sub = best
            out[axis] = {"x": xcol, "fixed": {fixcol: fixed}, "n_scales": n_x, "runs": sub.sort_values(["_x", "id"])}
    return out


def _loss_column(g: pd.DataFrame) -> str:
    col = f"final_{MEAN_LOSS}"
    if col in g and pd.to_numeric(g[col], errors="coerce").notna().all():
        return col
    return "final_val_loss"


@dataclass
class _Group:
    store: Path
    fields: dict[str, Any]
    runs: pd.DataFrame
    metrics: pd.DataFrame
    lang: dict[str, Any]
    curves: dict[str, SkillCurves | None]
    threshold: float

    @property
    def alpha(self) -> float | None:
        a = self.lang.get("alpha")
        return a if a is not None and a > 0 else None

    @property
    def n_skills(self) -> int | None:
        widths = {c.n_skills for c in self.curves.values() if c is not None}
        if len(widths) == 1:
            return widths.pop()
        n = self.lang.get("n_skills")
        return int(n) if n else None

    @property
    def probs(self) -> np.ndarray:
        k = self.n_skills or 0
        return zipf_probs(self.alpha, k) if self.alpha else np.full(k, np.nan)

    def n_learned(self, rid: str) -> float:
        c = self.curves.get(rid)
        if c is not None:
            return float(np.sum(c.final_acc >= self.threshold))
        # Without artifacts, the instrument's own count (its threshold, which may differ from ours).
        v = self.runs.set_index("id").get(f"final_{LEARNED}", pd.Series(dtype=float)).get(rid)
        return float(v) if v is not None and np.isfinite(v) else math.nan

    def series(self, rid: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        m = self.metrics[(self.metrics["id"] == rid) & (self.metrics["metric"] == metric)]
        m = m.dropna(subset=["value"]).sort_values("step")
        return m["step"].to_numpy(dtype=float), m["value"].to_numpy(dtype=float)


def _sweep_analysis(gr: _Group, axis: str, sw: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    runs: pd.DataFrame = sw["runs"]
    th = theory(gr.alpha) if gr.alpha else {}
    x_all = runs["_x"].to_numpy(dtype=float)
    loss_col = _loss_column(runs)
    y_all = _num(runs, loss_col)
    xs = np.unique(x_all)
    ids_by_x = [[str(i) for i in runs.loc[runs["_x"] == v, "id"]] for v in xs]
    n_all = np.array([gr.n_learned(str(i)) for i in runs["id"]])
    out: dict[str, Any] = {
        "x": sw["x"],
        "fixed": sw["fixed"],
        "n_runs": len(runs),
        "n_scales": len(xs),
        "loss_metric": loss_col.removeprefix("final_"),
        "points": {
            "id": [str(i) for i in runs["id"]],
            "x": x_all.tolist(),
            "mean_loss": y_all.tolist(),
            "skills_learned": n_all.tolist(),
        },
        "ids_by_x": ids_by_x,
        "x_values": xs.tolist(),
    }
    ok = np.isfinite(y_all) & (y_all > 0)
    out["loss_fit"] = (
        _loss_fit(
            x_all[ok], y_all[ok], th.get(f"alpha_{axis}"), gr.lang["entropy_rate"], opts["bootstrap"], opts["seed"]
        )
        if len(xs) >= 2
        else {"error": "one scale"}
    )
    k = gr.n_skills
    if k:
        fin = np.isfinite(n_all)
        out["skills_fit"] = _count_fit(
            x_all[fin], n_all[fin], k, th.get(f"skills_{axis}"), opts["bootstrap"], opts["seed"]
        )
    mat = final_skill_matrix(gr.store, ids_by_x, gr.curves)
    if mat is None:
        out["order"] = {"error": f"no run of the sweep stored {ACC} artifacts"}
        return out
    at = learned_at(xs, mat, gr.threshold)
    learned = np.isfinite(at)
    out["learned_at"] = [None if not np.isfinite(v) else float(v) for v in at]
    out["order"] = {
        "over": axis,
        "n_skills": int(mat.shape[1]),
        "n_learned_somewhere": int(learned.sum()),
        "n_never": int((~learned).sum()),
        **spearman(np.flatnonzero(learned) + 1.0, at[learned], bootstrap=opts["bootstrap"], seed=opts["seed"]),
    }
    if opts["transition_skills"]:
        loss_mat = _final_loss_matrix(gr, ids_by_x)
        out["seed_question"] = _seed_question(xs, mat, loss_mat, (x_all, y_all), gr, opts)
    return out


def _final_loss_matrix(gr: _Group, ids_by_x: list[list[str]]) -> np.ndarray | None:
    rows = []
    for ids in ids_by_x:
        finals = [c.loss[-1] for c in (gr.curves.get(i) for i in ids) if c is not None and c.loss is not None]
        if not finals:
            return None
        rows.append(np.mean(finals, axis=0))
    return np.stack(rows) if len({len(r) for r in rows}) == 1 else None


def _step_order(gr: _Group, opts: dict[str, Any]) -> dict[str, Any]:
    """Per run: ρ between frequency rank and the first evaluation step at which each skill is learned."""
    per_run = []
    for rid in sorted(gr.curves):
        c = gr.curves[rid]
        if c is None:
            continue
        pos = c.steps > 0
        at = learned_at(c.steps[pos], c.acc[pos], gr.threshold)
        ok = np.isfinite(at)
        r = spearman(np.flatnonzero(ok) + 1.0, at[ok], bootstrap=opts["bootstrap"], seed=opts["seed"])
        per_run.append({"id": rid, "n_learned": int(ok.sum()), "n_evaluations": int(pos.sum()), **r})
    rhos = [r["rho"] for r in per_run if r["rho"] is not None]
    return {
        "runs": per_run,
        "median_rho": float(np.median(rhos)) if rhos else None,
        "min_rho": float(np.min(rhos)) if rhos else None,
        "n_runs_with_rho": len(rhos),
    }


def _step_seed_question(gr: _Group, opts: dict[str, Any]) -> dict[str, Any] | None:
    """The seed question over training steps, on the run that learned the most skills. Before a model learns
    any skill it learns the answer's format (accuracy rises from 0 to chance, loss falls from ln V to ln 2):
    a transition of its own that is no skill's. So the axis starts at the first evaluation at which the
    median skill accuracy is at least :data:`FORMAT_ACC`, each skill's loss is clipped at ln 2 (the loss of
    a bit answered at chance) and the mean loss tested is Σ p_k·min(loss_k, ln 2) (the logged mean loss
    when the run stored no skill losses or α is unknown)."""
    have = {rid: c for rid, c in gr.curves.items() if c is not None}
    if not have:
        return None
    rid = max(sorted(have), key=lambda r: float(np.sum(have[r].final_acc >= gr.threshold)))
    c = have[rid]
    formatted = c.steps[(c.steps > 0) & (np.nanmedian(c.acc, axis=1) >= FORMAT_ACC)]
    start = float(formatted.min()) if len(formatted) else math.inf
    keep = c.steps >= start
    loss = None if c.loss is None else np.minimum(c.loss[keep], CHANCE_LOSS)
    probs = gr.probs
    if loss is not None and np.isfinite(probs).all() and len(probs) == loss.shape[1]:
        mean: tuple[np.ndarray, np.ndarray] | None = (c.steps[keep], loss @ probs)
        mean_from = f"sum of p_k·min(loss_k, ln 2) over the {LOSS} artifacts"
    else:
        steps, ml = gr.series(rid, MEAN_LOSS)
        if len(steps) == 0:
            steps, ml = gr.series(rid, "val_loss")
        mean = (steps[steps >= start], ml[steps >= start]) if len(steps) else None
        mean_from = "the logged mean loss"
    res = _seed_question(c.steps[keep], c.acc[keep], loss, mean, gr, opts)
    return {"run": rid, "x": "step", "from_step": start, "mean_loss_from": mean_from, **res}


def _within(v: float | None, limit: float) -> bool | None:
    return None if v is None else abs(v) <= limit


def _at_least(v: float | None, limit: float) -> bool | None:
    return None if v is None else v >= limit


def _checks(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's validation targets, each with its value, whether it is met (None: not measured) and a note."""
    out = []

    def check(name: str, value: Any, target: str, met: bool | None, note: str = "") -> None:
        out.append({"check": name, "value": value, "target": target, "met": met, "note": note})

    within = f"within {TARGETS['exponent_rel']:.0%} of the theory"
    for axis, sw in res["sweeps"].items():
        f = sw.get("loss_fit", {})
        if "error" not in f:
            r2_ok = f["r2_log"] >= TARGETS["r2_log"] and f["verdict"] == "ok"
            target = f">= {TARGETS['r2_log']} R² log, verdict ok"
            check(f"L({axis}) power law", f["r2_log"], target, r2_ok, f"verdict {f['verdict']}")
            e_ok = _within(f["E_rel_dev"], TARGETS["E_rel"])
            check(f"L({axis}) E vs entropy rate", f["E_rel_dev"], f"within {TARGETS['E_rel']:.0%}", e_ok)
            check(
                f"L({axis}) exponent", f["alpha_rel_dev"], within, _within(f["alpha_rel_dev"], TARGETS["exponent_rel"])
            )
        s = sw.get("skills_fit", {})
        if "exponent" in s:
            d = s["exponent_rel_dev"]
            check(f"skills learned vs {axis} exponent", d, within, _within(d, TARGETS["exponent_rel"]))
        rho = sw.get("order", {}).get("rho")
        check(f"order over {axis} (Spearman rho)", rho, f">= {TARGETS['rho']}", _at_least(rho, TARGETS["rho"]))
    rho = res["order_steps"]["median_rho"]
    check("order over steps (median rho)", rho, f">= {TARGETS['rho']}", _at_least(rho, TARGETS["rho"]))
    for where, sq in res["seed_question"].items():
        if not sq or "error" in sq:
            continue
        frac, smooth = sq["fraction_abrupt"], sq["mean_loss_smooth"]
        met = None if frac is None or smooth is None else bool(frac > 0.5 and smooth)
        note = f"{sq['n_abrupt']} of {sq['n_tested']} abrupt; mean loss {'smooth' if smooth else 'abrupt or untested'}"
        check(f"skills abrupt, mean loss smooth (over {where})", frac, "most skills abrupt, mean loss not", met, note)
    return out


def _group_flags(gr: _Group, res: dict[str, Any]) -> list[str]:
    flags = []
    if len(gr.runs) == 1:
        flags.append("one run: no sweep, no fit")
    if gr.alpha is None:
        flags.append("no Zipf exponent alpha (meta.json source or data.alpha): no theory to compare with")
    if gr.lang.get("entropy_rate") is None:
        flags.append("no entropy rate: E is not checked")
    missing = sorted(r for r, c in gr.curves.items() if c is None)
    if missing:
        flags.append(f"{len(missing)} runs without {ACC} artifacts: {', '.join(missing[:5])}")
    if not res["sweeps"] and len(gr.runs) > 1:
        flags.append("no N sweep (one token budget, sizes varying) and no D sweep (one size, budgets varying)")
    k = gr.n_skills
    counts = [c for c in (gr.n_learned(str(r)) for r in gr.runs["id"]) if math.isfinite(c)]
    if k and counts and all(c == 0 for c in counts):
        flags.append(f"no run learned any skill (accuracy >= {gr.threshold:g})")
    elif k and counts and all(c >= k for c in counts):
        flags.append(f"every run learned all {k} skills: the sweep is past the staircase")
    return flags


def analyze(
    store: str | Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    bootstrap: int = 1000,
    seed: int = 0,
    transition_skills: int = 12,
    transition_bootstrap: int = 50,
    tables: Any = None,
) -> dict[str, Any]:
    """Everything ``scalescope quanta --store DIR --json`` prints (see the module docstring): per group of
    finished quanta runs, ``sweeps`` (N, D: mean-loss and skills-learned fits beside the theory, order over
    scale), ``order_steps``, ``seed_question`` (over N, D and steps; ``transition_skills=0`` skips it),
    ``checks`` (the issue's targets) and ``flags``; and the store's quanta ``forecasts``."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"expected a number in (0, 1], got {threshold}", field="threshold")
    if transition_skills < 0:
        raise ConfigError(f"expected an integer >= 0, got {transition_skills}", field="transition_skills")
    t = tables if tables is not None else _store.load(store)
    runs = t.runs
    done = runs[(runs["status"] == "finished") & is_quanta(runs)] if len(runs) else runs
    opts = {
        "bootstrap": bootstrap,
        "seed": seed,
        "transition_skills": transition_skills,
        "transition_bootstrap": transition_bootstrap,
    }
    groups = []
    for fields, _, g in scale_groups(done):
        gr = _Group(
            Path(store),
            fields,
            g,
            t.metrics[t.metrics["id"].isin(set(g["id"]))] if len(t.metrics) else t.metrics,
            _language(store, g),
            {str(r): skill_curves(store, str(r)) for r in g["id"]},
            threshold,
        )
        res: dict[str, Any] = {
            "group": fields,
            "n_runs": len(g),
            "alpha": gr.alpha,
            "alpha_from": gr.lang["alpha_from"],
            "n_skills": gr.n_skills,
            "entropy_rate": gr.lang["entropy_rate"],
            "theory": None if gr.alpha is None else {**theory(gr.alpha), "statement": THEORY_TEXT},
        }
        res["sweeps"] = {axis: _sweep_analysis(gr, axis, sw, opts) for axis, sw in choose_sweeps(g).items()}
        res["order_steps"] = _step_order(gr, opts)
        res["seed_question"] = {axis: sw.get("seed_question") for axis, sw in res["sweeps"].items()}
        res["seed_question"]["step"] = _step_seed_question(gr, opts) if transition_skills else None
        res["checks"] = _checks(res)
        res["flags"] = _group_flags(gr, res)
        groups.append(res)
    forecasts = [r for r in load_forecasts(store) if r.get("kind") == RECORD_KIND] if Path(store).is_dir() else []
    out: dict[str, Any] = {
        "store": str(store),
        "threshold": threshold,
        "n_quanta_runs": len(done),
        "groups": groups,
        "forecasts": forecasts,
    }
    if not len(done):
        out["flags"] = ["no finished runs of the quanta source (data.kind = 'quanta') in the store"]
    unfinished = int(((runs["status"] != "finished") & is_quanta(runs)).sum()) if len(runs) else 0
    if unfinished:
        out.setdefault("flags", []).append(
            f"{unfinished} unfinished quanta run(s) left out (not finished yet, or failed)"
        )
    root = str(Path(store).resolve())
    dropped = {p: why for p, why in DROPPED.items() if str(Path(p).resolve()).startswith(root)}
    if dropped:  # a damaged artifact changes which step is a run's last: never silently
        out["dropped_artifacts"] = dropped
        out.setdefault("flags", []).append(
            f"{len(dropped)} per-skill artifact file(s) left out as damaged: "
            + "; ".join(f"{p}: {why}" for p, why in list(dropped.items())[:3])
            + (" ..." if len(dropped) > 3 else "")
        )
    return jsonable(out)


# --- forecasts: which skills will a larger model have learned? -------------------------------------------
# Recorded here (it needs the fits); scored by scalescope.forecast.quanta, registered with the ledger there.


def _forecast_sizes(sizes: np.ndarray, up_to: float | None, at: float | None) -> tuple[float | None, float | None]:
    """(largest fitted size, forecast size) from the sweep's sizes and the caller's choices (see
    :func:`record_forecast`)."""
    if up_to is None and at is None:
        return (float(sizes[-2]), float(sizes[-1])) if len(sizes) >= 2 else (None, None)
    if at is None:
        larger = sizes[sizes > up_to]
        return up_to, float(larger.min()) if len(larger) else None
    if up_to is None:
        below = sizes[sizes < at]
        return (float(below.max()) if len(below) else None), at
    return up_to, at


def record_forecast(
    store: str | Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    up_to: float | None = None,
    at: float | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    tables: Any = None,
) -> list[tuple[dict[str, Any], bool]]:
    """Per group with an N sweep: fit n(N) = A·N^b (:class:`PowerLaw`) on its runs with N <= ``up_to``,
    predict the number of skills learned at N = ``at`` (a prediction interval for a new run), and record
    that the ``round(n)`` most frequent skills are the learned ones (the model learns in frequency order) in
    the ledger. Defaults: ``at`` the smallest sweep size above ``up_to``; ``up_to`` the largest size below
    ``at`` (all but the largest size when neither is given). Returns [(record, created)]."""
    t = tables if tables is not None else _store.load(store)
    runs = t.runs
    done = runs[(runs["status"] == "finished") & is_quanta(runs)] if len(runs) else runs
    out = []
    problems = []
    for fields, _, g in scale_groups(done):
        sw = choose_sweeps(g).get("N")
        if sw is None:
            problems.append("no N sweep")
            continue
        sizes = np.unique(sw["runs"]["_x"].to_numpy(dtype=float))
        hi, target = _forecast_sizes(sizes, up_to, at)
        if hi is None or target is None:
            problems.append(f"{len(sizes)} sizes: nothing to fit below, or no larger size to forecast (give at)")
            continue
        if target <= hi:
            raise ConfigError(f"the forecast size {target:g} must exceed the largest fitted size {hi:g}", field="at")
        fit = sw["runs"][sw["runs"]["_x"] <= hi * (1 + 1e-9)]
        gr = _Group(Path(store), fields, g, t.metrics.iloc[:0], _language(store, g), {}, threshold)
        gr.curves = {str(r): skill_curves(store, str(r)) for r in fit["id"]}
        k = gr.n_skills
        n = np.array([gr.n_learned(str(r)) for r in fit["id"]])
        x = fit["_x"].to_numpy(dtype=float)
        inside = np.isfinite(n) & (n > 0) & (k is not None) & (n < (k or 0))
        if inside.sum() < 3 or np.unique(x[inside]).size < 2:
            problems.append(f"{int(inside.sum())} runs with N <= {hi:g} learned some but not all skills (needs 3)")
            continue
        with np.errstate(all="ignore"):
            law = PowerLaw(bootstrap=bootstrap, random_state=seed).fit(x[inside], n[inside])
            lo_hi = law.predict_interval(np.array([target]), kind="prediction")
        pred = float(law.predict(np.array([target]))[0])
        lo, hi_n = float(lo_hi[0][0]), float(lo_hi[1][0])
        match = {**{f: v for f, v in fields.items()}, **{c: float(v) for c, v in sw["fixed"].items()}}
        content = {
            "kind": RECORD_KIND,
            "law": RECORD_KIND,
            "x_column": "params_nonembedding",
            "match": match,
            "threshold": threshold,
            "fitted_on": sorted(str(i) for i in fit["id"]),
            "fit_max_x": float(hi),
            "target": {"N": float(target)},
            "params": dict(law.params_),
            "scalescope_version": __version__,
        }
        rhw = (hi_n - lo) / (2 * pred) if pred > 0 and math.isfinite(hi_n - lo) else None
        rec = jsonable(
            {
                "id": forecast_id(content),
                **content,
                "predicted": pred,
                # A count of skills lies in [0, n_skills]: a wider interval says nothing more.
                "interval": [max(lo, 0.0), min(hi_n, float(k)) if k else hi_n],
                # The target size already trained when the forecast was made: scored at once, a check of the
                # method on known data, not a prediction of the future.
                "hindcast": bool(np.any(np.isclose(sizes, target, rtol=1e-6))),
                "level": LEVEL,
                "interval_kind": "bootstrap prediction interval of the skill count n(N)",
                "n_skills": k,
                "predicted_top": int(min(max(round(pred), 0), k or 0)),
                "rel_half_width": rhw,
                "informative_limit": INFORMATIVE_LIMIT,
                "informative": rhw is not None and rhw <= INFORMATIVE_LIMIT,
                "verdict": None if law.diagnostics_ is None else law.diagnostics_.verdict,
                "store": str(Path(store).resolve()),
                "created_at": now(),
                "score": None,
            }
        )
        out.append(write_record(store, rec))
    if not out:
        raise StoreError(f"{store}: no skills forecast can be made ({'; '.join(problems) or 'no quanta runs'})")
    return out
