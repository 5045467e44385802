"""The scaling-law panels (issues 3 and 11): the store and its conventions, validation loss against tokens and
FLOPs, the L(N, D) fit (Hoffmann et al. 2022), its checked extrapolation to the largest scale, the IsoFLOP
profiles (Hoffmann et al. 2022, Approach 2), the fitted parameters, and the forecast ledger.

Every fit stands beside its verdict and diagnostics (:func:`~scalescope.report.style.verdict_html`); an
interval the data do not pin is shown as "not pinned (why)", never as numbers; a fitted curve, a fitted E or
a prediction below the source's known entropy rate is drawn in red in the figure and named in the text
beside it ("below the entropy rate, impossible"). Runs are coloured by model size N (a discrete legend) and
marked by training budget (a marker and a line style each), so the budgets of one size stay apart.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from ...forecast.laws import RECORD_KIND, final_points, score_record, target_text
from ...forecast.ledger import kind_of, load_forecasts
from ...laws import ChinchillaLaw, FitError, HoldoutResult, IsoFLOPAnalysis, compare_chinchilla, holdout_largest
from ...laws.holdout import MAX_REL_HALF_WIDTH
from ...laws.isoflop import group_budgets
from ..core import Context, Skip, figure, panel, table
from ..style import (
    CMAP,
    BudgetStyle,
    budget_styles,
    fmt,
    fmt_interval,
    impossible_html,
    interval_text,
    is_pinned,
    n_legend,
    n_norm,
    si,
    tidy_log,
    verdict_html,
)

MIN_RUNS = 6  # the Chinchilla form has 5 parameters; the fitters want one point more
# Runs whose training FLOPs agree within 5% form one IsoFLOP budget (a budget is met to within a step's
# tokens; configured budgets, train.flops, are used exactly when set).
ISO_RTOL = 0.05
MIN_ISO_SIZES = 3  # a parabola in log N needs 3 distinct sizes per budget (IsoFLOPAnalysis' minimum)
RED = "#c62828"


# --- shared data and fits (cached on the context) -----------------------------------------------------


def run_budgets(runs: pd.DataFrame) -> tuple[str, pd.Series]:
    """What tells the runs of one model size apart, per run id: ``("C", train.flops)`` when every run has a
    FLOP budget, else ``("D", train.tokens)``, falling back to the tokens a run trained where no budget is
    configured (e.g. an unfinished run)."""
    ids = runs["id"].astype(str)

    def col(name: str) -> pd.Series:
        vals = runs[name] if name in runs else pd.Series(np.nan, index=runs.index)
        return pd.Series(pd.to_numeric(vals, errors="coerce").to_numpy(float), index=ids)

    flops, tokens, trained = col("train.flops"), col("train.tokens"), col("tokens")
    if len(flops) and bool(np.isfinite(flops).all()):
        return "C", flops
    return "D", tokens.where(np.isfinite(tokens), trained)


def points(ctx: Context) -> pd.DataFrame:
    """Finished runs as (id, N non-embedding, D tokens, C FLOPs, final val loss, ..., budget)."""

    def make() -> pd.DataFrame:
        pts = final_points(ctx.runs)
        _, budget = run_budgets(ctx.runs)
        pts["budget"] = pts["id"].astype(str).map(budget).to_numpy(float)
        return pts

    return cast(pd.DataFrame, ctx.cached("points", make))


def budgets(ctx: Context) -> dict[float, BudgetStyle]:
    """The style of each budget among the store's runs (see :func:`run_budgets`)."""
    kind, budget = run_budgets(ctx.runs)
    return budget_styles(budget.to_numpy(float), kind)


def chinchilla(ctx: Context) -> ChinchillaLaw:
    """The L(N, D) fit on every finished run, with the variable-projection cross-check (:func:`crosscheck`)
    recorded in its diagnostics, so every panel shows the same verdict; or Skip saying why there is none."""
    law = _chinchilla_fit(ctx)
    crosscheck(ctx)
    return law


def crosscheck(ctx: Context) -> str:
    """The variable-projection cross-check of the L(N, D) fit in words (it also downgrades an ``ok`` verdict
    that it contradicts: ``compare_chinchilla`` records itself in the fit's diagnostics)."""

    def make() -> str:
        law, pts = _chinchilla_fit(ctx), points(ctx)
        try:
            with np.errstate(all="ignore"):
                return compare_chinchilla(
                    pts[["N", "D"]].to_numpy(float), pts["loss"].to_numpy(float), huber=law
                ).message
        except (FitError, ValueError, ArithmeticError) as err:
            return f"could not be run ({type(err).__name__}: {err})"

    return cast(str, ctx.cached("crosscheck", make))


def _chinchilla_fit(ctx: Context) -> ChinchillaLaw:

    def make() -> ChinchillaLaw:
        pts = points(ctx)
        nn, nd = pts["N"].nunique(), pts["D"].nunique()
        if len(pts) < MIN_RUNS or nn < 2 or nd < 2:
            raise Skip(
                f"needs at least {MIN_RUNS} finished runs with at least 2 distinct N and 2 distinct D; "
                f"this store has {len(pts)} finished runs, {nn} distinct N, {nd} distinct D"
            )
        law = ChinchillaLaw(bootstrap=ctx.bootstrap, random_state=ctx.seed)
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return law.fit(pts[["N", "D"]].to_numpy(float), pts["loss"].to_numpy(float))
        except FitError as err:
            raise Skip(f"the fit failed: {err}") from None

    return cast(ChinchillaLaw, ctx.cached("chinchilla", make))


