"""``scalescope critical-batch --store DIR --targets 3.0,2.8``: the critical batch size per target loss from
a batch-size sweep (Kaplan et al. 2020 sec. 5.1), with the gradient noise scale B_simple beside it."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import add_json, add_store, as_flag, print_json

__all__ = ["add_parser"]

# critical_batch_analysis's arguments -> the flags that set them.
FLAGS = {"targets": "--targets", "metric": "--metric", "smooth": "--smooth"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "critical-batch",
        help="critical batch size per target loss from a batch-size sweep "
        "(Kaplan et al. 2020 sec. 5.1), with B_simple beside it",
    )
    add_store(p, help="store directory of a batch-size sweep (e.g. experiments/critical_batch.toml)")
    p.add_argument("--targets", required=True, help="comma-separated target losses, e.g. 3.0,2.8")
    p.add_argument(
        "--metric",
        default="val_loss",
        choices=["val_loss", "train_loss"],
        help="the loss curve that must reach each target (default val_loss)",
    )
    p.add_argument("--smooth", type=int, default=1, help="running mean over this many evaluations (default 1)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_json(p)
    p.set_defaults(fn=cmd_critical_batch)


def _parse_targets(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}", field="--targets") from None
    if not vals:
        raise ConfigError("expected at least one target loss", field="--targets")
    return vals


def cmd_critical_batch(args: argparse.Namespace) -> int:
    from ..analyses.critical_batch import critical_batch_analysis

    try:
        res = critical_batch_analysis(
            args.store,
            _parse_targets(args.targets),
            metric=args.metric,
            smooth=args.smooth,
            bootstrap=args.bootstrap,
            random_state=args.seed,
        )
    except ConfigError as err:
        raise as_flag(err, FLAGS) from None
    if args.json:
        print_json({"groups": [r.as_dict() for r in res]})
        return 0
    for r in res:
        name = ", ".join(f"{k}={v}" for k, v in r.group.items()) or "all runs"
        print(f"{name} ({r.n_runs} runs, {r.metric}); batch sizes in sequences")
        print(f"  {'target':>8} {'B_crit':>10} {'95% interval':>22} {'B_simple':>10} {'ratio':>7} {'NQM':>9}  note")
        for t in r.targets:
            ci = f"[{t.B_crit_ci[0]:.4g}, {t.B_crit_ci[1]:.4g}]"
            edge = [str(b) for b in t.table.loc[t.table["lr_at_grid_edge"], "batch_size"]]
            note = t.error or ("lr optimum at grid edge for B=" + ",".join(edge) if edge else "")
            print(
                f"  {t.target:>8.4g} {t.B_crit:>10.4g} {ci:>22} {t.B_simple:>10.4g} {t.ratio:>7.3g} "
                f"{t.B_crit_nqm:>9.4g}  {note}"
            )
        if r.law:
            print(f"  B_crit(L) = {r.law['B_star']:.4g} / L^(1/{r.law['alpha_B']:.3g})  (Kaplan et al. 2020 eq. 5.3)")
        else:
            print(f"  B_crit(L) law not fitted: {r.law_error}")
    return 0
