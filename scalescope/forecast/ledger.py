"""The forecast ledger: predictions written to ``STORE/forecasts/<id>.json`` before the runs they predict
exist, and scored once those runs have finished.

A record is a JSON object with at least ``id``, ``created_at`` and ``score`` (None until scored). Its
``kind`` says how it is scored: each kind registers a scorer here (:func:`register_kind`), and
:func:`score_store` scores every record by its kind. Records without a ``kind`` field (the scaling-law
forecasts, which predate kinds) belong to the kind registered with ``default=True``.

A record is never rewritten except to add its score: the id is a short hash of what determines the
prediction (:func:`forecast_id`), so recording the same forecast twice is a no-op (:func:`write_record`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import StoreError
from ..jsonable import jsonable
from ..rundir import atomic_write_json
from ..store import load

__all__ = [
    "Scorer",
    "forecast_id",
    "forecasts_dir",
    "kind_of",
    "load_forecasts",
    "now",
    "register_kind",
    "score_store",
    "write_record",
]

# A scorer: (record, the store's runs table) -> the score, or None while the record cannot be scored yet.
# Pure: ``scored_at`` is added by score_store.
Scorer = Callable[[dict[str, Any], pd.DataFrame], "dict[str, Any] | None"]

_SCORERS: dict[str, Scorer] = {}
_DEFAULT_KIND: list[str] = []  # the kind of records without a ``kind`` field (set once, by register_kind)


def register_kind(kind: str, scorer: Scorer, *, default: bool = False) -> None:
    """Make ``score_store`` score records of ``kind`` with ``scorer``; ``default``: also records that have
    no ``kind`` field."""
    _SCORERS[kind] = scorer
    if default:
        _DEFAULT_KIND[:] = [kind]


def kind_of(rec: dict[str, Any]) -> str | None:
    """The record's kind: its ``kind`` field, else the default kind (None when none is registered)."""
    kind = rec.get("kind")
    if kind:
        return str(kind)
    return _DEFAULT_KIND[0] if _DEFAULT_KIND else None


def now() -> str:
    """The current UTC time, to the second, as the ledger writes it (``created_at``, ``scored_at``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def forecast_id(content: dict[str, Any]) -> str:
    """Short content hash (12 hex digits) of what determines a prediction."""
    return hashlib.sha256(json.dumps(jsonable(content), sort_keys=True).encode()).hexdigest()[:12]


def forecasts_dir(store: str | Path) -> Path:
    """``STORE/forecasts``: where the ledger's records live."""
    return Path(store) / "forecasts"


def write_record(store: str | Path, rec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Write ``rec`` to ``STORE/forecasts/<id>.json`` unless that id is already recorded. Returns (record,
    created); an existing record is returned as stored (its created time and score are kept)."""
    path = forecasts_dir(store) / f"{rec['id']}.json"
    if path.exists():
        return json.loads(path.read_text()), False
    atomic_write_json(path, rec)
    return rec, True


def load_forecasts(store: str | Path) -> list[dict[str, Any]]:
    """Every record in ``STORE/forecasts``, oldest first (unreadable files are skipped with a note)."""
    recs = []
    for p in sorted(forecasts_dir(store).glob("*.json")):
        try:
            recs.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"note: skipped unreadable forecast {p}: {err}", file=sys.stderr)
    return sorted(recs, key=lambda r: (r.get("created_at") or "", r.get("id") or ""))


def score_store(store: str | Path) -> list[dict[str, Any]]:
    """Score every recorded forecast of ``store`` that can now be scored (by its kind's scorer), write the
    scores back (``score.scored_at``), and return all records. Idempotent: an unchanged score is not
    rewritten. Records of an unknown kind are left as they are."""
    if not Path(store).is_dir():
        raise StoreError(f"{store}: no such store directory")
    recs = load_forecasts(store)
    if not recs:
        return []
    runs = load(store).runs
    for rec in recs:
        scorer = _SCORERS.get(kind_of(rec) or "")
        if scorer is None:
            continue
        new = scorer(rec, runs)
        old = rec.get("score")
        if new is None or (old and {k: v for k, v in old.items() if k != "scored_at"} == new):
            continue
        rec["score"] = {**new, "scored_at": now()}
        atomic_write_json(forecasts_dir(store) / f"{rec['id']}.json", rec)
    return recs