def holdout(ctx: Context) -> tuple[HoldoutResult, np.ndarray]:
    """The law fitted without the largest scale (largest N·D, all its seeds), and which points were held."""

    def make() -> tuple[HoldoutResult, np.ndarray]:
        law = chinchilla(ctx)
        pts = points(ctx)
        scale = (pts["N"] * pts["D"]).to_numpy()
        held = np.isclose(scale, scale.max(), rtol=1e-6)
        if len(pts) - held.sum() < MIN_RUNS:
            raise Skip(
                f"without the largest scale only {len(pts) - held.sum()} runs are left; "
                f"the L(N, D) fit needs {MIN_RUNS}"
            )
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                res = holdout_largest(
                    law, pts[["N", "D"]].to_numpy(float), pts["loss"].to_numpy(float), int(held.sum())
                )
        except FitError as err:
            raise Skip(f"the fit without the largest scale failed: {err}") from None
        return res, held

    return cast(tuple[HoldoutResult, np.ndarray], ctx.cached("holdout", make))


def _held_law(res: HoldoutResult) -> ChinchillaLaw:
    """The law refitted without the largest scale: a clone of :func:`chinchilla`'s, so a ChinchillaLaw."""
    return cast(ChinchillaLaw, res.law)


def _band(law: ChinchillaLaw, X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The law's calibrated 95% prediction interval at ``X`` (``Law.predict_interval(kind="prediction")``:
    parameter uncertainty and the scatter of a new run), or None without bootstrap draws."""
    try:
        with np.errstate(all="ignore"):
            lo, hi = law.predict_interval(X, 0.95, kind="prediction")
    except FitError:
        return None
    return np.asarray(lo, float), np.asarray(hi, float)


# --- the entropy floor ----------------------------------------------------------------------------------


def _entropy_line(ax: Axes, ctx: Context) -> None:
    if ctx.entropy_rate is not None:
        ax.axhline(
            ctx.entropy_rate, color="crimson", ls="--", lw=1.2, label=f"entropy rate {ctx.entropy_rate:.3g} (floor)"
        )


def _flag_below(ax: Axes, x: np.ndarray, y: np.ndarray, H: float | None, what: str) -> str | None:
    """Over-draw in red, with a cross where it first dips, the part of the curve (x, y) below the entropy
    rate ``H``; return the finding in words (None when nothing is below)."""
    if H is None:
        return None
    below = np.isfinite(y) & (y < H)
    if not below.any():
        return None
    ax.plot(x, np.where(below, y, np.nan), color=RED, lw=3.2, alpha=0.75, gid="below_entropy", zorder=4)
    i = int(np.flatnonzero(below)[0])
    ax.plot([x[i]], [y[i]], "x", color=RED, ms=9, mew=2.2, gid="below_entropy_marker", zorder=5)
    return f"{what} falls below the entropy rate {H:.4g} from D = {si(float(x[i]))} (reaching {np.nanmin(y):.4g})"


def _curves_by_n(
    ax: Axes,
    ctx: Context,
    law: ChinchillaLaw,
    *,
    extend: float = 1.0,
    band: Iterable[float] = (),
    e_label: str = "fitted E",
) -> list[str]:
    """Final loss against D, one colour per N and one marker per budget: the points and the law's curve (and
    the 95% prediction band of the curves of the sizes in ``band``; one band per size would hide the others).
    Returns the findings below the entropy rate, which are also drawn in red: a curve that dips below it,
    and a fitted E below it."""
    pts, norm, styles = points(ctx), n_norm(ctx), budgets(ctx)
    H = ctx.entropy_rate
    d = np.geomspace(pts["D"].min() / 1.3, pts["D"].max() * 1.3 * extend, 80)
    ys = [pts["loss"].to_numpy()]
    found: list[str] = []
    for n, g in pts.groupby("N"):
        color = CMAP(norm(n))
        X = np.column_stack([np.full_like(d, n), d])
        with np.errstate(all="ignore"):
            y = law.predict(X)
        ys.append(y)
        ax.plot(d, y, color=color, lw=1.5, gid=f"curve:N={n:g}")
        hit = _flag_below(ax, d, y, H, f"the curve for N = {si(float(n))}")
        if hit:
            found.append(hit)
        if any(np.isclose(n, b, rtol=1e-9) for b in band):
            lohi = _band(law, X)
            if lohi is not None:
                ax.fill_between(
                    d, lohi[0], lohi[1], color=color, alpha=0.18, lw=0, label=f"95% prediction band, N = {si(n)}"
                )
        for b, gb in g.groupby("budget", dropna=False):
            st = styles.get(float(b))
            ax.scatter(
                gb["D"],
                gb["loss"],
                color=color,
                marker=st.marker if st else "o",
                s=34,
                zorder=3,
                edgecolor="white",
                linewidth=0.6,
            )
    e = float(law.params_["E"])
    if H is not None:
        ys.append(np.array([H]))
        if e < H and e > 0.6 * float(np.nanmin(ys[0])):
            ys.append(np.array([e]))  # an impossible E near the data: in view, so its red line is seen
    # Limits from the data, the curves and the entropy rate, not from a band or a fitted E near 0.
    yy = np.concatenate(ys)
    yy = yy[np.isfinite(yy) & (yy > 0)]
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="D (tokens)",
        ylabel="final val loss (nats)",
        ylim=(yy.min() / 1.08, yy.max() * 1.08),
    )
    _entropy_line(ax, ctx)
    off = " (below the axis)" if e < yy.min() / 1.08 else ""
    if H is not None and e < H:
        ax.axhline(e, color=RED, ls=":", lw=1.8, label=f"{e_label} = {e:.3g}{off}: below the entropy rate", gid="E")
        found.insert(0, f"{e_label} = {e:.4g} is below the entropy rate {H:.4g} ({(e - H) / H:+.1%})")
    else:
        ax.axhline(e, color="0.45", ls=":", lw=1.2, label=f"{e_label} = {e:.3g}{off}", gid="E")
    if any(ln.get_gid() == "below_entropy" for ln in ax.get_lines()):
        ax.plot([], [], color=RED, lw=3.2, alpha=0.75, label="fitted curve below the entropy rate: impossible")
    ax.legend(fontsize=7.5, loc="best")
    tidy_log(ax)
    return found


# --- panels ---------------------------------------------------------------------------------------------


@panel("overview", title="Store, runs and conventions", order=0, short="overview")
def overview(ctx: Context) -> str:
    counts = ctx.runs["status"].value_counts() if len(ctx.runs) else pd.Series(dtype=int)
    rows = [[s, int(c)] for s, c in counts.items()] + [["all", int(counts.sum())]]
    er = ctx.entropy_rate
    conventions = [
        "N is the non-embedding parameter count (Kaplan et al. 2020); D is tokens trained; C is training FLOPs.",
        "Training FLOPs per token: 6N + 12·L·T·d_model (PaLM, Chowdhery et al. 2022, appendix B).",
        "Losses are mean next-token cross-entropy on held-out data, in nats.",
        "L(N, D) = E + A/N^α + B/D^β fitted as Hoffmann et al. 2022, Approach 3: Huber loss (δ = 1e-3) on log "
        "residuals from a grid of starts, then polished; R² and RMSLE are in log space.",
        f"Intervals are 95% bootstrap intervals with {ctx.bootstrap} resamples (fewer than the fitters' default "
        "of 1,000, to keep the report quick; `scalescope fit` gives the full count). A parameter the data do not "
        "pin (its interval over a decade wide or reaching 0, at an optimizer bound, inseparable from another, or "
        "most resamples failed) is shown as 'not pinned' with the reason, never as an interval; each fit has a "
        "verdict: ok, weak or unidentified.",
        f"A prediction interval wider than ±{MAX_REL_HALF_WIDTH:.0%} of its prediction is 'uninformative': it "
        "never counts as covering the observation.",
        "Colour: the model size N; marker and line style: the training budget.",
    ]
    if er is not None:
        conventions.append(
            f"The training language's exact entropy rate is {er:.4f} nats/token: no model can beat it, and a "
            "fitted E should land near it. A fit or prediction below it is drawn in red and named beside the figure."
        )
    items = "".join(f"<li>{html.escape(c)}</li>" for c in conventions)
    return (
        f"<p>Store <code>{html.escape(str(ctx.store))}</code>: {len(ctx.runs)} runs, "
        f"{len(ctx.metrics)} metric rows.</p>" + table(["status", "runs"], rows) + f"<ul>{items}</ul>"
    )


def loss_curves_figure(ctx: Context) -> Figure:
    """Validation loss against tokens and FLOPs (shared loss axis): colour by N, line style and end marker
    by budget, the compute frontier, the entropy rate. Each run's lines carry ``gid`` = its id."""
    m = ctx.metrics
    val = m[(m["metric"] == "val_loss") & m["value"].notna() & (m["tokens"] > 0)]
    if val.empty:
        raise Skip("no val_loss measurements after step 0")
    n_of = pd.to_numeric(ctx.runs.set_index("id")["params_nonembedding"], errors="coerce")
    _, budget_of = run_budgets(ctx.runs)
    styles = budgets(ctx)
    norm = n_norm(ctx)
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for rid, g in val.groupby("id"):
        n = n_of.get(rid)
        color = CMAP(norm(n)) if n is not None and np.isfinite(n) and n > 0 else "0.5"
        st = styles.get(float(budget_of.get(str(rid), np.nan)))
        ls, marker = (st.ls, st.marker) if st else ("-", "o")
        for ax, col in zip(axes, ("tokens", "flops")):
            ax.plot(g[col], g["value"], color=color, ls=ls, lw=1.2, alpha=0.9, gid=str(rid))
            ax.plot(
                g[col].iloc[-1:],
                g["value"].iloc[-1:],
                ls="none",
                marker=marker,
                color=color,
                ms=6,
                mec="white",
                mew=0.6,
                zorder=3,
                gid=f"{rid}:end",
            )
    # The compute frontier: the lowest loss any run reached with at most C FLOPs (lower envelope); a wide
    # grey band, so that it is told apart from the runs' line styles.
    f = val.sort_values("flops")
    axes[1].step(
        f["flops"],
        np.minimum.accumulate(f["value"].to_numpy()),
        where="post",
        color="0.2",
        lw=3.0,
        alpha=0.3,
        label="compute frontier",
    )
    for ax, xl in zip(axes, ("D (tokens)", "C (training FLOPs)")):
        _entropy_line(ax, ctx)
        ax.set(xscale="log", yscale="log", xlabel=xl)
        ax.grid(True, which="major", alpha=0.25)
        if ax.get_legend_handles_labels()[0]:  # no entropy line and no frontier: nothing to list
            ax.legend(fontsize=8, loc="lower left")
        tidy_log(ax)
    axes[0].set_ylabel("val loss (nats)")
    n_legend(fig, ctx, axes, n_of[n_of.index.isin(set(val["id"]))].to_numpy(float), styles)
    return fig


