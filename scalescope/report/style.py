"""What the report's figures and tables share: number formatting, log-axis tidying, the colour map by model
size with its discrete legend, the marker and line style of each budget, and the per-run colours, line
styles and legends of the instrument panels.

Panels import this module and :mod:`scalescope.report.core`; neither imports a panel.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

from ..laws.diagnostics import MIN_POINTS_PER_PARAMETER
from .core import Context

__all__ = [
    "BUDGET_LINESTYLES",
    "BUDGET_MARKERS",
    "CMAP",
    "BudgetStyle",
    "LINESTYLES",
    "OPT",
    "OPT_ORDER",
    "RunStyle",
    "fmt",
    "budget_legend_handles",
    "budget_styles",
    "fmt_interval",
    "impossible_html",
    "interval_text",
    "is_pinned",
    "n_colorbar",
    "n_legend",
    "n_legend_handles",
    "n_norm",
    "run_legend",
    "run_styles",
    "short_name",
    "si",
    "tidy_log",
    "varying_columns",
    "verdict_html",
]

# --- numbers ----------------------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".4g") -> str:
    """A table cell: ``v`` formatted with ``spec``; strings as they are; None and non-finite floats as ``-``."""
    if isinstance(v, str):
        return v
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def fmt_interval(lo_hi: Any) -> str:
    """``[lo, hi]`` with :func:`fmt`."""
    return f"[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]"


def si(v: float) -> str:
    """A count with an SI suffix and 3 significant digits: 6592 -> ``6.59k``, 1.2e6 -> ``1.2M``."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def short_name(col: str) -> str:
    """The last part of a dotted config column: ``model.d_model`` -> ``d_model``."""
    return col.rsplit(".", 1)[-1]


# --- axes -------------------------------------------------------------------------------------------------


def tidy_log(ax: Axes) -> None:
    """Log axes without crowded labels: no minor labels on an x axis that spans a decade or more (within one
    decade matplotlib's own minor labels are the only ones there are); plain ticks on y when it spans < 1
    decade (losses usually do, and 2×10⁰ is harder to read than 2)."""
    x0, x1 = ax.get_xlim()
    if ax.get_xscale() != "log" or not (x0 > 0 and x1 > 0) or max(x0, x1) / min(x0, x1) >= 10:
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:  # under a decade: label 1, 2, 3 and 5 of each decade, as counts (2k, not 2×10³)
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: si(v)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log" and hi / lo < 10:
        ax.yaxis.set_major_locator(MaxNLocator(6))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())


# --- colour by model size (the scaling-law panels) --------------------------------------------------------

CMAP = colormaps["viridis"]


def n_norm(ctx: Context) -> LogNorm:
    """Log colour scale over the store's non-embedding parameter counts N."""
    n = pd.to_numeric(ctx.runs["params_nonembedding"], errors="coerce").dropna()
    n = n[n > 0]
    lo, hi = (float(n.min()), float(n.max())) if len(n) else (1.0, 10.0)
    return LogNorm(lo / 1.5, hi * 1.5) if lo == hi else LogNorm(lo, hi)


def n_colorbar(fig: Figure, ctx: Context, axes: Any) -> None:
    """The colour bar of :data:`CMAP` over :func:`n_norm`, beside ``axes``."""
    fig.colorbar(ScalarMappable(n_norm(ctx), CMAP), ax=axes, label="N (non-embedding parameters)", pad=0.015)


MAX_N_LEGEND = 12  # distinct model sizes listed one by one; more get the colour bar instead


def n_legend_handles(ctx: Context, ns: Iterable[float]) -> list[Line2D]:
    """One legend entry per distinct N (its colour, ``N = 6.59k``), smallest first."""
    norm = n_norm(ctx)
    return [
        Line2D([], [], color=CMAP(norm(n)), lw=2.2, marker="o", ms=5, label=f"N = {si(n)}")
        for n in sorted({float(n) for n in ns if np.isfinite(n) and n > 0})
    ]


@dataclass(frozen=True)
class BudgetStyle:
    """How runs of one training budget are drawn, whatever their size: a marker and a line style."""

    marker: str
    ls: Any
    label: str


BUDGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
BUDGET_LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)), (0, (1, 4)))


def budget_styles(budgets: Iterable[float], kind: str = "D") -> dict[float, BudgetStyle]:
    """A :class:`BudgetStyle` per distinct budget (smallest first): markers cycle through ten shapes and
    line styles through six, so up to ten budgets differ in marker and any two adjacent ones in both.
    ``kind``: what the budget counts, for the label (``D`` tokens or ``C`` FLOPs)."""
    vals = sorted({float(b) for b in budgets if np.isfinite(b)})
    return {
        b: BudgetStyle(
            BUDGET_MARKERS[i % len(BUDGET_MARKERS)],
            BUDGET_LINESTYLES[i % len(BUDGET_LINESTYLES)],
            f"{kind} = {si(b)}",
        )
        for i, b in enumerate(vals)
    }


