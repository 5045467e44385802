"""``scalescope report --store DIR [--out FILE]``: one self-contained HTML report of a store
(:mod:`scalescope.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..report.core import DEFAULT_BOOTSTRAP
from .common import add_store, check_positive

__all__ = ["add_parser", "run_report"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write one self-contained HTML report of a store",
        description="Write one self-contained HTML file (inline figures, no script, nothing fetched) "
        "summarising a store: loss curves, the L(N, D) fit and its checked extrapolation, fitted parameters, "
        "forecasts, and the instrument and emergence panels when the store has their measurements.",
    )
    add_store(p)
    p.add_argument("--out", default=None, metavar="FILE", help="output HTML file (default: DIR/report.html)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP,
        metavar="K",
        help=f"bootstrap resamples for the fits' intervals (default {DEFAULT_BOOTSTRAP})",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)")
    p.set_defaults(fn=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Handler of ``scalescope report``; a missing store raises StoreError (one line)."""
    from ..report import write_report

    check_positive(args, "bootstrap", allow_none=False)
    out = Path(args.out) if args.out else Path(args.store) / "report.html"
    sections = write_report(args.store, out, bootstrap=args.bootstrap, seed=args.seed)
    shown = [s for s in sections if s.shown]
    failed = [s.key for s in sections if s.failed]
    print(
        f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {len(shown)} panels shown, "
        f"{len(sections) - len(shown)} not applicable to this store"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
        + ")"
    )
    return 0
