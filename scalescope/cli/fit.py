"""``scalescope fit {chinchilla,power,bnsl,frontier,auto}``: the law fitters on a CSV table or a store.

Every fitter reads ``--csv FILE`` or ``--store DIR`` (the store's finished runs), keeps the rows that
``--where`` selects (a condition on the table's columns with plain dotted names, ``train.tokens >= 1e6``)
and, where N and D are known, those with at least ``--min-tokens-per-param`` tokens per parameter.
``fit auto`` compares the candidate laws by leave-one-scale-out extrapolation
(:mod:`scalescope.laws.select`). Each fit's identifiability verdict and its reason are printed (and are in
the JSON). Bad input raises ConfigError, StoreError or FitError (one ``error: ...`` line and exit code 2
from the main command line, never a traceback); with ``--json`` stdout is one strict JSON object (NaN and
infinities as null).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, FitError, StoreError
from ..laws.base import Law
from ..laws.bnsl import BrokenNeuralScalingLaw
from ..laws.chinchilla import ChinchillaLaw
from ..laws.frontier import ComputeFrontierLaw
from ..laws.holdout import holdout_largest
from ..laws.power import PowerLaw, SaturatingPowerLaw
from ..laws.select import compare_laws, tokens_per_param_mask
from ..laws.varpro import compare_chinchilla
from .common import as_flag, print_json

__all__ = ["add_parser", "run_fit"]

# Names the laws and the store functions use in their errors -> the flags that set them.
FLAGS = {
    "where": "--where",
    "fix_E": "--fix-E",
    "E_min": "--E-min",
    "shared_exponent": "--shared-exponent",
    "min_tokens_per_param": "--min-tokens-per-param",
    "count": "--count",
    "entropy_rate": "--entropy-rate",
}

# --x names of the store's scale columns (others are runs-table columns as they are).
STORE_X = {"params": None, "tokens": "tokens", "flops": "flops"}


# --- the parser -----------------------------------------------------------------------------------------


def _source(p: argparse.ArgumentParser, *, csv_help: str) -> None:
    """--csv FILE | --store DIR, --where, --count (the store's parameter count)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", metavar="FILE", help=csv_help)
    src.add_argument(
        "-s", "--store", metavar="DIR", help="store directory: the folder that holds runs/ (uses its finished runs)"
    )
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help="keep rows (runs) matching this condition on the table's columns, with plain dotted names, "
        'e.g. "train.tokens >= 1e6 and model.n_layer == 2"',
    )
    p.add_argument(
        "--count",
        choices=["nonembedding", "total"],
        default="nonembedding",
        help="with --store: which parameter count is N (default nonembedding, as Kaplan et al.)",
    )
    p.add_argument(
        "--include-flagged",
        action="store_true",
        help="with --store: also fit runs flagged undertrained or unstable (left out by default)",
    )


def _regime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-tokens-per-param",
        type=float,
        default=None,
        metavar="R",
        help="drop runs trained on fewer than R tokens per parameter (D/N < R: outside the power-law regime)",
    )


def _nd_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", metavar="COL", help="with --csv: column of parameter counts N")
    dd = p.add_mutually_exclusive_group()
    dd.add_argument("--d", metavar="COL", help="with --csv: column of training tokens D")
    dd.add_argument("--flops", metavar="COL", help="with --csv: column of training FLOPs C; D = C/(6N)")
    p.add_argument("--loss", metavar="COL", help="with --csv: column of final losses")


def _entropy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--entropy-rate",
        type=float,
        default=None,
        metavar="H",
        help="the source's entropy rate in nats (default with --store: the runs' known entropy rate)",
    )


