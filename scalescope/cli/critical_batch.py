"""TEMPORARY stub: delegates to the pre-refactor location until its owner moves the command here."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    from ..critical_batch import add_critical_batch_parser

    add_critical_batch_parser(sub)
