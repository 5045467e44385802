"""``scalescope emergence --store DIR``: when do capabilities appear, over training steps and over scale?

The analyses are :mod:`scalescope.analyses.emergence` and :mod:`scalescope.analyses.phase_change`; this
module parses the flags, maps them onto those functions' arguments and prints the result.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FitError, ScalescopeError
from .common import add_json, add_store, as_flag, print_json

__all__ = ["add_parser"]

DESCRIPTION = (
    "Per run: the induction-head phase change (Olsson et al. 2022): the step at which the best head's "
    "prefix-matching score passes --threshold and the half-way steps of the prefix-matching and "
    "in-context-learning scores. Across runs: the finished runs are grouped by the config fields that vary "
    "other than scale, and within each group every capability metric the runs logged is tested for an "
    "abrupt change over scale (N, D or C, whichever varies: a sigmoid in log x against a smooth power law "
    "on held-out points), and a discontinuous metric with a continuous twin gets the metric-robustness "
    "test of Schaeffer et al. 2023. --forecast METRIC --threshold T --x COLUMN --up-to X: fit the "
    "continuous twin's power-law trend on the runs with x <= X, predict the x at which METRIC crosses T "
    "and record it in the forecast ledger (STORE/forecasts/); scalescope forecast --store DIR --score "
    "scores it once larger runs exist. --metric COL [--continuous COL] [--across COL]: the same tests on "
    "any runs-table column."
)

# The analysis functions' arguments -> the flags that set them.
FLAGS = {
    "x": "--x",
    "threshold": "--threshold",
    "metric": "--forecast",
    "continuous": "--continuous",
    "n_tokens": "--n-tokens",
}


def _f(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-".rjust(int(spec.split(".")[0].rstrip("df") or 0))
    return format(v, spec)


def _print_capabilities(caps: list[dict[str, Any]]) -> None:
    for c in caps:
        name = c["metric"] + (f" (continuous: {c['continuous']})" if c["continuous"] else "")
        if "error" in c:
            print(f"  {name}: {c['error']}")
            continue
        t = c["transition"]
        lo, hi = t["x0_ci"]
        wlo, whi = t["width_ci"]
        print(f"  {name}: {c['verdict']}")
        print(
            f"    x0 {t['x0']:.4g} [{lo:.4g}, {hi:.4g}], width {t['width_decades']:.2f} decades "
            f"[{wlo:.2f}, {whi:.2f}]; held-out RMSE sigmoid {t['sigmoid_heldout_rmse']:.3g}, "
            f"smooth {t['smooth_heldout_rmse']:.3g}"
        )
        print(f"    {c['reason']}")


def _print_analysis(res: dict[str, Any]) -> None:
    from ..analyses.emergence import SCALE_COLUMNS

    rows = res["runs"]
    if rows:
        print(f"Per run: the induction-head phase change (prefix matching >= {res['threshold']:g}; Olsson et al. 2022)")
        print(
            "id            layers d_model positions seed  max_pm(final)  induction_step  icl_step  "
            "icl_before  icl_after"
        )
        for r in rows:
            print(
                f"{r['id']:12s}  {_f(r['n_layer'], '6d')} {_f(r['d_model'], '7d')} {str(r['positions']):9s} "
                f"{_f(r['seed'], '4d')}  {_f(r.get('max_prefix_matching_final'), '13.3f')}  "
                f"{_f(r.get('induction_step'), '14.0f')}  {_f(r.get('icl_transition_step'), '8.0f')}  "
                f"{_f(r.get('icl_before'), '10.3f')}  {_f(r.get('icl_after'), '9.3f')}"
            )
    else:
        print("Per run: no run ran the induction or icl instrument (no phase-change table)")
    for e in res["scale"]:
        grp = ", ".join(f"{k}={v}" for k, v in e["group"].items()) or "all finished runs"
        x = SCALE_COLUMNS.get(e["x"], "-")
        print(f"\nAcross scale ({grp}; {e['n_runs']} runs; x = {x}{' = ' + e['x'] if e['x'] else ''})")
        if "error" in e:
            print(f"  {e['error']}")
        _print_capabilities(e["capabilities"])
    for e in res.get("steps", []):
        print(f"\nOver training steps (run {e['id']}; x = step)")
        _print_capabilities(e["capabilities"])
    for r in res["forecasts"]:
        s = r.get("score") or {}
        lo, hi = r["interval"]
        status = s.get("status") or ("covered" if s.get("covered") else "missed")
        obs = (
            f"observed {_f(s.get('observed'), '.4g')}, {status}"
            if s
            else "not scored yet (scalescope forecast --store DIR --score)"
        )
        print(
            f"\nforecast {r['id']}: {r['metric']} reaches {r['threshold']:g} at {r['x_column']} = "
            f"{_f(r['predicted'], '.4g')} [{_f(lo, '.4g')}, {_f(hi, '.4g')}]; {obs}"
        )


def run_emergence(args: argparse.Namespace) -> int:
    """Handler of ``scalescope emergence``; bad input raises ConfigError/StoreError/FitError (one line)."""
    try:
        return _run(args)
    except ConfigError as err:
        raise as_flag(err, FLAGS) from None
    except ScalescopeError:
        raise
    except ValueError as err:  # a fitter's check of its input (too few or degenerate points)
        raise FitError(str(err)) from None


def _run(args: argparse.Namespace) -> int:
    from ..analyses.emergence import across_scale, analyze, record_forecast

    if args.metric:
        res = across_scale(args.store, args.metric, args.continuous, args.across, args.bootstrap or 500)
        if args.json:
            print_json(res)
        else:
            t = res.get("discontinuous", res)
            lo, hi = t["x0_ci"]
            print(f"{res.get('verdict', 'abrupt' if t['abrupt'] else 'smooth')}: {res.get('reason', t['reason'])}")
            print(f"  x0 {t['x0']:.4g} [{lo:.4g}, {hi:.4g}], width {t['width_decades']:.2f} decades")
        return 0
    if args.forecast:
        if args.threshold is None:
            raise ConfigError("expected the level the metric should cross (e.g. 0.5)", field="--threshold")
        rec, created = record_forecast(
            args.store,
            args.forecast,
            args.threshold,
            x=args.x or "params_nonembedding",
            up_to=args.up_to,
            continuous=args.continuous,
            n_tokens=args.n_tokens,
            bootstrap=args.bootstrap or 1000,
            seed=args.seed,
        )
        if args.json:
            print_json(rec)
            return 0
        lo, hi = rec["interval"]
        print(
            f"forecast {rec['id']} {'recorded' if created else 'was already recorded'} in "
            f"{Path(args.store) / 'forecasts'}"
        )
        print(
            f"  {rec['continuous_metric']} trend fitted on {rec['n_points']} runs with {rec['x_column']} <= "
            f"{rec['fit_max_x']:.4g}; link {rec['link']}"
        )
        print(
            f"  {rec['metric']} reaches {rec['threshold']:g} at {rec['x_column']} = {_f(rec['predicted'], '.4g')}, "
            f"{100 * rec['level']:.0f}% interval [{_f(lo, '.4g')}, {_f(hi, '.4g')}] "
            f"({_f(rec['fraction_crossing'] and 100 * rec['fraction_crossing'], '.0f')}% of bootstrap draws cross)"
        )
        if rec.get("verdict"):
            print(f"  verdict: {rec['verdict']}: {rec['reason']}")
        print(f"  score it once larger runs exist: scalescope forecast --store {args.store} --score")
        return 0
    res = analyze(
        args.store,
        threshold=args.threshold if args.threshold is not None else 0.4,
        x=args.x,
        bootstrap=args.bootstrap or 200,
        seed=args.seed,
        steps=args.steps,
    )
    if args.json:
        print_json(res)
    else:
        _print_analysis(res)
    return 0


def add_parser(sub: Any) -> None:
    from ..analyses.emergence import SCALE_COLUMNS

    p = sub.add_parser(
        "emergence",
        help="phase changes over steps, transitions and forecasts over scale",
        description=DESCRIPTION,
    )
    add_store(p)
    add_json(p)
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="prefix-matching level of an induction head (default 0.4); with --forecast: the level "
        "the metric should cross",
    )
    p.add_argument(
        "--x",
        choices=list(SCALE_COLUMNS),
        default=None,
        help="the scale: params_nonembedding (N), tokens (D) or flops (C); default: the one that varies",
    )
    p.add_argument(
        "--steps",
        action="store_true",
        help="also test each run's capability metrics for an abrupt change over training steps",
    )
    p.add_argument(
        "--forecast",
        metavar="METRIC",
        help="record a forecast of the scale at which METRIC (e.g. induction/copy_accuracy) crosses "
        "--threshold, from its continuous twin's trend",
    )
    p.add_argument(
        "--up-to",
        type=float,
        default=None,
        metavar="X",
        help="with --forecast: fit only the runs with x <= X (the larger ones score it later)",
    )
    p.add_argument(
        "--continuous",
        default=None,
        help="the continuous twin (default: the capability's own, e.g. induction/copy_logprob)",
    )
    p.add_argument(
        "--n-tokens",
        type=int,
        default=None,
        metavar="L",
        help="with --forecast: answer length L of the link accuracy = exp(-L·loss) (default 1)",
    )
    p.add_argument("--metric", help="a runs-table column (e.g. final_exact_match): test its change across scale")
    p.add_argument("--across", default="params_nonembedding", help="with --metric: the scale column")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        help="bootstrap resamples (default 200; 500 with --metric; 1000 with --forecast)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(fn=run_emergence)