def _common(p: argparse.ArgumentParser, *, holdout: bool = True, bootstrap: int = 1000) -> None:
    p.add_argument(
        "--bootstrap", type=int, default=bootstrap, metavar="K", help=f"bootstrap resamples (default {bootstrap})"
    )
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
    fit = sub.add_parser(
        "fit",
        help="fit a scaling law (Chinchilla form, power law, BNSL, compute frontier) or choose one (auto)",
        description="Fit a scaling law to a CSV table or a store's finished runs, with bootstrap intervals and "
        "identifiability diagnostics; fit auto compares candidate laws by held-out extrapolation.",
    )
    fit.set_defaults(fn=run_fit)
    laws = fit.add_subparsers(dest="law", metavar="{chinchilla,power,bnsl,frontier,auto}")
    laws.required = True

    c = laws.add_parser("chinchilla", help="L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022)")
    _source(c, csv_help="table with one row per run (with --n, --d or --flops, --loss)")
    _nd_columns(c)
    _regime(c)
    _entropy(c)
    c.add_argument(
        "--fix-E",
        dest="fix_E",
        metavar="VALUE|entropy",
        default=None,
        help="hold E at VALUE, or at the source's entropy rate (entropy); it must be below the smallest loss",
    )
    c.add_argument("--shared-exponent", action="store_true", help="fit one exponent: alpha = beta")
    c.add_argument(
        "--E-min",
        dest="E_min",
        metavar="VALUE|entropy",
        default=None,
        help="floor E >= VALUE, or >= the source's entropy rate (entropy); default E >= 0",
    )
    c.add_argument(
        "--grid",
        choices=["hoffmann", "coarse"],
        default="hoffmann",
        help="initial points of the local fits (default: Hoffmann et al.'s grid)",
    )
    _common(c)

    p = laws.add_parser("power", help="y = A x^-alpha, or with --offset y = E + A x^-alpha")
    _source(p, csv_help="table with one row per point")
    p.add_argument(
        "--x",
        metavar="COL",
        required=True,
        help="column of the scale x (positive); with --store also params, tokens or flops",
    )
    p.add_argument(
        "--y",
        metavar="COL",
        default=None,
        help="column of the fitted quantity y (positive; --store default final_val_loss)",
    )
    p.add_argument("--offset", action="store_true", help="fit the saturating law y = E + A x^-alpha")
    _regime(p)
    _common(p)

    b = laws.add_parser("bnsl", help="broken neural scaling law (Caballero et al. 2022)")
    _source(b, csv_help="table with one row per point")
    b.add_argument(
        "--x",
        metavar="COL",
        required=True,
        help="column of the scale x (positive); with --store also params, tokens or flops",
    )
    b.add_argument(
        "--y",
        metavar="COL",
        default=None,
        help="column of the fitted quantity y (positive; --store default final_val_loss)",
    )
    b.add_argument("--breaks", type=int, default=1, metavar="N", help="number of breaks (default 1)")
    b.add_argument("--fit-max", type=float, default=None, metavar="X", help="fit only on points with x <= X")
    b.add_argument("--predict", default=None, metavar="x1,x2,...", help="also predict y at these x")
    _regime(b)
    _common(b)

    f = laws.add_parser(
        "frontier", help="compute frontier L(C) = E + A C^-gamma on the best run of each compute budget"
    )
    _source(f, csv_help="table with one row per run (with --flops, --loss; or --n and --d for C = 6ND)")
    _nd_columns(f)
    _regime(f)
    _common(f)

    a = laws.add_parser(
        "auto",
        help="compare candidate laws by leave-one-scale-out extrapolation and say which the data support",
        description="Fit every candidate law (full Chinchilla; E fixed to the entropy rate; shared exponent; "
        "the floor E >= entropy rate; compute frontier; power laws in N or D when the runs vary in one "
        "only) and check each by holding out every model size N in turn (the largest reported on its own), then "
        "choose by held-out error with the one-standard-error rule (fewest free parameters within one "
        "standard error of the best).",
    )
    _source(a, csv_help="table with one row per run (with --n, --d or --flops, --loss)")
    _nd_columns(a)
    _regime(a)
    _entropy(a)
    a.add_argument(
        "--grid",
        choices=["hoffmann", "coarse"],
        default="hoffmann",
        help="initial points of the Chinchilla fits (default: Hoffmann et al.'s grid)",
    )
    a.add_argument(
        "--starts",
        type=int,
        default=16,
        metavar="K",
        help="local fits from the K best grid points in each Chinchilla fit (default 16)",
    )
    _common(a, holdout=False, bootstrap=200)


# --- reading input ---------------------------------------------------------------------------------------


@dataclass
class Table:
    """Rows to fit: ``cols`` (name -> values), ``ids`` (row labels for messages), where they came from,
    and the source's entropy rate when known."""

    cols: dict[str, np.ndarray]
    ids: list[str]
    source: dict[str, Any]
    entropy_rate: float | None = None
    notes: list[str] = field(default_factory=list)

    def keep(self, mask: np.ndarray) -> None:
        self.cols = {k: v[mask] for k, v in self.cols.items()}
        self.ids = [i for i, m in zip(self.ids, mask, strict=True) if m]

    def __len__(self) -> int:
        return len(self.ids)


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


