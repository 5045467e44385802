"""Which law do the data support? Candidate laws compared by leave-one-scale-out extrapolation error.

With few runs the full Chinchilla form (5 free parameters) often cannot be pinned down, and a reduced form
(E fixed to a known entropy rate, a shared exponent α = β) extrapolates better. The only direct evidence
for a law's extrapolation is to hide scales from it and predict them (Hoffmann et al. 2022 fig. A5;
Caballero et al. 2022's extrapolation benchmark), so each candidate is judged that way:

* **scale** is the model size N: the distinct values of N (of D when every run has the same N). A fold
  holds out every run of one scale and fits the law on the others (leave-one-scale-out, the grouped
  cross-validation of Hastie, Tibshirani & Friedman 2009, sec. 7.10). A law is checked only where the
  remaining scales can pin its terms in that variable: the free fit needs 3 distinct N for E, A and α
  (2 values of N leave a one-parameter family of equally good fits), E fixed or a shared exponent need 2;
  a law the folds cannot check is reported as such, not ranked. The fold that holds out the largest
  scale is the extrapolation a researcher cares about and is reported on its own.
* a fold's **error** is the largest |relative error| of the held-out runs' predicted final losses; a
  law's **cross-validation error** is the mean over its folds, with the standard error of that mean.
* **choice**: among the laws that fitted every fold (including the largest scale) and whose E is not
  below a known entropy rate (no model beats the source's entropy; 1% tolerance for evaluation noise),
  the one-standard-error rule (Hastie et al. 2009, sec. 7.10.1): the law with the fewest free parameters
  whose cross-validation error is within one standard error of the best.
* the **compute-frontier law** (:mod:`scalescope.laws.frontier`) predicts only the best loss at a compute
  budget, so it is scored on the held-out runs that lie on the compute frontier of all runs and compared,
  on those same runs, with the chosen law; it is reported beside the choice, not ranked with the laws that
  predict every run.

Each candidate is also fitted once on all the points (with the bootstrap) for its parameters and its
identifiability diagnostics (``summary()["diagnostics"]`` where the law provides them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import FitError
from .base import FloatArray, Law
from .chinchilla import ChinchillaLaw
from .frontier import ComputeFrontierLaw, frontier_mask
from .power import PowerLaw, SaturatingPowerLaw

__all__ = [
    "Candidate",
    "CandidateResult",
    "FoldResult",
    "Selection",
    "candidate_laws",
    "compare_laws",
    "tokens_per_param_mask",
]

ENTROPY_TOLERANCE = 0.01  # E below (1 − this)·entropy rate is impossible, not evaluation noise
# Above this held-out error on the largest scale, the choice is the least bad law, and the reason says so.
GOOD_EXTRAPOLATION = 0.05
_FIT_ERRORS = (FitError, ValueError, FloatingPointError, ArithmeticError, np.linalg.LinAlgError)


def tokens_per_param_mask(N: ArrayLike, D: ArrayLike, min_tokens_per_param: float | None) -> NDArray[np.bool_]:
    """Runs in the power-law regime: D/N >= ``min_tokens_per_param`` (all runs when None). Runs trained on
    few tokens per parameter are far from convergence and bend away from the additive form (Hoffmann et
    al. 2022 fit their law on runs of 20 tokens per parameter and more at the compute optimum)."""
    n, d = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    if min_tokens_per_param is None:
        return np.ones(n.shape, dtype=bool)
    if not (math.isfinite(min_tokens_per_param) and min_tokens_per_param > 0):
        raise FitError(f"min_tokens_per_param must be a positive number, got {min_tokens_per_param!r}")
    return np.asarray(d / n >= min_tokens_per_param)


@dataclass(frozen=True)
class Candidate:
    """A law to compare: ``name`` (short key), ``label`` (words), an unfitted ``law`` and the columns it
    takes: ``"ND"`` (N, D), ``"N"``, ``"D"`` or ``"C"`` (the compute-frontier law, on every run's C)."""

    name: str
    label: str
    law: Law
    features: str

    @property
    def free_params(self) -> int:
        return int(getattr(self.law, "n_free_params", len(self.law.param_names)))

    def scales_needed(self) -> int:
        """Distinct scales the fit needs to pin the law's terms in the scale variable (at least 2): the
        amplitude, the exponent unless it is shared with the other variable, and E unless fixed."""
        law = self.law
        if isinstance(law, ChinchillaLaw):
            return 1 + (0 if law.shared_exponent else 1) + (0 if law.fix_E is not None else 1)
        if isinstance(law, ComputeFrontierLaw):
            return 2  # its own check: enough frontier points among the remaining runs
        return max(2, len(law.param_names))


@dataclass
class FoldResult:
    """One held-out scale: errors of the law fitted without it (``error`` says why there are none)."""

    scale: float
    n_train: int
    n_test: int
    rel_errors: list[float] = field(default_factory=list)
    frontier_rel_errors: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def max_abs_rel_error(self) -> float:
        return max((abs(e) for e in self.rel_errors), default=math.nan)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "rel_errors": self.rel_errors,
            "max_abs_rel_error": self.max_abs_rel_error,
            "frontier_rel_errors": self.frontier_rel_errors,
            "error": self.error,
        }


