"""The report engine: a registry of panels, the context they share, and the self-contained HTML page.

A panel is one function registered with :func:`panel`; it gets the :class:`Context` (tables, cached fits,
store path) and returns an HTML fragment, or None to leave itself out, or raises :class:`Skip` to say on
the page why it has nothing to show. Figures are matplotlib ``Figure`` objects (no pyplot, so no global
state and no GUI backend) inlined as base64 PNG: the page fetches nothing and runs no script.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..version import __version__

__all__ = ["PANELS", "Context", "Panel", "Section", "Skip", "build_sections", "figure", "page", "panel", "table"]

DEFAULT_BOOTSTRAP = 200  # fewer than the fitters' 1,000: a report should take seconds, and says so


class Skip(Exception):
    """Raised by a panel (or a cached fit) to show, instead of the panel, one line saying why."""


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    order: int
    fn: Callable[[Context], str | None]


@dataclass(frozen=True)
class Section:
    """One rendered panel: ``body`` is HTML; ``skipped`` holds the reason when it was skipped."""

    key: str
    title: str
    body: str
    skipped: str | None = None


PANELS: dict[str, Panel] = {}


def panel(key: str, *, title: str, order: int) -> Callable[[Callable[[Context], str | None]], Callable]:
    """Register ``fn(ctx) -> html | None`` as a report panel; panels render in ``order``."""

    def register(fn: Callable[[Context], str | None]) -> Callable[[Context], str | None]:
        PANELS[key] = Panel(key, title, order, fn)
        return fn

    return register


@dataclass
class Context:
    """What every panel may use: the store's tables, its path, report options, and a cache so that a fit
    needed by several panels is made once (``ctx.cached(key, make)``)."""

    store: Path
    runs: pd.DataFrame
    metrics: pd.DataFrame
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per key; a :class:`Skip` it raises is cached and re-raised too."""
        if key not in self._cache:
            try:
                self._cache[key] = make()
            except Skip as why:
                self._cache[key] = why
        value = self._cache[key]
        if isinstance(value, Skip):
            raise value
        return value

    @property
    def entropy_rate(self) -> float | None:
        """The source's exact entropy rate (nats/token) when all runs share one, else None."""
        vals = pd.to_numeric(self.runs.get("entropy_rate", pd.Series(dtype=float)), errors="coerce").dropna()
        return float(vals.iloc[0]) if len(vals) and np.allclose(vals, vals.iloc[0]) else None


# --- HTML helpers -------------------------------------------------------------------------------------


def figure(fig: Figure, alt: str) -> str:
    """The figure as an inline ``<img>`` (base64 PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


_NUMBER = re.compile(r"[-+]?[\d,.]+(e[-+]?\d+)?%?|\[.*\]|-")


def _td(cell: Any) -> str:
    text = str(cell)
    num = ' class="num"' if _NUMBER.fullmatch(text) else ""  # numbers and intervals right-aligned
    return f"<td{num}>{html.escape(text)}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; cells are escaped text."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_sections(ctx: Context, keys: Iterable[str] | None = None) -> list[Section]:
    """Run the registered panels (all, or those in ``keys``) in order. A panel that crashes becomes a
    note on the page and a warning on stderr, so one bad panel does not cost the whole report."""
    chosen = sorted((PANELS[k] for k in (keys or PANELS)), key=lambda p: (p.order, p.key))
    out = []
    for p in chosen:
        try:
            body = p.fn(ctx)
        except Skip as why:
            out.append(Section(p.key, p.title, "", skipped=str(why)))
            continue
        except Exception as err:  # noqa: BLE001 - reported on the page and on stderr, see docstring
            print(f"warning: report panel {p.key!r} failed: {type(err).__name__}: {err}", file=sys.stderr)
            out.append(Section(p.key, p.title, "", skipped=f"failed: {type(err).__name__}: {err}"))
            continue
        if body is not None:
            out.append(Section(p.key, p.title, body))
    return out


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       max-width: 1140px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 0 0 10px; }
.sub { color: #5a6470; margin: 0 0 16px; }
nav { margin: 0 0 20px; } nav a { margin-right: 14px; color: #2457a6; text-decoration: none; }
section { border-top: 1px solid #dde2e8; padding: 18px 0 8px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border: 1px solid #d5dbe2; padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: #f1f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.skip { color: #7a5b00; background: #fff8e1; border-left: 4px solid #e0b000; padding: 6px 10px; }
.note { color: #5a6470; font-size: 14px; }
"""


def page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The whole self-contained HTML document."""
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        body = f'<p class="skip">Skipped: {html.escape(s.skipped)}</p>' if s.skipped else s.body
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>{body}</section>')
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = html.escape(f"{subtitle} · generated {stamp} by scalescope {__version__}".lstrip(" ·"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="sub">{sub}</p><nav>{nav}</nav>' + "".join(parts) + "</body></html>\n"
    )