def _column(df: Any, name: str, where: str, *, positive: bool = True, rows: list[str] | None = None) -> np.ndarray:
    """A numeric column as floats, with one-line errors naming the column and the row (the file line of a
    CSV, or the run id of a store)."""
    import pandas as pd

    if name not in df.columns:
        raise ConfigError(f"column {name!r} not in {where}; available: {', '.join(map(str, df.columns))}")
    raw = df[name]

    def at(i: int) -> str:
        return f"run {rows[i]} of {where}" if rows is not None else f"line {i + 2} of {where}"  # line 1: header

    num = pd.to_numeric(raw, errors="coerce")
    bad = num.isna() & raw.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"column {name!r} has a non-numeric value {raw.iloc[i]!r} at {at(i)}")
    v = num.to_numpy(dtype=float)
    if not np.all(np.isfinite(v)):
        i = int(np.flatnonzero(~np.isfinite(v))[0])
        raise ConfigError(f"column {name!r} has a missing or infinite value at {at(i)}")
    if positive and np.any(v <= 0):
        i = int(np.flatnonzero(v <= 0)[0])
        raise ConfigError(f"column {name!r} must be positive (its log is taken); got {v[i]:g} at {at(i)}")
    return v


def _csv_rows(args: argparse.Namespace) -> Any:
    from ..forecast.laws import filter_runs

    df = _read_csv(args.csv)
    kept = filter_runs(df, args.where)
    if kept.empty:
        raise ConfigError(f"{args.where!r} keeps none of the {len(df)} rows of {args.csv}", field="where")
    return kept


def _nd_table(args: argparse.Namespace, *, need_d: bool = True) -> Table:
    """N, D (and C, loss) from a store's finished runs or from CSV columns."""
    if args.store is not None:
        from ..forecast.laws import entropy_rate_of, excluded_note, final_points, finished_runs

        runs = finished_runs(args.store, args.where)
        pts = final_points(runs, args.count, include_flagged=getattr(args, "include_flagged", False))
        excluded = excluded_note(pts)
        flagged = 0 if getattr(args, "include_flagged", False) else len(pts.attrs["excluded"]["flagged"])
        skipped = len(runs) - len(pts) - flagged
        if pts.empty:
            raise StoreError(
                f"store {args.store}: none of the {len(runs)} selected finished runs has N, tokens and a final val loss"
            )
        t = Table(
            cols={k: pts[k].to_numpy(dtype=float) for k in ("N", "D", "C", "loss")},
            ids=[str(i) for i in pts["id"]],
            source={
                "store": args.store,
                "n": f"params_{args.count}",
                "d": "tokens",
                "c": "flops",
                "loss": "final_val_loss",
                "where": args.where,
            },
            entropy_rate=entropy_rate_of(pts),
        )
        if excluded:
            t.notes.append(excluded)
        if skipped:
            t.notes.append(f"skipped {skipped} finished runs lacking positive N, tokens or final_val_loss")
    else:
        df = _csv_rows(args)
        flops = getattr(args, "flops", None)
        missing = [f for f, v in (("--n", args.n), ("--loss", args.loss)) if v is None]
        if need_d and args.d is None and flops is None:
            missing.append("--d or --flops")
        if missing:
            raise ConfigError(f"fit {args.law} --csv needs {', '.join(missing)}")
        N = _column(df, args.n, args.csv)
        loss = _column(df, args.loss, args.csv)
        source: dict[str, Any] = {"csv": args.csv, "n": args.n, "loss": args.loss, "where": args.where}
        if args.d is not None:
            D = _column(df, args.d, args.csv)
            C = 6.0 * N * D
            source["d"] = args.d
        else:
            assert flops is not None  # checked above
            C = _column(df, flops, args.csv)
            D = C / (6.0 * N)  # C = 6ND
            source.update(flops=flops, d="flops/(6*n)")
        t = Table(cols={"N": N, "D": D, "C": C, "loss": loss}, ids=[str(i + 2) for i in range(len(df))], source=source)
    if getattr(args, "entropy_rate", None) is not None:
        if not (math.isfinite(args.entropy_rate) and args.entropy_rate > 0):
            raise ConfigError(f"must be a positive number, got {args.entropy_rate}", field="--entropy-rate")
        t.entropy_rate = float(args.entropy_rate)
    _apply_regime(t, args)
    return t


