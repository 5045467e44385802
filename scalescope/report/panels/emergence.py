"""The emergence panels (issue 5): the in-context-learning score against step with the induction
(prefix-matching) score overlaid (Olsson et al. 2022, fig. "phase change"); in-context regression error
against the number of examples beside exact baselines (Garg et al. 2022, fig. 2); fresh-task error against
the number of pretraining tasks M beside the pool's posterior mean and ridge (Raventós et al. 2023, fig. 1);
each capability against scale with its discontinuous and continuous metric, the fitted sigmoid and smooth
trend, and any recorded crossing forecast (Schaeffer et al. 2023; :mod:`scalescope.analyses.emergence`);
and the demonstrations needed to identify one of K tasks, against K ("How long must a prompt be?",
:mod:`scalescope.analyses.prompt_length`).

Each panel raises :class:`Skip` with the reason when the store has no such measurements. Fitted curves are
rebuilt from the stored parameters by the law objects (``from_params``), never re-typed here.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...analyses.prompt_length import FORMS, analyze, demos_table
from ...analyses.transitions import SmoothTrend
from ...forecast.crossing import INFORMATIVE_DECADES
from ...laws.sigmoid import SigmoidLaw
from ...store import Store
from ..core import Context, Skip, figure, panel, table
from ..style import fmt, tidy_log

ICL = "icl/score"
PREFIX = "induction/max_prefix_matching"
ERROR_PREFIX = "icl_regression/error_by_k/"  # the icl_regression instrument's artifacts, one per curve
FRESH_PREFIX = "icl_regression/fresh/error_by_k/"  # the same on fresh tasks, for runs with a task pool
MAX_RUN_AXES = 12  # small multiples per figure; further runs are listed as left out
BASELINE_STYLE = {
    "least_squares": ("0.2", "--"),
    "ridge": ("tab:purple", "--"),
    "pool_posterior": ("tab:green", "--"),
    "nearest_3": ("tab:orange", ":"),
    "averaging": ("tab:brown", ":"),
}


def _series(ctx: Context, rid: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    m = ctx.metrics
    rows = m[(m["id"] == rid) & (m["metric"] == metric)]
    v = pd.to_numeric(rows["value"], errors="coerce")
    ok = np.isfinite(v.to_numpy(float))
    order = np.argsort(rows["step"].to_numpy(float)[ok])
    return rows["step"].to_numpy(float)[ok][order], v.to_numpy(float)[ok][order]


def _label(ctx: Context, rid: str) -> str:
    """``d_model=32, n_layer=2`` from the config fields that vary across the store (or the id)."""
    runs = ctx.runs
    row = runs[runs["id"] == rid]
    if row.empty:
        return rid
    keys = [
        c
        for c in ("model.n_layer", "model.d_model", "model.positions", "data.kind", "seed")
        if c in runs and runs[c].astype(str).nunique() > 1
    ]
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(row[k].iloc[0])}" for k in keys) or rid


def _by_size(ctx: Context, ids: list[str]) -> list[str]:
    n = ctx.runs.set_index("id").get("params_nonembedding", pd.Series(dtype=float))
    return sorted(ids, key=lambda r: (float(pd.to_numeric(n.get(r), errors="coerce") or 0.0), r))


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _run_axes(ctx: Context, ids: list[str], height: float) -> tuple[Figure, list[str], list[Any]]:
    """One small axes per run, smallest model first, at most ``MAX_RUN_AXES``: (figure, shown ids, axes).
    The axes share their y axis: every run's panel shows the same quantity, so heights compare."""
    shown = _by_size(ctx, ids)[:MAX_RUN_AXES]
    nr, nc = _grid(len(shown))
    fig = Figure(figsize=(4.2 * nc, height * nr), layout="constrained")
    return fig, shown, list(fig.subplots(nr, nc, squeeze=False, sharey=True).flat)


