"""The store: a directory of run directories, read into tables with DuckDB.

Layout (this module spells the store's own names; a run directory's are :mod:`scalescope.rundir`'s)::

    <store>/runs/<id>/   one run directory per run (:class:`scalescope.rundir.RunDir`)
    <store>/cache/       data prepared once for every run (tokenized corpora), shared by the workers

The driver creates a run directory with its config (:meth:`Store.add`, before dispatch); after that the
store never writes into it (the run's worker owns it), it only reads. ``load(store)`` returns pandas
DataFrames:

- ``runs``: one row per run: id, status, parameter counts, tokens and FLOPs trained, final metrics
  (``final_<metric>``), the source's entropy rate, and every config field as a dotted column
  (``model.d_model``, ``train.tokens``, ...), plus ``config`` (the nested dict);
- ``metrics``: the long table of every run's ``metrics.jsonl``: id, step, tokens, flops, wall_s,
  metric, value;
- ``problems``: one line per damaged file (``runs/<id>/metrics.jsonl: line 12 is not JSON (...)``).

One bad file never costs the store: a run whose ``config.json`` cannot be read is left out of the tables;
one whose ``status`` or ``meta.json`` cannot be read is listed with status ``unreadable`` (its metrics are
kept, but no analysis takes an ``unreadable`` run for a finished one); every readable row of a damaged
``metrics.jsonl`` is kept. Each is reported once in ``problems``; ``scalescope check --repair`` mends what can
be mended.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import config as C
from .errors import StoreError
from .rundir import DONE_STATES, METRIC_FIELDS, STATES, RunDir, read_json_object

METRIC_COLUMNS = {
    "step": "BIGINT",
    "tokens": "BIGINT",
    "flops": "DOUBLE",
    "wall_s": "DOUBLE",
    "metric": "VARCHAR",
    "value": "DOUBLE",
}
assert list(METRIC_COLUMNS) == list(METRIC_FIELDS)  # the SQL types of the rows rundir writes and checks
UNREADABLE = "unreadable"  # the status of a listed run whose status or meta.json cannot be read


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def containing(cls, run_dir: RunDir) -> Store:
        """The store a run directory lives in (``<store>/runs/<id>``)."""
        return cls(run_dir.path.parent.parent)

    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    def ensure_writable(self) -> Store:
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # A name of this process's own: two drivers checking one store must not remove each other's probe.
            probe = self.path / f".write-test.{os.getpid()}.{uuid.uuid4().hex}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"{self.path}: store is not writable ({e.strerror or e})") from None
        return self

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.runs_dir / run_id)

    def add(self, cfg: C.RunConfig, experiment: str | None = None) -> RunDir:
        """Create the run directory with its config (once); an existing run is left as it is, except a
        ``config.json`` that can no longer be read: the config in hand is exactly its content (the run id
        is its hash), so it is written again rather than losing the run."""
        rd = self.run_dir(C.run_id(cfg))
        if not rd.create(C.to_dict(cfg), experiment=experiment):
            _, why = read_json_object(rd.config_path)
            if why is not None:
                rd.rewrite_config(C.to_dict(cfg))
                print(f"warning: {rd.config_path}: {why}; rewritten from the experiment", file=sys.stderr)
        return rd

    def run_ids(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if RunDir(p).exists())


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "instruments":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, dict) else v
    return out


@dataclass
class Tables:
    runs: pd.DataFrame
    metrics: pd.DataFrame
    problems: list[str] = field(default_factory=list)  # one line per damaged file, "runs/<id>/<file>: ..."


def _read_metrics_sql(con: Any, files: list[str]) -> pd.DataFrame:
    cols = ", ".join(f"'{k}': '{v}'" for k, v in METRIC_COLUMNS.items())
    if not files:
        return pd.DataFrame(columns=["id", *METRIC_COLUMNS])
    # A row without a step or a metric cannot be placed (DuckDB reads "{}" as a row of NULLs);
    # RunDir.scan_metrics counts such a line as bad, and the two paths must agree.
    q = f"""
        SELECT regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS id, {", ".join(METRIC_COLUMNS)}
        FROM read_json(?, format='newline_delimited', columns={{{cols}}}, filename=true)
        WHERE step IS NOT NULL AND metric IS NOT NULL
        ORDER BY id, step, metric
    """
    return con.execute(q, [files]).df()


def _read_metrics(con: Any, runs: dict[str, RunDir], states: dict[str, str], problems: list[str]) -> pd.DataFrame:
    """The long metrics table of ``runs`` (id -> run directory); damaged files add a line to ``problems``.

    The healthy bulk is read by DuckDB in one query. Only when that fails is each file tried alone, and the
    ones DuckDB refuses are read line by line in Python (:meth:`RunDir.scan_metrics`), keeping every good
    row: the cost of a damaged store falls on its damaged files, never on a healthy one."""
    import duckdb

    # Empty files are left out (DuckDB has no rows to give, and infers nothing from them).
    files = {rid: rd.metrics_path for rid, rd in runs.items() if rd.metrics_size()}
    try:
        return _read_metrics_sql(con, [str(p) for p in files.values()])
    except duckdb.Error:
        pass
    good, salvaged = [], []
    for rid, path in files.items():
        try:
            _read_metrics_sql(con, [str(path)])
            good.append(str(path))
            continue
        except duckdb.Error:
            pass
        scan = runs[rid].scan_metrics()
        # A running run's last append may be in flight as we read: half a line there is no damage.
        for why in scan.problems(torn_is_expected=states.get(rid) == "running"):
            problems.append(f"runs/{rid}/{path.name}: {why}")
        if scan.rows:
            salvaged.append(pd.DataFrame(scan.rows, columns=list(METRIC_COLUMNS)).assign(id=rid))
    frames = [_read_metrics_sql(con, good)] + salvaged
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    out = out[["id", *METRIC_COLUMNS]]
    # The dtypes DuckDB gives, so that both paths build the same table: an integer column with a gap is
    # pandas' nullable Int64, as DuckDB makes it.
    for col, sql in {"id": "VARCHAR", **METRIC_COLUMNS}.items():
        if sql == "BIGINT":
            out[col] = out[col].astype("Int64" if out[col].isna().any() else "int64")
        else:
            out[col] = out[col].astype("float64" if sql == "DOUBLE" else "str")
    return out.sort_values(["id", "step", "metric"], ignore_index=True)


def _with_defaults(cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The stored config with every field it lacks set to today's default. A run written before a config
    field existed then gets the same column values as a new run that leaves the field at its default, so
    adding a field never splits a store into groups (critical batch, report legends) by old and new runs."""
    out = dict(cfg)
    for key, default in defaults.items():
        if isinstance(default, dict) and isinstance(out.get(key), dict) and key != "instruments":
            out[key] = {**default, **out[key]}
        else:
            out.setdefault(key, default)
    return out