@panel("loss_curves", title="Validation loss against tokens and FLOPs", order=10, short="loss curves")
def loss_curves(ctx: Context) -> str:
    fig = loss_curves_figure(ctx)
    n_runs = ctx.metrics.loc[ctx.metrics["metric"] == "val_loss", "id"].nunique()
    return (
        figure(fig, "validation loss curves against tokens and FLOPs, coloured by N, styled by budget")
        + f'<p class="note">{n_runs} runs. Colour: model size N; line style and the marker at each run\'s last '
        "evaluation: its training budget (legend on the right). The wide grey line is the compute frontier: "
        "the lowest val loss reached by any run within C FLOPs. Both panels share the loss axis.</p>"
    )


def fit_figure(ctx: Context) -> tuple[Figure, list[str]]:
    """The L(N, D) fit: data and curves by N, predicted against observed, residuals (markers by budget);
    and the findings below the entropy rate."""
    law, pts = chinchilla(ctx), points(ctx)
    X, obs = pts[["N", "D"]].to_numpy(float), pts["loss"].to_numpy(float)
    with np.errstate(all="ignore"):
        pred = law.predict(X)
    colors = CMAP(n_norm(ctx)(pts["N"].to_numpy()))
    styles = budgets(ctx)
    fig = Figure(figsize=(12.5, 4.1), layout="constrained")
    a1, a2, a3 = fig.subplots(1, 3)
    found = _curves_by_n(a1, ctx, law)
    a1.set_title("data and fitted law, by N", fontsize=10)
    lim = [min(obs.min(), pred.min()) * 0.97, max(obs.max(), pred.max()) * 1.03]
    a2.plot(lim, lim, color="0.6", lw=1)
    H = ctx.entropy_rate
    if H is not None and lim[0] < H < lim[1]:
        a2.axhline(H, color="crimson", ls="--", lw=1.0)
    budget = pts["budget"].to_numpy(float)
    for b in np.unique(budget[np.isfinite(budget)]) if np.isfinite(budget).any() else [np.nan]:
        sel = budget == b if np.isfinite(b) else np.ones(len(pts), bool)
        st = styles.get(float(b))
        kw = {"marker": st.marker if st else "o", "s": 34, "edgecolor": "white", "linewidth": 0.6}
        a2.scatter(obs[sel], pred[sel], c=colors[sel], gid=f"budget:{st.label if st else '-'}", **kw)
        a3.scatter(pts["D"][sel], 100 * (obs[sel] / pred[sel] - 1), c=colors[sel], **kw)
    if H is not None and (pred < H).any():
        low = pred < H
        a2.scatter(
            obs[low],
            pred[low],
            s=150,
            facecolor="none",
            edgecolor=RED,
            lw=1.8,
            gid="below_entropy_pred",
            label="predicted below the entropy rate: impossible",
        )
        a2.legend(fontsize=7.5, loc="upper left")
        found.append(f"the fit predicts {int(low.sum())} of the runs below it")
    a2.set(xlabel="observed final val loss", ylabel="predicted", title="predicted vs observed")
    a3.axhline(0, color="0.6", lw=1)
    a3.set(xscale="log", xlabel="D (tokens)", ylabel="observed / predicted − 1 (%)", title="residuals")
    tidy_log(a3)
    a2.title.set_fontsize(10)
    a3.title.set_fontsize(10)
    n_legend(fig, ctx, [a1, a2, a3], pts["N"].to_numpy(float), styles)
    return fig, found


