"""``scalescope demo``: the built-in scaling sweep on a known-entropy language, then what to run next."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_store
from .run import EXPERIMENTS_DIR, add_workers, run_and_summarize
from .runs import runs_table

__all__ = ["DEMO_STORE", "add_parser"]

DEMO_STORE = "scalescope-demo"


def add_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="a small scaling sweep on a known-entropy synthetic language")
    add_store(d, default=DEMO_STORE)
    add_workers(d)
    d.set_defaults(fn=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..store import Store, load
    from ..sweep import load_experiment
    from .common import check_positive

    check_positive(args, "workers", "threads")
    exp = load_experiment(EXPERIMENTS_DIR / "demo.toml")
    store = Store(args.store)
    rc = run_and_summarize(exp, store, args.workers, threads=args.threads)
    t = load(store.path)
    runs = t.runs.sort_values(["params_nonembedding", "tokens"])
    print()
    print(runs_table(runs))
    print()
    er = runs["entropy_rate"].dropna()
    if len(er):
        print(f"The language's true entropy rate is {er.iloc[0]:.4f} nats/token (no model can beat it).")
    s = store.path
    print(f"Results are in {s}/. Look at them with:")
    hints = [
        (f"scalescope runs --store {s}", "the runs table"),
        (f"scalescope export --store {s} --format csv", "runs and metrics as CSV"),
        (f"scalescope fit chinchilla --store {s}", "L(N, D) = E + A/N^alpha + B/D^beta"),
        (f"scalescope report --store {s} --out report.html", "one self-contained HTML page"),
    ]
    width = max(len(cmd) for cmd, _ in hints)
    for cmd, why in hints:
        print(f"  {cmd:<{width}}   # {why}")
    print(f"  python -c \"import scalescope; t = scalescope.load('{s}'); print(t.runs); print(t.metrics)\"")
    return rc
