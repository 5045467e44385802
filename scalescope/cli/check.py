"""``scalescope check --store DIR [--repair] [--json]``: verify every run of a store; repair what can be repaired.

Exit status: 0 when the store is healthy (or every problem was repaired), 1 when problems remain, 2 for a
bad argument (no such store). The checks and repairs are :mod:`scalescope.storecheck`'s.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_json, add_store, print_json

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "check",
        help="verify every run of a store (files parse, status agrees with metrics and checkpoint, "
        "checkpoint belongs to the run, no stale temporary files) and, with --repair, repair what can be",
    )
    add_store(c)
    c.add_argument(
        "--repair",
        action="store_true",
        help="repair what can be repaired (cut a torn metrics line, move a bad checkpoint aside, set a "
        "contradicted status to pending, delete stale temporary files), saying what was done",
    )
    add_json(c)
    c.set_defaults(fn=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from ..storecheck import check_store

    result = check_store(args.store, repair=args.repair)
    if args.json:
        print_json(result.as_dict())
    else:
        for f in result.findings:
            print(f.line())
        print(result.summary())
    return 0 if result.healthy else 1
