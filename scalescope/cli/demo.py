"""``scalescope demo``: the built-in scaling sweep on a known-entropy language, its fitted law checked
against the truth, then what to run next.

The sweep (``experiments/demo.toml``) is designed so that the Chinchilla form describes it (README, "Quick
start"): a Zipf-tilted Markov chain whose rare contexts are learned late, budgets in the power-law regime
and a learning rate per width. At its end the demo fits L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022,
Approach 3) to every run and prints three checks a reader can verify: the fitted E beside the language's
exact entropy rate, the fit's quality and identifiability verdict, and the largest run held out and
predicted by the law fitted on the others.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import add_store
from .run import EXPERIMENTS_DIR, add_workers, run_and_summarize
from .runs import runs_table

__all__ = [
    "DEMO_STORE",
    "DemoCheck",
    "add_parser",
    "check_law",
    "format_check",
    "holdout_largest_size",
    "summarize",
    "validation_floor",
]

DEMO_STORE = "scalescope-demo"
# Bootstrap resamples of the demo's fits: the command-line fitter's default.
BOOTSTRAP = 1000


def add_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="a small scaling sweep on a known-entropy synthetic language, and its law")
    add_store(d, default=DEMO_STORE)
    add_workers(d)
    d.set_defaults(fn=cmd_demo)


@dataclass(frozen=True)
class DemoCheck:
    """The demo's law and its checks.

    ``law``: the Chinchilla form with E fixed at the entropy rate (when known; else E free), fitted on every
    run; ``free``: the same form with E free, whose E is compared with the entropy rate (None when the rate
    is unknown); ``holdout``: a :class:`~scalescope.laws.holdout.HoldoutResult` of ``law``'s form fitted
    without the largest runs; ``val_floor``: see :func:`validation_floor`.
    """

    law: Any
    free: Any
    holdout: Any  # a HoldoutResult, or why there is none (str)
    entropy_rate: float | None
    val_floor: float | None


def check_law(
    N: Any,
    D: Any,
    loss: Any,
    *,
    entropy_rate: float | None = None,
    val_floor: float | None = None,
    bootstrap: int = BOOTSTRAP,
    random_state: int = 0,
) -> DemoCheck:
    """Fit the Chinchilla form to final losses at (N, D) with E fixed at ``entropy_rate`` (a known floor:
    the move that makes A, B, alpha and beta identifiable from a few budgets, see README "Quick start") and
    with E free (the check that the data put the floor where the entropy rate is), and fit the fixed-E form
    again without the largest model (every run of the largest N: the extrapolation in model size a
    researcher relies on) to predict its runs. Raises FitError on too few runs for the law; when only the
    held-out fit cannot be made, ``holdout`` is the reason (a string)."""
    from ..errors import FitError
    from ..laws.chinchilla import ChinchillaLaw

    X = np.column_stack([np.asarray(N, dtype=float), np.asarray(D, dtype=float)])
    y = np.asarray(loss, dtype=float)
    # A floor at or above the smallest loss cannot be fixed (a run beat it: evaluation noise); then E is free.
    H = entropy_rate if entropy_rate is not None and 0 < entropy_rate < float(np.min(y)) else None
    known = H is not None
    free = ChinchillaLaw(bootstrap=bootstrap, random_state=random_state)
    law = free if H is None else ChinchillaLaw(fix_E=H, bootstrap=bootstrap, random_state=random_state)
    fitted = law.clone().fit(X, y)
    free_fit = free.clone().fit(X, y) if known else None
    try:
        held: Any = holdout_largest_size(law, X, y)
    except FitError as err:  # too few runs without the largest model: the law above still stands
        held = str(err)
    return DemoCheck(fitted, free_fit, held, H, val_floor)


def holdout_largest_size(law: Any, X: Any, y: Any, *, level: float = 0.95) -> Any:
    """Fit a clone of ``law`` without every run of the largest model size (largest ``X[:, 0]``) and predict
    those runs, with prediction intervals: a :class:`~scalescope.laws.holdout.HoldoutResult` (leave-one-
    scale-out for the largest scale, as ``scalescope fit auto`` judges laws)."""
    from ..errors import FitError
    from ..laws.holdout import HoldoutResult

    Xa, ya = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    held = Xa[:, 0] == Xa[:, 0].max()
    if held.all():
        raise FitError("every run has the same model size: no larger size to hold out")
    fitted = law.clone().fit(Xa[~held], ya[~held])
    pred = fitted.predict(Xa[held])
    interval = fitted.predict_interval(Xa[held], level, kind="prediction") if fitted.bootstrap else None
    return HoldoutResult(
        law=fitted,
        X_heldout=Xa[held],
        y_heldout=ya[held],
        predicted=pred,
        rel_error=(pred - ya[held]) / ya[held],
        interval=interval,
        level=level,
    )


def _interval(ci: tuple[float, float], digits: int = 4) -> str:
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "(interval: not pinned by the data)"
    return f"95% [{lo:.{digits}g}, {hi:.{digits}g}]"


def _verdict(law: Any) -> str:
    diag = getattr(law, "diagnostics_", None)
    return "" if diag is None else f"verdict {diag.verdict} ({diag.reason})"


def format_check(check: DemoCheck) -> str:
    """The demo's closing text: the fitted law, E beside the entropy rate, fit quality and verdict, and
    the held-out check."""
    law, p, ci = check.law, check.law.params_, check.law.ci_
    H = check.entropy_rate
    how = "E fixed at the language's entropy rate" if check.free is not None else "all five parameters free"
    lines = [
        f"The law (Chinchilla form, {how}; {law.n_points_} runs, {len(law.bootstrap_params_)} bootstrap resamples):",
        f"  L(N, D) = {p['E']:.4f} + {p['A']:.4g}/N^{p['alpha']:.3f} + {p['B']:.4g}/D^{p['beta']:.3f}",
        f"  alpha {p['alpha']:.3f} {_interval(ci['alpha'], 3)}, beta {p['beta']:.3f} {_interval(ci['beta'], 3)}, "
        f"A {p['A']:.3g} {_interval(ci['A'], 3)}, B {p['B']:.3g} {_interval(ci['B'], 3)}",
        f"  R² (log) {law.r2_:.4f}, RMS log residual {100 * law.rmsle_:.2f}%; {_verdict(law)}",
    ]
    free = check.free if check.free is not None else law
    E, (lo, hi) = free.params_["E"], free.ci_["E"]
    lines.append("")
    if H is not None:
        inside = math.isfinite(lo) and math.isfinite(hi) and lo <= H <= hi
        lines += [
            "E fitted freely (all five parameters), beside the language's exact entropy rate H:",
            f"  E = {E:.4f} {_interval((lo, hi))}, H = {H:.4f}: E - H = {100 * (E - H) / H:+.2f}% of H "
            f"(H {'inside' if inside else 'outside'} E's interval); R² (log) {free.r2_:.4f}; {_verdict(free)}",
        ]
        diag = getattr(free, "diagnostics_", None)
        if diag is not None and diag.verdict != "ok":
            lines.append(
                "  (E free, the floor and the data exponent beta trade off over these budgets: that is why the law"
                " above fixes E at H, the floor no model can beat)"
            )
        if check.val_floor is not None and math.isfinite(check.val_floor):
            vf = check.val_floor
            lines.append(
                f"  The true chain's own loss on the validation batches every run is scored on is {vf:.4f} "
                f"({100 * (vf - H) / H:+.2f}% from H by sampling): the lowest loss these evaluations can show."
            )
    else:
        lines.append(f"E = {E:.4f} {_interval((lo, hi))} (the source's entropy rate is not known)")
    if isinstance(check.holdout, str):
        lines += ["", f"Held-out check: not possible here ({check.holdout})."]
        return "\n".join(lines)
    h, hl = check.holdout, check.holdout.law
    k = len(h.y_heldout)
    lines += [
        "",
        f"Held-out check: the same law fitted without the largest model (its {k} run{'s' * (k != 1)}; on the "
        f"{hl.n_points_} others: R² {hl.r2_:.4f}, {_verdict(hl).split(' (')[0]}) predicts them:",
    ]
    status = h.status if h.interval is not None else None
    widths = h.rel_half_width if h.interval is not None else None
    for i in range(k):
        n, d = h.X_heldout[i]
        line = (
            f"  N = {n:,.0f}, D = {d:,.0f}: predicted {h.predicted[i]:.4f}, observed {h.y_heldout[i]:.4f}, "
            f"error {100 * h.rel_error[i]:+.2f}%"
        )
        if h.interval is not None:
            a, b = h.interval[0][i], h.interval[1][i]
            line += f"; 95% prediction interval [{a:.4f}, {b:.4f}]"
            if widths is not None and math.isfinite(widths[i]):
                line += f" (half-width {100 * widths[i]:.1f}%)"
            if status is not None:
                line += f": {status[i]}"
        lines.append(line)
    return "\n".join(lines)


def validation_floor(cfg: Any) -> float | None:
    """The true source's own mean loss on the validation batches a run of ``cfg`` is scored on (the same
    batches and averaging as ``train.evaluate``), or None when the source cannot score tokens exactly
    (it has no ``log_prob``, or its order leaves the first targets without their full context).

    With a finite validation set this, not the entropy rate itself, is the lowest loss the evaluations can
    report: the two differ by the sampling error of the validation tokens."""
    from ..data import build_source

    source = build_source(cfg.data, seed=cfg.seed)
    log_prob = getattr(source, "log_prob", None)
    if log_prob is None:
        return None
    bs = cfg.train.micro_batch_size or cfg.train.batch_size
    total = 0.0
    for i in range(cfg.train.eval_batches):
        b = source.batch("val", i, bs, cfg.model.seq_len)
        tokens = np.concatenate([b.inputs.numpy()[:, :1], b.targets.numpy()], axis=1)
        lp = log_prob(tokens)
        if lp.shape != b.targets.shape:
            return None
        total += float(-lp.mean())
    return total / cfg.train.eval_batches


def summarize(exp: Any, store_path: Any, *, bootstrap: int = BOOTSTRAP) -> str:
    """The text the demo prints after training: the runs table of ``exp`` in the store at ``store_path``,
    then :func:`format_check` of its finished runs (or one line saying why the law could not be fitted)."""
    from ..config import run_id
    from ..errors import FitError
    from ..store import load

    t = load(store_path)
    ids = {run_id(c) for c in exp.runs}
    runs = t.runs[t.runs["id"].isin(ids)].sort_values(["params_nonembedding", "tokens"])
    done = runs[runs["status"] == "finished"]
    er = done["entropy_rate"].dropna()
    H = float(er.iloc[0]) if len(er) else None
    try:
        check = check_law(
            done["params_nonembedding"].to_numpy(float),
            done["tokens"].to_numpy(float),
            done["final_val_loss"].to_numpy(float),
            entropy_rate=H,
            val_floor=validation_floor(exp.runs[0]) if H is not None else None,
            bootstrap=bootstrap,
        )
        text = format_check(check)
    except FitError as err:
        text = f"The law could not be fitted: {err}"
    return f"{runs_table(runs)}\n\n{text}"


def cmd_demo(args: argparse.Namespace) -> int:
    from ..store import Store
    from ..sweep import load_experiment
    from .common import check_positive

    check_positive(args, "workers", "threads")
    exp = load_experiment(EXPERIMENTS_DIR / "demo.toml")
    store = Store(args.store)
    rc = run_and_summarize(exp, store, args.workers, threads=args.threads, assume_yes=args.yes)
    print()
    print(summarize(exp, store.path))
    print()
    s = store.path
    print(f"Results are in {s}/. Look at them with:")
    hints = [
        (f"scalescope runs --store {s}", "the runs table"),
        (f"scalescope export --store {s} --format csv", "runs and metrics as CSV"),
        (f"scalescope fit chinchilla --store {s} --fix-E entropy", "the law above, with every diagnostic"),
        (f"scalescope fit chinchilla --store {s} --holdout-largest 1", "the free fit"),
        (f"scalescope report --store {s} --out report.html", "one self-contained HTML page"),
    ]
    width = max(len(cmd) for cmd, _ in hints)
    for cmd, why in hints:
        print(f"  {cmd:<{width}}   # {why}")
    print(f"  python -c \"import scalescope; t = scalescope.load('{s}'); print(t.runs); print(t.metrics)\"")
    return rc
