"""Report panels for the microscopic instruments (issue 4): the gradient noise scale, the critical batch size
beside it, the top Hessian eigenvalues against the edge-of-stability thresholds, the spectral density, and
how the gradient covariance sits relative to the Hessian; SGD and AdamW side by side.

Each panel raises :class:`~scalescope.report.core.Skip` when the store has no measurements of its kind, so
the report of a plain scaling store lists them in its closing "not shown" line and draws nothing. Runs keep
one colour across panels: the colour tells the runs apart by the config fields that vary other than the
optimizer (e.g. the model size), the line style by optimizer.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter, NullLocator

from ...analyses.critical_batch import CriticalBatchResult
from ...laws.critical_batch import CriticalBatchLaw
from ...store import Store, Tables
from ..core import Context, Skip, figure, panel, table
from ..style import OPT, OPT_ORDER, fmt, run_legend, run_styles, short_name, tidy_log

DENSITY_ARTIFACT = "curvature/density"  # the curvature instrument's (2, points) [grid; p] array
COVARIANCE = {  # metric -> (axis label, y limits); see scalescope/instruments/covariance.py
    "overlap": ("top-k overlap of U_H and U_Σ", (0.0, 1.02)),
    "commutator": ("normalized commutator of H_k and Σ_k", (0.0, 1.02)),
    "grad_fraction": ("gradient fraction in top-k H space", (0.0, 1.02)),
    "effective_rank": ("effective rank of Σ", (0.0, None)),
}


# --- shared helpers --------------------------------------------------------------------------------------


def _rows(ctx: Context, metric: str) -> pd.DataFrame:
    """Finite rows of one metric, sorted by run and step."""
    m = ctx.metrics
    out = m[(m["metric"] == metric) & np.isfinite(pd.to_numeric(m["value"], errors="coerce"))]
    return out.sort_values(["id", "step"])


def _by_optimizer(ctx: Context, ids: Any) -> list[tuple[str, list[str]]]:
    """(optimizer, run ids) groups, SGD first; one unnamed group when the store has no optimizer column."""
    runs = ctx.runs[ctx.runs["id"].isin(set(ids))]
    if OPT not in runs:
        return [("", sorted(runs["id"]))]
    groups = [(str(o), sorted(g["id"])) for o, g in runs.groupby(OPT)]
    return sorted(groups, key=lambda t: (OPT_ORDER.get(t[0], 9), t[0]))


def _seq_len_note(ctx: Context, ids: Any) -> str:
    t = pd.to_numeric(ctx.runs.loc[ctx.runs["id"].isin(set(ids)), "model.seq_len"], errors="coerce").dropna().unique()
    return f" (× seq_len = {int(t[0])} for tokens)" if len(t) == 1 else " (× each run's seq_len for tokens)"


# --- the gradient noise scale ----------------------------------------------------------------------------


@panel("noise_scale", title="Gradient noise scale B_simple", order=60, short="noise scale")
def noise_scale(ctx: Context) -> str | None:
    ema = _rows(ctx, "noise_scale/B_simple")
    if ema.empty:
        raise Skip("no noise_scale metrics (instruments.noise_scale)")
    ema = ema[ema["value"] > 0]
    if ema.empty:
        raise Skip(
            "the noise_scale instrument ran but never estimated a positive |G|² (noise swamps the signal at "
            "its probe batch size: raise n_micro or batch_size)"
        )
    ids = sorted(ema["id"].unique())
    st = run_styles(ctx, ids)
    each = _rows(ctx, "noise_scale/B_simple_eval")
    each = each[each["value"] > 0]
    bnoise = _rows(ctx, "noise_scale/B_noise")
    bnoise = bnoise[bnoise["value"] > 0]
    val = _rows(ctx, "val_loss")[["id", "step", "value"]].rename(columns={"value": "loss"})
    # With a known entropy rate H the right axis is the reducible loss L − H on a log scale: near the floor
    # |G|² vanishes with L − H, so B_simple grows like a power of it (and raw losses bunch up at H).
    er = ctx.entropy_rate
    excess = er is not None and bool((val["loss"] > er).any())
    if excess:
        val["loss"] = val["loss"] - er
        val = val[val["loss"] > 0]
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    a_tok, a_loss = fig.subplots(1, 2, sharey=True)
    for rid in ids:
        s = st[rid]
        for ax, x in ((a_tok, "tokens"), (a_loss, "loss")):
            for df, kind in ((ema, "ema"), (each, "eval"), (bnoise, "noise")):
                d = df[df["id"] == rid].merge(val, on=["id", "step"], how="left")
                d = d[(d["tokens"] > 0) if x == "tokens" else d["loss"].notna()]
                if d.empty:
                    continue
                if kind == "ema":
                    ax.plot(d[x], d["value"], color=s.color, ls=s.ls, lw=1.6, marker="o", ms=3)
                elif kind == "eval":
                    ax.scatter(d[x], d["value"], color=s.color, s=9, alpha=0.35, lw=0)
                else:
                    ax.scatter(d[x], d["value"], color=s.color, marker="x", s=28, lw=1.2)
    a_tok.set(xscale="log", yscale="log", xlabel="D (tokens trained)", ylabel="B (sequences)")
    if excess:
        a_loss.set(xscale="log", yscale="log", xlabel=f"val loss − entropy rate {er:.4g} (nats); training proceeds →")
    else:
        a_loss.set(yscale="log", xlabel="val loss (nats); training proceeds →")
    a_loss.invert_xaxis()
    for ax in (a_tok, a_loss):
        ax.grid(True, which="major", alpha=0.25)
        ax.xaxis.set_minor_formatter(NullFormatter())
    kinds = [
        Line2D([], [], color="0.3", lw=1.6, marker="o", ms=3, label="B_simple (ratio of EMAs)"),
        Line2D([], [], color="0.3", lw=0, marker="o", ms=4, alpha=0.4, label="B_simple, one evaluation"),
    ]
    if not bnoise.empty:
        kinds.append(Line2D([], [], color="0.3", lw=0, marker="x", ms=6, label="B_noise (Hessian-weighted)"))
    run_legend(a_tok, st, ids, kinds, loc="upper left")
    rows = []
    for rid in sorted(ids, key=lambda r: st[r].rank):
        last = ema[ema["id"] == rid].iloc[-1]
        bn = bnoise[bnoise["id"] == rid]
        lv = val[(val["id"] == rid) & (val["step"] == last["step"])]["loss"] + (er if excess else 0.0)
        rows.append(
            [
                st[rid].label or rid,
                rid,
                int(last["step"]),
                fmt(lv.iloc[0]) if len(lv) else "-",
                fmt(last["value"]),
                fmt(bn["value"].iloc[-1]) if len(bn) else "-",
            ]
        )
    return (
        figure(fig, "gradient noise scale B_simple against tokens and against validation loss")
        + '<p class="note">B_simple = tr(Σ)/|G|² (McCandlish et al. 2018), from micro-batch gradients on a probe '
        "batch; the line is the ratio of the moving averages of the two estimates, faint dots the estimate of "
        f"one evaluation alone; crosses: B_noise = tr(HΣ)/GᵀHG where measured. In sequences"
        f"{_seq_len_note(ctx, ids)}. McCandlish et al. find the noise scale tracks the loss, not the batch "
        "size or learning rate that reached it (right"
        + ("; against the loss above the language's exact entropy rate, on a log scale" if excess else "")
        + ").</p>"
        + table(["run", "id", "last step", "val loss", "B_simple", "last B_noise"], rows)
    )


# --- the critical batch size -----------------------------------------------------------------------------

MIN_BATCH_SIZES = 3  # the hyperbola has 2 parameters; fit_steps_examples wants one point more
N_TARGETS = 5


def auto_targets(runs: pd.DataFrame, metrics: pd.DataFrame, n: int = N_TARGETS) -> list[float]:
    """Target losses every batch size reaches: from just above the worst batch size's best loss, L_B, up to
    halfway to the initial loss L_0 (above that, steps to the target are a handful of early evaluations)."""
    val = metrics[(metrics["metric"] == "val_loss") & metrics["id"].isin(set(runs["id"]))]
    val = val[np.isfinite(pd.to_numeric(val["value"], errors="coerce"))]
    if val.empty:
        return []
    best = val.groupby("id")["value"].min()
    b_of = runs.set_index("id")["train.batch_size"]
    reach = best.groupby(best.index.map(b_of)).min()  # per batch size, the lowest loss any of its runs reached
    l0 = float(val[val["step"] == 0]["value"].median()) if (val["step"] == 0).any() else float(val["value"].max())
    lo = float(reach.max())
    if not l0 > lo:
        return []
    return [float(x) for x in np.geomspace(lo + 0.5 * (l0 - lo), lo + 0.04 * (l0 - lo), n)]


def critical_batch(ctx: Context) -> list[tuple[str, CriticalBatchResult]]:
    """(group name, analysis) per group of runs that sweeps at least :data:`MIN_BATCH_SIZES` batch sizes, with
    targets from :func:`auto_targets` (cached); empty when the store is not a batch-size sweep. Groups are
    those of :func:`scalescope.analyses.critical_batch.critical_batch_analysis` (e.g. one per model size)."""

    def make() -> list[tuple[str, CriticalBatchResult]]:
        from ...analyses.critical_batch import critical_batch_analysis, run_groups

        runs = ctx.runs
        if "train.batch_size" not in runs or _rows(ctx, "val_loss").empty:
            return []
        out = []
        for group, gruns in run_groups(runs, None):
            if gruns["train.batch_size"].nunique() < MIN_BATCH_SIZES:
                continue
            targets = auto_targets(gruns, ctx.metrics)
            if not targets:
                continue
            (res,) = critical_batch_analysis(
                Tables(gruns, ctx.metrics), targets, group_by=[], bootstrap=ctx.bootstrap, random_state=ctx.seed
            )
            out.append((", ".join(f"{short_name(k)}={fmt(v)}" for k, v in group.items()) or "all runs", res))
        return out

    return ctx.cached("critical_batch", make)


@panel("critical_batch", title="Critical batch size against loss, with B_simple", order=65, short="critical batch")
def critical_batch_panel(ctx: Context) -> str | None:
    results = critical_batch(ctx)
    if not results:
        raise Skip(f"needs runs at {MIN_BATCH_SIZES} or more batch sizes (train.batch_size) with val_loss")
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["tab10"]
    rows, any_fit = [], False
    for i, (name, res) in enumerate(results):
        color = cmap(i % 10)
        pts = [t for t in res.targets if math.isfinite(t.B_crit) and t.B_crit > 0]
        if pts:
            any_fit = True
            L = np.array([t.target for t in pts])
            b = np.array([t.B_crit for t in pts])
            # No interval (NaN): no bar. numpy fills elementwise from an array ``nan``; its stubs want a float.
            lo = np.nan_to_num(np.array([t.B_crit_ci[0] for t in pts]), nan=b)  # type: ignore[call-overload]
            hi = np.nan_to_num(np.array([t.B_crit_ci[1] for t in pts]), nan=b)  # type: ignore[call-overload]
            err = np.vstack([np.clip(b - lo, 0, None), np.clip(hi - b, 0, None)])
            ax.errorbar(L, b, yerr=err, color=color, fmt="o", ms=6, capsize=3, lw=1.2, label=f"B_crit ({name})")
        # Beside B_crit: the noise scale measured at the same loss, and the noisy quadratic model's prediction.
        for attr, marker, size, label in (
            ("B_simple", "D", 36, "B_simple at the same loss"),
            ("B_crit_nqm", "^", 40, "noisy quadratic model's B_crit"),
        ):
            ok = [t for t in res.targets if math.isfinite(getattr(t, attr)) and getattr(t, attr) > 0]
            if ok:
                ax.scatter(
                    [t.target for t in ok],
                    [getattr(t, attr) for t in ok],
                    marker=marker,
                    s=size,
                    facecolor="none",
                    edgecolor=color,
                    lw=1.3,
                    label=f"{label} ({name})",
                    zorder=3,
                )
        if res.law:
            Ls = np.array([t.target for t in res.targets])
            grid = np.geomspace(Ls.min() / 1.02, Ls.max() * 1.02, 50)
            ax.plot(
                grid,
                CriticalBatchLaw.from_params(res.law).predict(grid),
                color=color,
                lw=1.4,
                ls="--",
                label=f"B*/L^(1/α_B): B* = {res.law['B_star']:.3g}, α_B = {res.law['alpha_B']:.3g}",
            )
        for t in res.targets:
            edge = [str(b) for b in t.table.loc[t.table["lr_at_grid_edge"], "batch_size"]]
            note = t.error or ("lr optimum at grid edge for B=" + ",".join(edge) if edge else "")
            rows.append(
                [
                    name,
                    fmt(t.target),
                    fmt(t.B_crit),
                    f"[{fmt(t.B_crit_ci[0])}, {fmt(t.B_crit_ci[1])}]",
                    fmt(t.B_simple),
                    fmt(t.ratio),
                    fmt(t.B_crit_nqm),
                    len(t.table),
                    note,
                ]
            )
    if not any_fit:
        raise Skip(
            "no target loss gave a critical batch size: "
            + "; ".join(sorted({t.error or "" for _, r in results for t in r.targets}))[:300]
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="target val loss L (nats); lower losses to the right",
        ylabel="batch size (sequences)",
    )
    ax.invert_xaxis()
    targets = sorted({t.target for _, r in results for t in r.targets})
    ax.set_xticks(targets, [f"{t:.3g}" for t in targets])  # the losses span a fraction of a decade
    ax.xaxis.set_minor_locator(NullLocator())
    tidy_log(ax)
    ax.grid(True, which="major", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper left")
    res0 = results[0][1]
    return (
        figure(fig, "critical batch size against target loss with the fitted law and B_simple")
        + '<p class="note">For each target loss L: the steps S each batch size B needs to reach it (best learning '
        "rate per B), E = B·S, and the fit of (S/S_min − 1)(E/E_min − 1) = 1 giving B_crit = E_min/S_min "
        "(Kaplan et al. 2020 eq. 5.1-5.2; 95% bootstrap intervals); dashed: B_crit(L) = B*/L^(1/α_B) (eq. 5.3). "
        "Diamonds: B_simple from the noise_scale instrument at the same loss; triangles, where the covariance "
        "instrument ran, the critical batch size its noisy quadratic model predicts (Zhang et al. 2019). "
        "Targets were chosen automatically between each group's initial loss and the loss every batch size reached; "
        f"<code>scalescope critical-batch --store STORE --targets ...</code> takes others. Batch sizes in sequences"
        f"{' (× ' + str(res0.seq_len) + ' for tokens)' if res0.seq_len else ''}.</p>"
        + table(
            [
                "group",
                "target L",
                "B_crit",
                "95% interval",
                "B_simple",
                "B_crit / B_simple",
                "NQM B_crit",
                "batch sizes reaching L",
                "note",
            ],
            rows,
        )
    )


# --- curvature and the edge of stability -----------------------------------------------------------------


def _eig_metrics(ctx: Context) -> list[str]:
    names = ctx.metrics["metric"].astype(str)
    ks = sorted(
        {
            int(m.rsplit("_", 1)[1])
            for m in names.unique()
            if m.startswith("curvature/eig_") and m.rsplit("_", 1)[1].isdigit()
        }
    )
    return [f"curvature/eig_{k}" for k in ks]


def eos_figure(ctx: Context) -> Figure | None:
    """Top Hessian eigenvalues against step beside the edge-of-stability thresholds, one axis per optimizer.
    Every line carries a ``gid`` ``"<run id>:<quantity>"`` (``eig_1``, ``threshold_gd``, ...), for tests."""
    lam = _rows(ctx, "curvature/lambda_max")
    if lam.empty:
        return None
    ids = sorted(lam["id"].unique())
    st = run_styles(ctx, ids)
    groups = _by_optimizer(ctx, ids)
    eigs = _eig_metrics(ctx)
    fig = Figure(figsize=(6.2 * len(groups), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0])
    for ax, (opt, gids) in zip(axes, groups):
        quantities: list[tuple[str, dict[str, Any], str]] = []
        for i, name in enumerate(eigs):
            quantities.append(
                (
                    name,
                    {
                        "lw": 1.8 if i == 0 else 0.9,
                        "alpha": 1.0 if i == 0 else 0.55,
                        "marker": "o" if i == 0 else None,
                        "ms": 3,
                    },
                    "λ_max(H)" if i == 0 else "λ_2 ... λ_k(H)",
                )
            )
        if not eigs:
            quantities.append(("curvature/lambda_max", {"lw": 1.8, "marker": "o", "ms": 3}, "λ_max(H)"))
        if opt != "adamw":  # SGD (or an optimizer this panel does not know: draw both)
            quantities += [
                ("curvature/threshold_gd", {"ls": (0, (5, 3)), "lw": 1.3}, "2/η"),
                ("curvature/threshold_momentum", {"ls": (0, (1, 2)), "lw": 1.5}, "(2 + 2μ)/η, momentum μ"),
            ]
        if opt != "sgd":
            quantities += [
                ("curvature/precond_sharpness", {"lw": 2.2, "marker": "s", "ms": 3.5}, "λ_max(P⁻¹H)"),
                ("curvature/threshold_adam", {"ls": (0, (5, 3)), "lw": 1.3}, "(2 + 2β₁)/(η(1 − β₁))"),
            ]
        legend_kinds: list[Line2D] = []
        for metric, kw, label in quantities:
            df = _rows(ctx, metric)
            df = df[df["id"].isin(gids) & (df["value"] > 0)]
            if df.empty:
                continue
            if label not in [h.get_label() for h in legend_kinds]:
                legend_kinds.append(Line2D([], [], color="0.3", **{"ls": "-"} | kw, label=label))
            for rid, d in df.groupby("id"):
                ax.plot(
                    d["step"],
                    d["value"],
                    color=st[rid].color,
                    gid=f"{rid}:{metric.split('/', 1)[1]}",
                    **{"ls": "-"} | kw,
                )
        ax.set(
            yscale="log",
            xlabel="optimizer step",
            ylabel="eigenvalue (log)",
            title=f"{opt.upper() if opt == 'sgd' else opt.replace('adamw', 'AdamW') or 'all runs'}",
        )
        ax.title.set_fontsize(11)
        ax.grid(True, which="major", alpha=0.25)
        run_legend(ax, st, gids, legend_kinds, solid=True)
    return fig


@panel("edge_of_stability", title="Sharpness and the edge of stability", order=70, short="edge of stability")
def edge_of_stability(ctx: Context) -> str | None:
    fig = eos_figure(ctx)
    if fig is None:
        raise Skip("no curvature metrics (instruments.curvature)")
    return (
        figure(fig, "top Hessian eigenvalues against step with the edge-of-stability thresholds")
        + '<p class="note">Top eigenvalues of the Hessian of the loss on a fixed probe batch (Lanczos). SGD is '
        "stable on a quadratic while λ_max &lt; 2/η, with heavy-ball momentum μ while λ_max &lt; (2 + 2μ)/η; "
        "training at a constant η tends to push λ_max up to that line and hover there (Cohen et al. 2021). "
        "For Adam(W) the relevant quantity is the preconditioned sharpness λ_max(P⁻¹H), P = diag(√v̂ + ε), "
        "against (2 + 2β₁)/(η(1 − β₁)), 38/η for β₁ = 0.9 (Cohen et al. 2022). η is the learning rate in "
        "effect at each step (warmup and decay included), so the thresholds move with the schedule.</p>"
    )


# --- the spectral density --------------------------------------------------------------------------------


def _density_files(ctx: Context) -> dict[str, dict[int, Path]]:
    """Run id -> (step -> the stored density array) for the runs that saved one."""
    store = Store(ctx.store)
    out: dict[str, dict[int, Path]] = {}
    for rid in ctx.runs["id"]:
        files = store.run_dir(str(rid)).artifact_steps(DENSITY_ARTIFACT)
        if files:
            out[str(rid)] = files
    return out


def pick_steps(steps: list[int], n: int = 4) -> list[int]:
    """Up to ``n`` steps spread on a log scale: the first (often initialization), the last, and between."""
    steps = sorted(steps)
    if len(steps) <= n:
        return steps
    pos = np.unique(np.round(np.geomspace(1, len(steps), n)).astype(int) - 1)
    chosen = {steps[0], steps[-1], *(steps[i] for i in pos)}
    while len(chosen) > n:  # rounding can pick neighbours; drop the one closest to another
        mids = sorted(chosen)[1:-1]
        chosen.discard(mids[len(mids) // 2])
    return sorted(chosen)


MAX_DENSITY_ROWS = 4


@panel("spectral_density", title="Hessian spectral density", order=75, short="spectral density")
def spectral_density(ctx: Context) -> str | None:
    files = _density_files(ctx)
    if not files:
        raise Skip("no Hessian density saved (instruments.curvature with density)")
    st = run_styles(ctx, files)
    groups = _by_optimizer(ctx, files)
    fams = sorted({st[r].family for _, g in groups for r in g})
    left_out = max(0, len(fams) - MAX_DENSITY_ROWS)
    fams = fams[:MAX_DENSITY_ROWS]
    fig = Figure(figsize=(5.6 * len(groups), 3.3 * len(fams) + 0.4), layout="constrained")
    # One density axis for every small multiple: they compare the same quantity, p(λ).
    axes = fig.subplots(len(fams), len(groups), squeeze=False, sharey=True)
    cmap = colormaps["viridis"]
    peak = 0.0
    for j, (_, gids) in enumerate(groups):
        for i, fam in enumerate(fams):
            ax = axes[i, j]
            rids = [r for r in gids if st[r].family == fam]
            if not rids:
                ax.set_axis_off()
                continue
            rid = rids[0]
            steps = pick_steps(list(files[rid]))
            for k, s in enumerate(steps):
                grid, p = np.load(files[rid][s])[:2]
                ax.plot(grid, p, color=cmap(0.9 * k / max(1, len(steps) - 1)), lw=1.3, label=f"step {s:,}")
                peak = max(peak, float(np.nanmax(p)))
            ax.set(yscale="log", xlabel="eigenvalue λ of H", ylabel="density p(λ)")
            ax.set_title(st[rid].label or rid, fontsize=10)
            ax.grid(True, which="major", alpha=0.25)
            ax.legend(fontsize=7.5, loc="upper right")
    if peak > 0:  # Gaussian smoothing leaves tails many decades down; show the six below the highest peak
        axes[0, 0].set_ylim(peak * 1e-6, peak * 3)
    more = f" {left_out} more run families are not shown." if left_out else ""
    return (
        figure(fig, "Hessian spectral density at a few steps, per optimizer")
        + '<p class="note">Stochastic Lanczos quadrature on the curvature probe batch, smoothed with a Gaussian '
        "(Ghorbani, Krishnan &amp; Xiao 2019), at up to four steps per run spread on a log scale. The density "
        "axis is logarithmic: a bulk near zero and a few outliers far to its right is the typical shape "
        f"(Sagun et al. 2017; Papyan 2019); the outliers are the top eigenvalues of the panel above.{more}</p>"
    )


# --- the gradient covariance against the Hessian ---------------------------------------------------------


@panel("covariance", title="Gradient covariance and the Hessian", order=80, short="gradient covariance")
def covariance(ctx: Context) -> str | None:
    present = [m for m in COVARIANCE if not _rows(ctx, f"covariance/{m}").empty]
    if not present:
        raise Skip("no covariance metrics (instruments.covariance)")
    ids = sorted(set().union(*(set(_rows(ctx, f"covariance/{m}")["id"]) for m in present)))
    st = run_styles(ctx, ids)
    fig = Figure(figsize=(3.6 * len(present) + 0.6, 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(present), squeeze=False)[0])
    for ax, m in zip(axes, present):
        label, (lo, hi) = COVARIANCE[m]
        df = _rows(ctx, f"covariance/{m}")
        for rid, d in df.groupby("id"):
            s = st[rid]
            ax.plot(d["step"], d["value"], color=s.color, ls=s.ls, lw=1.5, marker="o", ms=3, gid=f"{rid}:{m}")
        top = hi if hi is not None else max(1e-12, float(df["value"].max()) * 1.08)
        ax.set_xscale("symlog", linthresh=1)
        ax.set(xlabel="optimizer step", xlim=(0, float(df["step"].max()) * 1.25 + 1), ylim=(lo, top))
        ax.set_title(label, fontsize=9.5)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.25)
    run_legend(axes[0], st, ids)
    k = _covariance_k(ctx)
    ks = f"k = {k}" if k else "k = the instrument's top_k"
    return (
        figure(fig, "gradient covariance against the Hessian over training, SGD and AdamW")
        + f'<p class="note">On the covariance probe batch, {html.escape(ks)}: the overlap of the top-k '
        "eigenspaces of the Hessian H and of the per-example gradient covariance Σ (1 when they coincide, about "
        "k/n for random subspaces of the n parameters); the commutator of H and Σ restricted to H's top-k space, "
        "‖[H_k, Σ_k]‖/(√2‖H_k°‖‖Σ_k°‖) with X° the traceless part (0 when they share eigenvectors, as the noisy "
        "quadratic model of Zhang et al. 2019 assumes; at most 1 by the Böttcher–Wenzel inequality); the fraction "
        "of the mean gradient's squared norm "
        "inside H's top-k space (Gur-Ari et al. 2018 find most of it there); the participation ratio "
        "(Σλ)²/Σλ² of Σ's spectrum. Step axis linear below 1, logarithmic above.</p>"
    )


def _covariance_k(ctx: Context) -> int | None:
    ks = {
        int(m.rsplit("_", 1)[1])
        for m in ctx.metrics["metric"].astype(str).unique()
        if m.startswith("covariance/hess_eig_") and m.rsplit("_", 1)[1].isdigit()
    }
    return max(ks) if ks else None
