"""Readers survive bad runs (issue 12 item 3): one damaged file costs its own run at most, is reported in one
line, and never raises; and nothing the tool writes pads ``metrics.jsonl`` with NUL bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scalescope import config as C
from scalescope.cli import main
from scalescope.rundir import RunDir
from scalescope.store import Store, load
from scalescope.train import train

from .conftest import TINY

LRS = (0.01, 0.003, 0.001)  # three runs, three ids


def tiny_config(lr: float) -> C.RunConfig:
    import tomllib

    raw = tomllib.loads(TINY.format(tokens=8 * 16 * 20, eval_every=10, checkpoint_every=5))
    raw.pop("name")
    raw["train"]["lr"] = lr
    return C.from_dict(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of three finished tiny runs (trained once per module, ~1 s each); tests corrupt copies."""
    store = Store(tmp_path_factory.mktemp("trained") / "store").ensure_writable()
    for lr in LRS:
        cfg = tiny_config(lr)
        rd = store.add(cfg)
        assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    return store.path


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(trained, dst)
    return dst


def run_dirs(store: Path) -> list[RunDir]:
    return [Store(store).run_dir(i) for i in Store(store).run_ids()]


def n_lines(rd: RunDir) -> int:
    return rd.metrics_path.read_bytes().count(b"\n")


# --- the corruptions of the issue, each through scalescope.load ------------------------------------------------


def tear_last_line(rd: RunDir) -> None:
    """Half a line at the end: what a process killed mid-append leaves."""
    with open(rd.metrics_path, "ab") as f:
        f.write(b'{"step":40,"tokens":5120,"flops":1.0,"wall_s":0.5,"met')


def test_half_a_line_at_the_end_keeps_every_row_and_is_reported(store: Path) -> None:
    a, *_ = run_dirs(store)
    rows = n_lines(a)
    tear_last_line(a)
    t = load(store)
    assert len(t.runs) == 3 and set(t.runs["status"]) == {"finished"}
    assert (t.metrics["id"] == a.id).sum() == rows  # every complete row salvaged
    assert len(t.problems) == 1
    assert t.problems[0].startswith(f"runs/{a.id}/metrics.jsonl: the last line is cut off")


def test_a_non_json_line_in_the_middle_costs_that_line_only(store: Path) -> None:
    a, b, _ = run_dirs(store)
    lines = a.metrics_path.read_bytes().split(b"\n")
    rows = len(lines) - 1
    lines.insert(5, b"this is not json")
    a.metrics_path.write_bytes(b"\n".join(lines))
    t = load(store)
    assert (t.metrics["id"] == a.id).sum() == rows
    assert (t.metrics["id"] == b.id).sum() == n_lines(b)
    assert t.problems == [f"runs/{a.id}/metrics.jsonl: line 6 is not JSON (Expecting value at column 1)"]
    # The final values of the damaged run are still there, from its good rows.
    assert t.runs.set_index("id").loc[a.id, "final_val_loss"] > 0


def test_nul_padding_is_reported_and_the_rows_after_it_are_kept(store: Path) -> None:
    a, *_ = run_dirs(store)
    data = a.metrics_path.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    # What the old resume did: truncate() beyond the end of a short file, then append the recomputed rows.
    a.metrics_path.write_bytes(data[:cut] + b"\0" * 300 + data[cut:])
    t = load(store)
    assert (t.metrics["id"] == a.id).sum() == data.count(b"\n")
    assert len(t.problems) == 1 and "300 NUL bytes" in t.problems[0] and f"runs/{a.id}/metrics.jsonl" in t.problems[0]


def test_a_config_that_is_not_json_leaves_that_run_out(store: Path) -> None:
    a, b, c = run_dirs(store)
    a.config_path.write_text('{"model": {"d_model": 16,')
    t = load(store)
    assert sorted(t.runs["id"]) == sorted([b.id, c.id])
    assert a.id not in set(t.metrics["id"])  # its metrics have no run to belong to
    assert len(t.problems) == 1
    assert t.problems[0].startswith(f"runs/{a.id}/config.json: not JSON (") and "left out" in t.problems[0]


@pytest.mark.parametrize("name", ["status", "meta.json"])
def test_an_unreadable_status_or_meta_lists_the_run_as_unreadable(store: Path, name: str) -> None:
    a, *_ = run_dirs(store)
    (a.path / name).write_bytes(b"\0\0\0\0")
    t = load(store)
    runs = t.runs.set_index("id")
    assert len(runs) == 3 and runs.loc[a.id, "status"] == "unreadable"
    assert (t.metrics["id"] == a.id).sum() == n_lines(a)  # its metrics stay
    assert t.problems == [f"runs/{a.id}/{name}: holds 4 NUL bytes"]


def test_a_finished_run_without_meta_is_reported(store: Path) -> None:
    a, *_ = run_dirs(store)
    a.meta_path.unlink()
    t = load(store)
    assert len(t.runs) == 3 and len(t.problems) == 1
    assert t.problems[0].startswith(f"runs/{a.id}/meta.json: missing")


