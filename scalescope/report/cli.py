"""``scalescope report STORE --out report.html``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .core import DEFAULT_BOOTSTRAP

__all__ = ["add_report_parser", "run_report"]


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to an argparse subparsers object (handler in ``fn``); return its parser."""
    p = subparsers.add_parser("report", help="write one self-contained HTML report of a store")
    p.add_argument("store", help="store directory")
    p.add_argument("--out", default=None, metavar="FILE", help="output HTML file (default: STORE/report.html)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP,
        metavar="K",
        help=f"bootstrap resamples for the fits' intervals (default {DEFAULT_BOOTSTRAP})",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(fn=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    """Handler of ``scalescope report``; a missing store raises StoreError (one line)."""
    from . import write_report

    if args.bootstrap < 1:
        raise ConfigError(f"must be >= 1, got {args.bootstrap}", field="--bootstrap")
    out = Path(args.out) if args.out else Path(args.store) / "report.html"
    sections = write_report(args.store, out, bootstrap=args.bootstrap, seed=args.seed)
    skipped = [s for s in sections if s.skipped]
    print(
        f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {len(sections)} panels"
        + (f"; skipped: {', '.join(s.key for s in skipped)}" if skipped else "")
        + ")"
    )
    return 0