def _apply_regime(t: Table, args: argparse.Namespace) -> None:
    r = getattr(args, "min_tokens_per_param", None)
    if r is None:
        return
    if not (math.isfinite(r) and r > 0):
        raise ConfigError(f"must be a positive number, got {r}", field="--min-tokens-per-param")
    if "N" not in t.cols or "D" not in t.cols:
        raise ConfigError("needs N and D: use --store, or a CSV with --n and --d", field="--min-tokens-per-param")
    keep = tokens_per_param_mask(t.cols["N"], t.cols["D"], r)
    n0 = len(t)
    if not keep.any():
        raise ConfigError(f"no run has D/N >= {r:g} (of {n0})", field="--min-tokens-per-param")
    t.keep(keep)
    t.source["min_tokens_per_param"] = r
    t.source["dropped_below_min_tokens_per_param"] = n0 - len(t)
    if n0 > len(t):
        t.notes.append(f"dropped {n0 - len(t)} of {n0} runs with D/N < {r:g} (outside the power-law regime)")


def _xy_table(args: argparse.Namespace) -> Table:
    """x and y columns (power, bnsl) from a CSV or a store's finished runs."""
    if args.store is None:
        if args.y is None:
            raise ConfigError(f"fit {args.law} --csv needs --y")
        df = _csv_rows(args)
        x, y = _column(df, args.x, args.csv), _column(df, args.y, args.csv)
        t = Table(cols={"x": x, "y": y}, ids=[str(i + 2) for i in range(len(df))], source={"csv": args.csv})
    else:
        import pandas as pd

        from ..forecast.laws import finished_runs

        runs = finished_runs(args.store, args.where)
        xcol = f"params_{args.count}" if args.x == "params" else STORE_X.get(args.x) or args.x
        ycol = args.y or "final_val_loss"
        ids = [str(i) for i in runs["id"]]
        where = f"store {args.store}"
        x, y = _column(runs, xcol, where, rows=ids), _column(runs, ycol, where, rows=ids)
        cols = {"x": x, "y": y}
        nD = pd.to_numeric(runs["tokens"], errors="coerce").nunique() if "tokens" in runs else 0
        nN = pd.to_numeric(runs[f"params_{args.count}"], errors="coerce").nunique()
        t = Table(cols=cols, ids=ids, source={"store": args.store, "count": args.count})
        if xcol.startswith("params_") and nD > 1:
            t.notes.append(
                f"the runs span {nD} values of tokens: a law in N alone mixes them (select one with --where)"
            )
        elif xcol == "tokens" and nN > 1:
            t.notes.append(f"the runs span {nN} values of N: a law in D alone mixes them (select one with --where)")
        if args.min_tokens_per_param is not None:
            t.cols["N"] = pd.to_numeric(runs[f"params_{args.count}"], errors="coerce").to_numpy(dtype=float)
            t.cols["D"] = pd.to_numeric(runs["tokens"], errors="coerce").to_numpy(dtype=float)
        t.source.update(x=xcol, y=ycol)
    t.source.setdefault("x", args.x)
    t.source.setdefault("y", args.y)
    t.source["where"] = args.where
    if args.min_tokens_per_param is not None and args.store is None:
        raise ConfigError("needs N and D per run: use it with --store", field="--min-tokens-per-param")
    _apply_regime(t, args)
    return t


def _level(value: str | None, flag: str, t: Table) -> float | None:
    """--fix-E / --E-min: a number, or ``entropy`` for the known entropy rate."""
    if value is None:
        return None
    if value.strip().lower() == "entropy":
        if t.entropy_rate is None:
            raise ConfigError(
                "entropy needs a known entropy rate: the store's runs have none (give a number, or --entropy-rate)",
                field=flag,
            )
        return t.entropy_rate
    try:
        v = float(value)
    except ValueError:
        raise ConfigError(f"expected a number or 'entropy', got {value!r}", field=flag) from None
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"expected a number >= 0, got {value!r}", field=flag)
    return v


# --- fitting ---------------------------------------------------------------------------------------------


def _check_points(law: Law, n: int) -> None:
    """Fewer points than the law needs: one line naming the free parameters (fixed ones do not count)."""
    need = law.min_points()
    if n < need:
        free = getattr(law, "n_free_params", len(law.param_names))
        fixed = sorted(getattr(law, "fixed_params_", set()) or ())
        what = f"{free} free parameters ({', '.join(fixed)} fixed)" if fixed else f"{free} parameters"
        raise FitError(f"need at least {need} points to fit {what}, got {n}")


