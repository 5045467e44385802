"""The generalization panels (issue 15), from :func:`scalescope.analyses.generalization.analyze`:

* random labels: training accuracy over steps per corruption, and the table of steps to fit, test accuracy and
  the bounds beside the observed gap;
* double descent: test error against N/n (random features), against parameters (MLP), and the widest MLP's
  test error over training (epoch-wise);
* grokking: train and test accuracy over steps with the memorization and generalization steps, and the progress
  measures of the ``fourier`` instrument when it ran;
* bad global minima: train and test accuracy over steps of the pretrained run beside the random start.

Each raises :class:`Skip` when the store has no such runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...analyses.generalization import analyze
from ...store import Tables
from ..core import Context, Skip, figure, panel, table
from ..style import fmt


def _analysis(ctx: Context) -> dict[str, Any]:
    return ctx.cached("generalization", lambda: analyze(ctx.store, tables=Tables(runs=ctx.runs, metrics=ctx.metrics)))


def _curve(ctx: Context, run_id: str, metric: str) -> pd.Series:
    m = ctx.metrics[(ctx.metrics["id"] == run_id) & (ctx.metrics["metric"] == metric)]
    return m.groupby("step")["value"].last().sort_index()


def _pct(v: Any) -> str:
    return fmt(v, ".1%")


def _symlog_steps(ax: Any) -> None:
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("step")


@panel("random_labels", title="Generalization: fitting random labels", order=97, short="random labels")
def random_labels(ctx: Context) -> str:
    groups = _analysis(ctx)["random_labels"]
    if not groups:
        raise Skip("no MLP runs that differ only in label noise or input corruption")
    out = []
    for grp in groups:
        fig = Figure(figsize=(11, 3.8))
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        rows = []
        for r in grp["runs"]:
            label = f"p = {r['label_noise']:g}" + ("" if r["inputs"] == "clean" else f", {r['inputs']}")
            tr = _curve(ctx, r["run"], "trainset_acc")
            ax1.plot(tr.index, tr.values, label=label)
            sb = r.get("spectral_bound") or {}
            rows.append(
                [
                    label,
                    fmt(r["steps_to_fit"], "d") if r["steps_to_fit"] is not None else "not fit",
                    fmt(r["fit_ratio_to_clean"], ".2f"),
                    _pct(r["final_train_acc"]),
                    _pct(r["final_test_acc"]),
                    fmt(r["gap"], ".3f"),
                    fmt(r.get("rademacher_bound_test_error"), ".2f"),
                    fmt(sb.get("bound_noconst"), ".3g"),
                ]
            )
        ax1.set(ylabel="training accuracy (training labels)", title="fitting the training set", ylim=(0, 1.02))
        _symlog_steps(ax1)
        ax1.legend(fontsize=7)
        xs = [r["label_noise"] for r in grp["runs"] if r["inputs"] == "clean"]
        ys = [r["final_test_acc"] for r in grp["runs"] if r["inputs"] == "clean"]
        ax2.plot(xs, ys, "o-", label="test accuracy")
        ax2.axhline(grp["runs"][0]["chance_acc"], color="0.5", ls=":", label="chance")
        ax2.set(
            xlabel="label noise p", ylabel="final test accuracy", title="test accuracy falls to chance", ylim=(0, 1)
        )
        ax2.legend(fontsize=8)
        out.append(figure(fig, "training accuracy over steps and test accuracy against label noise"))
        head = ["labels", "steps to fit", "x clean", "train acc", "test acc", "gap", "Rademacher bound",
                "spectral bound"]  # fmt: skip
        out.append(table(head, rows))
        if grp["rademacher"] is not None:
            bounds = [r.get("rademacher_bound_test_error") for r in grp["runs"]]
            vacuous = sum(1 for b in bounds if b is not None and b > 1)
            out.append(
                f'<p class="note">Empirical Rademacher complexity of the 0-1 loss class from the random-label fit: '
                f"{grp['rademacher']:.3f} (maximum 0.5). The bound it gives (test error &le; train error + 2R + "
                "3&radic;(ln(2/&delta;)/2n), &delta; = 0.05) is vacuous (&gt; 1) for "
                f"{vacuous} of {len(bounds)} runs; the spectral-norm bound (Bartlett et al. 2017, without its "
                "constants) is beside the observed gap."
                + (f" Note: {grp['rademacher_note']}." if grp.get("rademacher_note") else "")
                + "</p>"
            )
    return "".join(out)


@panel("double_descent", title="Generalization: double descent", order=98, short="double descent")
def double_descent(ctx: Context) -> str:
    entries = _analysis(ctx)["double_descent"]
    if not entries:
        raise Skip("no sweep of random-features width, training-set size or MLP width")
    n = len(entries) + sum(1 for e in entries if e.get("epoch_wise", {}).get("steps"))
    fig = Figure(figsize=(min(5.2 * n, 16), 3.8))
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    rows = []
    i = 0
    for e in entries:
        ax = axes[i]
        i += 1
        c = e["curve"]
        x, y, se = np.array(c["x"]), np.array(c["test_error"]), np.array(c["se"])
        ax.errorbar(x, y, yerr=2 * se, fmt="o-", ms=3, capsize=2)
        ax.axvline(e["peak_at"], color="tab:red", ls=":", lw=1)
        if e["axis"] in ("N/n", "n/N"):
            ax.axvline(1.0, color="0.5", ls="--", lw=1)
        elif e.get("interpolation_threshold"):
            ax.axvline(e["interpolation_threshold"], color="0.5", ls="--", lw=1)
        setting = f"label noise {e['label_noise']:g}" + (f", ridge {e['ridge']:g}" if "ridge" in e else "")
        ax.set(xscale="log", xlabel=e["axis"], ylabel="test error", title=f"{e['kind']}\n{setting}")
        verdict = "target met" if e.get("target_met") else e.get("verdict", "")
        if "target_met" in e and not e["target_met"]:
            verdict = "target NOT met"
        rows.append(
            [e["kind"], setting, f"{e['peak_at']:.3g}", _pct(e["peak_error"]), _pct(e["edge_error"]),
             f"{e['peak_ratio']:.3g}", "yes" if e["significant"] else "no", verdict]
        )  # fmt: skip
        ew = e.get("epoch_wise")
        if ew and ew.get("steps"):
            ax = axes[i]
            i += 1
            ax.plot(ew["steps"], ew["test_error"], "-")
            ax.set(ylabel="test error", title="epoch-wise: widest MLP")
            _symlog_steps(ax)
            rows.append(
                ["epoch-wise (widest MLP)", setting, f"step {ew['peak']['step']}", _pct(ew["peak"]["test_error"]),
                 _pct(ew["test_error"][-1]), "-", "rise " + ("yes" if ew["rise_significant"] else "no"),
                 "second descent " + ("yes" if ew["second_descent_significant"] else "no")]
            )  # fmt: skip
    note = (
        '<p class="note">Error bars: 2 binomial standard errors of the validation set (over seeds when there are '
        "several). The peak is the largest error after the curve's first minimum; the dotted red line marks it, the "
        "dashed grey line N = n (random features) or the smallest MLP that fits its training set. "
        "Target (random features, no noise, no ridge): a significant interior peak at N/n in [0.8, 1.3] "
        "and a peak/edge ratio above 3.</p>"
    )
    head = ["curve", "setting", "peak at", "peak error", "edge error", "ratio", "significant", "verdict"]
    return figure(fig, "test error against capacity") + note + table(head, rows)


@panel("grokking", title="Generalization: grokking", order=99, short="grokking")
def grokking(ctx: Context) -> str:
    runs = _analysis(ctx)["grokking"]
    if not runs:
        raise Skip("no modular-arithmetic runs")
    measures = [m for m in ("fourier/restricted_loss", "fourier/excluded_loss", "fourier/weight_norm",
                            "fourier/embed_top_share") if (ctx.metrics["metric"] == m).any()]  # fmt: skip
    n = len(runs) + (1 if measures else 0)
    fig = Figure(figsize=(min(5.2 * n, 16), 3.8))
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    rows = []
    for ax, g in zip(axes, runs):
        for metric, label in (("trainset_acc", "train"), ("val_acc", "test")):
            c = _curve(ctx, g["run"], metric)
            ax.plot(c.index, c.values, label=label)
        for step, name in ((g["memorization_step"], "memorized"), (g["generalization_step"], "generalized")):
            if step is not None:
                ax.axvline(step, color="0.4", ls=":", lw=1)
                ax.text(step, 0.02, name, rotation=90, fontsize=7, va="bottom")
        ax.set(ylabel="accuracy", title=f"p = {g['p']}, weight decay {g['weight_decay']:g}", ylim=(0, 1.02))
        _symlog_steps(ax)
        ax.legend(fontsize=8)
        rows.append(
            [g["p"], f"{g['weight_decay']:g}", fmt(g["memorization_step"], "d"), fmt(g["generalization_step"], "d"),
             fmt(g["ratio"], ".2f"), _pct(g["final_train_acc"]), _pct(g["final_test_acc"]),
             "yes" if g["grokked"] else "no"]
        )  # fmt: skip
    if measures:
        ax = axes[-1]
        g = max(runs, key=lambda r: r["weight_decay"])
        for m in measures:
            c = _curve(ctx, g["run"], m)
            if not c.empty and c.abs().max() > 0:
                ax.plot(c.index, c.values / c.abs().max(), label=m.split("/", 1)[1])
        ax.set(ylabel="relative to its maximum", title=f"progress measures (weight decay {g['weight_decay']:g})")
        _symlog_steps(ax)
        ax.legend(fontsize=7)
    head = ["p", "weight decay", "memorized at", "generalized at", "ratio", "train acc", "test acc", "grokked"]
    note = (
        '<p class="note">Memorization: the first evaluation with training accuracy &ge; 99%; generalization: the '
        "first with test accuracy &ge; 95% (Power et al. 2022; Nanda et al. 2023).</p>"
    )
    return figure(fig, "train and test accuracy over steps") + note + table(head, rows)


@panel("bad_minima", title="Generalization: bad global minima", order=100, short="bad minima")
def bad_minima(ctx: Context) -> str:
    pairs = _analysis(ctx)["bad_minima"]
    if not pairs:
        raise Skip("no run pretrained on random labels beside the same run from a random start")
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    rows = []
    for k, b in enumerate(pairs):
        for name, color in (("random_start", "tab:blue"), ("pretrained_on_random_labels", "tab:red")):
            run = b[name]["run"]
            for metric, ls in (("trainset_acc", "--"), ("val_acc", "-")):
                c = _curve(ctx, run, metric)
                label = f"{name.replace('_', ' ')}: {'train' if ls == '--' else 'test'}" if k == 0 else None
                ax.plot(c.index, c.values, ls, color=color, alpha=0.8, lw=1, label=label)
        rs, pr = b["random_start"], b["pretrained_on_random_labels"]
        rows.append(
            [b["random_label_steps"], _pct(rs["final_train_acc"]), _pct(rs["final_test_acc"]),
             _pct(pr["final_train_acc"]), _pct(pr["final_test_acc"]), fmt(b["test_gap"], "+.3f"),
             "yes" if b["both_fit"] else "no"]
        )  # fmt: skip
    ax.axvline(pairs[0]["random_label_steps"], color="0.4", ls=":", lw=1)
    ax.set(
        xlabel="step", ylabel="accuracy (true labels)", ylim=(0, 1.02), title="random start vs random-label pretraining"
    )
    ax.legend(fontsize=7)
    gaps = [b["test_gap"] for b in pairs if b["test_gap"] is not None]
    all_fit = all(b["both_fit"] for b in pairs)
    note = (
        '<p class="note">Liu et al. 2020: a model that first memorized random labels, then fitted the true ones, '
        "sits in a worse global minimum than one from a random start. "
        + (
            "Here both fit the training set in every pair. "
            if all_fit
            else "Not every pair fits its training set (column 'both fit'): those are not global minima. "
        )
        + (f"Mean test gap over {len(gaps)} pairs: {np.mean(gaps):+.3f}." if gaps else "")
        + "</p>"
    )
    head = ["random-label steps", "start: train", "start: test", "pretrained: train", "pretrained: test", "gap",
            "both fit"]  # fmt: skip
    return figure(fig, "train and test accuracy of both runs") + note + table(head, rows)
