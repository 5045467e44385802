"""``python -m scalescope.emergence STORE [...]``: the same command as ``scalescope emergence`` (see
:mod:`scalescope.emergence.cli`). Kept for older scripts: here ``--json`` alone prints only the per-run
phase-change rows, as it did before the scale analysis existed."""

from __future__ import annotations

import sys

from .cli import across_scale, phase_rows
from .cli import main as _main

__all__ = ["across_scale", "main", "rows"]

rows = phase_rows  # the old name


def main(argv: list[str] | None = None) -> int:
    """``scalescope emergence`` under its module name."""
    return _main(argv, prog="python -m scalescope.emergence", legacy_json=True)


if __name__ == "__main__":
    sys.exit(main())