def _fit(law: Law, X: np.ndarray, y: np.ndarray) -> Law:
    _check_points(law, len(y))
    with np.errstate(all="ignore"):
        return law.fit(X, y)


def _with_holdout(out: dict[str, Any], law: Law, X: np.ndarray, y: np.ndarray, k: int) -> None:
    if k:
        with np.errstate(all="ignore"):
            out["holdout"] = holdout_largest(law, X, y, k).as_dict()


def _fit_chinchilla(args: argparse.Namespace) -> dict[str, Any]:
    t = _nd_table(args)
    X, y = np.column_stack([t.cols["N"], t.cols["D"]]), t.cols["loss"]
    fix_E, E_min = _level(args.fix_E, "--fix-E", t), _level(args.E_min, "--E-min", t)
    law = ChinchillaLaw(
        grid=args.grid,
        fix_E=fix_E,
        shared_exponent=args.shared_exponent,
        E_min=0.0 if E_min is None else E_min,
        bootstrap=args.bootstrap,
        random_state=args.seed,
    )
    _fit(law, X, y)
    out = {"law": "chinchilla", **law.summary(), "source": t.source, "seed": args.seed, "notes": t.notes}
    out["entropy_rate"] = t.entropy_rate
    out["constraint_sources"] = {
        k: ("entropy rate" if (v or "").strip().lower() == "entropy" else "value")
        for k, v in (("fix_E", args.fix_E), ("E_min", args.E_min))
        if v is not None
    }
    if law.fixed_params_ or law.E_min > 0:
        # The variable-projection fit has no constraints: it would disagree with any constraint that binds.
        msg = "not run: the variable-projection cross-check fits the unconstrained law only"
        out["varpro"] = {"message": msg, "agrees": None}
        out["agrees"] = None
    else:
        with np.errstate(all="ignore"):
            check = compare_chinchilla(X, y, huber=law)
        out["varpro"] = check.as_dict()
        out["agrees"] = check.agrees
        diag = getattr(law, "diagnostics_", None)
        if diag is not None:  # the cross-check enters the verdict
            out["diagnostics"] = diag.as_dict()
        if not check.agrees:
            print(f"warning: variable-projection cross-check: {check.message}", file=sys.stderr)
    _with_holdout(out, law, X, y, args.holdout_largest)
    return out


def _fit_power(args: argparse.Namespace) -> dict[str, Any]:
    t = _xy_table(args)
    x, y = t.cols["x"], t.cols["y"]
    cls = SaturatingPowerLaw if args.offset else PowerLaw
    law = _fit(cls(bootstrap=args.bootstrap, random_state=args.seed), x, y)
    out = {"law": "saturating_power" if args.offset else "power", **law.summary(), "seed": args.seed}
    out["source"], out["notes"] = t.source, t.notes
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
    if args.breaks < 0:
        raise ConfigError(f"--breaks must be >= 0, got {args.breaks}")
    t = _xy_table(args)
    if args.fit_max is not None:
        t.keep(t.cols["x"] <= args.fit_max)
    x, y = t.cols["x"], t.cols["y"]
    law = BrokenNeuralScalingLaw(n_breaks=args.breaks, bootstrap=args.bootstrap, random_state=args.seed)
    _fit(law, x, y)
    out = {"law": "bnsl", "breaks": args.breaks, **law.summary(), "seed": args.seed, "notes": t.notes}
    out["source"] = {**t.source, "fit_max": args.fit_max}
    if pts:
        xs = np.array([v for _, v in pts])
        out["predictions"] = dict(zip((tok for tok, _ in pts), law.predict(xs), strict=True))
        if len(law.bootstrap_params_):
            with np.errstate(all="ignore"):
                lo, hi = law.predict_interval(xs, 0.95, kind="prediction")
            out["prediction_intervals"] = {tok: [a, b] for (tok, _), a, b in zip(pts, lo, hi, strict=True)}
    _with_holdout(out, law, x, y, args.holdout_largest)
    return out


