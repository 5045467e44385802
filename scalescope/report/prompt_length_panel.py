"""Report panel: demonstrations needed to identify one of K tasks, against K (issue 5, "How long must a prompt
be?"), for the model and the ideal observers on seen and unseen tasks, with the winning growth form of each
series (see :mod:`scalescope.emergence.prompt_length`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..emergence.prompt_length import FORMS, analyze, demos_table
from .core import Context, Skip, figure, panel, table

_STYLE = {
    "seen/model": ("C0", "o", "-"),
    "seen/ideal": ("C0", "", "--"),
    "seen/lookup": ("0.5", "", ":"),
    "unseen/model": ("C3", "s", "-"),
    "unseen/ideal": ("C3", "", "--"),
}
_LABEL = {
    "seen/model": "model, seen tasks",
    "seen/ideal": "ideal observer (pool posterior), seen",
    "seen/lookup": "lookup only (family observer), seen",
    "unseen/model": "model, unseen tasks",
    "unseen/ideal": "ideal observer (lookup), unseen",
}


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


@panel("prompt_length", title="Demonstrations needed against K", order=92)
def prompt_length(ctx: Context) -> str | None:
    tab = demos_table(ctx.runs, ctx.metrics)
    if not len(tab):
        raise Skip("no run measured task_id (instruments.task_id on a discrete_tasks source)")
    r = ctx.cached("prompt_length", lambda: analyze(table=tab))
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.add_subplot()
    rows = []
    for s, e in r["series"].items():
        color, marker, ls = _STYLE.get(s, ("k", ".", "-"))
        K = np.asarray(e["K"], float)
        d = np.asarray([np.nan if v is None else v for v in e["demos_mean"]], float)
        ax.plot(K, d, color=color, marker=marker or None, ls=ls, lw=1.5, label=_LABEL.get(s, s))
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
                _LABEL.get(s, s),
                *[_fmt(fits[f]["heldout_rmse"]) if f in fits else "-" for f in FORMS],
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
