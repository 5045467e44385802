"""``scalescope report``: one self-contained HTML file (inline PNG figures and CSS, no script, nothing
fetched) summarising a store: loss curves, the L(N, D) fit, checked extrapolation, parameters, forecasts.

Adding a panel is one function with ``@panel(...)`` in a domain module of :mod:`scalescope.report.panels`
(``laws``, ``instruments``, ``emergence``), or one new module there plus its import line in
``panels/__init__.py``; shared formatting and figure helpers are in :mod:`scalescope.report.style`::

    from ..core import Skip, figure, panel

    @panel("noise_scale", title="Gradient noise scale", order=60, short="noise scale")
    def noise_scale(ctx):                      # ctx.runs, ctx.metrics, ctx.store, ctx.cached(...)
        if "noise_scale" not in set(ctx.metrics["metric"]):
            raise Skip("no noise_scale metrics")   # listed in the page's closing "not shown" line
        fig = Figure(...)                      # matplotlib.figure.Figure; draw on it
        return figure(fig, "noise scale against loss")      # an HTML fragment; None leaves the panel out
"""

from __future__ import annotations

from pathlib import Path

from . import panels  # noqa: F401 - registers the built-in panels
from .core import DEFAULT_BOOTSTRAP, PANELS, Context, Section, Skip, build_sections, figure, page, panel, table

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "PANELS",
    "Context",
    "Section",
    "Skip",
    "build_sections",
    "figure",
    "page",
    "panel",
    "render",
    "table",
    "write_report",
]


def render(store: str | Path, *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> tuple[str, list[Section]]:
    """The report of ``store`` as an HTML string, and its sections."""
    from ..store import load

    tables = load(store)
    ctx = Context(Path(store), tables.runs, tables.metrics, bootstrap=bootstrap, seed=seed, problems=tables.problems)
    sections = build_sections(ctx)
    return page(f"scalescope report: {Path(store).resolve().name}", sections, subtitle=str(store)), sections


def write_report(store: str | Path, out: str | Path, **options: int) -> list[Section]:
    """Write the report of ``store`` to ``out`` (atomically); return its sections."""
    from ..rundir import atomic_write_bytes

    text, sections = render(store, **options)
    atomic_write_bytes(Path(out), text.encode("utf-8"))
    return sections