def _left_out(ids: list[str]) -> str:
    return (
        f"<p class='note'>{len(ids) - MAX_RUN_AXES} more runs left out of the figure: "
        f"{html.escape(', '.join(ids[MAX_RUN_AXES:]))}.</p>"
        if len(ids) > MAX_RUN_AXES
        else ""
    )


# --- (a) the ICL score against step, with the induction score ---------------------------------------------


@panel(
    "icl_induction",
    title="In-context learning and induction heads against step",
    order=84,
    short="in-context learning and induction",
)
def icl_induction(ctx: Context) -> str | None:
    have = set(ctx.metrics.loc[ctx.metrics["metric"] == ICL, "id"])
    if not have:
        raise Skip("no run measured the in-context-learning score (instruments.icl)")
    ids = _by_size(ctx, sorted(have))
    fig, shown, axes = _run_axes(ctx, ids, height=2.9)
    rows = []
    for ax, rid in zip(axes, shown, strict=False):
        s, v = _series(ctx, rid, ICL)
        ax.plot(np.maximum(s, 1), v, color="tab:blue", marker=".", lw=1.4, label="ICL score (nats)")
        ax.set_xscale("log")
        tidy_log(ax)
        ax.set_title(_label(ctx, rid), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("ICL score (nats)", color="tab:blue")
        ax.grid(alpha=0.3)
        ps, pv = _series(ctx, rid, PREFIX)
        if len(pv):
            tw = ax.twinx()
            tw.plot(np.maximum(ps, 1), pv, color="tab:red", ls="--", lw=1.4, label="prefix matching")
            tw.set_ylim(0, 1.02)
            tw.set_ylabel("max prefix matching", color="tab:red")
        from ...analyses.phase_change import phase_change

        pc = phase_change(Store(ctx.store).run_dir(rid).path)
        for key, col in (("induction_transition_step", "tab:red"), ("icl_transition_step", "tab:blue")):
            if pc.get(key) is not None:
                ax.axvline(max(pc[key], 1), color=col, lw=0.8, alpha=0.6)
        rows.append(
            [
                _label(ctx, rid),
                fmt(pc.get("max_prefix_matching_final"), ".3f"),
                fmt(pc.get("induction_step"), ".0f"),
                fmt(pc.get("induction_transition_step"), ".0f"),
                fmt(pc.get("icl_transition_step"), ".0f"),
                fmt(pc.get("icl_before"), ".3f"),
                fmt(pc.get("icl_after"), ".3f"),
            ]
        )
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    note = (
        "<p class='note'>ICL score: loss late in the context minus loss early (Olsson et al. 2022; more "
        "negative is more in-context learning), blue. Red dashed: the best head's prefix-matching score "
        "(an induction head). Vertical lines: the half-way steps of each (an induction-head phase change "
        "puts them together).</p>"
    )
    head = [
        "run",
        "prefix matching (final)",
        "step prefix ≥ 0.4",
        "half-way step, prefix",
        "half-way step, ICL",
        "ICL first",
        "ICL last",
    ]
    return figure(fig, "ICL score and prefix matching against step") + note + _left_out(ids) + table(head, rows)


# --- (b) in-context regression error against k, with baselines ----------------------------------------------


def error_curves(store: Path, rid: str, prefix: str = ERROR_PREFIX) -> tuple[int, dict[str, np.ndarray]] | None:
    """The last step's ``<prefix><name>`` artifacts of one run: (step, name -> (K,) array), or None."""
    rd = Store(store).run_dir(rid)
    start = rd.artifact_dir(prefix).name  # the folder-name form of the prefix, as artifact_names gives names
    by_name: dict[str, dict[int, Path]] = {}
    for folder in rd.artifact_names(prefix):
        steps = rd.artifact_steps(folder)
        if steps:
            by_name[folder.removeprefix(start)] = steps
    if "model" not in by_name:
        return None
    step = max(by_name["model"])
    return step, {n: np.load(s[step]) for n, s in by_name.items() if step in s}


@panel(
    "icl_regression_error",
    title="In-context regression error against examples, with baselines",
    order=85,
    short="in-context regression error",
)
def icl_regression_error(ctx: Context) -> str | None:
    found = {rid: ec for rid in map(str, ctx.runs["id"]) if (ec := error_curves(ctx.store, rid)) is not None}
    if not found:
        raise Skip("no run saved icl_regression error curves (instruments.icl_regression)")
    ids = _by_size(ctx, sorted(found))
    fig, shown, axes = _run_axes(ctx, ids, height=3.0)
    # Min-norm least squares on noisy data blows up at k = d (the interpolation peak, error ~1e3) and
    # averaging is ~d times worse than the prior at k = 1: clip (one limit for all runs, the axes are shared)
    # so the models' curves stay readable.
    top = 1.3 * max(max(float(np.nanmax(found[r][1]["model"])), 1.0) for r in shown)
    rows = []
    for ax, rid in zip(axes, shown, strict=False):
        step, curves = found[rid]
        k = np.arange(len(curves["model"]))
        for name, c in sorted(curves.items(), key=lambda kv: kv[0] != "model"):
            if not np.isfinite(c).any():
                continue
            color, ls = ("tab:blue", "-") if name == "model" else BASELINE_STYLE.get(name, ("0.5", ":"))
            ax.plot(k, c, color=color, ls=ls, lw=2.0 if name == "model" else 1.2, label=name.replace("_", " "))
        ax.set_title(f"{_label(ctx, rid)} (step {step})", fontsize=9)
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel("normalized squared error")
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        kk = min(len(k) - 1, 10)
        rows.append(
            [
                _label(ctx, rid),
                step,
                kk,
                *[
                    fmt(float(curves[n][kk]), ".3f") if n in curves else "-"
                    for n in ("model", "least_squares", "ridge", "nearest_3", "averaging")
                ],
            ]
        )
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    note = (
        "<p class='note'>Error of the prediction of y_{k+1} from k in-context (x, y) pairs, divided by the "
        "dimension (Garg et al. 2022, fig. 2), at each run's last saved step; dashed and dotted: exact "
        "baselines on the same prompts (min-norm least squares, ridge, 3-nearest neighbours, averaging).</p>"
    )
    head = ["run", "step", "k", "model", "least squares", "ridge", "3-NN", "averaging"]
    return figure(fig, "regression error against in-context examples") + note + _left_out(ids) + table(head, rows)


@panel(
    "task_diversity", title="Task diversity: from the pool's posterior mean to ridge", order=86, short="task diversity"
)
def task_diversity(ctx: Context) -> str | None:
    """Raventós et al. 2023, fig. 1: mean error over k >= 1 on fresh tasks against the pool size M, for the
    model and the two Bayes predictors (the pool's posterior mean, optimal for pretraining; ridge, optimal
    for fresh Gaussian tasks), and the model on its own pool's tasks."""
    skip = Skip(
        "needs runs at two or more task-pool sizes (data.task_pool) with fresh-task error curves "
        "(instruments.icl_regression)"
    )
    if "data.task_pool" not in ctx.runs:
        raise skip
    pools = pd.to_numeric(ctx.runs["data.task_pool"], errors="coerce")
    pts = []
    for rid, m in zip(map(str, ctx.runs["id"]), pools, strict=True):
        fresh = error_curves(ctx.store, rid, FRESH_PREFIX) if m > 0 else None
        if fresh is not None:
            own = error_curves(ctx.store, rid)
            mean = {n: float(np.nanmean(c[1:])) for n, c in fresh[1].items()}
            pts.append((int(m), rid, fresh[0], mean, float(np.nanmean(own[1]["model"][1:])) if own else math.nan))
    if len({p[0] for p in pts}) < 2:
        raise skip
    pts.sort(key=lambda p: (p[0], p[1]))
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ms = sorted({p[0] for p in pts})
    styles = [
        ("model", "model, fresh tasks", "tab:blue", "-", "o"),
        ("pool_posterior", "pool posterior mean (dMMSE), fresh tasks", "tab:green", "--", "s"),
        ("ridge", "ridge (Bayes for fresh tasks)", "tab:purple", "--", "^"),
    ]
    for name, label, color, ls, marker in styles:
        per_m = [[p[3].get(name, math.nan) for p in pts if p[0] == m] for m in ms]
        ax.plot(ms, [np.nanmean(v) for v in per_m], color=color, ls=ls, marker=marker, label=label)
    ax.plot(
        ms,
        [np.nanmean([p[4] for p in pts if p[0] == m]) for m in ms],
        color="tab:blue",
        ls=":",
        marker=".",
        label="model, its pool's tasks",
    )
    ax.set_xscale("log")
    ax.set_xlabel("pretraining tasks M")
    ax.set_ylabel("mean normalized error over k >= 1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    rows = [
        [
            m,
            rid,
            step,
            *[fmt(mean.get(n, math.nan), ".3f") for n in ("model", "pool_posterior", "ridge")],
            fmt(own, ".3f"),
        ]
        for m, rid, step, mean, own in pts
    ]
    note = (
        "<p class='note'>Small pools: the model follows the pool's posterior mean and fails on tasks outside "
        "the pool; large pools: it follows ridge. The crossover is where the model's fresh-task error leaves "
        "the posterior mean's curve for ridge's (Raventós et al. 2023).</p>"
    )
    head = ["M", "run", "step", "model (fresh)", "dMMSE (fresh)", "ridge (fresh)", "model (pool tasks)"]
    return figure(fig, "fresh-task error against the number of pretraining tasks") + note + table(head, rows)


# --- (c) each capability against scale -------------------------------------------------------------------


def _sigmoid(t: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The transition's fitted sigmoid (:class:`~scalescope.laws.sigmoid.SigmoidLaw`) at ``x``."""
    return SigmoidLaw.from_params(t["sigmoid"]).predict(x)


def _smooth(t: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The smooth trend of :func:`~scalescope.analyses.transitions.detect_transition` at ``x`` (its default
    bound: 1 for a rising metric, 0 for a falling one)."""
    return SmoothTrend.from_params(t["direction"], t["smooth"]).predict(x)


def _scale(ctx: Context) -> list[dict[str, Any]]:
    from ...analyses.emergence import scale_analysis

    return ctx.cached("emergence_scale", lambda: scale_analysis(ctx.runs, bootstrap=ctx.bootstrap, seed=ctx.seed))


@panel(
    "capability_scale",
    title="Capabilities against scale: both metrics, fits and forecasts",
    order=87,
    short="capabilities against scale",
)
def capability_scale(ctx: Context) -> str | None:
    from ...analyses.emergence import CAPABILITIES, SCALE_COLUMNS
    from ...forecast.crossing import RECORD_KIND, implied_metric
    from ...forecast.ledger import kind_of, load_forecasts

    entries = [(e, c) for e in _scale(ctx) if e["x"] for c in e["capabilities"]]
    if not entries:
        raise Skip(
            "no finished runs at several scales logged a capability metric "
            "(induction/copy_accuracy, induction/max_prefix_matching, icl/accuracy_score, exact_match)"
        )
    caps = {c.name: c for c in CAPABILITIES}
    recs = [r for r in load_forecasts(ctx.store) if kind_of(r) == RECORD_KIND] if ctx.store.is_dir() else []
    n = len(entries)
    nc = min(n, 2)
    nr = math.ceil(n / nc)
    fig = Figure(figsize=(5.6 * nc, 3.6 * nr), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False)
    rows = []
    for ax, (e, c) in zip(axes.flat, entries, strict=False):
        pts = c["points"]
        x = np.asarray(pts["x"], float)
        y = np.asarray(pts["metric"], float)
        grid = np.geomspace(x.min(), x.max(), 200) if len(x) else np.array([])
        ax.plot(x, y, "o", color="tab:blue", label=c["metric"])
        t = c.get("transition")
        if t:
            ax.plot(grid, _sigmoid(t, grid), color="tab:blue", lw=1.2, label="sigmoid fit")
            lo, hi = t["x0_ci"]
            if math.isfinite(lo) and math.isfinite(hi):
                ax.axvspan(lo, hi, color="tab:blue", alpha=0.08, lw=0)
            ax.axvline(t["x0"], color="tab:blue", lw=0.8, ls=":")
        ax.set_xscale("log")
        tidy_log(ax)
        ax.set_xlabel(f"{SCALE_COLUMNS[e['x']]} ({e['x']})")
        ax.set_ylabel(c["metric"], color="tab:blue")
        ax.grid(alpha=0.3)
        cap = caps[c["capability"]]
        if pts.get("continuous") is not None:
            tw = ax.twinx()
            cv = np.asarray(pts["continuous"], float)
            tw.plot(x, cv, "s", color="tab:red", ms=4, label=c["continuous"])
            ct = c.get("continuous_trend")
            if ct:
                tw.plot(grid, cap.sign * _smooth(ct, grid), color="tab:red", lw=1.0, ls="--", label="smooth trend")
            tw.set_ylabel(c["continuous"], color="tab:red")
        mine = [r for r in recs if r.get("x_column") == e["x"] and r.get("metric") == f"final_{c['metric']}"]
        for r in mine:
            ax.axhline(r["threshold"], color="0.4", lw=0.8, ls="--")
            if r.get("predicted") is not None:
                ax.axvline(r["predicted"], color="tab:green", lw=1.4, label="forecast crossing")
            ilo, ihi = r["interval"]
            if ilo is not None:
                ax.axvspan(
                    ilo,
                    ihi if ihi is not None and math.isfinite(ihi) else ax.get_xlim()[1],
                    color="tab:green",
                    alpha=0.12,
                    lw=0,
                )
            curve = implied_metric(r, grid)  # link(trend(x)), rebuilt from the record's stored fit
            if curve is not None:
                ax.plot(grid, curve, color="tab:green", lw=1.0, ls="-.", label="forecast (continuous trend)")
            ax.axvline(r["fit_max_x"], color="tab:green", lw=0.6, ls=":")
        grp = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in e["group"].items())
        ax.set_title(f"{cap.name}{' (' + grp + ')' if grp else ''}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        if t:
            rows.append(
                [
                    cap.name + (f" ({grp})" if grp else ""),
                    c["n_runs"],
                    c["verdict"],
                    fmt(t["x0"]),
                    f"[{fmt(t['x0_ci'][0])}, {fmt(t['x0_ci'][1])}]",
                    f"{t['width_decades']:.2f}",
                    f"{t['gain']:.2f}",
                    c["reason"],
                ]
            )
        else:
            rows.append(
                [cap.name + (f" ({grp})" if grp else ""), c["n_runs"], "-", "-", "-", "-", "-", c.get("error", "")]
            )
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    note = (
        "<p class='note'>Blue: the discontinuous metric and its sigmoid in log scale (dotted: the midpoint "
        "x0, shaded: its bootstrap interval); red: the continuous twin and its smooth power-law trend. "
        "A jump is a metric artifact when only the discontinuous metric jumps (Schaeffer et al. 2023). "
        "Green: a recorded crossing forecast (line and interval; dotted: the largest fitted scale; "
        "dash-dot: the metric implied by the continuous trend); grey dashed: its threshold.</p>"
    )
    head = ["capability", "runs", "verdict", "x0", "95% interval", "width (decades)", "held-out gain", "reason"]
    body = figure(fig, "capabilities against scale") + note + table(head, rows)
    if recs:
        frows = []
        for r in recs:
            s = r.get("score") or {}
            lo, hi = r["interval"]
            frows.append(
                [
                    r["id"],
                    r["metric"].removeprefix("final_"),
                    fmt(r["threshold"]),
                    r["x_column"],
                    fmt(r["predicted"]),
                    f"[{fmt(lo)}, {fmt(hi)}]",
                    str(r.get("verdict") or "-"),
                    fmt(s.get("observed")) if s else "pending",
                    (s.get("status") or ("covered" if s.get("covered") else "missed")) if s else "-",
                ]
            )
        head = ["forecast", "metric", "threshold", "x", "predicted", "interval", "verdict", "observed", "status"]
        body += table(head, frows) + (
            f"<p class='note'>A crossing forecast counts as covered only when its interval is informative "
            f"(half-width at most ±{INFORMATIVE_DECADES:g} decade); otherwise an observation inside it is "
            "'uninformative'.</p>"
        )
    return body


# --- (d) demonstrations needed against the number of tasks K ----------------------------------------------

PROMPT_STYLE = {
    "seen/model": ("C0", "o", "-"),
    "seen/ideal": ("C0", "", "--"),
    "seen/lookup": ("0.5", "", ":"),
    "unseen/model": ("C3", "s", "-"),
    "unseen/ideal": ("C3", "", "--"),
}
PROMPT_LABEL = {
    "seen/model": "model, seen tasks",
    "seen/ideal": "ideal observer (pool posterior), seen",
    "seen/lookup": "lookup only (family observer), seen",
    "unseen/model": "model, unseen tasks",
    "unseen/ideal": "ideal observer (lookup), unseen",
}


def _two_decimals(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


@panel("prompt_length", title="Demonstrations needed against K", order=92, short="demonstrations against K")
def prompt_length(ctx: Context) -> str | None:
    tab = demos_table(ctx.runs, ctx.metrics)
    if not len(tab):
        raise Skip("no run measured task_id (instruments.task_id on a discrete_tasks source)")
    r = ctx.cached("prompt_length", lambda: analyze(table=tab))
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.add_subplot()
    rows = []
    for s, e in r["series"].items():
        color, marker, ls = PROMPT_STYLE.get(s, ("k", ".", "-"))
        K = np.asarray(e["K"], float)
        d = np.asarray([np.nan if v is None else v for v in e["demos_mean"]], float)
        ax.plot(K, d, color=color, marker=marker or None, ls=ls, lw=1.5, label=PROMPT_LABEL.get(s, s))
        fit = e["fit"]
        if fit and s.endswith("/model"):
            w = fit["fits"][fit["winner"]]
            kk = K[np.isfinite(d)]
            grid = np.geomspace(kk.min(), kk.max(), 100)
            params = [w["a"]] if w["b"] is None else [w["a"], w["b"]]
            ax.plot(grid, FORMS[w["form"]][0](grid, *params), color=color, lw=0.8, alpha=0.6)
        fits = fit["fits"] if fit else {}
        rows.append(
            [
                PROMPT_LABEL.get(s, s),
                *[_two_decimals(fits[f]["heldout_rmse"]) if f in fits else "-" for f in FORMS],
                fit["winner"] if fit else e.get("fit_note", "-"),
                sum(e["not_reached"]),
            ]
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (tasks in the pretraining pool)")
    ax.set_ylabel(f"demonstrations to reach accuracy {r['target']:g}" if r["target"] else "demonstrations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    note = (
        "<p class='note'>Thin lines: the winning growth form of each model series (least leave-one-K-out "
        "error among a constant, a + b ln K, a K^b and a + b K, all fitted by least squares; near-ties go to "
        "the simpler form). A run that never reaches the target within its context is left out of its point "
        "and counted under 'not reached'.</p>"
    )
    head = ["series", *[f"held-out RMSE, {f}" for f in FORMS], "winner", "not reached"]
    return figure(fig, "demonstrations needed against K") + note + table(head, rows)
