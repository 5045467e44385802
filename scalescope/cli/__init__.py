"""The ``scalescope`` command line: one module per sub-command, each with ``add_parser(subparsers)``.

Adding a command is one new module here plus one entry in ``COMMANDS``. Every deliberate error is a
:class:`~scalescope.errors.ScalescopeError`: one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ScalescopeError
from ..version import __version__
from . import bench, critical_batch, demo, emergence, export, fit, forecast, probe, prompt_length, report, run, runs

__all__ = ["COMMANDS", "build_parser", "main"]

# The order of `scalescope --help`.
COMMANDS = (run, demo, runs, export, fit, forecast, report, probe, critical_batch, emergence, prompt_length, bench)

DESCRIPTION = (
    "scalescope: declare families of small models in a TOML file, train them into a store, "
    "fit and check their scaling laws, run instruments, and write one report."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalescope", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"scalescope {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ScalescopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)