def test_a_healthy_store_has_no_problems_and_both_paths_build_the_same_table(store: Path) -> None:
    healthy = load(store)
    assert healthy.problems == []
    # Damage one run: the salvage path then builds the table; the healthy runs' rows must be the same.
    a, *_ = run_dirs(store)
    tear_last_line(a)
    salvaged = load(store)
    assert list(salvaged.metrics.dtypes) == list(healthy.metrics.dtypes)
    assert salvaged.metrics.equals(healthy.metrics)


def test_a_running_run_with_half_a_line_is_not_reported(store: Path) -> None:
    # A worker may be appending while we read: half a line at the end of a running run is no damage.
    a, *_ = run_dirs(store)
    a.write_status("running", step=10)
    tear_last_line(a)
    assert load(store).problems == []


# --- the command line: warnings, no traceback --------------------------------------------------------------------


def damage_two(store: Path) -> tuple[RunDir, RunDir, RunDir]:
    a, b, c = run_dirs(store)
    tear_last_line(a)
    b.config_path.write_text("not json")
    return a, b, c


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_runs_and_export_warn_once_per_bad_file(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = damage_two(store)
    assert main(["runs", "--store", str(store), "--json"]) == 0
    out, err = capsys.readouterr()
    assert sorted(r["id"] for r in json.loads(out)) == sorted([a.id, c.id])
    w = warnings_of(err)
    assert len(w) == 2 and any(f"runs/{a.id}/metrics.jsonl" in x for x in w) and any(b.id in x for x in w)

    assert main(["export", "--store", str(store), "--format", "csv", "--out", str(store / "x")]) == 0
    out, err = capsys.readouterr()
    assert len(warnings_of(err)) == 2 and (store / "x" / "metrics.csv").exists()


def test_fit_on_a_damaged_store_warns_and_does_not_crash(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _ = damage_two(store)
    rc = main(["fit", "chinchilla", "--store", str(store)])
    _, err = capsys.readouterr()
    # Two tiny runs are too few for a Chinchilla fit: a clean error (2), or a fit (0); never a crash.
    assert rc in (0, 2)
    assert len(warnings_of(err)) == 2 and "Traceback" not in err


def test_the_report_lists_the_store_problems_first(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scalescope.report import core

    damage_two(store)
    t = load(store)
    monkeypatch.setattr(core, "PANELS", {})  # the panels themselves are other tests' business
    ctx = core.Context(store, t.runs, t.metrics, problems=t.problems)
    sections = core.build_sections(ctx)
    assert [s.key for s in sections] == ["store-problems"]
    assert all(p.split(":")[0] in sections[0].body for p in t.problems) and len(t.problems) == 2
    assert core.build_sections(core.Context(store, t.runs, t.metrics)) == []  # a whole store: no such section


# --- the writer: never NUL padding ----------------------------------------------------------------------------


def test_truncate_metrics_never_extends_the_file(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.append_metrics([{"step": 0, "tokens": 0, "flops": 0.0, "wall_s": 0.0, "metric": "val_loss", "value": 3.0}])
    size = rd.metrics_size()
    assert rd.truncate_metrics(size + 100) is False  # the checkpoint covered rows that are gone
    assert rd.metrics_size() == size and b"\0" not in rd.metrics_path.read_bytes()
    assert rd.truncate_metrics(size) is True and rd.metrics_size() == size
    assert rd.truncate_metrics(0) is True and rd.metrics_size() == 0
    assert RunDir(tmp_path / "none").truncate_metrics(0) is True  # no file, nothing to drop
    assert RunDir(tmp_path / "none").truncate_metrics(10) is False


@pytest.mark.parametrize("edit", ["status step", "metrics cut"])
def test_a_finished_status_the_metrics_contradict_is_unverified_and_reported(store: Path, edit: str) -> None:
    # Hostile test of issue 12: a status edited to finished at an early step, or metrics cut short under a
    # finished status, went into the runs table, the fits and the report as if complete.
    rd = run_dirs(store)[0]
    if edit == "status step":
        st = rd.read_status()
        rd.status_path.write_text(json.dumps({**st, "step": 10, "tokens": 1280}))
    else:
        lines = rd.metrics_path.read_text().splitlines(keepends=True)
        rd.metrics_path.write_text("".join(lines[: len(lines) // 2]))
    t = load(store)
    row = t.runs.set_index("id").loc[rd.id]
    assert row["status"] == "unverified"
    assert [p for p in t.problems if p.startswith(f"runs/{rd.id}/status: says finished at step")]
    assert (t.runs["status"] == "finished").sum() == len(LRS) - 1  # the others are untouched


def test_the_last_row_of_a_metric_read_from_the_end_is_the_last_of_all_rows(store: Path) -> None:
    # finished_problem reads only the end of metrics.jsonl; with tiny blocks it must cross block borders,
    # cut lines and a torn last line, and still agree with reading every row.
    rd = run_dirs(store)[0]
    tear_last_line(rd)
    rows = rd.read_metrics()
    for metric in ("val_loss", "train_loss", "lr"):
        want = [r for r in rows if r["metric"] == metric][-1]
        for block in (7, 64, 1 << 16):
            assert rd.last_metric_row(metric, block=block) == want
    assert rd.last_metric_row("no_such_metric", block=7) is None
