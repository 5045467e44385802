"""The ``scalescope`` command line. Every user error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import config as C
from .store import StoreError

DEMO_STORE = "scalescope-demo"


def _experiment_path(name: str) -> Path:
    return Path(__file__).parent / "experiments" / name


def builtin_experiments() -> list[str]:
    return sorted(p.stem for p in _experiment_path("").glob("*.toml"))


def resolve_experiment(arg: str) -> Path:
    """A path to a TOML file, or the name of a built-in experiment (``sgd_vs_adamw``, ...)."""
    p = Path(arg)
    if p.exists() or p.suffix == ".toml" or os.sep in arg:
        return p
    builtin = _experiment_path(f"{arg}.toml")
    if builtin.is_file():
        return builtin
    raise C.ConfigError(f"no such file, and not a built-in experiment ({', '.join(builtin_experiments())})", file=arg)


def cmd_run(args: argparse.Namespace) -> int:
    from .store import Store
    from .sweep import load_experiment

    for flag in ("workers", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise C.ConfigError(f"expected a positive integer, got {getattr(args, flag)}", field=f"--{flag}")
    exp = load_experiment(resolve_experiment(args.experiment))
    store = Store(args.store)
    return _run_and_summarize(exp, store, args.workers, quiet=args.quiet, threads=args.threads)


def _run_and_summarize(exp, store, workers, quiet=False, threads=None) -> int:
    from .lab import run_experiment

    def header(planned) -> None:
        n, done = len(planned), sum(p.done for p in planned)
        already = f" ({done} already done)" if done else ""
        print(f"experiment {exp.name}: {n} run{'s' * (n != 1)}{already} -> {store.path}/runs", file=sys.stderr)

    outcomes = run_experiment(exp, store, workers=workers, threads=threads, progress=not quiet, on_start=header)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    skipped = sum(o.skipped for o in outcomes)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"done: {summary}" + (f" ({skipped} already done, skipped)" if skipped else ""), file=sys.stderr)
    for o in outcomes:
        if o.status == "failed":
            print(f"  run {o.id} failed: {o.error}", file=sys.stderr)
    return 1 if counts.get("failed") else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .store import Store, load
    from .sweep import load_experiment

    exp = load_experiment(_experiment_path("demo.toml"))
    store = Store(args.store)
    rc = _run_and_summarize(exp, store, args.workers)
    t = load(store.path)
    runs = t.runs.sort_values(["params_nonembedding", "tokens"])
    print()
    print(_runs_table(runs))
    print()
    er = runs["entropy_rate"].dropna()
    if len(er):
        print(f"The language's true entropy rate is {er.iloc[0]:.4f} nats/token (no model can beat it).")
    print(f"Results are in {store.path}/. Look at them with:")
    print(f"  scalescope runs {store.path}")
    print(f"  scalescope export {store.path} --format csv")
    hints = [
        (f"scalescope fit chinchilla --store {store.path}", "L(N, D) = E + A/N^alpha + B/D^beta"),
        (f"scalescope report {store.path} --out report.html", "one self-contained HTML page"),
    ]
    width = max(len(cmd) for cmd, _ in hints)
    for cmd, why in hints:
        print(f"  {cmd:<{width}}   # {why}")
    print(f"  python -c \"import scalescope; t = scalescope.load('{store.path}'); print(t.runs); print(t.metrics)\"")
    return rc


def _runs_table(runs) -> str:
    cols = [
        ("id", "id", "{}"),
        ("status", "status", "{}"),
        ("params_nonembedding", "N (non-emb)", "{:,.0f}"),
        ("tokens", "tokens", "{:,.0f}"),
        ("flops", "FLOPs", "{:.3g}"),
        ("final_val_loss", "val loss", "{:.4f}"),
        ("entropy_rate", "entropy", "{:.4f}"),
    ]
    rows = [[h for _, h, _ in cols]]
    for rec in runs.to_dict(orient="records"):
        r = []
        for key, _, fmt in cols:
            v = rec.get(key)
            try:
                r.append("-" if v is None or v != v else fmt.format(v))
            except (TypeError, ValueError):
                r.append(str(v))
        rows.append(r)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join(
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    )


def cmd_runs(args: argparse.Namespace) -> int:
    from .store import load, runs_json

    t = load(args.store)
    if args.json:
        print(json.dumps(runs_json(t), indent=1, default=str))
    elif len(t.runs) == 0:
        print(f"{args.store}: no runs")
    else:
        print(_runs_table(t.runs.sort_values(["params_nonembedding", "tokens"], na_position="last")))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .store import export

    for p in export(args.store, args.format, args.out):
        print(p)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from .bench import bench_train

    for name in ("n_layer", "d_model", "n_head", "seq_len", "batch", "steps", "threads"):
        if getattr(args, name) <= 0:
            flag = "--" + name.replace("_", "-")
            raise C.ConfigError(f"expected a positive integer, got {getattr(args, name)}", field=flag)
    if args.d_model % args.n_head:
        raise C.ConfigError(f"d_model ({args.d_model}) must be divisible by n_head ({args.n_head})", field="--d-model")
    r = bench_train(
        n_layer=args.n_layer,
        d_model=args.d_model,
        n_head=args.n_head,
        seq_len=args.seq_len,
        batch=args.batch,
        steps=args.steps,
        threads=args.threads,
        repeats=args.repeats,
    )
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        for k, v in r.items():
            print(f"{k:>28}  {v:,.4g}" if isinstance(v, float) else f"{k:>28}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalescope", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train every run of an experiment file (skips finished, resumes unfinished)")
    r.add_argument(
        "experiment", help="experiment TOML file, or a built-in one by name: " + ", ".join(builtin_experiments())
    )
    r.add_argument("--store", required=True, help="store directory (created if missing)")
    r.add_argument("--workers", type=int, default=None, help="parallel runs (default: one per core)")
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per run (default: cores // workers; use 1 on a machine shared with other jobs)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="a small scaling sweep on a known-entropy synthetic language")
    d.add_argument("--store", default=DEMO_STORE)
    d.add_argument("--workers", type=int, default=None)
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("runs", help="list the runs of a store")
    s.add_argument("store")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_runs)

    e = sub.add_parser("export", help="write the runs and metrics tables as CSV or Parquet")
    e.add_argument("store")
    e.add_argument("--format", required=True, help="csv or parquet")
    e.add_argument("--out", default=None, help="output directory (default: STORE/export)")
    e.set_defaults(fn=cmd_export)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bt = bsub.add_parser("train", help="training speed against a plain PyTorch GPT and the matmul rate")
    bt.add_argument("--n-layer", type=int, default=4)
    bt.add_argument("--d-model", type=int, default=128)
    bt.add_argument("--n-head", type=int, default=4)
    bt.add_argument("--seq-len", type=int, default=128)
    bt.add_argument("--batch", type=int, default=32)
    bt.add_argument("--steps", type=int, default=20)
    bt.add_argument("--threads", type=int, default=1)
    bt.add_argument("--repeats", type=int, default=3)
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(fn=cmd_bench_train)

    from .critical_batch import add_critical_batch_parser
    from .emergence.cli import add_emergence_parser
    from .forecast import add_forecast_parser
    from .probe_cli import add_probe_parser
    from .report.cli import add_report_parser

    add_probe_parser(sub)
    add_report_parser(sub)
    add_forecast_parser(sub)
    add_critical_batch_parser(sub)
    add_emergence_parser(sub)
    try:
        from .laws.cli import add_fit_parser
    except ImportError:  # pragma: no cover
        pass
    else:
        add_fit_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    errors: tuple[type[BaseException], ...] = (C.ConfigError, StoreError)
    try:
        from .laws.base import FitError

        errors += (FitError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        return int(args.fn(args) or 0)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
