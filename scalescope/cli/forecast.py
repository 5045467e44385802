"""``scalescope forecast --store DIR ...``: record a scaling-law prediction before the target run exists;
``scalescope forecast --store DIR --score``: score every recorded forecast whose target now exists."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..errors import ConfigError, FitError
from .common import add_json, add_store, as_flag, print_json

__all__ = ["add_parser"]

DESCRIPTION = (
    "Record a scaling-law prediction before the target run exists: fit the law on the store's finished "
    "runs and write STORE/forecasts/<id>.json (law, fitted-on run ids, target, predicted final val loss, "
    "95% prediction interval, its relative half-width, and flags: a prediction worse than an existing run "
    "with fewer parameters and less data is flagged). The target is N and D (or C) given directly, a run "
    "of an experiment file (--target-config), or the store's largest run with dotted overrides (--set); "
    "N, D and C are then computed from the config as a run would report them. With --score, score every "
    "recorded forecast (law forecasts and the crossing forecasts of scalescope emergence) whose target now "
    "has finished runs, and write the score back: a law forecast counts as covered only when its interval "
    "is informative (relative half-width at most the limit, 10% by default) and holds the observation."
)

# The record's option or target coordinate (as forecast.laws names it in errors) -> the flag that sets it.
FLAGS = {
    "law": "--law",
    "x": "--x",
    "count": "--count",
    "bootstrap": "--bootstrap",
    "where": "--where",
    "fix_E": "--fix-E",
    "E_min": "--E-min",
    "min_tokens_per_param": "--min-tokens-per-param",
    "informative_limit": "--informative-limit",
    "target_run": "--target-run",
    "set": "--set",
    "target.N": "--target-n",
    "target.D": "--target-d",
    "target.C": "--target-flops",
}


def add_parser(sub: Any) -> None:
    from ..forecast.laws import INFORMATIVE_LIMIT, X_COORD

    p = sub.add_parser(
        "forecast",
        help="record a scaling-law prediction before the run exists, or score recorded ones",
        description=DESCRIPTION,
    )
    add_store(p)
    p.add_argument("--score", action="store_true", help="score the store's recorded forecasts whose targets now exist")
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help="fit only on runs matching this condition on the runs table, with plain dotted names, "
        'e.g. "train.tokens >= 1e6 and model.n_layer == 2"',
    )
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
        "--target-config",
        default=None,
        metavar="FILE",
        help="experiment file whose run is the target (its first run, or --target-run K)",
    )
    p.add_argument(
        "--target-run",
        type=int,
        default=None,
        metavar="K",
        help="with --target-config: the run's index in sweep order (0: the first)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="FIELD=VALUE",
        help="target = the store's largest run (or the --target-config run) with this config field changed, "
        "e.g. --set model.d_model=192 --set train.tokens=3e6 (repeatable)",
    )
    p.add_argument(
        "--count",
        choices=["nonembedding", "total"],
        default="nonembedding",
        help="which parameter count N is (default nonembedding, as Kaplan et al.)",
    )
    p.add_argument(
        "--min-tokens-per-param",
        type=float,
        default=None,
        metavar="R",
        help="fit only on runs with at least R tokens per parameter (D/N >= R: the power-law regime)",
    )
    p.add_argument(
        "--fix-E",
        dest="fix_E",
        default=None,
        metavar="VALUE|entropy",
        help="chinchilla: hold E at VALUE or at the runs' entropy rate (entropy)",
    )
    p.add_argument("--shared-exponent", action="store_true", help="chinchilla: one exponent, alpha = beta")
    p.add_argument(
        "--E-min",
        dest="E_min",
        default=None,
        metavar="VALUE|entropy",
        help="chinchilla: floor E >= VALUE or >= the runs' entropy rate (entropy)",
    )
    p.add_argument(
        "--informative-limit",
        type=float,
        default=INFORMATIVE_LIMIT,
        metavar="R",
        help="largest relative half-width (hi - lo)/(2 predicted) of an interval that can count as covered "
        f"(default {INFORMATIVE_LIMIT:g})",
    )
    p.add_argument(
        "--include-flagged",
        action="store_true",
        help="also fit runs flagged undertrained or unstable (left out by default)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, metavar="K", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_json(p)
    p.set_defaults(fn=run_forecast)


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _status(r: dict[str, Any], s: dict[str, Any]) -> str:
    if not s:
        return "pending"
    if "status" in s:
        return str(s["status"])
    return "yes" if s.get("covered") else "no"


def _print_scores(recs: list[dict[str, Any]]) -> None:
    from ..forecast.laws import rel_half_width, target_text

    rows = [["id", "law", "target", "predicted", "95% interval", "+-", "observed", "rel.err", "covered"]]
    for r in recs:
        s = r.get("score") or {}
        lo, hi = r["interval"]
        rhw = r.get("rel_half_width")
        if rhw is None and r.get("law") != "emergence_crossing":
            rhw = rel_half_width(r.get("predicted"), r["interval"])
        rows.append(
            [
                r["id"],
                r["law"],
                target_text(r["target"]),
                _fmt(r["predicted"]),
                f"[{_fmt(lo)}, {_fmt(hi)}]",
                _fmt(rhw, ".1%"),
                _fmt(s.get("observed")),
                _fmt(s.get("rel_error"), "+.2%") if s else "-",
                _status(r, s),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    flagged = [r for r in recs if r.get("flags")]
    for r in flagged:
        for f in r["flags"]:
            print(f"flag {r['id']}: {f['message']}")


def _flag_error(err: ConfigError, args: argparse.Namespace) -> ConfigError:
    """``err`` (naming forecast.laws' arguments) restated with the flags the user typed."""
    from ..forecast.laws import X_COORD

    if err.field == "target":  # a coordinate the law needs was not given
        if args.law == "chinchilla":
            return ConfigError(
                "the chinchilla law needs --target-n and --target-d (or --target-config / --set)", field="forecast"
            )
        flag = FLAGS[f"target.{X_COORD[args.x]}"]
        return ConfigError(f"--law power --x {args.x} needs {flag} (or --target-config / --set)", field="forecast")
    return as_flag(err, FLAGS)


def _level(value: str | None, flag: str) -> float | str | None:
    if value is None:
        return None
    if value.strip().lower() == "entropy":
        return "entropy"
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"expected a number or 'entropy', got {value!r}", field=flag) from None


