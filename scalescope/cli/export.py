"""``scalescope export --store DIR --format csv|parquet``: the runs and metrics tables as files."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_store

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    e = sub.add_parser("export", help="write the runs and metrics tables as CSV or Parquet")
    add_store(e)
    e.add_argument("--format", required=True, choices=["csv", "parquet"], help="file format")
    e.add_argument("--out", default=None, metavar="DIR", help="output directory (default: STORE/export)")
    e.set_defaults(fn=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..store import export

    for p in export(args.store, args.format, args.out):
        print(p)
    return 0
