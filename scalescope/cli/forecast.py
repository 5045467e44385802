"""TEMPORARY stub: delegates to the pre-refactor location until its owner moves the command here."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    from ..forecast import add_forecast_parser

    add_forecast_parser(sub)