@panel("chinchilla_fit", title="L(N, D) fit on final losses", order=20, short="L(N, D) fit")
def chinchilla_fit(ctx: Context) -> str:
    law = chinchilla(ctx)
    fig, found = fit_figure(ctx)
    return (
        verdict_html(getattr(law, "diagnostics_", None), "Verdict of the L(N, D) fit")
        + impossible_html(found)
        + figure(fig, "Chinchilla-form fit: data, predicted vs observed, residuals")
        + f'<p class="note">Fitted on {law.n_points_} finished runs: R² (log) = {law.r2_:.4f}, '
        f"RMSLE = {law.rmsle_:.4g}. Dotted: the fitted irreducible loss E; dashed red: the language's "
        "entropy rate, when known. Colour: N; marker: the training budget.</p>"
    )


def extrapolation_figure(ctx: Context) -> tuple[Figure, list[str]]:
    """The law refitted without the largest scale, its bands extended to twice the largest D, the held-out
    runs (stars) and the law's predictions for them (diamonds; red when below the entropy rate)."""
    res, held = holdout(ctx)
    pts = points(ctx)
    fig = Figure(figsize=(9.5, 4.6), layout="constrained")
    ax = fig.subplots()
    found = _curves_by_n(
        ax, ctx, _held_law(res), extend=2.0, band=set(res.X_heldout[:, 0]), e_label="E fitted without the largest"
    )
    ax.scatter(
        pts["D"][held],
        pts["loss"][held],
        marker="*",
        s=220,
        facecolor="none",
        edgecolor="crimson",
        linewidth=1.4,
        zorder=4,
        label="held out (not fitted)",
    )
    H = ctx.entropy_rate
    pred = np.asarray(res.predicted, float)
    low = np.isfinite(pred) & (pred < H) if H is not None else np.zeros(len(pred), bool)
    ax.scatter(
        res.X_heldout[:, 1],
        pred,
        marker="D",
        s=40,
        facecolor=[RED if b else "white" for b in low],
        edgecolor=RED if low.any() else "0.2",
        lw=1.3,
        zorder=5,
        label="prediction" + (" (red: below the entropy rate, impossible)" if low.any() else ""),
        gid="prediction_below_entropy" if low.any() else "prediction",
    )
    for (n, d), p in zip(res.X_heldout[low], pred[low]):
        found.append(f"the prediction for N = {si(n)}, D = {si(d)} is {p:.4g}")
    ax.legend(fontsize=7.5, loc="best")
    n_legend(fig, ctx, ax, pts["N"].to_numpy(float), budgets(ctx))
    return fig, found


