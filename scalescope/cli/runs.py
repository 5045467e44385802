"""``scalescope runs --store DIR``: the runs table (or JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_json, add_store, print_json

__all__ = ["add_parser", "runs_table"]


def add_parser(sub: Any) -> None:
    s = sub.add_parser("runs", help="list the runs of a store")
    add_store(s)
    add_json(s)
    s.set_defaults(fn=cmd_runs)


def runs_table(runs: Any) -> str:
    """The runs as an aligned text table: id, status, N, tokens, FLOPs, final val loss, entropy rate (and
    numerics flags when a run has one)."""
    cols = [
        ("id", "id", "{}"),
        ("status", "status", "{}"),
        ("params_nonembedding", "N (non-emb)", "{:,.0f}"),
        ("tokens", "tokens", "{:,.0f}"),
        ("flops", "FLOPs", "{:.3g}"),
        ("final_val_loss", "val loss", "{:.4f}"),
        ("entropy_rate", "entropy", "{:.4f}"),
    ]
    # Numerics flags (undertrained / unstable: left out of fits) only when some run has one.
    if "flags" in runs and runs["flags"].fillna("").astype(str).str.len().gt(0).any():
        cols.append(("flags", "flags", "{}"))
    rows = [[h for _, h, _ in cols]]
    for rec in runs.to_dict(orient="records"):
        r = []
        for key, _, fmt in cols:
            v = rec.get(key)
            try:
                r.append("-" if v is None or v != v or v == "" else fmt.format(v))
            except (TypeError, ValueError):
                r.append(str(v))
        rows.append(r)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join(
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    )


def cmd_runs(args: argparse.Namespace) -> int:
    from ..store import load, runs_json

    t = load(args.store)
    if args.json:
        print_json(runs_json(t))
    elif len(t.runs) == 0:
        print(f"{args.store}: no runs")
    else:
        print(runs_table(t.runs.sort_values(["params_nonembedding", "tokens"], na_position="last")))
    return 0
