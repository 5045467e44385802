"""``scalescope forecast --store DIR ...``: record a scaling-law prediction before the target run exists;
``scalescope forecast --store DIR --score``: score every recorded forecast whose target now exists."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError, FitError
from .common import add_json, add_store, as_flag, print_json

__all__ = ["add_parser"]

DESCRIPTION = (
    "Record a scaling-law prediction before the target run exists: fit the law on the store's finished "
    "runs and write STORE/forecasts/<id>.json (law, fitted-on run ids, target, predicted final val loss, "
    "95% prediction interval). With --score, score every recorded forecast (law forecasts and the crossing "
    "forecasts of scalescope emergence) whose target now has finished runs, and write the score back."
)

# The record's option or target coordinate (as forecast.laws names it in errors) -> the flag that sets it.
FLAGS = {
    "law": "--law",
    "x": "--x",
    "count": "--count",
    "bootstrap": "--bootstrap",
    "target.N": "--target-n",
    "target.D": "--target-d",
    "target.C": "--target-flops",
}


def add_parser(sub: Any) -> None:
    from ..forecast.laws import X_COORD

    p = sub.add_parser(
        "forecast",
        help="record a scaling-law prediction before the run exists, or score recorded ones",
        description=DESCRIPTION,
    )
    add_store(p)
    p.add_argument("--score", action="store_true", help="score the store's recorded forecasts whose targets now exist")
    p.add_argument(
        "--law",
        choices=["chinchilla", "power"],
        default="chinchilla",
        help="chinchilla: L(N, D) = E + A/N^a + B/D^b; power: L = E + A x^-a in one variable",
    )
    p.add_argument("--x", choices=list(X_COORD), default=None, help="with --law power: the variable")
    p.add_argument("--target-n", type=float, default=None, metavar="N", help="target parameter count")
    p.add_argument("--target-d", type=float, default=None, metavar="D", help="target training tokens")
    p.add_argument("--target-flops", type=float, default=None, metavar="C", help="target training FLOPs")
    p.add_argument(
        "--count",
        choices=["nonembedding", "total"],
        default="nonembedding",
        help="which parameter count N is (default nonembedding, as Kaplan et al.)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, metavar="K", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_json(p)
    p.set_defaults(fn=run_forecast)


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _print_scores(recs: list[dict[str, Any]]) -> None:
    from ..forecast.laws import target_text

    rows = [["id", "law", "target", "predicted", "95% interval", "observed", "rel.err", "covered"]]
    for r in recs:
        s = r.get("score") or {}
        lo, hi = r["interval"]
        rows.append(
            [
                r["id"],
                r["law"],
                target_text(r["target"]),
                _fmt(r["predicted"]),
                f"[{_fmt(lo)}, {_fmt(hi)}]",
                _fmt(s.get("observed")),
                _fmt(s.get("rel_error"), "+.2%") if s else "-",
                ("yes" if s["covered"] else "no") if s else "pending",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _flag_error(err: ConfigError, args: argparse.Namespace) -> ConfigError:
    """``err`` (naming forecast.laws' arguments) restated with the flags the user typed."""
    from ..forecast.laws import X_COORD

    if err.field == "target":  # a coordinate the law needs was not given
        if args.law == "chinchilla":
            return ConfigError("the chinchilla law needs --target-n and --target-d", field="forecast")
        flag = FLAGS[f"target.{X_COORD[args.x]}"]
        return ConfigError(f"--law power --x {args.x} needs {flag}", field="forecast")
    return as_flag(err, FLAGS)


def run_forecast(args: argparse.Namespace) -> int:
    """Handler of ``scalescope forecast``; user errors raise ConfigError/StoreError/FitError (one line)."""
    from ..forecast import forecasts_dir, record_forecast, score_store, target_text

    if args.score:
        recs = score_store(args.store)
        if args.json:
            print_json(recs)
        elif not recs:
            print(f"{args.store}: no forecasts recorded")
        else:
            _print_scores(recs)
        return 0
    target = {"N": args.target_n, "D": args.target_d, "C": args.target_flops}
    try:
        rec, created = record_forecast(
            args.store, target, law=args.law, x=args.x, count=args.count, bootstrap=args.bootstrap, seed=args.seed
        )
    except ConfigError as err:
        raise _flag_error(err, args) from None
    except FitError as err:
        raise FitError(f"cannot fit {args.law} on {args.store}: {err}") from None
    if args.json:
        print_json(rec)
        return 0
    where = forecasts_dir(args.store) / f"{rec['id']}.json"
    print(f"forecast {rec['id']} {'recorded in' if created else 'was already recorded in'} {where}")
    lo, hi = rec["interval"]
    print(
        f"  {rec['law']} law fitted on {rec['n_points']} finished runs (N {rec['count']}); "
        f"target {target_text(rec['target'])}"
    )
    print(f"  predicted final val loss {rec['predicted']:.4f} nats, 95% prediction interval [{lo:.4f}, {hi:.4f}]")
    if rec["target_existed"]:
        print(
            "  note: the target already had finished runs; they were left out of the fit (recorded as target_existed)"
        )
    return 0
