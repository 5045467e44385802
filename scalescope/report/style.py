"""What the report's figures and tables share: number formatting, log-axis tidying, the colour map by model
size, and the per-run colours, line styles and legends of the instrument panels.

Panels import this module and :mod:`scalescope.report.core`; neither imports a panel.
"""

from __future__ import annotations

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
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from .core import Context

__all__ = [
    "CMAP",
    "LINESTYLES",
    "OPT",
    "OPT_ORDER",
    "RunStyle",
    "fmt",
    "fmt_interval",
    "n_colorbar",
    "n_norm",
    "run_legend",
    "run_styles",
    "short_name",
    "tidy_log",
    "varying_columns",
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


def short_name(col: str) -> str:
    """The last part of a dotted config column: ``model.d_model`` -> ``d_model``."""
    return col.rsplit(".", 1)[-1]


# --- axes -------------------------------------------------------------------------------------------------


def tidy_log(ax: Axes) -> None:
    """Log axes without crowded labels: no minor labels on x; plain ticks on y when it spans < 1 decade
    (losses usually do, and 2×10⁰ is harder to read than 2)."""
    ax.xaxis.set_minor_formatter(NullFormatter())
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