def _status_cells(res: HoldoutResult) -> tuple[list[str], list[str]]:
    """Per held-out point: the relative half-width of its interval and its status (covered / not covered /
    uninformative), from :class:`HoldoutResult` (older results: covered yes/no)."""
    k = len(res.y_heldout)
    if res.interval is None:
        return ["-"] * k, ["no interval (no bootstrap)"] * k
    widths = getattr(res, "rel_half_width", None)
    status = getattr(res, "status", None)
    limit = getattr(res, "max_rel_half_width", MAX_REL_HALF_WIDTH)
    if status is None or widths is None:
        cov = res.covered if res.covered is not None else [False] * k
        return ["-"] * k, ["covered" if c else "not covered" for c in cov]
    wcells, scells = [], []
    for w, s in zip(widths, status):
        wcells.append(f"±{w:.1%}" if np.isfinite(w) else "-")
        if s == "uninformative":
            s = (
                f"uninformative (±{w:.0%} > ±{limit:.0%})"
                if np.isfinite(w)
                else "uninformative (no finite interval: the resamples failed)"
            )
        scells.append(s)
    return wcells, scells


@panel("extrapolation", title="Checked extrapolation: fit without the largest scale", order=30, short="extrapolation")
def extrapolation(ctx: Context) -> str:
    res, held = holdout(ctx)
    pts = points(ctx)
    fig, found = extrapolation_figure(ctx)
    H = ctx.entropy_rate
    lo, hi = res.interval if res.interval is not None else (np.full(int(held.sum()), np.nan),) * 2
    wcells, scells = _status_cells(res)
    rows = []
    for (n, d), o, p, lo_i, hi_i, e, w, s in zip(
        res.X_heldout, res.y_heldout, res.predicted, lo, hi, res.rel_error, wcells, scells
    ):
        interval = fmt_interval((lo_i, hi_i)) if np.isfinite(lo_i) and np.isfinite(hi_i) else "none"
        if H is not None and p < H:
            s += "; prediction below the entropy rate: impossible"
        rows.append([f"{n:,.0f}", f"{d:,.0f}", fmt(o), fmt(p), interval, w, f"{e:+.2%}", s])
    return (
        verdict_html(getattr(res.law, "diagnostics_", None), "Verdict of the fit without the largest scale")
        + impossible_html(found)
        + figure(fig, "extrapolation to the held-out largest scale with 95% prediction bands")
        + f'<p class="note">The law is refitted on the {len(pts) - int(held.sum())} runs below the largest '
        "scale (largest N·D); shaded: the 95% prediction band of the held-out size (parameter uncertainty and the "
        "scatter of a new run), extended to twice the largest D. Stars: the held-out runs, which the fit never "
        "saw; diamonds: the law's predictions for them. A held-out run counts as covered only when its interval "
        f"is informative (half-width at most ±{MAX_REL_HALF_WIDTH:.0%} of the prediction).</p>"
        + table(["N", "D", "observed", "predicted", "95% interval", "half-width", "rel. error", "status"], rows)
    )


# --- IsoFLOP profiles (Hoffmann et al. 2022, Approach 2) ----------------------------------------------------


def _iso_budgets(pts: pd.DataFrame) -> np.ndarray:
    """Each run's compute budget: its configured train.flops when set, else the FLOPs it trained."""
    cb = pts["C_budget"].to_numpy(float)
    return np.where(np.isfinite(cb) & (cb > 0), cb, pts["C"].to_numpy(float))


