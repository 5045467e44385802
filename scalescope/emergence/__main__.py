"""``python -m scalescope.emergence STORE [--threshold 0.4] [--json]``: the induction-head phase change of
every run in a store that ran the ``induction`` and ``icl`` instruments (see :func:`phase_change`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import phase_change


def rows(store: str | Path, threshold: float = 0.4) -> list[dict]:
    """One row per run: its model shape, positions and seed, and :func:`phase_change`'s numbers."""
    out = []
    runs = Path(store) / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{store}: not a store (no runs/ directory)")
    for d in sorted(runs.iterdir()):
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            continue
        cfg = json.loads(cfg_path.read_text())
        m = cfg["model"]
        r = phase_change(d, threshold=threshold)
        if "max_prefix_matching_final" not in r and "icl_before" not in r:
            continue
        out.append(
            {
                "id": d.name,
                "n_layer": m["n_layer"],
                "positions": m.get("positions", "learned"),
                "seed": cfg["seed"],
                **{k: v for k, v in r.items() if k != "run_dir"},
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalescope.emergence", description=__doc__)
    p.add_argument("store")
    p.add_argument("--threshold", type=float, default=0.4, help="prefix-matching level of an induction head")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        table = rows(args.store, args.threshold)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(table, indent=1))
        return 0

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0]))

    print("id            layers positions seed  max_pm(final)  induction_step  icl_step  icl_before  icl_after")
    for r in table:
        print(
            f"{r['id']:12s}  {r['n_layer']:6d} {r['positions']:9s} {r['seed']:4d}  "
            f"{f(r.get('max_prefix_matching_final'), '13.3f')}  {f(r.get('induction_step'), '14.0f')}  "
            f"{f(r.get('icl_transition_step'), '8.0f')}  {f(r.get('icl_before'), '10.3f')}  "
            f"{f(r.get('icl_after'), '9.3f')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