def _fit_frontier(args: argparse.Namespace) -> dict[str, Any]:
    if args.store is None and args.flops is None and (args.n is None or args.d is None):
        raise ConfigError("fit frontier --csv needs --flops (or --n and --d for C = 6ND), and --loss")
    if args.store is None and args.n is None:  # C and loss suffice; N only for --min-tokens-per-param
        if args.min_tokens_per_param is not None:
            raise ConfigError("needs --n and --d with --csv", field="--min-tokens-per-param")
        df = _csv_rows(args)
        if args.loss is None:
            raise ConfigError("fit frontier --csv needs --loss")
        t = Table(
            cols={"C": _column(df, args.flops, args.csv), "loss": _column(df, args.loss, args.csv)},
            ids=[str(i + 2) for i in range(len(df))],
            source={"csv": args.csv, "c": args.flops, "loss": args.loss, "where": args.where},
        )
    else:
        t = _nd_table(args)
    C, y = t.cols["C"], t.cols["loss"]
    law = ComputeFrontierLaw(bootstrap=args.bootstrap, random_state=args.seed)
    with np.errstate(all="ignore"):
        law.fit(C, y)
    out = {"law": "compute_frontier", **law.summary(), "seed": args.seed, "source": t.source, "notes": t.notes}
    out["frontier_runs"] = [i for i, m in zip(t.ids, law.frontier_mask_, strict=True) if m]
    if args.holdout_largest:
        on = law.frontier_mask_
        _with_holdout(
            out,
            ComputeFrontierLaw(frontier=False, bootstrap=args.bootstrap, random_state=args.seed),
            C[on],
            y[on],
            args.holdout_largest,
        )
    return out


def _fit_auto(args: argparse.Namespace) -> dict[str, Any]:
    if args.starts < 1:
        raise ConfigError(f"expected a positive integer, got {args.starts}", field="--starts")
    t = _nd_table(args)
    X = np.column_stack([t.cols["N"], t.cols["D"]])
    sel = compare_laws(
        X,
        t.cols["loss"],
        C=t.cols["C"],
        entropy_rate=t.entropy_rate,
        bootstrap=args.bootstrap,
        random_state=args.seed,
        grid=args.grid,
        n_starts=args.starts,
    )
    return {"law": "auto", **sel.as_dict(), "source": t.source, "seed": args.seed, "notes": t.notes}


# --- printing ---------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".6g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if spec.endswith("%") and v > 10:  # an extrapolation that blew up: its digits mean nothing
        return ">1000%"
    return format(v, spec)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# The laws' constructor options a verdict may suggest -> the flags that set them.
SUGGESTION_FLAGS = {"fix_E": "--fix-E VALUE|entropy", "shared_exponent": "--shared-exponent"}


def _print_diagnostics(out: dict[str, Any]) -> None:
    d = out.get("diagnostics")
    if d:
        flags = [SUGGESTION_FLAGS[s] for s in d.get("suggestions") or [] if s in SUGGESTION_FLAGS]
        print(f"  verdict: {d.get('verdict')}: {d.get('reason')}" + (f" ({', '.join(flags)})" if flags else ""))


def _print_text(out: dict[str, Any]) -> None:
    for note in out.get("notes") or []:
        print(f"note: {note}")
    if out["law"] == "auto":
        _print_auto(out)
        return
    print(
        f"law: {out['law']}  points: {out['n_points']}  R2(log): {_fmt(out['r2'], '.4f')}  "
        f"RMSLE: {_fmt(out['rmsle'], '.4g')}"
    )
    cons = out.get("constraints") or {}
    fixed = set(cons.get("fixed") or ())
    params = {k: d for k, d in ((out.get("diagnostics") or {}).get("parameters") or {}).items()}
    for k, (lo, hi) in out["ci"].items():
        if k in fixed:
            why = "fixed" if k == "E" else "= alpha (shared exponent)"
            print(f"  {k:>8} = {out[k]:.6g}   {why}")
        elif not (_finite(lo) and _finite(hi)):
            status = (params.get(k) or {}).get("status")
            print(f"  {k:>8} = {out[k]:.6g}   95% CI {'not shown: unpinned' if status == 'unpinned' else 'n/a'}")
        else:
            print(f"  {k:>8} = {out[k]:.6g}   95% CI [{lo:.6g}, {hi:.6g}]{_judged(params.get(k))}")
    if cons:
        parts = []
        if cons.get("fix_E") is not None:
            src = " (the entropy rate)" if out.get("constraint_sources", {}).get("fix_E") == "entropy rate" else ""
            parts.append(f"E fixed to {cons['fix_E']:.6g}{src}")
        if cons.get("shared_exponent"):
            parts.append("shared exponent alpha = beta")
        if cons.get("E_min"):
            src = " (the entropy rate)" if out.get("constraint_sources", {}).get("E_min") == "entropy rate" else ""
            parts.append(f"E >= {cons['E_min']:.6g}{src}")
        if parts:
            print(f"  constraints: {'; '.join(parts)} ({cons.get('free_params')} free parameters)")
    if out.get("entropy_rate") is not None and "E" in out:
        er = out["entropy_rate"]
        print(f"  entropy rate of the source: {er:.6g} (E - H = {out['E'] - er:+.4g}, {(out['E'] - er) / er:+.1%})")
    if "frontier" in out:
        fr = out["frontier"]
        print(f"  frontier: {fr['points']} of {fr['runs']} runs ({fr['definition']})")
    if "compute_optimal" in out:
        co = out["compute_optimal"]
        print(f"  compute-optimal: N_opt ~ C^{co['a']:.4f}, D_opt ~ C^{co['b']:.4f}")
        print(f"  variable projection: {out['varpro']['message']}")
    for x, v in out.get("predictions", {}).items():
        print(f"  predict x={x}: {v:.6g}")
    _print_diagnostics(out)
    if "holdout" in out:
        h = out["holdout"]
        status = h.get("status")
        extra = f"; {', '.join(map(str, status))}" if isinstance(status, list) else (f"; {status}" if status else "")
        print(f"  holdout of the {h['k']} largest: max |relative error| {h['max_abs_rel_error']:.3%}{extra}")