def isoflop(ctx: Context) -> tuple[IsoFLOPAnalysis, pd.DataFrame]:
    """The IsoFLOP analysis of the finished runs and those runs with their budget (``Cb``) and budget label
    (``budget_label``: the index into the analysis' ``budgets_``, -1 for runs of a budget it left out), or
    Skip when no two budgets have :data:`MIN_ISO_SIZES` model sizes each."""

    def make() -> tuple[IsoFLOPAnalysis, pd.DataFrame]:
        pts = points(ctx).copy()
        need = (
            f"needs at least 2 compute budgets with {MIN_ISO_SIZES} or more model sizes each (runs within "
            f"{ISO_RTOL:.0%} of one FLOP count form a budget)"
        )
        if len(pts) < 2 * MIN_ISO_SIZES:
            raise Skip(f"{need}; here only {len(pts)} runs are finished")
        pts["Cb"] = _iso_budgets(pts)
        labels, levels = group_budgets(pts["Cb"].to_numpy(float), ISO_RTOL)
        sizes = pts.groupby(labels)["N"].nunique()
        enough = int((sizes >= MIN_ISO_SIZES).sum())
        if enough < 2:
            most = int(sizes.max())
            raise Skip(
                f"{need}; here {enough} of {len(levels)} budgets has {MIN_ISO_SIZES} or more"
                if enough
                else f"{need}; here no budget has more than {most} size{'s' if most > 1 else ''}"
            )
        iso = IsoFLOPAnalysis(
            budget_rtol=ISO_RTOL, min_points_per_budget=MIN_ISO_SIZES, bootstrap=ctx.bootstrap, random_state=ctx.seed
        )
        try:
            with np.errstate(all="ignore"):
                iso.fit(pts[["N", "Cb"]].to_numpy(float), pts["loss"].to_numpy(float))
        except FitError as err:
            raise Skip(f"the IsoFLOP fit failed: {err}") from None
        which = [int(np.argmin(np.abs(np.log(iso.budgets_ / lv)))) for lv in levels]
        used = [np.isclose(levels[k], iso.budgets_[which[k]], rtol=1e-9) for k in range(len(levels))]
        pts["budget_label"] = [which[k] if used[k] else -1 for k in labels]
        return iso, pts

    return cast(tuple[IsoFLOPAnalysis, pd.DataFrame], ctx.cached("isoflop", make))


def isoflop_figure(ctx: Context) -> tuple[Figure, list[str]]:
    """Left: final loss against N at each budget, the least-squares parabola in log N that Approach 2 fits
    and its vertex (star); right: the vertices N_opt against C and the fitted N_opt ∝ C^a. Findings: vertices
    below the entropy rate."""
    iso, pts = isoflop(ctx)
    H = ctx.entropy_rate
    cmap = colormaps["plasma"]
    k = len(iso.budgets_)
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    found: list[str] = []
    for j, C in enumerate(iso.budgets_):
        color = cmap(0.85 * j / max(1, k - 1))
        g = pts[pts["budget_label"] == j]
        a1.scatter(g["N"], g["loss"], color=color, s=30, zorder=3, edgecolor="white", linewidth=0.6)
        # The parabola of IsoFLOPAnalysis (loss against log N by least squares), drawn over the sampled sizes.
        lN = np.log(g["N"].to_numpy(float))
        coef = np.polyfit(lN, g["loss"].to_numpy(float), 2)
        grid = np.linspace(lN.min() - 0.15, lN.max() + 0.15, 80)
        a1.plot(np.exp(grid), np.polyval(coef, grid), color=color, lw=1.4, label=f"C = {C:.3g}", gid=f"parabola:{j}")
        inside = bool(iso.vertex_in_range_[j])
        a1.plot(
            [iso.n_opt_[j]],
            [iso.loss_opt_[j]],
            marker="*",
            ms=13,
            color=color if inside else "white",
            mec=RED if H is not None and iso.loss_opt_[j] < H else color,
            mew=1.4,
            ls="none",
            zorder=4,
            gid=f"vertex:{j}",
        )
        if H is not None and iso.loss_opt_[j] < H:
            found.append(f"the vertex at C = {C:.3g} ({iso.loss_opt_[j]:.4g})")
    _entropy_line(a1, ctx)
    a1.set(xscale="log", xlabel="N (non-embedding parameters)", ylabel="final val loss (nats)")
    a1.set_title("IsoFLOP profiles: loss against N at fixed C; stars: parabola minima", fontsize=10)
    a1.grid(True, which="major", alpha=0.25)
    a1.legend(fontsize=8, loc="upper right", title="budget", title_fontsize=8)
    a1.xaxis.set_minor_formatter(NullFormatter())
    for j, C in enumerate(iso.budgets_):
        inside = bool(iso.vertex_in_range_[j])
        color = cmap(0.85 * j / max(1, k - 1))
        a2.plot([C], [iso.n_opt_[j]], marker="*", ms=13, color=color if inside else "white", mec=color, ls="none")
    cs = np.geomspace(iso.budgets_.min() / 1.5, iso.budgets_.max() * 1.5, 50)
    a_ci = iso.ci_.get("a", (np.nan, np.nan))
    diag = getattr(iso, "diagnostics_", None)
    a_text = interval_text(diag, "a", a_ci)
    a2.plot(cs, iso.predict(cs), color="0.25", lw=1.3, label=f"N_opt ∝ C^a, a = {iso.a_:.3g} {a_text}", gid="nopt_fit")
    a2.set(xscale="log", yscale="log", xlabel="C (training FLOPs)", ylabel="N_opt (parabola minimum)")
    a2.set_title("compute-optimal size against budget", fontsize=10)
    a2.grid(True, which="major", alpha=0.25)
    a2.legend(
        handles=[
            *a2.get_legend_handles_labels()[0],
            Line2D([], [], marker="*", ms=11, color="0.4", ls="none", label="minimum inside the sizes sampled"),
            Line2D([], [], marker="*", ms=11, color="white", mec="0.4", ls="none", label="minimum outside them"),
        ],
        fontsize=8,
        loc="upper left",
    )
    return fig, found