def budget_legend_handles(styles: dict[float, BudgetStyle], *, lines: bool = True) -> list[Line2D]:
    """One grey legend entry per budget: its marker (and line style, with ``lines``)."""
    return [
        Line2D([], [], color="0.3", ls=st.ls if lines else "none", marker=st.marker, ms=5, lw=1.3, label=st.label)
        for st in styles.values()
    ]


def n_legend(
    fig: Figure, ctx: Context, axes: Any, ns: Iterable[float], budgets: dict[float, BudgetStyle] | None = None
) -> None:
    """The figure's legend of model sizes, one entry per N (a discrete legend, not a colour bar; the colour
    bar when there are more than :data:`MAX_N_LEGEND` sizes), and below it, with ``budgets``, one entry per
    budget, outside the axes on the right."""
    handles = n_legend_handles(ctx, ns)
    if len(handles) > MAX_N_LEGEND:
        n_colorbar(fig, ctx, axes)
    elif handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="model size", title_fontsize=8)
    if budgets and len(budgets) > 1:
        fig.legend(
            handles=budget_legend_handles(budgets),
            loc="outside right lower",
            fontsize=8,
            title="budget",
            title_fontsize=8,
        )


# --- colour by run family, line style by optimizer (the instrument panels) --------------------------------

OPT = "train.optimizer"
LINESTYLES = {"adamw": "-", "sgd": "--"}
OPT_ORDER = {"sgd": 0, "adamw": 1}  # SGD left, AdamW right
# Config columns that do not change what is trained: never a reason to tell runs apart.
QUIET = ("train.eval_every", "train.eval_batches", "train.checkpoint_every", "train.keep_weights", "train.device")
MAX_LEGEND_ON_AXES = 9


def varying_columns(runs: pd.DataFrame) -> list[str]:
    """Config columns that differ between ``runs``, leaving out those that do not change what is trained."""
    cols = [c for c in runs.columns if (("." in c and not c.startswith("final_")) or c == "seed") and c not in QUIET]
    return [c for c in cols if runs[c].astype(str).nunique(dropna=False) > 1]


@dataclass(frozen=True)
class RunStyle:
    """How one run is drawn: ``color`` by its family (varying config other than the optimizer), ``ls`` by
    optimizer; ``family`` and ``opt`` are the two halves of its label."""

    color: Any
    ls: str
    family: str
    opt: str
    rank: tuple = ()  # legend order: family (by N), then optimizer (SGD first)

    @property
    def label(self) -> str:
        return ", ".join(p for p in (self.opt, self.family) if p)


def run_styles(ctx: Context, ids: Any) -> dict[str, RunStyle]:
    """A :class:`RunStyle` per run id. Config fields that move with the optimizer (a zipped
    ``(train.optimizer, train.lr)`` axis) label the optimizer rather than the colour."""
    runs = ctx.runs[ctx.runs["id"].isin(set(ids))]
    if OPT in runs:
        opt = runs[OPT].astype(str)
    else:
        opt = pd.Series("", index=runs.index)
    var = [c for c in varying_columns(runs) if c != OPT]
    with_opt = [c for c in var if runs.groupby(opt)[c].agg(lambda s: s.astype(str).nunique()).max() == 1]
    fam_cols = [c for c in var if c not in with_opt]
    n_of = pd.to_numeric(runs.get("params_nonembedding", pd.Series(np.nan, index=runs.index)), errors="coerce")

    def fam(r: Any) -> str:
        return ", ".join(f"{short_name(c)}={fmt(r[c])}" for c in fam_cols)

    fams = {rid: fam(r) for rid, r in runs.set_index("id").iterrows()}
    order = sorted(
        set(fams.values()),
        key=lambda f: (float(n_of[runs["id"].map(fams) == f].min()), f) if n_of.notna().any() else (0.0, f),
    )
    cmap = colormaps["tab10"]
    colors = (
        {f: cmap(i) for i, f in enumerate(order)}
        if len(order) <= 10
        else {f: colormaps["plasma"](0.85 * i / (len(order) - 1)) for i, f in enumerate(order)}
    )
    out = {}
    for rid, r in runs.set_index("id").iterrows():
        o = str(r[OPT]) if OPT in runs else ""
        extra = ", ".join(f"{short_name(c)} {fmt(r[c])}" for c in with_opt)
        out[str(rid)] = RunStyle(
            colors[fams[rid]],
            LINESTYLES.get(o, ":"),
            fams[rid] or ("" if o else str(rid)),
            f"{o} ({extra})" if extra else o,
            (order.index(fams[rid]), OPT_ORDER.get(o, 9), o),
        )
    return out


