"""The scaling-law panels (issue 3): the store and its conventions, validation loss against tokens and FLOPs,
the L(N, D) fit (Hoffmann et al. 2022), its checked extrapolation to the largest scale, the fitted
parameters, and the forecast ledger."""

from __future__ import annotations

import html
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ...forecast.laws import final_points, score_record, target_text
from ...forecast.ledger import load_forecasts
from ...laws import ChinchillaLaw, FitError, HoldoutResult, compare_chinchilla, holdout_largest
from ..core import Context, Skip, figure, panel, table
from ..style import CMAP, fmt, fmt_interval, n_colorbar, n_norm, tidy_log

MIN_RUNS = 6  # the Chinchilla form has 5 parameters; the fitters want one point more


# --- shared data and fits (cached on the context) -----------------------------------------------------


def points(ctx: Context) -> pd.DataFrame:
    """Finished runs as (id, N non-embedding, D tokens, C FLOPs, final val loss)."""
    return ctx.cached("points", lambda: final_points(ctx.runs))


def chinchilla(ctx: Context) -> ChinchillaLaw:
    """The L(N, D) fit on every finished run, or Skip saying why there is none."""

    def make() -> ChinchillaLaw:
        pts = points(ctx)
        nn, nd = pts["N"].nunique(), pts["D"].nunique()
        if len(pts) < MIN_RUNS or nn < 2 or nd < 2:
            raise Skip(
                f"the L(N, D) fit needs at least {MIN_RUNS} finished runs with at least 2 distinct N and "
                f"2 distinct D; this store has {len(pts)} finished runs, {nn} distinct N, {nd} distinct D"
            )
        law = ChinchillaLaw(bootstrap=ctx.bootstrap, random_state=ctx.seed)
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return law.fit(pts[["N", "D"]].to_numpy(float), pts["loss"].to_numpy(float))
        except FitError as err:
            raise Skip(f"the L(N, D) fit failed: {err}") from None

    return ctx.cached("chinchilla", make)


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

    return ctx.cached("holdout", make)


def _held_law(res: HoldoutResult) -> ChinchillaLaw:
    """The law refitted without the largest scale: a clone of :func:`chinchilla`'s, so a ChinchillaLaw."""
    return cast(ChinchillaLaw, res.law)


def _prediction_band(law: ChinchillaLaw, X: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise 95% prediction band: bootstrap curves times exp(residual noise). One noise draw per
    curve rather than per point (``predict_interval`` draws per point): the same pointwise percentiles in
    distribution, but a smooth band instead of a jagged one."""
    with np.errstate(over="ignore", invalid="ignore"):
        curves = np.stack([law._predict_params(q, X) for q in law.bootstrap_params_])
    eps = np.random.default_rng(seed).normal(0.0, law.log_residual_scale_, size=(len(curves), 1))
    lo, hi = np.nanpercentile(curves * np.exp(eps), [2.5, 97.5], axis=0)
    return lo, hi


def _curves_by_n(ax: Axes, ctx: Context, law: ChinchillaLaw, *, extend: float = 1.0, band: bool = False) -> None:
    """Final loss against D, one colour per N: the points and the law's curve (optionally its 95% band)."""
    pts, norm = points(ctx), n_norm(ctx)
    d = np.geomspace(pts["D"].min() / 1.3, pts["D"].max() * 1.3 * extend, 60)
    ys = [pts["loss"].to_numpy()]
    for n, g in pts.groupby("N"):
        color = CMAP(norm(n))
        X = np.column_stack([np.full_like(d, n), d])
        ys.append(law.predict(X))
        ax.plot(d, ys[-1], color=color, lw=1.5)
        if band and len(law.bootstrap_params_):
            lo, hi = _prediction_band(law, X, ctx.seed)
            ax.fill_between(d, lo, hi, color=color, alpha=0.13, lw=0)
        ax.scatter(g["D"], g["loss"], color=color, s=30, zorder=3, edgecolor="white", linewidth=0.6)
    if ctx.entropy_rate is not None:
        ys.append(np.array([ctx.entropy_rate]))
    # Limits from the data, the curves and the entropy rate, not from a band or a fitted E near 0.
    y = np.concatenate(ys)
    y = y[np.isfinite(y) & (y > 0)]
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="D (tokens)",
        ylabel="final val loss (nats)",
        ylim=(y.min() / 1.08, y.max() * 1.08),
    )
    _entropy_line(ax, ctx)
    e = law.params_["E"]
    below = " (below the axis)" if e < y.min() / 1.08 else ""
    ax.axhline(e, color="0.45", ls=":", lw=1.2, label=f"fitted E = {e:.3g}{below}")
    ax.legend(fontsize=8, loc="upper right")
    tidy_log(ax)


