"""TEMPORARY stub: delegates to the pre-refactor location until its owner moves the command here."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    from ..emergence.cli import add_emergence_parser

    add_emergence_parser(sub)