@dataclass
class CandidateResult:
    """A candidate's full-data fit and its held-out errors."""

    candidate: Candidate
    summary: dict[str, Any] | None  # the full-data fit's summary(); None when it failed
    fit_error: str | None
    folds: list[FoldResult]
    eligible: bool = False
    note: str = ""

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def label(self) -> str:
        return self.candidate.label

    def _errors(self) -> list[float]:
        return [f.max_abs_rel_error for f in self.folds if f.error is None and f.rel_errors]

    @property
    def cv_error(self) -> float:
        e = self._errors()
        return float(np.mean(e)) if e else math.nan

    @property
    def cv_se(self) -> float:
        e = self._errors()
        return float(np.std(e, ddof=1) / math.sqrt(len(e))) if len(e) >= 2 else math.nan

    @property
    def largest(self) -> FoldResult | None:
        """The fold that held out the largest scale (None when it was not run)."""
        return self.folds[-1] if self.folds else None

    @property
    def largest_error(self) -> float:
        f = self.largest
        return f.max_abs_rel_error if f is not None and f.error is None else math.nan

    @property
    def frontier_error(self) -> float:
        """Mean over folds of the largest |relative error| on the held-out frontier runs."""
        e = [
            max(abs(x) for x in f.frontier_rel_errors) for f in self.folds if f.error is None and f.frontier_rel_errors
        ]
        return float(np.mean(e)) if e else math.nan

    @property
    def diagnostics(self) -> dict[str, Any] | None:
        d = (self.summary or {}).get("diagnostics")
        return d if isinstance(d, dict) else None

    def as_dict(self) -> dict[str, Any]:
        s = self.summary or {}
        params = {k: s[k] for k in self.candidate.law.param_names if k in s}
        return {
            "name": self.name,
            "label": self.label,
            "free_params": self.candidate.free_params,
            "params": params,
            "ci": s.get("ci"),
            "n_points": s.get("n_points"),
            "r2": s.get("r2"),
            "diagnostics": self.diagnostics,
            "fit_error": self.fit_error,
            "largest_scale_error": self.largest_error,
            "cv_error": self.cv_error,
            "cv_se": self.cv_se,
            "frontier_error": self.frontier_error,
            "folds": [f.as_dict() for f in self.folds],
            "eligible": self.eligible,
            "note": self.note,
        }


@dataclass
class Selection:
    """The comparison: every candidate's result, the chosen law and the reason in words."""

    scale_name: str
    scales: list[float]
    n_points: int
    entropy_rate: float | None
    results: list[CandidateResult]
    skipped: dict[str, str]
    chosen: str | None
    reason: str
    frontier_note: str | None

    def result(self, name: str) -> CandidateResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale_name,
            "scale_definition": (
                f"scale = distinct values of {self.scale_name}; each fold holds out every run of one "
                f"{self.scale_name} and fits on the rest"
            ),
            "criterion": (
                "fold error = max |relative error| of the held-out final losses; cv error = mean over folds; "
                "choice = fewest free parameters within one standard error of the best cv error, among laws "
                "that fitted every fold and whose E is not below the entropy rate"
            ),
            "scales": self.scales,
            "n_points": self.n_points,
            "entropy_rate": self.entropy_rate,
            "candidates": [r.as_dict() for r in self.results],
            "skipped": self.skipped,
            "chosen": self.chosen,
            "reason": self.reason,
            "frontier": self.frontier_note,
        }


