"""Identifiability diagnostics of a fitted law: which parameters the data pin down, and one verdict.

A parameter is *pinned* when the data determine it. It is *unpinned* when any of these holds:

- it sits at an optimizer bound (within ``BOUND_RTOL`` relative of the bound; for a bound at 0, when
  setting it exactly to 0 changes no prediction at the data by more than ``BOUND_RTOL`` in the fit's
  space, e.g. E = 7e-14 beside losses of 2, or E exactly 0 after exp underflow);
- the design cannot separate it from other parameters: the Jacobian of the fitted curve at the data
  (columns scaled to unit norm) is rank-deficient and the parameter loads on its null space (local
  identifiability: Rothenberg 1971, "Identification in parametric models", Econometrica 39, theorem 1;
  e.g. Chinchilla's E, A and alpha when every run has the same N), or it has no effect on the fit at all;
- most bootstrap resamples failed (more than ``FAILED_SHARE_MAX``): its interval rests on a minority of
  resamples that could be fitted, a biased sample;
- its 95% bootstrap interval spans more than ``DECADE_LIMIT`` decade (for a parameter of fixed sign:
  amplitudes, floors, exponents), or reaches 0 (the sign itself is then undetermined). An amplitude paired
  with an exponent (A in A·N^(−α)) is judged by its *term at the centre of the data*, A·N_c^(−α) with N_c
  the geometric mean of N, not by A itself: A is the term's value at N = 1, an extrapolation over many
  decades that trades off exponentially against α (on the demo's free Chinchilla fit, B's interval spans
  four decades while its term at the median D spans 0.5); the exponent is judged on its own;
- its interval has zero width although the data are noisy: the resamples did not move it (a stalled
  optimizer or a parameter stuck at a bound), so the interval says nothing.

Verdict (``ok`` / ``weak`` / ``unidentified``):

- ``unidentified``: a parameter of interest (every free parameter but the law's *nuisance* parameters,
  e.g. the amplitudes A and B, which trade off exponentially against their exponents) is unpinned, or two
  nuisance parameters are, or most resamples failed;
- ``weak``: fewer than ``MIN_POINTS_PER_PARAMETER`` points per free parameter, or one nuisance parameter
  unpinned, or more than ``FAILED_SHARE_WEAK`` of the resamples failed, or no bootstrap was run (then only
  bounds and collinearity were checked), or a cross-check (e.g. the variable-projection fit of the
  Chinchilla form) disagrees;
- ``ok`` otherwise.

``MIN_POINTS_PER_PARAMETER = 3``: at least two residual degrees of freedom per parameter. The intervals
here stay calibrated with fewer points when the law is the right one (studentized bootstrap; on the
saturating power law with 1% noise, 200 simulated data sets, 95% parameter intervals covered 92-94.5%
and prediction intervals 94% at 5 points, 1.7 per parameter), but they are wide (the held-out
prediction's half-width was 7.2% at 1.7 points per parameter, 5.1% at 2, 3.2% at 3 and 2.6% at 4: beyond
3 more points buy little), and with so
few residuals left the law's form itself cannot be checked: a wrong law goes unnoticed, the likelier
cause of intervals that miss on real curves. VALIDATION.md, "Diagnostics and calibration", has the
figures and the command.

Intervals of unpinned parameters are not shown as informative: the law's ``ci_`` holds NaN for them, and
the interval as computed (``raw_ci_``) is kept only for inspection.

Pure functions of arrays: no law is imported here (``base`` imports this module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BOUND_RTOL",
    "DECADE_LIMIT",
    "FAILED_SHARE_MAX",
    "FAILED_SHARE_WEAK",
    "MIN_POINTS_PER_PARAMETER",
    "FitDiagnostics",
    "ParameterDiagnostic",
    "assess_fit",
    "collinear_parameters",
    "leverages",
    "numeric_jacobian",
]

FloatArray = NDArray[np.float64]
Verdict = Literal["ok", "weak", "unidentified"]

MIN_POINTS_PER_PARAMETER = 3.0
DECADE_LIMIT = 1.0
FAILED_SHARE_MAX = 0.5
FAILED_SHARE_WEAK = 0.1
BOUND_RTOL = 1e-6
# Singular values of the column-normalised Jacobian below this fraction of the largest mean an exactly
# collinear design: central differences with relative step 1e-5 are accurate to ~1e-10, so 1e-7 is far
# above numerical noise and far below any design that merely correlates its features.
COLLINEAR_RTOL = 1e-7
# A zero-width interval is "degenerate" only when the data are noisy: exact data give exact resamples.
_NOISE_FLOOR = 1e-9
_ORDER: dict[str, int] = {"ok": 0, "weak": 1, "unidentified": 2}


@dataclass(frozen=True)
class ParameterDiagnostic:
    """Whether the data pin one parameter, and why not.

    ``interval_decades``: log10(hi/lo) of its 95% bootstrap interval when the interval has one sign
    (magnitudes for a negative parameter), ``inf`` when it reaches or crosses 0 for a parameter of fixed
    sign, NaN when not assessed (no bootstrap draws, or a signed parameter whose interval crosses 0).
    ``fixed``: fixed by the caller (neither pinned nor unpinned: ``status`` is ``"fixed"``); ``nuisance``:
    judged leniently in the verdict (see the module docstring).
    """

    pinned: bool
    reasons: list[str]
    at_bound: bool
    interval_decades: float
    fixed: bool = False
    nuisance: bool = False
    # What the decade rule judged when not the parameter's own interval (an amplitude's term), and its span.
    judged_on: str = ""
    judged_decades: float = math.nan
    judged_interval: tuple[float, float] = (math.nan, math.nan)

    @property
    def status(self) -> Literal["fixed", "pinned", "unpinned"]:
        if self.fixed:
            return "fixed"
        return "pinned" if self.pinned else "unpinned"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pinned": self.pinned,
            "reasons": list(self.reasons),
            "at_bound": self.at_bound,
            "interval_decades": self.interval_decades,
            "nuisance": self.nuisance,
            "judged_on": self.judged_on or None,
            "judged_decades": self.judged_decades if self.judged_on else None,
            "judged_interval": list(self.judged_interval) if self.judged_on else None,
        }


@dataclass(frozen=True)
class FitDiagnostics:
    """How far a fit can be trusted (see the module docstring for every rule).

    ``points_per_parameter``: points per free (not fixed) parameter; ``parameters``: name ->
    :class:`ParameterDiagnostic`; ``bootstrap_failed_share``: failed / requested resamples (NaN without a
    bootstrap); ``cross_check``: a second method's verdict in words, when one was run; ``verdict`` and
    ``reason`` (one sentence); ``suggestions``: constructor options that could make an unidentified fit
    identifiable (e.g. ``fix_E``), for a caller to phrase in its own terms.
    """

    points_per_parameter: float
    parameters: dict[str, ParameterDiagnostic]
    bootstrap_failed_share: float
    cross_check: str | None
    verdict: Verdict
    reason: str
    n_points: int = 0
    suggestions: list[str] = field(default_factory=list)
    cross_check_agrees: bool | None = None
    # The verdict and reason of the fit alone, before any cross-check (so a repeated check does not stack).
    own: tuple[Verdict, str] | None = None

    @property
    def unpinned(self) -> list[str]:
        """Names of the unpinned (free) parameters."""
        return [k for k, d in self.parameters.items() if d.status == "unpinned"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "n_points": self.n_points,
            "points_per_parameter": self.points_per_parameter,
            "min_points_per_parameter": MIN_POINTS_PER_PARAMETER,
            "bootstrap_failed_share": self.bootstrap_failed_share,
            "cross_check": self.cross_check,
            "cross_check_agrees": self.cross_check_agrees,
            "unpinned": self.unpinned,
            "suggestions": list(self.suggestions),
            "parameters": {k: d.as_dict() for k, d in self.parameters.items()},
        }

    def downgraded(self, to: Verdict, why: str) -> FitDiagnostics:
        """At least as bad as ``to``, with ``why`` added to the reason (a check this module cannot see, e.g.
        an IsoFLOP vertex outside the sizes sampled)."""
        if _ORDER[self.verdict] >= _ORDER[to]:
            return replace(self, reason=f"{self.reason}; {why}")
        return replace(self, verdict=to, reason=f"{self.reason.split(':')[0]}: {why}")

    def with_cross_check(self, agrees: bool, message: str) -> FitDiagnostics:
        """The same diagnostics with a second method's verdict: a disagreement makes an ``ok`` fit ``weak``
        (two methods that should find one optimum found two: the objective is flat or one stopped early)."""
        verdict, reason = self.own or (self.verdict, self.reason)
        own = (verdict, reason)
        if not agrees:
            if _ORDER[verdict] < _ORDER["weak"]:
                verdict = "weak"
                reason = f"the cross-check disagrees ({message})"
            else:
                reason = f"{reason}; the cross-check disagrees too"
        return replace(
            self, cross_check=message, cross_check_agrees=bool(agrees), verdict=verdict, reason=reason, own=own
        )


# --- numerical helpers ------------------------------------------------------------------------------------


def numeric_jacobian(fun: Callable[[FloatArray], FloatArray], p: FloatArray, cols: Sequence[int]) -> FloatArray:
    """d fun / d p_j for j in ``cols`` by central differences, shape (n, len(cols)). Two passes: a relative
    step of 1e-5 (absolute 1e-7 when |p_j| < 1e-8) estimates each column, then the step grows (up to 1% of
    the parameter) until fun moves by about 1e-4: a parameter with a tiny effect (an amplitude whose term
    is 1e-6 of the loss) would otherwise lose its column to rounding, which hides an exact collinearity.
    Non-finite columns (the law is undefined beside p) are NaN."""

    def diff(j: int, h: float) -> FloatArray:
        up, dn = p.copy(), p.copy()
        up[j] += h
        dn[j] -= h
        return (fun(up) - fun(dn)) / (2 * h)

    out = []
    with np.errstate(all="ignore"):
        for j in cols:
            h = 1e-5 * abs(p[j]) if abs(p[j]) > 1e-8 else 1e-7
            col = diff(j, h)
            big = float(np.max(np.abs(col))) if np.all(np.isfinite(col)) else 0.0
            # Larger steps only, and at most 1% of the parameter (truncation error stays ~1e-4 relative).
            h2 = min(1e-4 / big, 1e-2 * max(abs(p[j]), 1e-6)) if big > 0 else h
            if h2 > h:
                col2 = diff(j, h2)
                if np.all(np.isfinite(col2)):
                    col = col2
            out.append(col)
    return np.column_stack(out) if out else np.empty((0, 0))


def _normalised(J: FloatArray) -> tuple[FloatArray, FloatArray]:
    norms = np.linalg.norm(J, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    return J / safe, norms


def collinear_parameters(J: FloatArray, names: Sequence[str], values: FloatArray | None = None) -> dict[str, list[str]]:
    """Parameters the design cannot separate: name -> the others it trades off against (an empty list:
    it has no effect on the fit at all). From the SVD of the column-normalised Jacobian ``J`` (n, k):
    singular values below ``COLLINEAR_RTOL`` of the largest span directions the data cannot see, and a
    parameter is caught when its unit vector has a component of at least 0.25 in that null space (one of
    k exactly proportional columns has sqrt(1 − 1/k) >= 0.71). "No effect" is judged on the elasticity
    |∂f/∂p_j|·|p_j| (``values``: the parameters; units drop out): below 1e-9 at every point."""
    if J.size == 0 or not np.all(np.isfinite(J)):
        return {}
    Jn, _ = _normalised(J)
    out: dict[str, list[str]] = {}
    mag = np.ones(J.shape[1]) if values is None else np.maximum(np.abs(values), 1e-8)
    dead = np.max(np.abs(J), axis=0) * mag < 1e-9
    for j in np.flatnonzero(dead):
        out[names[int(j)]] = []
    live = np.flatnonzero(~dead)
    if len(live) < 2:
        return out
    _, s, Vt = np.linalg.svd(Jn[:, live], full_matrices=True)
    # Directions beyond the number of rows are null too (fewer points than parameters).
    s_full = np.zeros(len(live))
    s_full[: len(s)] = s
    null = Vt[s_full < COLLINEAR_RTOL * s_full[0]]
    if len(null) == 0:
        return out
    load = np.linalg.norm(null, axis=0)
    caught = [names[live[i]] for i in np.flatnonzero(load >= 0.25)]
    for k in caught:
        out[k] = [o for o in caught if o != k]
    return out


def leverages(J: FloatArray) -> FloatArray:
    """Diagonal of the hat matrix J (JᵀJ)⁺ Jᵀ of the linearised fit (Davison & Hinkley 1997, sec. 6.2.2,
    eq. 6.6 for linear models; for nonlinear least squares, the tangent-plane leverage: Bates & Watts
    1988, sec. 2.1), from a rank-revealing SVD so collinear designs are handled. ``J`` (n, k)."""
    n = J.shape[0]
    if J.size == 0 or not np.all(np.isfinite(J)):
        return np.zeros(n)
    Jn, _ = _normalised(J)
    U, s, _ = np.linalg.svd(Jn, full_matrices=False)
    r = int(np.sum(s > COLLINEAR_RTOL * s[0])) if s.size and s[0] > 0 else 0
    return np.sum(U[:, :r] ** 2, axis=1)


# --- the assessment ---------------------------------------------------------------------------------------


def _decades(lo: float, hi: float, fixed_sign: bool) -> float:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    if lo > 0 and hi > 0:
        return math.log10(hi / lo)
    if lo < 0 and hi < 0:
        return math.log10(lo / hi)
    return math.inf if fixed_sign else math.nan


def _join(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _fmt_decades(d: float) -> str:
    return "reaches 0" if math.isinf(d) else f"spans {d:.1f} decades"


def assess_fit(
    *,
    names: Sequence[str],
    values: FloatArray,
    raw_ci: Mapping[str, tuple[float, float]],
    n_points: int,
    n_bootstrap: int,
    n_failed: int,
    at_bound: Mapping[str, float | None],
    collinear: Mapping[str, list[str]],
    fixed: Iterable[str] = (),
    nuisance: Iterable[str] = (),
    fixed_sign: Iterable[str] = (),
    residual_scale: float = math.nan,
    options: Iterable[str] = (),
    judged_ci: Mapping[str, tuple[float, float, str]] | None = None,
) -> FitDiagnostics:
    """The diagnostics of one fit from its pieces (the law computes them; see ``Law.diagnostics_``).

    ``raw_ci``: 95% percentile intervals (NaN without draws); ``at_bound``: name -> the bound it sits at
    (None: not at a bound); ``collinear``: from :func:`collinear_parameters`; ``fixed_sign``: parameters
    judged on the decade rule; ``residual_scale``: the fit's residual scale (zero-width intervals count as
    degenerate only above a noise floor); ``options``: the law's constructor options (for suggestions);
    ``judged_ci``: name -> (lo, hi, what) to judge on the decade rule in place of the parameter's own
    interval, e.g. an amplitude's term at the centre of the data (``what`` names it in the reason).
    """
    fixed_set, nuis_set, sign_set = set(fixed), set(nuisance), set(fixed_sign)
    free = [k for k in names if k not in fixed_set]
    failed_share = n_failed / n_bootstrap if n_bootstrap > 0 else math.nan
    most_failed = n_bootstrap > 0 and failed_share > FAILED_SHARE_MAX
    has_draws = n_bootstrap > n_failed
    noisy = math.isfinite(residual_scale) and residual_scale > _NOISE_FLOOR
    params: dict[str, ParameterDiagnostic] = {}
    for name, v in zip(names, values, strict=True):
        nuis = name in nuis_set
        if name in fixed_set:
            params[name] = ParameterDiagnostic(
                True, ["fixed by the caller"], False, math.nan, fixed=True, nuisance=nuis
            )
            continue
        reasons: list[str] = []
        bound = at_bound.get(name)
        if bound is not None:
            reasons.append(f"at its bound {bound:g}")
        if name in collinear:
            others = collinear[name]
            reasons.append(
                f"not separable from {_join(others)} with these points (collinear design)"
                if others
                else "has no effect on the fit at these points"
            )
        if most_failed:
            reasons.append(f"most bootstrap resamples failed ({n_failed} of {n_bootstrap})")
        lo, hi = raw_ci.get(name, (math.nan, math.nan))
        decades = _decades(lo, hi, name in sign_set)
        jlo, jhi, what = (judged_ci or {}).get(name, (lo, hi, "95% interval"))
        judged = _decades(jlo, jhi, name in sign_set)
        if has_draws and not most_failed:
            if name in sign_set and judged > DECADE_LIMIT:
                reasons.append(f"{what} {_fmt_decades(judged)}")
            width_zero = math.isfinite(lo) and math.isfinite(hi) and hi - lo <= 1e-12 * max(abs(float(v)), 1e-300)
            if width_zero and noisy:
                reasons.append("95% interval has zero width on noisy data (the resamples did not move it)")
        params[name] = ParameterDiagnostic(
            pinned=not reasons,
            reasons=reasons,
            at_bound=bound is not None,
            interval_decades=decades,
            nuisance=nuis,
            judged_on=what if name in (judged_ci or {}) else "",
            judged_decades=judged,
            judged_interval=(jlo, jhi),
        )
    ppp = n_points / max(len(free), 1)
    # An option already in use is no suggestion: E fixed means fix_E is set, beta fixed means a shared exponent.
    usable = (
        set(options)
        - ({"fix_E"} if "E" in fixed_set else set())
        - ({"shared_exponent"} if "beta" in fixed_set else set())
    )
    verdict, reason, suggestions = _verdict(params, free, ppp, n_points, n_bootstrap, failed_share, usable)
    return FitDiagnostics(
        points_per_parameter=ppp,
        parameters=params,
        bootstrap_failed_share=failed_share,
        cross_check=None,
        verdict=verdict,
        reason=reason,
        n_points=n_points,
        suggestions=suggestions,
    )


def _suggest(unpinned: list[str], options: set[str]) -> list[str]:
    out = []
    if "fix_E" in options and "E" in unpinned:
        out.append("fix_E")
    if "shared_exponent" in options and any(k in unpinned for k in ("A", "B", "alpha", "beta")):
        out.append("shared_exponent")
    return out


def _verdict(
    params: Mapping[str, ParameterDiagnostic],
    free: list[str],
    ppp: float,
    n_points: int,
    n_bootstrap: int,
    failed_share: float,
    options: set[str],
) -> tuple[Verdict, str, list[str]]:
    unpinned = [k for k in free if not params[k].pinned]
    key = [k for k in unpinned if not params[k].nuisance]
    nuis = [k for k in unpinned if params[k].nuisance]
    few = ppp < MIN_POINTS_PER_PARAMETER
    head = (
        f"{n_points} points cannot pin {len(free)} parameters"
        if few
        else f"{n_points} points for {len(free)} parameters"
    )
    details = "; ".join(f"{k}: {', '.join(params[k].reasons)}" for k in unpinned)
    suggestions = _suggest(unpinned, options)
    if key or len(nuis) >= 2:
        # Plain words here; a caller names its own spelling of the options (``suggestions``).
        tries = ["fixing E" if s == "fix_E" else "a shared exponent (alpha = beta)" for s in suggestions]
        tries.append("more points over a wider range of scales")
        return (
            "unidentified",
            f"{head}: {_join(unpinned)} unpinned ({details}); try {_join(tries)}",
            suggestions,
        )
    weak: list[str] = []
    if few:
        weak.append(
            f"only {ppp:.1f} points per parameter (below {MIN_POINTS_PER_PARAMETER:g}: too few residuals to "
            "check the law's form, and wide intervals)"
        )
    if nuis:
        weak.append(f"{nuis[0]} unpinned ({details})")
    if n_bootstrap > 0 and failed_share > FAILED_SHARE_WEAK:
        weak.append(f"{failed_share:.0%} of the bootstrap resamples failed")
    if n_bootstrap == 0:
        weak.append("no bootstrap: only bounds and collinearity were checked")
    if weak:
        return "weak", f"{n_points} points for {len(free)} parameters: " + "; ".join(weak), suggestions
    return (
        "ok",
        f"{n_points} points for {len(free)} parameters ({ppp:.1f} each): every parameter pinned "
        f"(95% intervals within {DECADE_LIMIT:g} decade, amplitudes judged by their terms at the data's centre; "
        "none at a bound)",
        suggestions,
    )