def _config_target(args: argparse.Namespace) -> tuple[dict[str, float | None], dict[str, Any] | None]:
    """The target (N, D, C) and where it came from: the flags, or a config (--target-config / --set)."""
    from ..forecast.laws import X_COORD, config_target, target_from_experiment, target_from_overrides

    direct = {"N": args.target_n, "D": args.target_d, "C": args.target_flops}
    if args.target_run is not None and args.target_config is None:
        raise ConfigError("needs --target-config", field="--target-run")
    if args.target_config is None and not args.set:
        return direct, None
    if any(v is not None for v in direct.values()):
        raise ConfigError(
            "give the target as --target-n/--target-d/--target-flops or as --target-config/--set, not both",
            field="forecast",
        )
    vocab: int | None = None
    if args.target_config is not None:
        cfg, source = target_from_experiment(args.target_config, args.target_run or 0)
        if args.set:
            from ..config import run_id, to_dict
            from ..forecast.laws import apply_overrides

            cfg = apply_overrides(to_dict(cfg), args.set)
            source = {**source, "set": list(args.set), "run_id": run_id(cfg)}
    else:
        cfg, source, vocab = target_from_overrides(args.store, args.set, where=args.where)
    full = config_target(cfg, count=args.count, vocab_size=vocab)
    source = {**source, "N": full["N"], "D": full["D"], "C": full["C"]}
    if args.law == "chinchilla":
        return {"N": full["N"], "D": full["D"]}, source
    # A law in one variable: that variable, plus the one it is read at (L(N) at D, L(D) at N; L(C) alone).
    xk = X_COORD.get(args.x or "", "")
    keep = {"N": ["N", "D"], "D": ["D", "N"], "C": ["C"]}.get(xk, list(full))
    return {k: (full[k] if k in keep else None) for k in ("N", "D", "C")}, source


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
    try:
        target, source = _config_target(args)
        rec, created = record_forecast(
            args.store,
            target,
            law=args.law,
            x=args.x,
            count=args.count,
            bootstrap=args.bootstrap,
            seed=args.seed,
            where=args.where,
            min_tokens_per_param=args.min_tokens_per_param,
            fix_E=_level(args.fix_E, "--fix-E"),
            shared_exponent=args.shared_exponent,
            E_min=_level(args.E_min, "--E-min"),
            informative_limit=args.informative_limit,
            target_source=source,
            include_flagged=args.include_flagged,
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
    src = rec.get("target_source") or {}
    origin = ""
    if src.get("config"):
        origin = f" (run {src['run']} of {src['config']}{'; with ' + ', '.join(src['set']) if src.get('set') else ''})"
    elif src.get("base_run"):
        origin = f" (largest run {src['base_run']} with {', '.join(src['set'])})"
    print(
        f"  {rec['law']} law fitted on {rec['n_points']} finished runs (N {rec['count']}); "
        f"target {target_text(rec['target'])}{origin}"
    )
    if rec.get("excluded"):
        print(f"  {rec['excluded']}")
    if rec.get("dropped_below_min_tokens_per_param"):
        print(
            f"  dropped {rec['dropped_below_min_tokens_per_param']} runs with D/N < {rec['min_tokens_per_param']:g} "
            "(outside the power-law regime)"
        )
    rhw, limit = rec.get("rel_half_width"), rec.get("informative_limit")
    width = f"+-{rhw:.1%}" if rhw is not None else "width unknown"
    verdict = (
        "informative" if rec.get("informative") else f"UNINFORMATIVE (limit +-{limit:.0%}): cannot count as covered"
    )
    print(
        f"  predicted final val loss {_fmt(rec['predicted'], '.4f')} nats, 95% prediction interval "
        f"[{_fmt(lo, '.4f')}, {_fmt(hi, '.4f')}] ({width}, {verdict})"
    )
    diag = rec.get("diagnostics")
    if diag:
        print(f"  fit verdict: {diag.get('verdict')}: {diag.get('reason')}")
    for f in rec.get("flags") or []:
        print(f"  FLAG: {f['message']}")
    if rec["target_existed"]:
        print(
            "  note: the target already had finished runs; they were left out of the fit (recorded as target_existed)"
        )
    return 0