def run_legend(
    ax: Axes,
    st: dict[str, RunStyle],
    ids: Iterable[str],
    extra: list[Line2D] | None = None,
    *,
    solid: bool = False,
    loc: Any = "best",
) -> None:
    """One legend entry per distinct run label (then ``extra``); outside the axes, on the figure's right, when
    there are too many to sit on the data (``solid``: runs drawn in their colour only, all line styles)."""
    seen, handles = set(), []
    for rid in sorted(ids, key=lambda r: st[r].rank):
        s = st[rid]
        if s.label not in seen:
            seen.add(s.label)
            handles.append(Line2D([], [], color=s.color, ls="-" if solid else s.ls, lw=1.8, label=s.label or rid))
    handles += extra or []
    if len(handles) > MAX_LEGEND_ON_AXES and ax.figure is not None:
        ax.figure.legend(handles=handles, fontsize=7.5, loc="outside right upper")
    elif handles:
        ax.legend(handles=handles, fontsize=7.5, loc=loc)


# --- how far a fit can be trusted (laws.diagnostics.FitDiagnostics) -----------------------------------------


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def interval_text(diag: Any, name: str, ci: Any) -> str:
    """A parameter's 95% interval as a table cell, never shown as informative when it is not: ``fixed``
    for a parameter the caller fixed, ``not pinned (reasons)`` for one the data do not pin (e.g. "not
    pinned (95% interval spans 11.3 decades)"), ``-`` without bootstrap draws, else ``[lo, hi]``."""
    d = diag.parameters.get(name) if diag is not None else None
    if d is not None and d.status == "fixed":
        return "fixed"
    if d is not None and d.status == "unpinned":
        return "not pinned (" + "; ".join(d.reasons) + ")"
    lo, hi = (ci if ci is not None else (np.nan, np.nan))[:2]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "-"
    return fmt_interval((lo, hi))


def is_pinned(diag: Any, name: str, ci: Any = None) -> bool:
    """Whether ``name`` has an informative interval: pinned by the data (not fixed, not unpinned) and, when
    ``ci`` is given, a finite one."""
    d = diag.parameters.get(name) if diag is not None else None
    if d is None or d.status != "pinned":
        return False
    return ci is None or bool(np.all(np.isfinite(np.asarray(ci[:2], dtype=float))))


def verdict_html(diag: Any, what: str = "Verdict") -> str:
    """A box beside a fit's figure: the verdict (``ok`` / ``weak`` / ``unidentified``) and its reason in
    words, then the points per free parameter, which parameters the data pin, which they do not, which are
    fixed, the failed bootstrap resamples and the cross-check's verdict."""
    if diag is None:
        return (
            f'<div class="verdict weak"><b>{html.escape(what)}: not assessed</b> (no identifiability '
            "diagnostics for this fit).</div>"
        )
    params = diag.parameters
    free = [k for k, d in params.items() if d.status != "fixed"]
    pinned = [k for k, d in params.items() if d.status == "pinned"]
    unpinned = [k for k, d in params.items() if d.status == "unpinned"]
    fixed = [k for k, d in params.items() if d.status == "fixed"]
    facts = [
        f"{diag.points_per_parameter:.1f} points per free parameter ({diag.n_points} points, {len(free)} free "
        f"parameters; at least {MIN_POINTS_PER_PARAMETER:g} per parameter wanted)",
        f"pinned: {_names(pinned)}; not pinned: {_names(unpinned)}" + (f"; fixed: {_names(fixed)}" if fixed else ""),
    ]
    share = diag.bootstrap_failed_share
    if share is not None and np.isfinite(share):
        facts.append(f"failed bootstrap resamples: {share:.0%}")
    else:
        facts.append("no bootstrap")
    if diag.cross_check:
        facts.append(f"cross-check: {diag.cross_check}")
    items = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    v = str(diag.verdict)
    return (
        f'<div class="verdict {html.escape(v)}"><b>{html.escape(what)}: {html.escape(v)}</b>. '
        f"{html.escape(diag.reason)}.<ul>{items}</ul></div>"
    )


def impossible_html(findings: list[str]) -> str:
    """The text beside a figure that flags what lies below the entropy rate ("" when nothing does)."""
    if not findings:
        return ""
    items = "; ".join(html.escape(f) for f in findings)
    return f'<p class="impossible"><b>Below the entropy rate, impossible:</b> {items}.</p>'
