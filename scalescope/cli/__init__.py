"""The ``scalescope`` command line: one module per sub-command, each with ``add_parser(subparsers)``.

Adding a command is one new module here plus one entry in ``COMMANDS``. Every deliberate error is a
:class:`~scalescope.errors.ScalescopeError`: one line on stderr and exit code 2, never a traceback. A damaged
file in the store is a ``warning:`` line on stderr (see :func:`scalescope.store.reporting_problems`).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ScalescopeError
from ..store import reporting_problems
from ..version import __version__
from . import (
    bench,
    check,
    critical_batch,
    demo,
    emergence,
    export,
    fit,
    forecast,
    generalization,
    probe,
    prompt_length,
    quanta,
    report,
    run,
    runs,
)

__all__ = ["COMMANDS", "build_parser", "main"]

# The order of `scalescope --help`.
COMMANDS = (
    run,
    demo,
    runs,
    export,
    fit,
    forecast,
    report,
    probe,
    check,
    critical_batch,
    emergence,
    quanta,
    generalization,
    prompt_length,
    bench,
)

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
        # Damaged files of the store: one warning line each, whichever command read it (the healthy runs
        # are still used; `scalescope check` is the command whose exit status says whether a store is whole).
        with reporting_problems(lambda line: print(f"warning: {line}", file=sys.stderr)):
            return int(args.fn(args) or 0)
    except ScalescopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)