# --- candidates -------------------------------------------------------------------------------------------


def candidate_laws(
    X: ArrayLike,
    y: ArrayLike,
    *,
    entropy_rate: float | None = None,
    bootstrap: int = 200,
    random_state: int | None = 0,
    grid: str = "hoffmann",
    n_starts: int | None = 16,
) -> tuple[list[Candidate], dict[str, str]]:
    """The laws worth comparing on points X = (N, D), losses y, and the ones skipped with the reason.

    With several N and several D: the full Chinchilla law, the shared exponent, and with a known entropy
    rate H below the smallest loss: E fixed to H (alone and with the shared exponent) and the floor
    E >= H; the compute-frontier law. With one D (one N): the saturating and the pure power law in N (D).
    ``grid`` and ``n_starts`` are the Chinchilla fits' (16 of the grid's best starts reach the same optimum
    as 64 on these small tables at a quarter of the time, and every candidate is fitted once per scale).
    """
    Xa = np.asarray(X, dtype=float)
    ya = np.asarray(y, dtype=float)
    nN, nD = len(np.unique(Xa[:, 0])), len(np.unique(Xa[:, 1]))
    opts: dict[str, Any] = {"bootstrap": bootstrap, "random_state": random_state}
    cands: list[Candidate] = []
    skipped: dict[str, str] = {}
    if nN >= 2 and nD >= 2:
        chin = {**opts, "grid": grid, "n_starts": n_starts}
        cands.append(Candidate("chinchilla", "Chinchilla (free fit)", ChinchillaLaw(**chin), "ND"))
        cands.append(
            Candidate(
                "chinchilla_shared", "Chinchilla (shared exponent)", ChinchillaLaw(shared_exponent=True, **chin), "ND"
            )
        )
        if entropy_rate is None:
            skipped["chinchilla_fixed_E"] = "no known entropy rate to fix E to"
        elif not entropy_rate < ya.min():
            skipped["chinchilla_fixed_E"] = (
                f"the entropy rate {entropy_rate:.4g} is not below the smallest loss {ya.min():.4g}"
            )
        else:
            h = float(entropy_rate)
            cands.append(
                Candidate(
                    "chinchilla_fixed_E",
                    f"Chinchilla (E fixed to the entropy rate {h:.4g})",
                    ChinchillaLaw(fix_E=h, **chin),
                    "ND",
                )
            )
            cands.append(
                Candidate(
                    "chinchilla_fixed_E_shared",
                    f"Chinchilla (E fixed to the entropy rate {h:.4g}, shared exponent)",
                    ChinchillaLaw(fix_E=h, shared_exponent=True, **chin),
                    "ND",
                )
            )
            cands.append(
                Candidate(
                    "chinchilla_E_floor",
                    f"Chinchilla (E >= the entropy rate {h:.4g})",
                    ChinchillaLaw(E_min=h, **chin),
                    "ND",
                )
            )
        cands.append(Candidate("frontier", "compute frontier L(C) = E + A C^-gamma", ComputeFrontierLaw(**opts), "C"))
        skipped["power_N"] = f"runs span {nD} values of D: a law in N alone would mix them"
        skipped["power_D"] = f"runs span {nN} values of N: a law in D alone would mix them"
    elif nN >= 2 or nD >= 2:
        v = "N" if nN >= 2 else "D"
        other = "D" if v == "N" else "N"
        cands.append(Candidate(f"power_{v}", f"saturating power law in {v}", SaturatingPowerLaw(**opts), v))
        cands.append(Candidate(f"pure_power_{v}", f"pure power law in {v}", PowerLaw(**opts), v))
        skipped["chinchilla"] = f"every run has the same {other}: its term cannot be told apart from E"
    else:
        raise FitError("need runs at 2 or more distinct N or D to compare laws")
    return cands, skipped


# --- comparison -------------------------------------------------------------------------------------------


def _features(c: Candidate, X: FloatArray, C: FloatArray) -> FloatArray:
    return {"ND": X, "N": X[:, :1], "D": X[:, 1:2], "C": C[:, None]}[c.features]


def _fit(law: Law, Xf: FloatArray, y: FloatArray) -> Law:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        return law.fit(Xf, y)


