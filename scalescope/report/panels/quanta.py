"""The quanta panels (issue 14, item 5): the quantization model of neural scaling (Michaud et al. 2023) on
runs of the quanta source, from :func:`scalescope.analyses.quanta.analyze`.

* mean loss against N and D with the fitted E + A·x^-a beside a line of the theory's slope (α for N,
  α/(α+1) for D) through the same centre, and the exact entropy rate;
* the staircase: final per-skill accuracy, skills (rows) in frequency order against the sweep's scales;
* skills learned against N and D with the fitted power law and the theory's slope (1 for N, 1/(α+1) for D),
  and the store's skills forecasts.

Every panel raises :class:`Skip` when the store has no finished quanta runs. The transition tests (the
seed question) take seconds per skill and are left to ``scalescope quanta``; the report shows the fits.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ...analyses.quanta import analyze, final_skill_matrix, is_quanta
from ...laws.power import PowerLaw, SaturatingPowerLaw
from ...store import Tables
from ..core import Context, Skip, figure, panel, table
from ..style import CMAP, fmt, fmt_interval, si, tidy_log

AXIS_NAME = {"N": "non-embedding parameters N", "D": "tokens D"}
MAX_HEATMAP_ROWS = 400  # skills drawn in the staircase; the rarest beyond it are left out (and said so)


def _analysis(ctx: Context) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        runs = ctx.runs
        if runs.empty or "status" not in runs or not ((runs["status"] == "finished") & is_quanta(runs)).any():
            raise Skip("no finished runs of the quanta source (data.kind = 'quanta')")
        tables = Tables(runs=ctx.runs, metrics=ctx.metrics)
        return analyze(ctx.store, bootstrap=ctx.bootstrap, seed=ctx.seed, transition_skills=0, tables=tables)

    return ctx.cached("quanta", make)


def _sweeps(ctx: Context) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    """(group name, group, axis, sweep) for every sweep of every group; Skip when there is none."""
    out = []
    for g in _analysis(ctx)["groups"]:
        name = ", ".join(f"{k}={v}" for k, v in g["group"].items())
        out += [(name, g, axis, sw) for axis, sw in g["sweeps"].items()]
    if not out:
        raise Skip("the quanta runs form no N sweep (one token budget) and no D sweep (one model size)")
    return out


def _axes(n: int, height: float = 3.6) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(5.2 * n, height))
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def _theory_line(ax: Any, x: np.ndarray, y_at: Any, power: float, floor: float = 0.0) -> None:
    """A dashed line floor + c·x^power through the fit at the geometric centre of ``x`` (so that the theory's
    exponent ``power`` and the fitted one can be compared by eye)."""
    xc = float(np.exp(np.mean(np.log(x))))
    c = (float(y_at(xc)) - floor) * xc**-power
    ax.plot(x, floor + c * x**power, "--", color="0.35", lw=1.2, label=f"theory: exponent {power:.3g}")


def _title(name: str, axis: str) -> str:
    return f"{name}: {axis} sweep" if name else f"{axis} sweep"


@panel("quanta_loss", title="Quanta: mean loss against N and D, beside the theory", order=93, short="quanta loss")
def quanta_loss(ctx: Context) -> str:
    sweeps = _sweeps(ctx)
    fig, axes = _axes(len(sweeps))
    rows = []
    for ax, (name, g, axis, sw) in zip(axes, sweeps, strict=True):
        x, y = np.array(sw["points"]["x"], float), np.array(sw["points"]["mean_loss"], float)
        ax.scatter(x, y, color="tab:blue", zorder=3, label=sw["loss_metric"])
        f = sw["loss_fit"]
        grid = np.geomspace(x.min(), x.max(), 100)
        H = g["entropy_rate"]
        if H is not None:
            ax.axhline(H, color="tab:green", ls=":", lw=1.2, label=f"entropy rate {H:.4g}")
        if "error" not in f:
            law = SaturatingPowerLaw.from_params(f["params"])
            ax.plot(grid, law.predict(grid), color="tab:blue", lw=1.5, label=f"fit: exponent {-f['alpha']:.3g}")
            if f["theory_alpha"] is not None:
                _theory_line(ax, grid, lambda v, law=law: law.predict(np.array([v]))[0], -f["theory_alpha"], f["E"])
            rows.append(
                [
                    _title(name, axis),
                    f"{f['alpha']:.4g}",
                    fmt_interval(f["alpha_ci"]),
                    fmt(f["theory_alpha"]),
                    fmt(f["alpha_rel_dev"], "+.1%"),
                    f"{f['E']:.4g}",
                    fmt_interval(f["E_ci"]),
                    fmt(H),
                    fmt(f["E_rel_dev"], "+.2%"),
                    f"{f['r2_log']:.4f}",
                    f["verdict"],
                ]
            )
        else:
            rows.append([_title(name, axis), "-", "-", "-", "-", "-", "-", fmt(H), "-", "-", f["error"]])
        ax.set(xscale="log", yscale="log", xlabel=AXIS_NAME[axis], ylabel="mean loss (nats)", title=_title(name, axis))
        tidy_log(ax)
        ax.legend(fontsize=8)
    head = ["sweep", "a", "95% interval", "theory", "deviation", "E", "95% interval", "entropy rate", "E dev."]
    note = (
        '<p class="note">The quantization model (Michaud et al. 2023 sec. 2) predicts L(N) - E ∝ N^-α and '
        "L(D) - E ∝ D^-α/(α+1) for Zipf-distributed skills p_k ∝ k^-(α+1); the dashed line has the theory's "
        "slope and passes through the fit at the centre of the data. Targets: R² (log) >= 0.95, E within 2% of "
        "the entropy rate, the exponent within 25% of the theory's.</p>"
    )
    return (
        figure(fig, "mean loss against scale with the theory's slope")
        + note
        + table([*head, "R² log", "verdict"], rows)
    )


@panel("quanta_staircase", title="Quanta: skills learned by scale (the staircase)", order=94, short="staircase")
def quanta_staircase(ctx: Context) -> str:
    sweeps = _sweeps(ctx)
    mats = [final_skill_matrix(ctx.store, sw["ids_by_x"]) for *_, sw in sweeps]
    if all(m is None for m in mats):
        raise Skip("no quanta run stored per-skill accuracies (quanta/skill_acc artifacts)")
    fig, axes = _axes(len(sweeps), height=4.6)
    image = None
    notes = []
    for ax, (name, _, axis, sw), m in zip(axes, sweeps, mats, strict=True):
        ax.set(title=_title(name, axis), xlabel=AXIS_NAME[axis], ylabel="skill rank (1 = most frequent)")
        if m is None:
            ax.text(0.5, 0.5, "no per-skill artifacts", ha="center", transform=ax.transAxes)
            continue
        k = m.shape[1]
        shown = min(k, MAX_HEATMAP_ROWS)
        if shown < k:
            notes.append(f"{_title(name, axis)}: the {shown} most frequent of {k} skills")
        image = ax.imshow(
            m[:, :shown].T, aspect="auto", origin="upper", cmap=CMAP, vmin=0.5, vmax=1.0, interpolation="nearest",
            extent=(-0.5, m.shape[0] - 0.5, shown + 0.5, 0.5),
        )  # fmt: skip
        ax.set_xticks(range(m.shape[0]), [si(v) for v in sw["x_values"]], rotation=45)
    if image is not None:
        fig.colorbar(image, ax=axes, label="final accuracy (0.5 = chance)")
    thr = _analysis(ctx)["threshold"]
    note = (
        f'<p class="note">Final probe accuracy of each skill (rows, most frequent on top) in each run of the sweep '
        f"(columns, replicates averaged). A skill counts as learned at accuracy >= {thr:g}; the quantization model "
        "learns skills in frequency order, so the learned region should be a staircase descending to the right."
        + (" Shown: " + "; ".join(html.escape(n) for n in notes) + "." if notes else "")
        + "</p>"
    )
    return figure(fig, "skills by scale heat map") + note


@panel("quanta_skills", title="Quanta: number of skills learned against N and D", order=95, short="skills learned")
def quanta_skills(ctx: Context) -> str:
    sweeps = _sweeps(ctx)
    fig, axes = _axes(len(sweeps))
    rows = []
    for ax, (name, g, axis, sw) in zip(axes, sweeps, strict=True):
        x, n = np.array(sw["points"]["x"], float), np.array(sw["points"]["skills_learned"], float)
        ok = np.isfinite(n) & (n > 0)
        ax.scatter(x[ok], n[ok], color="tab:purple", zorder=3, label="runs")
        if g["n_skills"]:
            ax.axhline(g["n_skills"], color="0.5", ls=":", lw=1, label=f"all {g['n_skills']} skills")
        s = sw.get("skills_fit") or {}
        grid = np.geomspace(x.min(), x.max(), 100)
        if "exponent" in s:
            law = PowerLaw.from_params(s["params"])
            ax.plot(grid, law.predict(grid), color="tab:purple", lw=1.5, label=f"fit: exponent {s['exponent']:.3g}")
            if s["theory_exponent"] is not None:
                _theory_line(ax, grid, lambda v, law=law: law.predict(np.array([v]))[0], s["theory_exponent"])
        order = sw.get("order") or {}
        rows.append(
            [
                _title(name, axis),
                fmt(s.get("exponent")),
                fmt_interval(s["exponent_ci"]) if "exponent_ci" in s else "-",
                fmt(s.get("theory_exponent")),
                fmt(s.get("exponent_rel_dev"), "+.1%"),
                s.get("verdict") or s.get("error") or "-",
                fmt(order.get("rho"), ".3f"),
                fmt_interval(order["ci"]) if order.get("ci") else "-",
            ]
        )
        # No run learned a skill: nothing to draw on a log axis (matplotlib refuses all values <= 0); say so.
        yscale = "log" if ok.any() else "linear"
        if not ok.any():
            ax.text(0.5, 0.5, "no skill learned in any run", transform=ax.transAxes, ha="center", va="center")
            if x.size and np.all(x > 0):  # nothing plotted: give the log x axis the runs' range
                ax.set_xlim(x.min() / 1.3, x.max() * 1.3)
        ax.set(xscale="log", yscale=yscale, xlabel=AXIS_NAME[axis], ylabel="skills learned", title=_title(name, axis))
        tidy_log(ax)
        ax.legend(fontsize=8)
    head = ["sweep", "exponent b", "95% interval", "theory", "deviation", "verdict", "order rho", "95% interval"]
    note = (
        '<p class="note">Skills learned at the end of each run against scale, with n = A·x^b fitted on the runs '
        "that learned some but not all skills. Theory (Michaud et al. 2023 sec. 2): n ∝ N (a fixed number of "
        "parameters per skill) and n ∝ D^(1/(α+1)) (a skill is learned once seen a fixed number of times); the "
        "dashed line has the theory's slope. Order rho: Spearman's rank correlation between frequency rank and "
        "the smallest scale that has the skill.</p>"
    )
    return figure(fig, "skills learned against scale") + note + table(head, rows) + _forecast_table(ctx)


def _forecast_table(ctx: Context) -> str:
    recs = _analysis(ctx)["forecasts"]
    if not recs:
        return ""
    rows = []
    for r in recs:
        s = r.get("score") or {}
        sk = s.get("skills") or {}
        rows.append(
            [
                r["id"],
                f"N={si(r['target']['N'])}",
                f"{r['predicted']:.1f}",
                fmt_interval(r["interval"]),
                str(r["predicted_top"]),
                fmt(s.get("observed")),
                s.get("status", "pending"),
                fmt(sk.get("precision"), ".2f"),
                fmt(sk.get("recall"), ".2f"),
            ]
        )
    head = ["forecast", "target", "skills", "95% interval", "top skills", "observed", "status", "precision", "recall"]
    return "<p>Skills forecasts (<code>scalescope quanta --forecast</code>):</p>" + table(head, rows)
