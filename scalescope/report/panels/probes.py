"""The linear-probe panel (issue 15): selectivity per layer over training, and final probe accuracy beside the
control task's per layer (Hewitt & Liang 2019), from :func:`scalescope.analyses.probes.analyze`. One row of two
plots per run that logged ``linear_probe`` metrics; :class:`Skip` when none did."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ...analyses.probes import analyze
from ...store import Tables
from ..core import Context, Skip, figure, panel, table
from ..style import CMAP, fmt

MAX_RUNS = 8  # rows of plots; the table lists every run


def _analysis(ctx: Context) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        r = analyze(ctx.store, tables=Tables(runs=ctx.runs, metrics=ctx.metrics))
        if not r["runs"]:
            raise Skip("no run logged linear_probe metrics ([instruments.linear_probe])")
        return r

    return ctx.cached("probes", make)


def _title(e: dict[str, Any]) -> str:
    src = e["kind"] or "?"
    if e.get("order") is not None:
        src += f" order {e['order']:g}"
    return f"{e['id']}: {src}, latent {e['latent'] or '?'}"


def _plot_run(ax_t: Any, ax_l: Any, e: dict[str, Any]) -> None:
    tr = e["over_training"]
    steps = np.array(tr["steps"], dtype=float)
    n = len(e["layers"])
    for k, p in enumerate(e["layers"]):
        sel = np.array([np.nan if v is None else v for v in tr["selectivity"][str(p["layer"])]], dtype=float)
        ax_t.plot(steps, sel, marker="o", ms=3, color=CMAP(k / max(n - 1, 1)), label=f"layer {p['layer']}")
    ax_t.axhline(0.0, color="0.5", lw=0.8, ls=":")
    lo, hi = ax_t.get_ylim()  # at least ±0.1 in view: a wiggle of 0.01 around 0 should look like one
    ax_t.set_ylim(min(lo, -0.1), max(hi, 0.1))
    # Step 0 is an evaluation too: symlog keeps it on a log-like axis.
    ax_t.set(xscale="symlog", xlabel="step", ylabel="selectivity (acc - control)", title=_title(e))
    ax_t.set_xlim(left=0)
    ax_t.legend(fontsize=7)

    layers = [p["layer"] for p in e["layers"]]
    acc = [np.nan if p["acc"] is None else p["acc"] for p in e["layers"]]
    ctl = [np.nan if p["control"] is None else p["control"] for p in e["layers"]]
    ax_l.plot(layers, acc, marker="o", color="tab:blue", label="latent probe")
    ax_l.plot(layers, ctl, marker="s", color="tab:orange", label="control task")
    for key, style, label in (("ideal", "--", "ideal (Bayes)"), ("majority", ":", "majority class")):
        if e.get(key) is not None:
            ax_l.axhline(e[key], color="0.35", ls=style, lw=1, label=label)
    ax_l.set(xlabel="layer (0 = embeddings)", ylabel="held-out accuracy", ylim=(0, 1.02),
             title=f"step {e['final_step']}")  # fmt: skip
    ax_l.set_xticks(layers)
    ax_l.legend(fontsize=7)


@panel("probes", title="Linear probes with control tasks: selectivity by layer and over training", order=96,
       short="linear probes")  # fmt: skip
def probes(ctx: Context) -> str:
    r = _analysis(ctx)
    shown = r["runs"][:MAX_RUNS]
    fig = Figure(figsize=(10.4, 3.4 * len(shown)))
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for (ax_t, ax_l), e in zip(axes, shown, strict=True):
        _plot_run(ax_t, ax_l, e)
    fig.tight_layout()
    rows = []
    for e in r["runs"]:
        best = next((p for p in e["layers"] if p["layer"] == e["best_layer"]), None) or {}
        rows.append(
            [
                e["id"],
                _title(e).split(": ", 1)[1],
                fmt(e["final_step"], "d"),
                ", ".join(fmt(p["selectivity"], "+.3f") for p in e["layers"]),
                fmt(e["best_layer"], "d"),
                fmt(best.get("acc"), ".3f"),
                fmt(best.get("control"), ".3f"),
                fmt(e["ideal"], ".3f"),
                fmt(e["majority"], ".3f"),
            ]
        )
    head = ["run", "source, latent", "step", "selectivity by layer", "best layer", "acc", "control", "ideal",
            "majority"]  # fmt: skip
    more = f" The first {MAX_RUNS} of {len(r['runs'])} runs are drawn." if len(r["runs"]) > MAX_RUNS else ""
    note = (
        '<p class="note">Linear probes on the residual stream (layer 0: embeddings; layer i: block i) for a latent '
        "the data generator knows, scored on held-out sequences, beside the same probe trained on a control task "
        "that gives each input token type a fixed random label (Hewitt &amp; Liang 2019). Selectivity = accuracy "
        "- control accuracy: positive when the layer carries the latent beyond what the probe can read from the "
        "token identity. Ideal: the Bayes-optimal guess from the tokens so far." + html.escape(more) + "</p>"
    )
    return (
        figure(fig, "probe selectivity per layer over training, and final accuracy vs control")
        + note
        + table(head, rows)
    )
