"""One conversion to strict JSON, used by every command's ``--json`` output and every file the tool writes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, tuples as lists, dict keys as strings, and NaN
    and infinities as ``None`` (null) so the output is strict JSON that any reader accepts."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def finite_float(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (or a string of one), else None: a stored value read back."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
