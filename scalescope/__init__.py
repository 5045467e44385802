"""scalescope: declare, train and store families of small transformers; fit and check their laws.

The public API::

    exp = scalescope.load_experiment("exp.toml")          # an experiment file -> run configs
    scalescope.run_experiment(exp, scalescope.Store("s"))  # train them (skips finished, resumes the rest)
    t = scalescope.load("s")                               # t.runs, t.metrics: pandas tables
    scalescope.laws.ChinchillaLaw().fit(X, y)             # every law behind one estimator contract
    scalescope.write_report("s", "report.html")            # one self-contained HTML page

Every deliberate error is a :class:`ScalescopeError` (see :mod:`scalescope.errors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Importing the data package registers the built-in sources, which parsing a config needs: it comes first.
from . import data  # noqa: F401  isort: skip
from . import laws
from .config import RunConfig
from .errors import ConfigError, FitError, ScalescopeError, StoreError
from .lab import run_experiment
from .store import Store, Tables, load
from .sweep import load_experiment
from .version import __version__

__all__ = [
    "ConfigError",
    "FitError",
    "RunConfig",
    "ScalescopeError",
    "Store",
    "StoreError",
    "Tables",
    "__version__",
    "laws",
    "load",
    "load_experiment",
    "run_experiment",
    "write_report",
]


def write_report(store: str | Path, out: str | Path, **options: Any) -> Any:
    """Write the store's HTML report to ``out`` (see :func:`scalescope.report.write_report`); imported on
    call so that ``import scalescope`` does not load matplotlib."""
    from .report import write_report as _write_report

    return _write_report(store, out, **options)
