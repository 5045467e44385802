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
  metric, value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import config as C
from .errors import StoreError
from .rundir import RunDir

METRIC_COLUMNS = {
    "step": "BIGINT",
    "tokens": "BIGINT",
    "flops": "DOUBLE",
    "wall_s": "DOUBLE",
    "metric": "VARCHAR",
    "value": "DOUBLE",
}


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
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"{self.path}: store is not writable ({e.strerror or e})") from None
        return self

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.runs_dir / run_id)

    def add(self, cfg: C.RunConfig, experiment: str | None = None) -> RunDir:
        """Create the run directory with its config (once); an existing run is left as it is."""
        rd = self.run_dir(C.run_id(cfg))
        rd.create(C.to_dict(cfg), experiment=experiment)
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


def _read_metrics(con: Any, files: list[str]) -> pd.DataFrame:
    cols = ", ".join(f"'{k}': '{v}'" for k, v in METRIC_COLUMNS.items())
    if not files:
        return pd.DataFrame(columns=["id", *METRIC_COLUMNS])
    q = f"""
        SELECT regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS id, {", ".join(METRIC_COLUMNS)}
        FROM read_json(?, format='newline_delimited', columns={{{cols}}}, filename=true)
        ORDER BY id, step, metric
    """
    return con.execute(q, [files]).df()


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


def load(store: str | Path) -> Tables:
    """Read every run of ``store`` into a runs table and a long metrics table (see module doc)."""
    import duckdb

    st = Store(store)
    if not st.path.is_dir():
        raise StoreError(f"{st.path}: no such store directory")
    ids = st.run_ids()
    con = duckdb.connect()
    # The id is the name of the folder each file is in (see _read_metrics); empty files are left out.
    files = [str(p) for p in (st.run_dir(i).metrics_path for i in ids) if p.exists() and p.stat().st_size]
    metrics = _read_metrics(con, files)
    # Final value of every metric per run: the row with the largest step.
    if len(metrics):
        final = con.execute(
            """SELECT id, metric, arg_max(value, step) AS value FROM metrics
               WHERE value IS NOT NULL GROUP BY id, metric"""
        ).df()
        final_wide = final.pivot(index="id", columns="metric", values="value").add_prefix("final_")
    else:
        final_wide = pd.DataFrame()

    rows = []
    defaults = C.to_dict(C.RunConfig())  # today's default of every config field (see _with_defaults)
    for rid in ids:
        rd = st.run_dir(rid)
        cfg = rd.read_config()
        status = rd.read_status()
        meta = rd.read_meta()
        tps = meta.get("tokens_per_step")
        step = status.get("step", 0)
        row = {
            "id": rid,
            "status": status.get("state", "pending"),
            "experiment": status.get("experiment"),
            "params_total": meta.get("params_total"),
            "params_embedding": meta.get("params_embedding"),
            "params_nonembedding": meta.get("params_nonembedding"),
            "flops_per_token": meta.get("flops_per_token"),
            "step": step,
            "total_steps": meta.get("total_steps"),
            "tokens": step * tps if tps else 0,
            "flops": step * tps * meta["flops_per_token"] if tps else 0.0,
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
    return Tables(runs=runs, metrics=metrics)


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
