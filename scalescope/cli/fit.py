"""``scalescope fit {chinchilla,power,bnsl}``: the law fitters on a CSV table (or, for Chinchilla, a store).

Bad input raises ConfigError, StoreError or FitError (one ``error: ...`` line and exit code 2 from the
main command line, never a traceback); with ``--json`` stdout is one strict JSON object (NaN and
infinities as null).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

from ..errors import ConfigError, StoreError
from ..jsonable import jsonable
from ..laws.base import Law
from ..laws.bnsl import BrokenNeuralScalingLaw
from ..laws.chinchilla import ChinchillaLaw
from ..laws.holdout import holdout_largest
from ..laws.power import PowerLaw, SaturatingPowerLaw
from ..laws.varpro import compare_chinchilla

__all__ = ["add_parser", "run_fit"]


def _common(p: argparse.ArgumentParser, *, holdout: bool = True) -> None:
    p.add_argument("--bootstrap", type=int, default=1000, metavar="K", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default 0)")
    if holdout:
        p.add_argument(
            "--holdout-largest",
            type=int,
            default=0,
            metavar="K",
            help="also fit on all but the K largest scales and report the errors predicting them",
        )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_parser(sub: Any) -> None:
    fit = sub.add_parser("fit", help="fit a scaling law (Chinchilla form, power law, BNSL)")
    fit.set_defaults(fn=run_fit)
    laws = fit.add_subparsers(dest="law", metavar="{chinchilla,power,bnsl}")
    laws.required = True

    c = laws.add_parser("chinchilla", help="L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", metavar="FILE", help="table with one row per run")
    src.add_argument("-s", "--store", metavar="DIR", help="store directory: uses its finished runs")
    c.add_argument("--n", metavar="COL", help="column of parameter counts N (with --csv)")
    dd = c.add_mutually_exclusive_group()
    dd.add_argument("--d", metavar="COL", help="column of training tokens D")
    dd.add_argument("--flops", metavar="COL", help="column of training FLOPs C; D = C/(6N)")
    c.add_argument("--loss", metavar="COL", help="column of final losses (with --csv)")
    c.add_argument(
        "--count",
        choices=["nonembedding", "total"],
        default="nonembedding",
        help="with --store: which parameter count is N (default nonembedding, as Kaplan et al.)",
    )
    c.add_argument(
        "--where",
        metavar="EXPR",
        help="with --store: keep runs matching a pandas query on the runs table, "
        'e.g. "`train.tokens` >= 1e6 and `model.n_layer` == 2"',
    )
    c.add_argument(
        "--grid",
        choices=["hoffmann", "coarse"],
        default="hoffmann",
        help="initial points of the local fits (default: Hoffmann et al.'s grid)",
    )
    _common(c)

    p = laws.add_parser("power", help="y = A x^-alpha, or with --offset y = E + A x^-alpha")
    p.add_argument("--csv", metavar="FILE", required=True, help="table with one row per point")
    p.add_argument("--x", metavar="COL", required=True, help="column of the scale x (positive)")
    p.add_argument("--y", metavar="COL", required=True, help="column of the fitted quantity y (positive)")
    p.add_argument("--offset", action="store_true", help="fit the saturating law y = E + A x^-alpha")
    _common(p)

    b = laws.add_parser("bnsl", help="broken neural scaling law (Caballero et al. 2022)")
    b.add_argument("--csv", metavar="FILE", required=True, help="table with one row per point")
    b.add_argument("--x", metavar="COL", required=True, help="column of the scale x (positive)")
    b.add_argument("--y", metavar="COL", required=True, help="column of the fitted quantity y (positive)")
    b.add_argument("--breaks", type=int, default=1, metavar="N", help="number of breaks (default 1)")
    b.add_argument("--fit-max", type=float, default=None, metavar="X", help="fit only on points with x <= X")
    b.add_argument("--predict", default=None, metavar="x1,x2,...", help="also predict y at these x")
    _common(b)


# --- reading input ---------------------------------------------------------------------------------------


def _read_csv(path: str) -> Any:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a CSV file") from None
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot parse {path} as CSV: {str(err).splitlines()[0]}") from None
    if df.empty:
        raise ConfigError(f"{path} has a header but no rows")
    return df


def _column(df: Any, name: str, path: str, *, positive: bool = True) -> np.ndarray:
    """A numeric column as floats, with one-line errors naming the column and the file line."""
    import pandas as pd

    if name not in df.columns:
        raise ConfigError(f"column {name!r} not in {path}; available: {', '.join(map(str, df.columns))}")
    raw = df[name]
    num = pd.to_numeric(raw, errors="coerce")
    # Line numbers in the file: line 1 is the header.
    bad = num.isna() & raw.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"column {name!r} has a non-numeric value {raw.iloc[i]!r} at line {i + 2} of {path}")
    v = num.to_numpy(dtype=float)
    if not np.all(np.isfinite(v)):
        i = int(np.flatnonzero(~np.isfinite(v))[0])
        raise ConfigError(f"column {name!r} has a missing or infinite value at line {i + 2} of {path}")
    if positive and np.any(v <= 0):
        i = int(np.flatnonzero(v <= 0)[0])
        raise ConfigError(
            f"column {name!r} must be positive (its log is taken); got {v[i]:g} at line {i + 2} of {path}"
        )
    return v


def _chinchilla_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if args.store is not None:
        return _store_data(args)
    missing = [f for f, v in (("--n", args.n), ("--loss", args.loss)) if v is None]
    if args.d is None and args.flops is None:
        missing.append("--d or --flops")
    if missing:
        raise ConfigError(f"fit chinchilla --csv needs {', '.join(missing)}")
    df = _read_csv(args.csv)
    N = _column(df, args.n, args.csv)
    loss = _column(df, args.loss, args.csv)
    if args.d is not None:
        D = _column(df, args.d, args.csv)
        source = {"csv": args.csv, "n": args.n, "d": args.d, "loss": args.loss}
    else:
        D = _column(df, args.flops, args.csv) / (6.0 * N)  # C = 6ND
        source = {"csv": args.csv, "n": args.n, "flops": args.flops, "loss": args.loss, "d": "flops/(6*n)"}
    return np.column_stack([N, D]), loss, source


def _store_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from ..store import load  # lazy: the store module (and duckdb) are not needed for CSV fits

    try:
        runs = load(args.store).runs
    except Exception as err:  # noqa: BLE001 - any failure to read the store is one line for the user
        raise StoreError(f"cannot read store {args.store}: {type(err).__name__}: {err}") from None
    ncol = "params_nonembedding" if args.count == "nonembedding" else "params_total"
    need = ["status", ncol, "tokens", "final_val_loss"]
    absent = [c for c in need if c not in runs.columns]
    if absent:
        raise StoreError(f"store {args.store} runs table lacks {', '.join(absent)}")
    done = runs[runs["status"] == "finished"]
    if getattr(args, "where", None):
        try:
            done = done.query(args.where)
        except Exception as err:  # noqa: BLE001 - a bad expression is one line for the user
            raise ConfigError(f"--where: cannot evaluate {args.where!r}: {type(err).__name__}: {err}") from None
    if done.empty:
        raise StoreError(f"store {args.store} has no finished runs ({len(runs)} runs in all)")
    import pandas as pd

    vals = done[[ncol, "tokens", "final_val_loss"]].apply(pd.to_numeric, errors="coerce")
    good = np.isfinite(vals.to_numpy()).all(axis=1) & (vals.to_numpy() > 0).all(axis=1)
    if not good.all():
        print(
            f"note: skipped {int((~good).sum())} finished runs lacking positive N, tokens or final_val_loss",
            file=sys.stderr,
        )
    vals = vals[good]
    X = np.column_stack([vals[ncol].to_numpy(), vals["tokens"].to_numpy()])
    return (
        X,
        vals["final_val_loss"].to_numpy(),
        {
            "store": args.store,
            "n": ncol,
            "d": "tokens",
            "loss": "final_val_loss",
            "runs": int(good.sum()),
            "where": getattr(args, "where", None),
        },
    )


# --- fitting and printing ----------------------------------------------------------------------------------


def _with_holdout(out: dict[str, Any], law: Law, X: np.ndarray, y: np.ndarray, k: int) -> None:
    if k:
        out["holdout"] = holdout_largest(law, X, y, k).as_dict()


def _fit_chinchilla(args: argparse.Namespace) -> dict[str, Any]:
    X, y, source = _chinchilla_data(args)
    law = ChinchillaLaw(grid=args.grid, bootstrap=args.bootstrap, random_state=args.seed).fit(X, y)
    out = {"law": "chinchilla", **law.summary(), "source": source, "seed": args.seed}
    check = compare_chinchilla(X, y, huber=law)
    out["varpro"] = check.as_dict()
    out["agrees"] = check.agrees
    if not check.agrees:
        print(f"warning: variable-projection cross-check: {check.message}", file=sys.stderr)
    _with_holdout(out, law, X, y, args.holdout_largest)
    return out


def _fit_power(args: argparse.Namespace) -> dict[str, Any]:
    df = _read_csv(args.csv)
    x, y = _column(df, args.x, args.csv), _column(df, args.y, args.csv)
    cls = SaturatingPowerLaw if args.offset else PowerLaw
    law = cls(bootstrap=args.bootstrap, random_state=args.seed).fit(x, y)
    out = {"law": "saturating_power" if args.offset else "power", **law.summary(), "seed": args.seed}
    out["source"] = {"csv": args.csv, "x": args.x, "y": args.y}
    _with_holdout(out, law, x, y, args.holdout_largest)
    return out


def _parse_points(text: str) -> list[tuple[str, float]]:
    pts = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        try:
            v = float(tok)
        except ValueError:
            raise ConfigError(f"--predict takes numbers separated by commas; got {tok!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"--predict values must be positive numbers; got {tok!r}")
        pts.append((tok, v))
    if not pts:
        raise ConfigError("--predict got no values")
    return pts


def _fit_bnsl(args: argparse.Namespace) -> dict[str, Any]:
    pts = _parse_points(args.predict) if args.predict is not None else []
    df = _read_csv(args.csv)
    x, y = _column(df, args.x, args.csv), _column(df, args.y, args.csv)
    if args.fit_max is not None:
        keep = x <= args.fit_max
        x, y = x[keep], y[keep]
    if args.breaks < 0:
        raise ConfigError(f"--breaks must be >= 0, got {args.breaks}")
    law = BrokenNeuralScalingLaw(n_breaks=args.breaks, bootstrap=args.bootstrap, random_state=args.seed)
    law.fit(x, y)
    out = {"law": "bnsl", "breaks": args.breaks, **law.summary(), "seed": args.seed}
    out["source"] = {"csv": args.csv, "x": args.x, "y": args.y, "fit_max": args.fit_max}
    if pts:
        xs = np.array([v for _, v in pts])
        out["predictions"] = dict(zip((t for t, _ in pts), law.predict(xs), strict=True))
        if len(law.bootstrap_params_):
            lo, hi = law.predict_interval(xs, 0.95, kind="prediction")
            out["prediction_intervals"] = {t: [a, b] for (t, _), a, b in zip(pts, lo, hi, strict=True)}
    _with_holdout(out, law, x, y, args.holdout_largest)
    return out


def _print_text(out: dict[str, Any]) -> None:
    print(f"law: {out['law']}  points: {out['n_points']}  R2(log): {out['r2']:.4f}  RMSLE: {out['rmsle']:.4g}")
    for k, (lo, hi) in out["ci"].items():
        print(f"  {k:>8} = {out[k]:.6g}   95% CI [{lo:.6g}, {hi:.6g}]")
    if "compute_optimal" in out:
        co = out["compute_optimal"]
        print(f"  compute-optimal: N_opt ~ C^{co['a']:.4f}, D_opt ~ C^{co['b']:.4f}")
        print(f"  variable projection: {out['varpro']['message']}")
    for x, v in out.get("predictions", {}).items():
        print(f"  predict x={x}: {v:.6g}")
    if "holdout" in out:
        h = out["holdout"]
        print(f"  holdout of the {h['k']} largest: max |relative error| {h['max_abs_rel_error']:.3%}")


def run_fit(args: argparse.Namespace) -> int:
    """Run ``scalescope fit <law>``; bad input raises ConfigError, StoreError or FitError (one line)."""
    fitters = {"chinchilla": _fit_chinchilla, "power": _fit_power, "bnsl": _fit_bnsl}
    if args.bootstrap < 0:
        raise ConfigError(f"must be >= 0, got {args.bootstrap}", field="--bootstrap")
    out = fitters[args.law](args)
    if args.json:
        print(json.dumps(jsonable(out), allow_nan=False))
    else:
        _print_text(out)
    return 0
