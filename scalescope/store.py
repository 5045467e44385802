"""The store: a directory of run directories, read into tables with DuckDB.

The store never writes into a run directory after creating it (the run's worker owns it); it only
reads. ``load(store)`` returns pandas DataFrames:

- ``runs``: one row per run: id, status, parameter counts, tokens and FLOPs trained, final metrics
  (``final_<metric>``), the source's entropy rate, and every config field as a dotted column
  (``model.d_model``, ``train.tokens``, ...), plus ``config`` (the nested dict);
- ``metrics``: the long table of every run's ``metrics.jsonl``: id, step, tokens, flops, wall_s,
  metric, value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import config as C
from .rundir import RunDir, atomic_write_json

METRIC_COLUMNS = {
    "step": "BIGINT",
    "tokens": "BIGINT",
    "flops": "DOUBLE",
    "wall_s": "DOUBLE",
    "metric": "VARCHAR",
    "value": "DOUBLE",
}


class StoreError(ValueError):
    """The store directory cannot be used; the message names it."""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)

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
        rid = C.run_id(cfg)
        rd = self.run_dir(rid)
        if not (rd.path / "config.json").exists():
            rd.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(rd.path / "config.json", C.to_dict(cfg))
            rd.write_status("pending", experiment=experiment)
        return rd

    def run_ids(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if (p / "config.json").exists())


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


def _read_metrics(con, files: list[str]) -> pd.DataFrame:
    cols = ", ".join(f"'{k}': '{v}'" for k, v in METRIC_COLUMNS.items())
    if not files:
        return pd.DataFrame(columns=["id", *METRIC_COLUMNS])
    q = f"""
        SELECT regexp_extract(filename, '([^/\\\\]+)[/\\\\]metrics\\.jsonl$', 1) AS id, {", ".join(METRIC_COLUMNS)}
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
    files = [
        str(st.runs_dir / i / "metrics.jsonl")
        for i in ids
        if (st.runs_dir / i / "metrics.jsonl").exists() and os.path.getsize(st.runs_dir / i / "metrics.jsonl")
    ]
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
        cfg = json.loads((rd.path / "config.json").read_text())
        status = rd.read_status()
        try:
            meta = json.loads((rd.path / "meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            meta = {}
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