def _run_fold(
    c: Candidate,
    X: FloatArray,
    C: FloatArray,
    y: FloatArray,
    train: NDArray[np.bool_],
    test: NDArray[np.bool_],
    on_frontier: NDArray[np.bool_],
    scale: float,
) -> FoldResult:
    fold = FoldResult(scale=scale, n_train=int(train.sum()), n_test=int(test.sum()))
    if c.features == "C":
        test = test & on_frontier  # it predicts the best loss at a budget: scored on frontier runs only
        fold.n_test = int(test.sum())
        if not test.any():
            fold.error = "no frontier run at this scale"
            return fold
    if train.sum() < c.law.min_points():
        fold.error = f"{int(train.sum())} points left, the law needs {c.law.min_points()}"
        return fold
    Xf = _features(c, X, C)
    try:
        law = _fit(c.law.clone(bootstrap=0), Xf[train], y[train])
        with np.errstate(over="ignore", invalid="ignore"):
            pred = law.predict(Xf[test])
    except _FIT_ERRORS as err:
        fold.error = f"fit failed: {err}"
        return fold
    rel = (pred - y[test]) / y[test]
    if not np.all(np.isfinite(rel)):
        fold.error = "non-finite prediction"
        return fold
    fold.rel_errors = [float(v) for v in rel]
    front = on_frontier[test]
    fold.frontier_rel_errors = [float(v) for v in rel[front]]
    return fold


