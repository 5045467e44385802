"""``python -m scalescope.emergence STORE [--threshold 0.4] [--json]``: the induction-head phase change of
every run in a store that ran the ``induction`` and ``icl`` instruments (see :func:`phase_change`).

``python -m scalescope.emergence STORE --metric final_exact_match [--continuous final_val_loss]
[--across params_nonembedding]``: is the metric's change across the store's finished runs abrupt, and
(with ``--continuous``) real or a metric artifact (see :mod:`scalescope.emergence.transitions`)."""

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


def across_scale(
    store: str | Path,
    metric: str,
    continuous: str | None = None,
    across: str = "params_nonembedding",
    bootstrap: int = 500,
) -> dict:
    """:func:`detect_transition` (or :func:`metric_robustness` with ``continuous``) of runs-table column
    ``metric`` over column ``across``, on the store's finished runs."""
    import pandas as pd

    from ..store import load
    from .transitions import detect_transition, metric_robustness

    runs = load(store).runs
    cols = [across, metric] + ([continuous] if continuous else [])
    missing = [c for c in cols if c not in runs]
    if missing:
        raise FileNotFoundError(f"{store}: no runs-table column(s) {', '.join(missing)}")
    done = runs[runs["status"] == "finished"]
    tab = done[cols].apply(pd.to_numeric, errors="coerce").dropna()
    x, y = tab[across].to_numpy(float), tab[metric].to_numpy(float)
    if continuous:
        return metric_robustness(x, y, tab[continuous].to_numpy(float), bootstrap=bootstrap, random_state=0).as_dict()
    return detect_transition(x, y, bootstrap=bootstrap, random_state=0).as_dict()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalescope.emergence", description=__doc__)
    p.add_argument("store")
    p.add_argument("--threshold", type=float, default=0.4, help="prefix-matching level of an induction head")
    p.add_argument("--json", action="store_true")
    p.add_argument("--metric", help="runs-table column (e.g. final_exact_match): test its change for a jump")
    p.add_argument("--continuous", help="with --metric: a continuous metric of the same outputs (final_val_loss)")
    p.add_argument("--across", default="params_nonembedding", help="the scale column (default params_nonembedding)")
    p.add_argument("--bootstrap", type=int, default=500, help="with --metric: bootstrap resamples (default 500)")
    args = p.parse_args(argv)
    if args.metric:
        try:
            res = across_scale(args.store, args.metric, args.continuous, args.across, args.bootstrap)
        except (FileNotFoundError, ValueError) as e:  # ValueError: StoreError and FitError
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(res, indent=1))
        else:
            t = res.get("discontinuous", res)
            lo, hi = t["x0_ci"]
            print(f"{res.get('verdict', 'abrupt' if t['abrupt'] else 'smooth')}: {res.get('reason', t['reason'])}")
            print(f"  x0 {t['x0']:.4g} [{lo:.4g}, {hi:.4g}], width {t['width_decades']:.2f} decades")
        return 0
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