@panel("isoflop", title="IsoFLOP profiles (Approach 2)", order=35, short="IsoFLOP profiles")
def isoflop_panel(ctx: Context) -> str:
    iso, pts = isoflop(ctx)
    fig, found = isoflop_figure(ctx)
    diag = getattr(iso, "diagnostics_", None)
    rows = []
    for j, C in enumerate(iso.budgets_):
        g = pts[pts["budget_label"] == j]
        rows.append(
            [
                f"{C:.4g}",
                int(g["N"].nunique()),
                f"{si(g['N'].min())} - {si(g['N'].max())}",
                f"{iso.n_opt_[j]:,.0f}",
                f"{iso.d_opt_[j]:,.0f}",
                fmt(iso.loss_opt_[j]),
                "yes" if iso.vertex_in_range_[j] else "no (extrapolated)",
            ]
        )
    a_ci, b_ci = iso.ci_.get("a", (np.nan, np.nan)), iso.ci_.get("b", (np.nan, np.nan))
    b_text = fmt_interval(b_ci) if is_pinned(diag, "a", a_ci) else interval_text(diag, "a", a_ci)
    return (
        verdict_html(diag, "Verdict of the N_opt(C) fit")
        + impossible_html([f + " lies below it" for f in found])
        + figure(fig, "IsoFLOP profiles with parabola minima and the N_opt(C) fit")
        + '<p class="note">Chinchilla Approach 2 (Hoffmann et al. 2022, sec. 3.2): at each compute budget a '
        "parabola in log N through the final losses; its minimum is N_opt(C), and log N_opt = k + a·log C. "
        f"Fitted a = {iso.a_:.3g} {html.escape(interval_text(diag, 'a', a_ci))}, b = 1 − a = {iso.b_:.3g} "
        f"{html.escape(b_text)} (95% bootstrap, runs resampled within each budget). Hollow stars: minima "
        "outside the sizes sampled at their budget, where the parabola extrapolates. Budgets: runs within "
        f"{ISO_RTOL:.0%} of one FLOP count (train.flops when configured).</p>"
        + table(
            ["C (FLOPs)", "sizes", "N range", "N_opt", "D_opt = C/(6N_opt)", "loss at minimum", "minimum inside"], rows
        )
    )


# --- fitted parameters ---------------------------------------------------------------------------------------


@panel("parameters", title="Fitted parameters", order=40, short="fitted parameters")
def parameters(ctx: Context) -> str:
    law = chinchilla(ctx)
    try:
        held: ChinchillaLaw | None = _held_law(holdout(ctx)[0])
    except Skip:
        held = None
    fits = [law] + ([held] if held else [])
    header = ["", "all runs", "95% interval"] + (["without largest scale", "95% interval"] if held else [])

    def row(name: str, get: Any) -> list[str]:
        cells = [name]
        for fit in fits:
            v, ci = get(fit)
            cells += [fmt(v), ci if isinstance(ci, str) else (fmt_interval(ci) if ci is not None else "")]
        return cells

    def diag_of(f: ChinchillaLaw) -> Any:
        return getattr(f, "diagnostics_", None)

    def derived(f: ChinchillaLaw, k: str) -> str:
        """a and b are functions of α and β: informative only when both are pinned (fixed: by the options)."""
        d = diag_of(f)
        ci = f.derived_ci_[k]
        if d is not None:
            st = {p: d.parameters[p].status for p in ("alpha", "beta") if p in d.parameters}
            if "unpinned" in st.values():
                return "not pinned (" + " and ".join(p for p, s in st.items() if s == "unpinned") + " not pinned)"
        return fmt_interval(ci) if np.all(np.isfinite(ci)) else "-"

    rows = [row(k, lambda f, k=k: (f.params_[k], interval_text(diag_of(f), k, f.ci_[k]))) for k in law.param_names]
    rows.append(row("a (N_opt ∝ C^a)", lambda f: (f.compute_optimal_exponents_[0], derived(f, "a"))))
    rows.append(row("b (D_opt ∝ C^b)", lambda f: (f.compute_optimal_exponents_[1], derived(f, "b"))))
    rows += [
        row("R² (log)", lambda f: (f.r2_, None)),
        row("RMSLE", lambda f: (f.rmsle_, None)),
        row("runs fitted", lambda f: (f.n_points_, None)),
        row(
            "points per free parameter",
            lambda f: (diag_of(f).points_per_parameter if diag_of(f) is not None else math.nan, None),
        ),
        row("bootstrap draws (failed)", lambda f: (f"{len(f.bootstrap_params_)} ({f.n_bootstrap_failed_})", None)),
        row("verdict", lambda f: (diag_of(f).verdict if diag_of(f) is not None else "-", None)),
    ]
    notes = [_entropy_note(ctx, law)]
    if held is not None:
        notes.append(_entropy_note(ctx, held, "Without the largest scale, fitted E"))
    notes.append(f"Cross-check by variable projection (NNLS for E, A, B; exponents searched): {crosscheck(ctx)}.")
    notes = [n for n in notes if n]
    impossible = [n for n in notes if "impossible" in n]
    return table(header, rows) + "".join(
        f'<p class="{"impossible" if n in impossible else "note"}">{html.escape(n)}</p>' for n in notes
    )


