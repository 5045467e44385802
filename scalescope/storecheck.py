"""``scalescope check``: verify every run of a store, and repair what can be repaired.

Per run (a folder of ``<store>/runs/`` with a ``config.json``; see :class:`scalescope.rundir.RunDir`):

- ``config.json`` parses, is a valid config, and hashes to the run's id (``config.run_id``);
- ``status`` parses and names a known state; a ``finished`` status agrees with the metrics (the last
  ``val_loss`` row is at the run's last step, the step ``meta.json`` and the status give);
- ``meta.json`` exists once the run is done, and parses whenever it exists;
- ``metrics.jsonl`` parses: no torn last line, no NUL bytes, no line that is not a row, no (step, metric)
  written twice (two writers);
- the checkpoint loads without running code and belongs to this run
  (:func:`scalescope.checkpoint.verify_checkpoint`);
- no temporary files of interrupted atomic writes are left, and no stale lock.

A run whose lock is held by a live worker is not checked (its files are changing under us) and never
repaired: the worker is its only writer. Repairs (``repair=True``) only ever make a run resumable or
restartable by the next ``scalescope run``; none invents data:

- delete stale temporary files;
- cut a torn last line of ``metrics.jsonl`` (always after the checkpoint's offset: the checkpoint is
  taken after an append completes), or rewrite the file without NUL bytes and unreadable lines (the
  removed lines are kept in ``metrics.jsonl.bad``); an unfinished run then restarts if the checkpoint
  covered more than is left;
- move an unreadable or foreign checkpoint aside (``latest.pt.bad``): the run restarts from step 0;
- set an unreadable status, or a ``finished`` one the metrics contradict, to ``pending``: the next
  sweep resumes the run; the same for a done run whose ``meta.json`` is missing or unreadable (resume
  rewrites it: only the worker, which builds the model, can).

What stays: a config that does not parse or does not hash to its id (the run's identity is lost:
delete the run directory to retrain it), duplicate metric rows (which copy is right is unknown: retrain).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C
from .errors import ScalescopeError, StoreError
from .rundir import DONE_STATES, STATES, RunDir, atomic_write_bytes, read_json_object
from .store import Store

__all__ = ["CheckResult", "Finding", "check_run", "check_store"]


@dataclass
class Finding:
    """One thing wrong with one file of a run (or a note that needs no action: ``note=True``)."""

    file: str  # relative to the store: "runs/<id>/metrics.jsonl"
    problem: str
    repaired: str | None = None  # what --repair did about it (None: nothing, or not asked)
    note: bool = False  # informational (a stale lock, a run in use): never changes the exit status

    @property
    def remains(self) -> bool:
        return not self.note and self.repaired is None

    def line(self) -> str:
        head = "note" if self.note else "repaired" if self.repaired else "problem"
        tail = f" -> {self.repaired}" if self.repaired else ""
        return f"{head}: {self.file}: {self.problem}{tail}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "problem": self.problem, "repaired": self.repaired, "note": self.note}


@dataclass
class CheckResult:
    store: Path
    runs: int  # run directories checked
    findings: list[Finding] = field(default_factory=list)

    @property
    def remaining(self) -> list[Finding]:
        return [f for f in self.findings if f.remains]

    @property
    def healthy(self) -> bool:
        """Nothing is wrong any more (what there was has been repaired)."""
        return not self.remaining

    def summary(self) -> str:
        repaired = sum(f.repaired is not None for f in self.findings)
        left = len(self.remaining)
        if not left and not repaired:
            return f"{self.store}: {self.runs} runs checked, no problems"
        return f"{self.store}: {self.runs} runs checked, {repaired} problems repaired, {left} remaining"

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": str(self.store),
            "runs": self.runs,
            "healthy": self.healthy,
            "findings": [f.as_dict() for f in self.findings],
        }


def check_store(store: str | Path, *, repair: bool = False) -> CheckResult:
    """Check (and with ``repair``, mend) every run of ``store``. Raises :class:`StoreError` only when
    ``store`` is not a store directory."""
    st = Store(store)
    if not st.path.is_dir():
        raise StoreError(f"{st.path}: no such store directory")
    ids = st.run_ids()
    out = CheckResult(st.path, len(ids))
    for rid in ids:
        out.findings += check_run(st.run_dir(rid), repair=repair)
    return out


def _live_lock(rd: RunDir) -> tuple[str | None, str | None]:
    """(who holds a live lock, None) or (None, a note about a stale lock) or (None, None): no lock."""
    from .runlock import RunLock

    lock = RunLock(rd)
    h = lock.holder()
    if h is None:
        return None, None
    if not lock.is_stale(h):
        return str(h), None
    age = time.time() - h.heartbeat
    why = "its process is gone" if age <= lock.stale_s else f"last heartbeat {age:.0f} s ago"
    return None, f"stale lock of {h} ({why}); the next worker takes it over"


def check_run(rd: RunDir, *, repair: bool = False) -> list[Finding]:
    """What is wrong with one run directory (and, with ``repair``, what was done about it)."""
    where = f"runs/{rd.id}"
    out: list[Finding] = []

    def find(path: Path, problem: str, fix: Callable[[], str] | None = None, *, note: bool = False) -> None:
        f = Finding(f"{where}/{path.relative_to(rd.path)}", problem, note=note)
        if repair and fix is not None:
            try:
                f.repaired = fix()
            except OSError as e:  # a repair that cannot be written (read-only store, full disk): it stays
                f.problem += f" (repair failed: {e.strerror or e})"
        out.append(f)

    holder, stale = _live_lock(rd)
    if holder is not None:
        find(rd.lock_path, f"in use by a live worker ({holder}): not checked", note=True)
        return out
    if stale is not None:

        def clear() -> str:
            from .runlock import RunLock

            return "removed" if RunLock(rd).clear_stale() else "left: it came alive again"

        find(rd.lock_path, stale, clear, note=True)

    # --- config: the run's identity -----------------------------------------------------------------
    cfg, why = read_json_object(rd.config_path)
    if cfg is None:
        find(rd.config_path, f"{why}: the run's identity is lost (delete {where} to retrain it)")
    else:
        try:
            rid = C.run_id(C.from_dict(cfg, str(rd.config_path)))
            if rid != rd.id:
                find(rd.config_path, f"hashes to {rid}, not to the run's id {rd.id} (edited after the run was made?)")
        except (ScalescopeError, OSError, TypeError, ValueError) as e:
            find(rd.config_path, f"not a valid config today ({str(e).splitlines()[0] if str(e) else type(e).__name__})")

    # --- status and meta ------------------------------------------------------------------------------
    status, why = read_json_object(rd.status_path)
    if status is not None and status.get("state") not in STATES:
        why = f"unknown state {status.get('state')!r}"
        status = None
    state = (status or {}).get("state", "pending")

    def to_pending(reason: str) -> Callable[[], str]:
        def fix() -> str:
            experiment = (status or {}).get("experiment")
            rd.write_status("pending", experiment=experiment, repaired=reason)
            return "status set to pending: the next scalescope run resumes the run"

        return fix

    if status is None and why != "missing":  # missing: created, not yet dispatched (the same as pending)
        find(rd.status_path, str(why), to_pending("status was unreadable"))
        state = "pending"

    meta, why = read_json_object(rd.meta_path)
    if meta is None and why != "missing":
        find(rd.meta_path, f"{why}; resuming the run rewrites it", _aside(rd, rd.meta_path, then=None))
        if state in DONE_STATES:
            find(rd.status_path, f"{state}, but meta.json is unreadable", to_pending("meta.json was unreadable"))
    elif meta is None and state in DONE_STATES:
        # The worker writes meta.json before its first step: a done run without it lost it. Only the worker
        # (which builds the model) can rewrite it: repairable by resuming the run.
        find(
            rd.meta_path,
            f"missing (the run is {state}); repairable by resuming the run",
            to_pending("meta.json was missing"),
        )

    # --- metrics --------------------------------------------------------------------------------------
    scan = rd.scan_metrics()
    if not scan.clean:
        if scan.bad_lines or scan.nul_bytes:
            find(rd.metrics_path, "; ".join(scan.problems()), lambda: _rewrite_metrics(rd))
        else:  # only a torn last line
            find(rd.metrics_path, "; ".join(scan.problems()), lambda: _cut_torn_line(rd))
    seen: set[tuple[Any, Any]] = set()
    dups = 0
    for r in scan.rows:
        key = (r["step"], r["metric"])
        dups += int(key in seen)
        seen.add(key)
    if dups:
        find(rd.metrics_path, f"{dups} (step, metric) rows written twice (two writers?); retrain the run to trust it")

    if state == "finished":
        total = (meta or {}).get("total_steps", (status or {}).get("total_steps"))
        at = (status or {}).get("step")
        vals = [r["step"] for r in scan.rows if r["metric"] == "val_loss"]
        last = max(vals) if vals else None
        if last is None or last != total or at != total:
            find(
                rd.status_path,
                f"finished, but the last val_loss is at step {last}, the status at step {at}, of {total} steps",
                to_pending("a finished status the metrics contradict"),
            )

    # --- checkpoint -----------------------------------------------------------------------------------
    ck = rd.checkpoint_path
    if ck.exists():
        why = _verify_checkpoint(ck, rd.id)
        if why is not None:
            rel = f"{where}/{ck.relative_to(rd.path)}"
            why = why.removeprefix(f"{ck}: ").removeprefix(f"{rel}: ")
            then = "the next scalescope run restarts the run from step 0" if state not in DONE_STATES else None
            find(ck, why, _aside(rd, ck, then=then))

    # --- leftovers ------------------------------------------------------------------------------------
    for tmp in rd.temp_files():
        find(tmp, "temporary file of an interrupted write", _delete(tmp))
    return out


def _verify_checkpoint(path: Path, run_id: str) -> str | None:
    from .checkpoint import verify_checkpoint

    try:
        return verify_checkpoint(path, run_id)
    except Exception as e:  # noqa: BLE001 - check reports every file it cannot read, in one line
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _aside(rd: RunDir, path: Path, *, then: str | None) -> Callable[[], str]:
    def fix() -> str:
        bad = rd.aside_path(path)
        path.replace(bad)
        return f"moved aside to {bad.name}" + (f"; {then}" if then else "")

    return fix


def _delete(path: Path) -> Callable[[], str]:
    def fix() -> str:
        path.unlink(missing_ok=True)
        return "deleted"

    return fix


def _cut_torn_line(rd: RunDir) -> str:
    scan = rd.scan_metrics()
    if scan.torn_at is None:
        return "nothing to cut"
    cut = rd.metrics_size() - scan.torn_at
    rd.truncate_metrics(scan.torn_at)  # shorter than the file: never pads
    return f"cut the torn last line ({cut} bytes)"


def _rewrite_metrics(rd: RunDir) -> str:
    """Rewrite ``metrics.jsonl`` without NUL bytes, unreadable lines and a torn tail; the lines removed are
    appended to ``metrics.jsonl.bad``. Good lines are kept byte for byte."""
    data = rd.metrics_path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()
    keep: list[bytes] = []
    drop: list[bytes] = []
    for line in lines:
        clean = line.replace(b"\0", b"")
        if not clean.strip():
            continue
        (keep if rd.parse_metrics_line(clean) is not None else drop).append(clean)
    tail = tail.replace(b"\0", b"")
    if tail.strip():
        drop.append(tail)
    if drop:
        with open(rd.aside_path(rd.metrics_path), "ab") as f:
            f.write(b"".join(d + b"\n" for d in drop))
    atomic_write_bytes(rd.metrics_path, b"".join(k + b"\n" for k in keep))
    removed = len(data) - sum(len(k) + 1 for k in keep)
    return (
        f"rewritten with its {len(keep)} good rows ({removed} bytes removed"
        + (f", {len(drop)} lines kept in {rd.aside_path(rd.metrics_path).name}" if drop else "")
        + ")"
    )