def _pct(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return "over 1000%" if v > 10 else f"{v:.1%}"


def compare_laws(
    X: ArrayLike,
    y: ArrayLike,
    *,
    C: ArrayLike | None = None,
    entropy_rate: float | None = None,
    candidates: list[Candidate] | None = None,
    bootstrap: int = 200,
    random_state: int | None = 0,
    grid: str = "hoffmann",
    n_starts: int | None = 16,
) -> Selection:
    """Compare candidate laws on points X = (N, D) with final losses y by leave-one-scale-out extrapolation
    (module docstring); ``C``: each run's training compute (default 6·N·D), used by the frontier law;
    ``candidates``: default :func:`candidate_laws` (with ``grid``, ``n_starts``, ``bootstrap``, ``random_state``)."""
    Xa = np.asarray(X, dtype=float)
    ya = np.asarray(y, dtype=float).ravel()
    if Xa.ndim != 2 or Xa.shape[1] != 2 or Xa.shape[0] != ya.size:
        raise FitError(f"X must have one (N, D) row per loss; got X of shape {Xa.shape} and {ya.size} losses")
    if not (np.all(np.isfinite(Xa)) and np.all(Xa > 0) and np.all(np.isfinite(ya)) and np.all(ya > 0)):
        raise FitError("N, D and the losses must be positive and finite")
    Ca = 6.0 * Xa[:, 0] * Xa[:, 1] if C is None else np.asarray(C, dtype=float).ravel()
    skipped: dict[str, str] = {}
    if candidates is None:
        candidates, skipped = candidate_laws(
            Xa,
            ya,
            entropy_rate=entropy_rate,
            bootstrap=bootstrap,
            random_state=random_state,
            grid=grid,
            n_starts=n_starts,
        )
    col, scale_name = (0, "N") if len(np.unique(Xa[:, 0])) >= 2 else (1, "D")
    scale = Xa[:, col]
    scales = np.unique(scale)
    on_frontier = frontier_mask(Ca, ya)
    results = []
    for c in candidates:
        try:
            summary: dict[str, Any] | None = _fit(c.law.clone(), _features(c, Xa, Ca), ya).summary()
            fit_error = None
        except _FIT_ERRORS as err:
            summary, fit_error = None, str(err)
        folds = []
        need = c.scales_needed()
        if len(scales) - 1 >= need:
            for s in scales:
                test = scale == s
                folds.append(_run_fold(c, Xa, Ca, ya, ~test, test, on_frontier, float(s)))
        res = CandidateResult(c, summary, fit_error, folds)
        if not folds:
            res.note = (
                f"not checkable: holding out one of the {len(scales)} values of {scale_name} leaves {len(scales) - 1}, "
                f"and this law needs {need} to pin its {scale_name} term"
            )
        results.append(res)
    chosen, reason = _choose(results, scale_name, entropy_rate, ya.size)
    frontier_note = _frontier_note(results, chosen)
    return Selection(
        scale_name,
        [float(s) for s in scales],
        int(ya.size),
        entropy_rate,
        results,
        skipped,
        chosen,
        reason,
        frontier_note,
    )


def _choose(
    results: list[CandidateResult], scale_name: str, entropy_rate: float | None, n: int
) -> tuple[str | None, str]:
    ranked = [r for r in results if r.candidate.features != "C"]
    for r in ranked:
        notes = []
        if r.summary is None:
            notes.append(f"the fit on all points failed ({r.fit_error})")
        if not r.folds:
            notes.append(r.note or "no fold could be run")
        elif r.largest is None or r.largest.error is not None:
            notes.append("could not be fitted without the largest scale")
        failed = [f for f in r.folds if f.error is not None]
        if failed:
            notes.append(f"failed {len(failed)} of {len(r.folds)} folds")
        E = (r.summary or {}).get("E")
        if entropy_rate is not None and E is not None and E < (1 - ENTROPY_TOLERANCE) * entropy_rate:
            notes.append(f"E = {E:.4g} is below the entropy rate {entropy_rate:.4g}: impossible")
        r.eligible = not notes
        r.note = "; ".join(notes)
    eligible = [r for r in ranked if r.eligible]
    if not eligible:
        why = "; ".join(f"{r.label}: {r.note}" for r in ranked) or "no candidate law"
        return None, f"no law passes the held-out check ({why})"
    best = min(eligible, key=lambda r: r.cv_error)
    se = best.cv_se if math.isfinite(best.cv_se) else 0.0
    close = [r for r in eligible if r.cv_error <= best.cv_error + se]
    # Ties (e.g. the floor E >= H when the free fit's E is above H: the same fit) go to the earlier candidate.
    chosen = min(close, key=lambda r: (r.candidate.free_params, round(r.cv_error, 9)))
    h = chosen.largest
    assert h is not None
    n_scales = len(chosen.folds)
    parts = [
        f"{chosen.label} extrapolates the held-out largest {scale_name} ({scale_name}={h.scale:.4g}, {h.n_test} runs) "
        f"within {_pct(chosen.largest_error)} (mean over {n_scales} held-out scales {_pct(chosen.cv_error)})"
    ]
    others = sorted((r for r in ranked if r is not chosen), key=lambda r: (not r.eligible, r.cv_error))
    if others:
        parts.append(
            "; ".join(
                f"{r.label} within {_pct(r.largest_error)} (mean {_pct(r.cv_error)})"
                + ("" if r.eligible else f" [not eligible: {r.note}]")
                for r in others
            )
        )
    if not chosen.largest_error <= GOOD_EXTRAPOLATION:
        parts.append(
            f"no law extrapolates the held-out largest {scale_name} within {GOOD_EXTRAPOLATION:.0%}: a forecast "
            "from these runs is not to be trusted (more sizes, or budgets in the power-law regime, are needed)"
        )
    if chosen is not best:
        parts.append(
            f"{best.label} has the lowest mean error, but {chosen.label} is within one standard error "
            f"({_pct(se)}) with fewer free parameters ({chosen.candidate.free_params} vs {best.candidate.free_params})"
        )
    full = next((r for r in ranked if r.name == "chinchilla"), None)
    if full is not None and full is not chosen:
        d = full.diagnostics
        if d and d.get("verdict") not in (None, "ok"):
            parts.append(f"the free fit is {d['verdict']}: {d.get('reason')}")
        else:
            parts.append(f"{n} points for {full.candidate.free_params} free parameters in the free fit")
    return chosen.name, "; ".join(parts)


def _frontier_note(results: list[CandidateResult], chosen: str | None) -> str | None:
    fr = next((r for r in results if r.candidate.features == "C"), None)
    if fr is None:
        return None
    if fr.summary is None:
        return f"compute frontier: not fitted ({fr.fit_error})"
    pts = (fr.summary.get("frontier") or {}).get("points")
    text = f"compute frontier ({pts} frontier runs): held-out frontier runs predicted within {_pct(fr.frontier_error)}"
    if not math.isfinite(fr.frontier_error):
        failed = [f.error for f in fr.folds if f.error]
        text = f"compute frontier ({pts} frontier runs): no held-out check ({failed[0] if failed else 'no fold'})"
    if chosen is not None:
        ch = next(r for r in results if r.name == chosen)
        if math.isfinite(ch.frontier_error):
            text += f"; {ch.label} on the same runs: {_pct(ch.frontier_error)}"
    return text
