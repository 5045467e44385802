"""Every exception scalescope raises on purpose, in one place. Callers (the CLI) catch the base class.

::

    ScalescopeError                 the base: str(err) is one line, fit to print after "error:"
    ├── ConfigError (ValueError)    a bad experiment file, config value or option; names the file and field
    ├── StoreError (ValueError)     a store or run directory that cannot be used; names it
    │   └── LockLost                a worker's claim on its run was taken over: it stops without writing
    └── FitError (ValueError)       input a law cannot be fitted to (too few points, logs of non-positives)
        └── NotFittedError (AttributeError)   a prediction asked of a law before ``fit``

Messages name config fields and files (``model.d_model``, ``STORE/runs/<id>/config.json``) or the
function's own keyword arguments; the command line maps its flags onto those names, never the reverse.
This module imports nothing from scalescope, so every other module can raise from it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError", "FitError", "LockLost", "NotFittedError", "ScalescopeError", "StoreError"]


class ScalescopeError(Exception):
    """The base of every error scalescope raises deliberately; ``str(err)`` is one line."""


class ConfigError(ScalescopeError, ValueError):
    """A bad experiment file, config value or option. ``str(err)`` is one line naming the file and field."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = None if file is None else str(file)
        self.field = field
        self.message = message
        parts = [p for p in (self.file, field) if p]
        super().__init__(": ".join([*parts, message]))


class StoreError(ScalescopeError, ValueError):
    """The store directory (or a run directory in it) cannot be used; the message names it."""


class LockLost(StoreError):
    """This worker's lock on its run was taken over by another worker (it stalled past the stale timeout):
    it must stop without writing anything more into the run directory, which is no longer its own."""


class FitError(ScalescopeError, ValueError):
    """Input a law cannot be fitted to (too few points, non-positive values under a log, NaN/inf).

    ``str(err)`` is one line, fit to print after ``error:`` on a command line.
    """


class NotFittedError(FitError, AttributeError):
    """``predict`` (or a derived quantity) was asked of a law before ``fit``."""
