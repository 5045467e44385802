"""TEMPORARY stub: delegates to the pre-refactor location until its owner moves the command here."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    from ..laws.cli import add_fit_parser

    add_fit_parser(sub)