def _judged(d: dict[str, Any] | None) -> str:
    """For an amplitude judged by its term at the data's centre: that term's interval (what the data pin)."""
    if not d or not d.get("judged_on") or not d.get("judged_interval"):
        return ""
    lo, hi = d["judged_interval"]
    if not (_finite(lo) and _finite(hi)):
        return ""
    on = str(d["judged_on"]).removeprefix("95% interval of ")
    return f"; {on}: [{lo:.3g}, {hi:.3g}]"


def _print_auto(out: dict[str, Any]) -> None:
    scale = out["scale"]
    print(f"fit auto: {out['n_points']} runs at {len(out['scales'])} values of {scale}; {out['scale_definition']}")
    if out.get("entropy_rate") is not None:
        print(f"  entropy rate of the source: {out['entropy_rate']:.6g}")
    rows = [["law", "free", f"largest {scale} err", "mean err (se)", "verdict", ""]]
    for r in out["candidates"]:
        d = r.get("diagnostics") or {}
        mark = "<- chosen" if r["name"] == out["chosen"] else ("" if r["eligible"] or r["name"] == "frontier" else "x")
        mean = f"{_fmt(r['cv_error'], '.2%')} ({_fmt(r['cv_se'], '.2%')})"
        rows.append(
            [
                r["label"],
                str(r["free_params"]),
                _fmt(r["largest_scale_error"], ".2%"),
                mean,
                str(d.get("verdict", "-")),
                mark,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in out["candidates"]:
        if r["note"] and r["name"] != out["chosen"]:
            print(f"  {r['label']}: {r['note']}")
    if out["chosen"] is not None:
        chosen = next(r for r in out["candidates"] if r["name"] == out["chosen"])
        print(f"chosen: {chosen['label']}")
        params = ", ".join(f"{k} = {v:.6g}" for k, v in chosen["params"].items())
        print(f"  {params}")
        d = chosen.get("diagnostics") or {}
        if d:
            print(f"  verdict: {d.get('verdict')}: {d.get('reason')}")
    else:
        print("chosen: none")
    print(f"why: {out['reason']}")
    if out.get("frontier"):
        print(f"  {out['frontier']}")
    for name, why in (out.get("skipped") or {}).items():
        print(f"  skipped {name}: {why}")


def run_fit(args: argparse.Namespace) -> int:
    """Run ``scalescope fit <law>``; bad input raises ConfigError, StoreError or FitError (one line)."""
    fitters = {
        "chinchilla": _fit_chinchilla,
        "power": _fit_power,
        "bnsl": _fit_bnsl,
        "frontier": _fit_frontier,
        "auto": _fit_auto,
    }
    if args.bootstrap < 0:
        raise ConfigError(f"must be >= 0, got {args.bootstrap}", field="--bootstrap")
    try:
        out = fitters[args.law](args)
    except ConfigError as err:
        raise as_flag(err, FLAGS) from None
    if args.json:
        print_json(out)
    else:
        _print_text(out)
    return 0
