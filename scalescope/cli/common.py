"""What every sub-command shares: how the store is named, ``--json`` output, flag checks.

The store is always ``--store DIR`` (``-s DIR``), in every command that reads or writes one; a run directory
(``scalescope probe``) is the one positional path. Help texts are plain text: no markup.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..jsonable import jsonable

__all__ = [
    "add_json",
    "as_flag",
    "option_flags",
    "add_store",
    "add_where",
    "check_positive",
    "print_json",
]


def add_store(p: argparse.ArgumentParser, *, default: str | None = None, help: str | None = None) -> None:
    """``--store DIR`` / ``-s DIR``: required unless a default is given."""
    text = help or "store directory: the folder that holds runs/ (created by scalescope run)"
    if default is not None:
        text += f" (default: {default})"
    p.add_argument("-s", "--store", metavar="DIR", required=default is None, default=default, help=text)


def add_where(p: argparse.ArgumentParser) -> None:
    """``--where EXPR``: a SQL filter on the runs table (DuckDB syntax)."""
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help='keep runs matching this SQL condition on the runs table, e.g. "train.tokens >= 1e6"',
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of text")


def print_json(obj: Any) -> None:
    """Strict JSON on stdout (NaN and infinities as null)."""
    json.dump(jsonable(obj), sys.stdout, indent=1)
    sys.stdout.write("\n")


def as_flag(err: ConfigError, flags: Mapping[str, str]) -> ConfigError:
    """``err`` restated with the command-line flag the user typed when its field is an argument of the
    analysis (``flags`` maps argument names to flags); otherwise ``err`` itself. Analyses name their own
    arguments, never flags; this is the one place that translates."""
    if err.field is not None and err.field in flags:
        return ConfigError(err.message, file=err.file, field=flags[err.field])
    return err


def option_flags(args: argparse.Namespace, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Every option of a parsed command as argument name -> flag (``top_k`` -> ``--top-k``)."""
    return {name: "--" + name.replace("_", "-") for name in vars(args) if name not in exclude}


def check_positive(args: argparse.Namespace, *names: str, allow_none: bool = True) -> None:
    """Each named integer option is >= 1; the error names the flag as the user typed it."""
    for name in names:
        v = getattr(args, name)
        if v is None and allow_none:
            continue
        if v is None or v < 1:
            raise ConfigError(f"expected a positive integer, got {v}", field="--" + name.replace("_", "-"))