def _entropy_note(ctx: Context, law: ChinchillaLaw, what: str = "Fitted E") -> str:
    """E against the entropy rate, in words. "The entropy rate is inside E's 95% interval" is said only of an
    informative interval (E pinned by the data); a fitted E below the entropy rate is called impossible."""
    er = ctx.entropy_rate
    if er is None:
        return ""
    e, ci = float(law.params_["E"]), law.ci_["E"]
    diag = getattr(law, "diagnostics_", None)
    text = f"{what} = {e:.4g} vs the exact entropy rate {er:.4g}: {(e - er) / er:+.1%}"
    if e < er:
        text += " (below the entropy rate: impossible, no model can beat it)"
    d = diag.parameters.get("E") if diag is not None else None
    if d is not None and d.status == "fixed":
        return text + "; E is fixed, not fitted."
    if is_pinned(diag, "E", ci):
        inside = "inside" if ci[0] <= er <= ci[1] else "outside"
        return text + f"; the entropy rate is {inside} E's 95% interval {fmt_interval(ci)}."
    if d is not None and d.status == "unpinned":
        return text + f"; E is not pinned by these runs ({'; '.join(d.reasons)}), so its interval says nothing."
    return text + "; E has no informative interval (no bootstrap or no diagnostics)."


# --- the forecast ledger ------------------------------------------------------------------------------------


_FLAG_TEXT = {"worse_than_smaller_run": "worse than a smaller run", "below_entropy_rate": "below the entropy rate"}


@panel("forecasts", title="Forecast ledger", order=50, short="forecast ledger")
def forecasts(ctx: Context) -> str:
    # Scaling-law records; capability crossings are drawn with their capability (emergence panels).
    recs = [r for r in load_forecasts(ctx.store) if kind_of(r) == RECORD_KIND]
    if not recs:
        raise Skip("no forecast recorded (scalescope forecast)")
    pts = {c: final_points(ctx.runs, c) for c in ("nonembedding", "total")}
    H = ctx.entropy_rate
    rows, messages = [], []
    for r in recs:
        s = score_record(r, pts[r.get("count", "nonembedding")])
        pred = r.get("predicted")
        lo, hi = r.get("interval") or (None, None)
        w = r.get("rel_half_width")
        if w is None and pred and lo is not None and hi is not None:
            w = (hi - lo) / (2 * pred)
        flags = list(r.get("flags") or [])
        kinds = {f.get("kind") for f in flags}
        if H is not None and pred is not None and pred < H and "below_entropy_rate" not in kinds:
            flags.append(
                {"kind": "below_entropy_rate", "message": f"predicted {pred:.4g} is below the entropy rate {H:.4g}"}
            )
        for f in flags:
            messages.append(f"{r['id']}: {f.get('message', f.get('kind'))}")
        if s is None:
            status = "pending"
        elif "status" in s:
            status = {"missed": "not covered"}.get(s["status"], s["status"])
        else:
            status = "covered" if s["covered"] else "not covered"
        verdict = (r.get("diagnostics") or {}).get("verdict") or "-"
        rows.append(
            [
                r["id"],
                (r.get("created_at") or "")[:16].replace("T", " "),
                r["law"],
                target_text(r["target"]),
                fmt(pred),
                fmt_interval((lo, hi)) if lo is not None and hi is not None else "-",
                f"±{w:.1%}" if w is not None and np.isfinite(w) else "-",
                fmt(s["observed"]) if s else "-",
                f"{s['rel_error']:+.2%}" if s else "-",
                status,
                verdict,
                ", ".join(_FLAG_TEXT.get(f.get("kind"), str(f.get("kind"))) for f in flags) or "-",
            ]
        )
    flag_html = (
        '<p class="impossible"><b>Flagged:</b> ' + "; ".join(html.escape(m) for m in messages) + ".</p>"
        if messages
        else ""
    )
    return (
        table(
            [
                "id",
                "recorded (UTC)",
                "law",
                "target",
                "predicted",
                "95% interval",
                "half-width",
                "observed",
                "rel. error",
                "status",
                "fit verdict",
                "flags",
            ],
            rows,
        )
        + flag_html
        + '<p class="note">Predictions recorded with <code>scalescope forecast</code> before their runs; scores '
        "are computed now from the store's finished runs (mean over seeds). Status: covered (the observation "
        f"is inside an informative interval, half-width at most ±{MAX_REL_HALF_WIDTH:.0%} unless the record "
        "says otherwise), not covered, or uninformative (the interval is too wide to count). Flags: a "
        "prediction worse than an existing run with fewer parameters and less data, or below the entropy rate. "
        "<code>scalescope forecast --score</code> writes the scores into the ledger.</p>"
    )
