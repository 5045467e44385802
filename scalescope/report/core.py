"""The report engine: a registry of panels, the context they share, and the self-contained HTML page.

A panel is one function registered with :func:`panel`; it gets the :class:`Context` (tables, cached fits,
store path) and returns an HTML fragment, or None to leave itself out silently, or raises :class:`Skip`
when it does not apply to the store: the page then lists it, with the reason, in one closing "not shown"
line instead of a box of its own. Figures are matplotlib ``Figure`` objects (no pyplot, so no global
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

__all__ = [
    "PANELS",
    "Context",
    "Panel",
    "Section",
    "Skip",
    "build_sections",
    "figure",
    "not_shown_line",
    "page",
    "panel",
    "table",
]

DEFAULT_BOOTSTRAP = 200  # fewer than the fitters' 1,000: a report should take seconds, and says so


class Skip(Exception):
    """Raised by a panel (or a cached fit) when it does not apply to the store: the panel is left out and
    listed, with this reason, in the one "not shown" line at the end of the page."""


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    order: int
    fn: Callable[[Context], str | None]
    short: str = ""  # the name in the "not shown" line (default: the title)


@dataclass(frozen=True)
class Section:
    """One rendered panel: ``body`` is HTML; ``skipped`` holds the reason when it was skipped (it does not
    apply to the store, or it ``failed``: a bug, shown in place rather than listed at the end)."""

    key: str
    title: str
    body: str
    skipped: str | None = None
    short: str = ""
    failed: bool = False

    @property
    def shown(self) -> bool:
        """Drawn as a section of its own (a failure is, so that it is seen)."""
        return self.skipped is None or self.failed


PANELS: dict[str, Panel] = {}


def panel(
    key: str, *, title: str, order: int, short: str = ""
) -> Callable[[Callable[[Context], str | None]], Callable]:
    """Register ``fn(ctx) -> html | None`` as a report panel; panels render in ``order``. ``short``: its
    name in the page's closing "not shown" line (default: ``title``)."""

    def register(fn: Callable[[Context], str | None]) -> Callable[[Context], str | None]:
        PANELS[key] = Panel(key, title, order, fn, short or title)
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
    problems: list[str] = field(default_factory=list)  # damaged files of the store (``Tables.problems``)
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


WIDE_TABLE = 7  # columns: above this a table gets the smaller font of ``table.wide``


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table of escaped text in a box of the page's width: text cells wrap, numbers do not, a table
    of more than :data:`WIDE_TABLE` columns is set smaller, and what still does not fit scrolls inside the
    box (never the page)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    wide = ' class="wide"' if len(header) > WIDE_TABLE else ""
    return f'<div class="tablebox"><table{wide}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def build_sections(ctx: Context, keys: Iterable[str] | None = None) -> list[Section]:
    """Run the registered panels (all, or those in ``keys``) in order. A panel that raises :class:`Skip`
    becomes a skipped section (listed at the end of the page); one that crashes becomes a failed section,
    shown in place, and a warning on stderr, so one bad panel does not cost the whole report."""
    chosen = sorted((PANELS[k] for k in (keys or PANELS)), key=lambda p: (p.order, p.key))
    out = [_problems_section(ctx.problems)] if ctx.problems and keys is None else []
    for p in chosen:
        try:
            body = p.fn(ctx)
        except Skip as why:
            out.append(Section(p.key, p.title, "", skipped=str(why), short=p.short))
            continue
        except Exception as err:  # noqa: BLE001 - reported on the page and on stderr, see docstring
            print(f"warning: report panel {p.key!r} failed: {type(err).__name__}: {err}", file=sys.stderr)
            failure = f"failed: {type(err).__name__}: {err}"
            out.append(Section(p.key, p.title, "", skipped=failure, short=p.short, failed=True))
            continue
        if body is not None:
            out.append(Section(p.key, p.title, body, short=p.short))
    return out


def _problems_section(problems: Sequence[str]) -> Section:
    """The store's damaged files, first on the page: whoever reads the report learns that runs are missing
    from it (or partly read) and why; ``scalescope check --repair`` says what can be done."""
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    body = (
        f'<div class="failed">{len(problems)} damaged files in the store: their runs are left out of this report '
        "or partly read (<code>scalescope check --store STORE --repair</code> repairs what it can)."
        f"<ul>{items}</ul></div>"
    )
    return Section("store-problems", "Store problems", body)


def not_shown_line(sections: Sequence[Section]) -> str:
    """The one closing line that lists the panels that do not apply, each with its reason ("" if none);
    panels skipped for the same reason (e.g. the panels of one missing fit) share one entry."""
    by_reason: dict[str, list[str]] = {}
    for s in sections:
        if not s.shown:
            by_reason.setdefault(s.skipped or "", []).append(s.short or s.title)
    items = [f"<b>{html.escape(', '.join(names))}</b>: {html.escape(why)}" for why, names in by_reason.items()]
    return f'<p class="notshown" id="not-shown">Not shown: {" · ".join(items)}.</p>' if items else ""


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       max-width: 1140px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 0 0 10px; }
.sub { color: #5a6470; margin: 0 0 16px; }
nav { margin: 0 0 20px; } nav a { margin-right: 14px; color: #2457a6; text-decoration: none; }
section { border-top: 1px solid #dde2e8; padding: 18px 0 8px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
.tablebox { max-width: 100%; overflow-x: auto; margin: 8px 0 12px; }
table { border-collapse: collapse; font-size: 14px; }
table.wide { font-size: 12.5px; }
th, td { border: 1px solid #d5dbe2; padding: 4px 8px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f1f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.failed { color: #8a1c1c; background: #fdecea; border-left: 4px solid #c62828; padding: 6px 10px; }
.note { color: #5a6470; font-size: 14px; }
.verdict { font-size: 14px; padding: 6px 10px; margin: 8px 0; border-left: 4px solid; }
.verdict.ok { background: #edf7ee; border-color: #2e7d32; }
.verdict.weak { background: #fff8e1; border-color: #e0a000; }
.verdict.unidentified { background: #fdecea; border-color: #c62828; }
.verdict ul { margin: 4px 0 0; padding-left: 20px; }
.impossible { color: #8a1c1c; background: #fdecea; border-left: 4px solid #c62828; padding: 6px 10px;
              font-size: 14px; }
.notshown { color: #5a6470; font-size: 13px; border-top: 1px solid #dde2e8; padding-top: 12px; }
"""


def page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The whole self-contained HTML document."""
    shown = [s for s in sections if s.shown]
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in shown)
    parts = []
    for s in shown:
        body = f'<p class="failed">This panel {html.escape(s.skipped or "")}</p>' if s.failed else s.body
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>{body}</section>')
    parts.append(not_shown_line(sections))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = html.escape(f"{subtitle} · generated {stamp} by scalescope {__version__}".lstrip(" ·"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="sub">{sub}</p><nav>{nav}</nav>' + "".join(parts) + "</body></html>\n"
    )