_reporters: list[Callable[[str], None]] = []


@contextmanager
def reporting_problems(report: Callable[[str], None]) -> Iterator[None]:
    """While inside, every problem :func:`load` finds is also passed to ``report``, once each (a command
    that loads the store several times warns once). The command line wraps every command in this, so
    ``fit``, ``report``, ``forecast``... warn about damaged files without each knowing how."""
    seen: set[str] = set()

    def once(line: str) -> None:
        if line not in seen:
            seen.add(line)
            report(line)

    _reporters.append(once)
    try:
        yield
    finally:
        _reporters.remove(once)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_run(rd: RunDir, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """A run's config, status and meta, each damaged file reported in ``problems``; None when the config
    cannot be read (without it the run has no columns and no identity: it is left out). A status or meta
    that cannot be read makes the status ``unreadable``: the run stays visible in ``runs`` (with its
    metrics), and no analysis mistakes it for a finished run."""
    where = f"runs/{rd.id}"
    cfg, why = read_json_object(rd.config_path)
    if cfg is None:
        problems.append(f"{where}/{rd.config_path.name}: {why}; the run is left out")
        return None
    status, why = read_json_object(rd.status_path)
    if status is None and why != "missing":
        problems.append(f"{where}/{rd.status_path.name}: {why}")
    elif status is not None and (status.get("state") not in STATES or not _is_number(status.get("step", 0))):
        problems.append(f"{where}/{rd.status_path.name}: state {status.get('state')!r} at step {status.get('step')!r}")
        status, why = None, "bad"
    status = status if status is not None else {"state": "pending" if why == "missing" else UNREADABLE}
    meta, why = read_json_object(rd.meta_path)
    if meta is None:
        if why != "missing":
            problems.append(f"{where}/{rd.meta_path.name}: {why}")
            status = {**status, "state": UNREADABLE}
        elif status.get("state") in DONE_STATES:
            # The worker writes meta.json before its first step, so a done run without it lost it.
            problems.append(
                f"{where}/{rd.meta_path.name}: missing, so the run has no parameter count and stays out of fits "
                "(scalescope check --repair, then scalescope run, rewrites it)"
            )
        meta = {}
    elif not all(_is_number(meta.get(k, 0)) for k in ("tokens_per_step", "flops_per_token")):
        problems.append(f"{where}/{rd.meta_path.name}: tokens_per_step or flops_per_token is not a number")
        meta, status = {}, {**status, "state": UNREADABLE}
    return cfg, status, meta


def load(store: str | Path) -> Tables:
    """Read every run of ``store`` into a runs table and a long metrics table, and the list of what is
    damaged (see module doc). Raises :class:`StoreError` only when ``store`` is not a store directory."""
    import duckdb

    st = Store(store)
    if not st.path.is_dir():
        raise StoreError(f"{st.path}: no such store directory")
    problems: list[str] = []
    read = {}
    for rid in st.run_ids():
        files = _read_run(st.run_dir(rid), problems)
        if files is not None:
            read[rid] = files
    con = duckdb.connect()
    # The id is the name of the folder each file is in (see _read_metrics_sql).
    states = {rid: status["state"] for rid, (_, status, _) in read.items()}
    metrics = _read_metrics(con, {rid: st.run_dir(rid) for rid in read}, states, problems)
    # Final value of every metric per run: the row with the largest step.
    if len(metrics):
        final = con.execute(
            """SELECT id, metric, arg_max(value, step) AS value FROM metrics
               WHERE value IS NOT NULL GROUP BY id, metric"""
        ).df()
        final_wide = final.pivot(index="id", columns="metric", values="value").add_prefix("final_")
    else:
        final_wide = pd.DataFrame()

    # The last evaluated step of each run: a "finished" status must agree with it (a status is one small
    # file anyone can edit; the metrics are what the run did).
    last_eval: dict[str, int] = {}
    if len(metrics):
        ev = metrics[metrics["metric"] == "val_loss"]
        last_eval = {str(k): int(v) for k, v in ev.groupby("id")["step"].max().items()}
    rows = []
    defaults = C.to_dict(C.RunConfig())  # today's default of every config field (see _with_defaults)
    for rid, (cfg, status, meta) in read.items():
        tps = meta.get("tokens_per_step")
        step = status.get("step", 0)
        flags = status.get("flags")
        state = status.get("state", "pending")
        total = meta.get("total_steps")
        if state == "finished" and total is not None and not (step == total == last_eval.get(rid)):
            problems.append(
                f"runs/{rid}/status: says finished at step {step}, but the metrics end at step "
                f"{last_eval.get(rid)} of {total}; listed as 'unverified' and left out of fits "
                "(scalescope check --repair, then run the experiment again, resumes it)"
            )
            state = "unverified"
        row = {
            "id": rid,
            "status": state,
            "experiment": status.get("experiment"),
            "flags": ",".join(map(str, flags)) if isinstance(flags, list) else "",
            "params_total": meta.get("params_total"),
            "params_embedding": meta.get("params_embedding"),
            "params_nonembedding": meta.get("params_nonembedding"),
            "flops_per_token": meta.get("flops_per_token"),
            "step": step,
            "total_steps": meta.get("total_steps"),
            "tokens": step * tps if tps else 0,
            "flops": step * tps * meta.get("flops_per_token", 0.0) if tps else 0.0,
            "entropy_rate": meta.get("entropy_rate"),
            "error": status.get("error") or status.get("reason"),
            "config": cfg,
            **_flatten(_with_defaults(cfg, defaults)),
        }
        rows.append(row)
    runs = pd.DataFrame(rows)
    if len(runs):
        runs = runs.merge(final_wide, left_on="id", right_index=True, how="left")
        if "final_val_loss" not in runs:
            runs["final_val_loss"] = None
    else:
        runs = pd.DataFrame(
            columns=[
                "id",
                "status",
                "params_total",
                "params_nonembedding",
                "tokens",
                "flops",
                "final_val_loss",
                "entropy_rate",
                "config",
            ]
        )
    for line in problems:
        for report in _reporters:
            report(line)
    return Tables(runs=runs, metrics=metrics, problems=problems)


def source_meta(store: str | Path, run_id: str) -> dict[str, Any]:
    """The ``source`` facts of a run's ``meta.json`` (sizes, entropy rate; {} when it is missing or damaged)."""
    meta, _ = read_json_object(Store(store).run_dir(run_id).meta_path)
    src = (meta or {}).get("source")
    return src if isinstance(src, dict) else {}


def runs_json(tables: Tables) -> list[dict[str, Any]]:
    """The runs table as JSON-able dicts (what ``scalescope runs --json`` prints)."""
    keep = [
        "id",
        "status",
        "experiment",
        "params_total",
        "params_embedding",
        "params_nonembedding",
        "flops_per_token",
        "step",
        "total_steps",
        "tokens",
        "flops",
        "final_val_loss",
        "final_train_loss",
        "entropy_rate",
        "error",
        "flags",
        "config",
    ]
    out = []
    for rec in tables.runs.to_dict(orient="records"):
        item = {}
        for k in keep:
            v = rec.get(k)
            if isinstance(v, float) and v != v:  # NaN -> null
                v = None
            if hasattr(v, "item") and not isinstance(v, dict):
                v = v.item()
            item[k] = v
        out.append(item)
    return out


def export(store: str | Path, fmt: str, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``runs`` and ``metrics`` tables as CSV or Parquet; return the paths."""
    if fmt not in ("csv", "parquet"):
        raise StoreError(f"export format: expected csv or parquet, got {fmt!r}")
    t = load(store)
    out = Path(out_dir) if out_dir else Path(store) / "export"
    out.mkdir(parents=True, exist_ok=True)
    runs = t.runs.copy()
    runs["config"] = runs["config"].map(json.dumps)
    paths = []
    for name, df in (("runs", runs), ("metrics", t.metrics)):
        p = out / f"{name}.{fmt}"
        if fmt == "csv":
            df.to_csv(p, index=False)
        else:
            df.to_parquet(p, index=False)
        paths.append(p)
    return paths
