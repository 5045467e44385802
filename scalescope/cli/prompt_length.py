"""``scalescope prompt-length --store DIR``: demonstrations needed to identify one of K tasks, against K, with
logarithmic, power-law and linear fits compared by held-out error (:mod:`scalescope.analyses.prompt_length`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import StoreError
from .common import add_json, add_store, print_json

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prompt-length",
        help="demonstrations needed against the number of tasks K, with log / power-law / linear fits",
        description="Demonstrations needed against the number of tasks K (from the task_id instrument of a "
        "discrete_tasks sweep), with logarithmic, power-law, linear and constant fits compared by AIC and "
        "by leave-one-K-out error.",
    )
    add_store(p)
    p.add_argument(
        "--metric",
        choices=["demos_needed", "demos_needed_logp"],
        default="demos_needed",
        help="accuracy reaching the target (default) or mean log-probability reaching ln(target)",
    )
    add_json(p)
    p.set_defaults(fn=cmd_prompt_length)


def cmd_prompt_length(args: argparse.Namespace) -> int:
    from ..analyses.prompt_length import analyze

    r = analyze(args.store, metric=args.metric)
    if not r["series"]:
        raise StoreError(f"{args.store}: no run measured task_id (instruments.task_id on a discrete_tasks source)")
    if args.json:
        print_json(r)
        return 0
    w = sys.stdout.write
    what = "accuracy" if args.metric == "demos_needed" else "mean probability (geometric) of the right output"
    w(f"demonstrations needed to reach {what} {r['target']}\n")
    for s, e in r["series"].items():
        pts = ", ".join(f"K={k}: {'-' if d is None else f'{d:.2f}'}" for k, d in zip(e["K"], e["demos_mean"]))
        w(f"{s:14s} {pts}\n")
        if e["fit"]:
            f = e["fit"]["fits"]
            w(
                "  "
                + "; ".join(f"{k} held-out RMSE {v['heldout_rmse']:.3f} (AIC {v['aic']:.1f})" for k, v in f.items())
                + f" -> {e['fit']['winner']}\n"
            )
    return 0
