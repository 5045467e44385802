"""``scalescope check --store DIR [--repair]``: every damage the issue lists is found, repaired where it can be,
and a second check is clean; what cannot be repaired stays a problem (exit 1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scalescope import config as C
from scalescope.cli import main
from scalescope.rundir import RunDir
from scalescope.store import Store, load
from scalescope.storecheck import check_store
from scalescope.train import train

from .test_store_faults import tear_last_line, trained  # noqa: F401  (trained: a module fixture)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:  # noqa: F811
    dst = tmp_path / "store"
    shutil.copytree(trained, dst)
    return dst


def runs_of(store: Path) -> list[RunDir]:
    return [Store(store).run_dir(i) for i in Store(store).run_ids()]


def test_a_healthy_store_is_clean(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--store", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{store}: 3 runs checked, no problems"]


def test_a_v0_1_store_is_clean(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "store_v0_1", tmp_path / "s")
    result = check_store(tmp_path / "s")
    assert [f.line() for f in result.findings] == [] and result.healthy


# --- each damage: found, repaired, then clean -------------------------------------------------------------------


def nul_padding(rd: RunDir) -> None:
    data = rd.metrics_path.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    rd.metrics_path.write_bytes(data[:cut] + b"\0" * 64 + data[cut:])


def bad_middle_line(rd: RunDir) -> None:
    lines = rd.metrics_path.read_bytes().split(b"\n")
    lines.insert(3, b'{"step": "three"}')
    rd.metrics_path.write_bytes(b"\n".join(lines))


def finished_too_early(rd: RunDir) -> None:
    rd.write_status("finished", step=10, total_steps=20)  # "a status edited to finished at step 510 of 938"


def foreign_checkpoint(rd: RunDir) -> None:
    other = next(r for r in runs_of(rd.path.parent.parent) if r.id != rd.id)
    shutil.copy(other.checkpoint_path, rd.checkpoint_path)


def stale_temp_files(rd: RunDir) -> None:
    (rd.path / ".status.k2j3h4.tmp").write_text("{")
    (rd.checkpoint_path.parent / ".latest.pt.x8y9.tmp").write_bytes(b"half a checkpoint")


DAMAGE: dict[str, tuple[Callable[[RunDir], None], str]] = {
    "torn metrics line": (tear_last_line, "metrics.jsonl: the last line is cut off"),
    "NUL padding": (nul_padding, "metrics.jsonl: 64 NUL bytes"),
    "bad metrics line": (bad_middle_line, "metrics.jsonl: line 4 is bad"),
    "status not JSON": (lambda rd: rd.status_path.write_text("{'state':"), "status: not JSON"),
    "finished too early": (
        finished_too_early,
        "status: finished, but the last val_loss is at step 20, the status at step 10",
    ),
    "meta missing": (lambda rd: rd.meta_path.unlink(), "meta.json: missing (the run is finished)"),
    "meta not JSON": (lambda rd: rd.meta_path.write_text("[1, 2"), "meta.json: not JSON"),
    "zero-byte checkpoint": (lambda rd: rd.checkpoint_path.write_bytes(b""), "checkpoints/latest.pt: "),
    "foreign checkpoint": (foreign_checkpoint, "checkpoints/latest.pt: "),
    "stale temp files": (stale_temp_files, ".tmp: temporary file of an interrupted write"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_check_finds_repair_repairs_and_a_second_check_is_clean(store: Path, case: str) -> None:
    damage, expected = DAMAGE[case]
    a = runs_of(store)[0]
    damage(a)
    found = check_store(store)
    lines = [f.line() for f in found.findings]
    assert not found.healthy and all(f.file.startswith(f"runs/{a.id}/") for f in found.findings), lines
    assert any(f"runs/{a.id}/" in ln and expected in ln for ln in lines), lines

    repaired = check_store(store, repair=True)
    assert repaired.healthy, [f.line() for f in repaired.findings]
    assert all(f.repaired for f in repaired.findings)

    again = check_store(store)
    assert again.findings == [] and again.healthy
    assert load(store).problems == []


def test_a_repaired_status_resumes_and_finishes(store: Path) -> None:
    a = runs_of(store)[0]
    final = a.read_status()["final_val_loss"]
    finished_too_early(a)
    check_store(store, repair=True)
    assert a.read_status()["state"] == "pending"
    cfg = C.from_dict(a.read_config())
    out = train(cfg, a.path, cache_dir=Store(store).cache_dir, threads=1)
    assert out.status == "finished" and a.read_status()["state"] == "finished"
    assert load(store).runs.set_index("id").loc[a.id, "final_val_loss"] == final  # same rows, none twice
    assert check_store(store).healthy


# --- what cannot be repaired stays ----------------------------------------------------------------------------


def test_duplicate_rows_and_an_edited_config_remain(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _ = runs_of(store)
    first = a.metrics_path.read_bytes().split(b"\n")[0]
    with open(a.metrics_path, "ab") as f:
        f.write(first + b"\n")  # what two writers of one run did
    cfg = b.read_config()
    cfg["train"]["lr"] = 0.5
    b.config_path.write_text(json.dumps(cfg))
    assert main(["check", "--store", str(store), "--repair"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{store}: 3 runs checked, 0 problems repaired, 2 remaining"
    assert any(f"runs/{a.id}/metrics.jsonl: 1 (step, metric) rows written twice" in ln for ln in out)
    assert any(f"runs/{b.id}/config.json: hashes to" in ln for ln in out)


# --- locks, exit codes, JSON ------------------------------------------------------------------------------------


def write_lock(rd: RunDir, *, pid: int, heartbeat: float) -> None:
    lock = {"host": socket.gethostname(), "pid": pid, "token": "t", "started": heartbeat, "heartbeat": heartbeat}
    rd.lock_path.write_text(json.dumps(lock))


def test_a_run_held_by_a_live_worker_is_left_alone(store: Path) -> None:
    a = runs_of(store)[0]
    write_lock(a, pid=os.getpid(), heartbeat=time.time())
    tear_last_line(a)  # as if being written now
    result = check_store(store, repair=True)
    assert result.healthy and [f.note for f in result.findings] == [True]
    assert "in use by a live worker" in result.findings[0].problem
    assert a.metrics_path.read_bytes().endswith(b'"met')  # not repaired: the worker is its only writer


def test_a_stale_lock_is_a_note(store: Path) -> None:
    a = runs_of(store)[0]
    write_lock(a, pid=os.getpid(), heartbeat=time.time() - 3600)
    result = check_store(store)
    assert result.healthy and len(result.findings) == 1 and result.findings[0].note
    assert "stale lock" in result.findings[0].problem and "3600 s ago" in result.findings[0].problem
    assert a.lock_path.exists()  # a check alone changes nothing
    repaired = check_store(store, repair=True)
    assert repaired.findings[0].repaired == "removed" and not a.lock_path.exists()
    assert check_store(store).findings == []


def test_exit_codes_and_json(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--store", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    tear_last_line(runs_of(store)[0])
    assert main(["check", "--store", str(store), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["healthy"] is False and doc["runs"] == 3 and len(doc["findings"]) == 1
    assert main(["check", "--store", str(store), "--repair", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["healthy"] is True and doc["findings"][0]["repaired"].startswith("cut the torn last line")