def _entropy_line(ax: Axes, ctx: Context) -> None:
    if ctx.entropy_rate is not None:
        ax.axhline(
            ctx.entropy_rate, color="crimson", ls="--", lw=1.2, label=f"entropy rate {ctx.entropy_rate:.3g} (floor)"
        )


# --- panels ---------------------------------------------------------------------------------------------


@panel("overview", title="Store, runs and conventions", order=0)
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
        f"Intervals are 95% percentile bootstrap intervals with {ctx.bootstrap} resamples (fewer than the "
        "fitters' default of 1,000, to keep the report quick; `scalescope fit` gives the full count).",
    ]
    if er is not None:
        conventions.append(
            f"The training language's exact entropy rate is {er:.4f} nats/token: no model can "
            "beat it, and a fitted E should land near it."
        )
    items = "".join(f"<li>{html.escape(c)}</li>" for c in conventions)
    return (
        f"<p>Store <code>{html.escape(str(ctx.store))}</code>: {len(ctx.runs)} runs, "
        f"{len(ctx.metrics)} metric rows.</p>" + table(["status", "runs"], rows) + f"<ul>{items}</ul>"
    )


@panel("loss_curves", title="Validation loss against tokens and FLOPs", order=10)
def loss_curves(ctx: Context) -> str:
    m = ctx.metrics
    val = m[(m["metric"] == "val_loss") & m["value"].notna() & (m["tokens"] > 0)]
    if val.empty:
        raise Skip("the store has no val_loss measurements after step 0")
    n_of = pd.to_numeric(ctx.runs.set_index("id")["params_nonembedding"], errors="coerce")
    norm = n_norm(ctx)
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for rid, g in val.groupby("id"):
        n = n_of.get(rid)
        color = CMAP(norm(n)) if n is not None and np.isfinite(n) and n > 0 else "0.5"
        for ax, col in zip(axes, ("tokens", "flops")):
            ax.plot(g[col], g["value"], color=color, lw=1.1, alpha=0.85)
            ax.scatter(g[col].iloc[-1:], g["value"].iloc[-1:], color=color, s=14, zorder=3)
    # The compute frontier: the lowest loss any run reached with at most C FLOPs (lower envelope).
    f = val.sort_values("flops")
    axes[1].step(
        f["flops"],
        np.minimum.accumulate(f["value"].to_numpy()),
        where="post",
        color="black",
        ls="--",
        lw=1.4,
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
    n_colorbar(fig, ctx, axes)
    return (
        figure(fig, "validation loss curves against tokens and FLOPs, coloured by N")
        + f'<p class="note">{val["id"].nunique()} runs; a dot marks each run\'s last evaluation. The dashed '
        "black line is the compute frontier: the lowest val loss reached by any run within C FLOPs.</p>"
    )


@panel("chinchilla_fit", title="L(N, D) fit on final losses", order=20)
def chinchilla_fit(ctx: Context) -> str:
    law, pts = chinchilla(ctx), points(ctx)
    X, obs = pts[["N", "D"]].to_numpy(float), pts["loss"].to_numpy(float)
    pred = law.predict(X)
    colors = CMAP(n_norm(ctx)(pts["N"].to_numpy()))
    fig = Figure(figsize=(12, 4), layout="constrained")
    a1, a2, a3 = fig.subplots(1, 3)
    _curves_by_n(a1, ctx, law)
    a1.set_title("data and fitted law, by N", fontsize=10)
    lim = [min(obs.min(), pred.min()) * 0.97, max(obs.max(), pred.max()) * 1.03]
    a2.plot(lim, lim, color="0.6", lw=1)
    a2.scatter(obs, pred, c=colors, s=30, edgecolor="white", linewidth=0.6)
    a2.set(xlabel="observed final val loss", ylabel="predicted", title="predicted vs observed")
    a3.axhline(0, color="0.6", lw=1)
    a3.scatter(pts["D"], 100 * (obs / pred - 1), c=colors, s=30, edgecolor="white", linewidth=0.6)
    a3.set(xscale="log", xlabel="D (tokens)", ylabel="observed / predicted − 1 (%)", title="residuals")
    a3.xaxis.set_minor_formatter(NullFormatter())
    a2.title.set_fontsize(10)
    a3.title.set_fontsize(10)
    n_colorbar(fig, ctx, [a1, a2, a3])
    return (
        figure(fig, "Chinchilla-form fit: data, predicted vs observed, residuals")
        + f'<p class="note">Fitted on {law.n_points_} finished runs: R² (log) = {law.r2_:.4f}, '
        f"RMSLE = {law.rmsle_:.4g}. Dotted: the fitted irreducible loss E; dashed red: the language's "
        "entropy rate, when known.</p>"
    )


@panel("extrapolation", title="Checked extrapolation: fit without the largest scale", order=30)
def extrapolation(ctx: Context) -> str:
    res, held = holdout(ctx)
    pts = points(ctx)
    fig = Figure(figsize=(8.5, 4.4), layout="constrained")
    ax = fig.subplots()
    _curves_by_n(ax, ctx, _held_law(res), extend=2.0, band=True)
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
    ax.legend(fontsize=8, loc="upper right")
    n_colorbar(fig, ctx, ax)
    rows = []
    lo, hi = res.interval if res.interval is not None else (np.full(len(held), np.nan),) * 2
    cov = res.covered if res.covered is not None else [None] * int(held.sum())
    for (n, d), o, p, lo_i, hi_i, e, c in zip(res.X_heldout, res.y_heldout, res.predicted, lo, hi, res.rel_error, cov):
        rows.append(
            [
                f"{n:,.0f}",
                f"{d:,.0f}",
                fmt(o),
                fmt(p),
                fmt_interval((lo_i, hi_i)),
                f"{e:+.2%}",
                "-" if c is None else ("yes" if c else "no"),
            ]
        )
    return (
        figure(fig, "extrapolation to the held-out largest scale with 95% prediction bands")
        + f'<p class="note">The law is refitted on the {len(pts) - int(held.sum())} runs below the largest '
        "scale (largest N·D); shaded: 95% prediction bands (bootstrap of the law plus residual scatter), "
        "extended to twice the largest D. Stars: the held-out runs, which the fit never saw.</p>"
        + table(["N", "D", "observed", "predicted", "95% interval", "rel. error", "covered"], rows)
    )


@panel("parameters", title="Fitted parameters", order=40)
def parameters(ctx: Context) -> str:
    law = chinchilla(ctx)
    try:
        held: ChinchillaLaw | None = _held_law(holdout(ctx)[0])
    except Skip:
        held = None
    header = ["", "all runs", "95% interval"] + (["without largest scale", "95% interval"] if held else [])

    def row(name: str, get: Any) -> list[str]:
        cells = [name]
        for fit in [law] + ([held] if held else []):
            v, ci = get(fit)
            cells += [fmt(v), fmt_interval(ci) if ci is not None else ""]
        return cells

    rows = [row(k, lambda f, k=k: (f.params_[k], f.ci_[k])) for k in law.param_names]
    rows.append(row("a (N_opt ∝ C^a)", lambda f: (f.compute_optimal_exponents_[0], f.derived_ci_["a"])))
    rows.append(row("b (D_opt ∝ C^b)", lambda f: (f.compute_optimal_exponents_[1], f.derived_ci_["b"])))
    rows += [
        row("R² (log)", lambda f: (f.r2_, None)),
        row("RMSLE", lambda f: (f.rmsle_, None)),
        row("runs fitted", lambda f: (f.n_points_, None)),
        row("bootstrap draws (failed)", lambda f: (f"{len(f.bootstrap_params_)} ({f.n_bootstrap_failed_})", None)),
    ]
    notes = []
    er = ctx.entropy_rate
    if er is not None:
        e, (lo, hi) = law.params_["E"], law.ci_["E"]
        inside = "inside" if lo <= er <= hi else "outside"
        notes.append(
            f"Fitted E = {e:.4g} vs the exact entropy rate {er:.4g}: {(e - er) / er:+.1%}; "
            f"the entropy rate is {inside} E's 95% interval."
        )
    pts = points(ctx)
    check = compare_chinchilla(pts[["N", "D"]].to_numpy(float), pts["loss"].to_numpy(float), huber=law)
    notes.append(f"Cross-check by variable projection (NNLS for E, A, B; exponents searched): {check.message}.")
    return table(header, rows) + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


@panel("forecasts", title="Forecast ledger", order=50)
def forecasts(ctx: Context) -> str | None:
    recs = load_forecasts(ctx.store)
    if not recs:
        return None
    pts = {c: final_points(ctx.runs, c) for c in ("nonembedding", "total")}
    rows = []
    for r in recs:
        s = score_record(r, pts[r.get("count", "nonembedding")])
        rows.append(
            [
                r["id"],
                (r.get("created_at") or "")[:16].replace("T", " "),
                r["law"],
                target_text(r["target"]),
                fmt(r["predicted"]),
                fmt_interval(r["interval"]),
                fmt(s["observed"]) if s else "-",
                f"{s['rel_error']:+.2%}" if s else "-",
                ("yes" if s["covered"] else "no") if s else "pending",
                "yes" if r.get("target_existed") else "",
            ]
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
                "observed",
                "rel. error",
                "covered",
                "target existed",
            ],
            rows,
        )
        + '<p class="note">Predictions recorded with <code>scalescope forecast</code> before their runs; scores '
        "are computed now from the store's finished runs (mean over seeds). <code>scalescope forecast "
        "--score</code> writes them into the ledger.</p>"
    )
