"""Checked resumes and safe checkpoints (issue 12 item 4): a checkpoint runs no code, belongs to its run
and its data, and a run trusts neither a damaged checkpoint nor an edited status."""

import json
import os
import random
import textwrap

import numpy as np
import pytest
import torch

from scalescope.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    verify_checkpoint,
)
from scalescope.errors import StoreError
from scalescope.offline import load_run
from scalescope.rundir import RunDir
from scalescope.store import Store
from scalescope.sweep import load_experiment
from scalescope.train import train

from .conftest import train_tiny


def _resume(rd: RunDir, cfg, store_dir):
    """Mark the run unfinished (as a kill would leave it) and train it again in this process."""
    rd.write_status("running", step=0)
    return train(cfg, rd.path, cache_dir=Store(store_dir).cache_dir, threads=1)


def _tiny(tiny_toml, tmp_path, name, extra=""):
    rd = train_tiny(tiny_toml, tmp_path, extra, name)
    cfg = load_experiment(tmp_path / name).runs[0]
    return rd, cfg, rd.path.parents[1]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_rng_state_is_plain_data_and_restores_exactly(tmp_path):
    random.seed(3)
    np.random.seed(4)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state
    random.gauss(0, 1)  # ... and in Python's
    s = rng_state()
    p = tmp_path / "rng.pt"
    torch.save(s, p)
    want = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    restore_rng_state(torch.load(p, weights_only=True))  # tensors and plain values only
    got = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2:] == got[2:]


def test_malicious_pickle_is_refused_by_resume_and_probe(tiny_toml, tmp_path):
    rd, cfg, store = _tiny(tiny_toml, tmp_path, "evil.toml")
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(marker)}, rd.checkpoint_path)  # what a crafted latest.pt holds
    out = _resume(rd, cfg, store)
    assert out.status == "failed"
    assert str(rd.checkpoint_path) in out.error and "refusing" in out.error
    assert "\n" not in out.error
    with pytest.raises(StoreError, match="refusing") as err:
        load_run(rd.path)
    assert str(rd.checkpoint_path) in str(err.value)
    assert verify_checkpoint(rd.checkpoint_path, rd.id) is not None
    assert not marker.exists()  # no code ran


def test_foreign_checkpoint_is_refused_with_the_file_named(tiny_toml, tmp_path):
    a, _, _ = _tiny(tiny_toml, tmp_path, "a.toml")
    b, cfg_b, store_b = _tiny(tiny_toml, tmp_path, "b.toml", "warmup = 0.1\n")
    assert a.id != b.id
    assert verify_checkpoint(a.checkpoint_path, a.id) is None
    b.checkpoint_path.write_bytes(a.checkpoint_path.read_bytes())
    problem = verify_checkpoint(b.checkpoint_path, b.id)
    assert problem is not None and a.id in problem and str(b.checkpoint_path) in problem
    out = _resume(b, cfg_b, store_b)
    assert out.status == "failed"
    assert str(b.checkpoint_path) in out.error and f"run id {a.id}" in out.error


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_checkpoint_fails_with_the_file_named(tiny_toml, tmp_path, damage):
    rd, cfg, store = _tiny(tiny_toml, tmp_path, f"{damage}.toml")
    data = rd.checkpoint_path.read_bytes()
    rd.checkpoint_path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(StoreError) as err:
        load_checkpoint(rd.checkpoint_path)
    assert str(rd.checkpoint_path) in str(err.value) and "unreadable" in str(err.value)
    out = _resume(rd, cfg, store)
    assert out.status == "failed" and str(rd.checkpoint_path) in out.error
    assert "EOFError" not in out.error.split(";")[0]  # the line leads with the file, not a bare exception


def test_missing_meta_is_rewritten_on_resume(tiny_toml, tmp_path):
    rd, cfg, store = _tiny(tiny_toml, tmp_path, "meta.toml")
    meta = rd.read_meta()
    rd.meta_path.unlink()
    assert _resume(rd, cfg, store).status == "finished"
    again = rd.read_meta()
    assert again["params_total"] == meta["params_total"] and again["total_steps"] == meta["total_steps"]


def test_status_edited_to_finished_is_not_trusted(tiny_toml, tmp_path):
    rd, cfg, store = _tiny(tiny_toml, tmp_path, "fin.toml")
    full = rd.metrics_path.read_text()
    rows = full.splitlines(keepends=True)
    # As if killed at step 10 with no checkpoint yet, then someone wrote "finished" into the status.
    rd.metrics_path.write_text("".join(r for r in rows if json.loads(r)["step"] <= 10))
    rd.checkpoint_path.unlink()
    rd.write_status("finished", step=10)
    out = train(cfg, rd.path, cache_dir=Store(store).cache_dir, threads=1)
    assert not out.skipped and out.status == "finished"
    st = rd.read_status()
    assert any("status says finished" in w for w in st["warnings"])

    def det(text):  # tokens_per_s depends on the clock
        return [{k: v for k, v in json.loads(r).items() if k != "wall_s"} for r in text.splitlines()]

    assert [r for r in det(rd.metrics_path.read_text()) if r["metric"] != "tokens_per_s"] == [
        r for r in det(full) if r["metric"] != "tokens_per_s"
    ]
    # A truly finished run is still skipped.
    assert train(cfg, rd.path, cache_dir=Store(store).cache_dir, threads=1).skipped


TEXT = """
name = "text"
[data]
kind = "text"
path = "{corpus}"
[model]
n_layer = 1
d_model = 16
n_head = 2
seq_len = 16
[train]
batch_size = 8
tokens = 1280
eval_every = 5
eval_batches = 2
checkpoint_every = 5
lr = 0.01
"""


def test_edited_corpus_is_refused_on_resume(tmp_path):
    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    corpus.write_text(" ".join("".join(rng.choice(list("abcdefgh"), 5)) for _ in range(800)))
    exp = tmp_path / "text.toml"
    exp.write_text(textwrap.dedent(TEXT.format(corpus=corpus)))
    cfg = load_experiment(exp).runs[0]
    store = Store(tmp_path / "store").ensure_writable()
    rd = store.add(cfg)
    assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    corpus.write_text(corpus.read_text().upper())  # same length, other text
    out = _resume(rd, cfg, store.path)  # the stored config keeps the old fingerprint
    assert out.status == "failed" and "fingerprint" in out.error
    # Without the config's fingerprint, the checkpoint's own record catches it.
    cfg.data.fingerprint = None
    out = _resume(rd, cfg, store.path)
    assert out.status == "failed" and str(rd.checkpoint_path) in out.error and "data fingerprint" in out.error


def test_checkpoint_records_its_owner(tiny_toml, tmp_path):
    rd, cfg, _ = _tiny(tiny_toml, tmp_path, "own.toml")
    st = load_checkpoint(rd.checkpoint_path)
    assert st.run_id == rd.id and st.config_hash
    # A synthetic source's data are its config (the config hash covers them): no separate fingerprint.
    assert st.data_fingerprint is None
    # A checkpoint without owner fields (as v0.1 wrote them) stays usable: unknown is not a mismatch.
    st.run_id = st.config_hash = st.data_fingerprint = None
    save_checkpoint(rd.checkpoint_path, st)
    assert verify_checkpoint(rd.checkpoint_path, rd.id) is None


def test_metrics_shorter_than_the_checkpoint_says_restart_the_run_with_a_warning(tiny_toml, tmp_path, capsys):
    # The rows a checkpoint covers are gone (a file cut by hand or by a filesystem): resume cannot recompute
    # them from the checkpoint, and truncate() to the recorded length would pad with NUL bytes. The run
    # restarts from step 0, says so, and ends with exactly the rows of its first training.
    rd, cfg, store = _tiny(tiny_toml, tmp_path, "short.toml")
    before = rd.metrics_path.read_bytes()
    rd.metrics_path.write_bytes(before[: len(before) // 3])
    out = _resume(rd, cfg, store)
    assert out.status == "finished"
    assert "restarting the run from step 0" in capsys.readouterr().err
    assert b"\0" not in rd.metrics_path.read_bytes()
    rows = [json.loads(x) for x in rd.metrics_path.read_text().splitlines()]
    want = [json.loads(x) for x in before.decode().splitlines()]
    drop = ("wall_s",)  # clock-dependent; tokens_per_s rows too

    def keep(r):
        return {k: v for k, v in r.items() if k not in drop} if r["metric"] != "tokens_per_s" else None

    assert [keep(r) for r in rows] == [keep(r) for r in want]
    assert any("restarting" in w for w in rd.read_status().get("warnings", []))


def test_a_finished_run_without_meta_gets_it_back_from_scalescope_run(tiny_toml, tmp_path, capsys):
    # Hostile test of issue 12: `run` said "already done" and the run stayed out of every fit. Now the
    # finished run keeps its status and metrics, and only meta.json is written again (no retraining).
    rd, cfg, store = _tiny(tiny_toml, tmp_path, "meta2.toml")
    meta, rows, status = rd.read_meta(), rd.metrics_path.read_bytes(), rd.read_status()
    rd.meta_path.unlink()
    out = train(cfg, rd.path, cache_dir=Store(store).cache_dir, threads=1)
    assert out.status == "finished" and out.skipped
    assert "meta.json is missing or unreadable; rewritten" in capsys.readouterr().err
    again = rd.read_meta()
    assert {k: again[k] for k in ("params_total", "total_steps", "flops_per_token", "entropy_rate")} == {
        k: meta[k] for k in ("params_total", "total_steps", "flops_per_token", "entropy_rate")
    }
    assert rd.metrics_path.read_bytes() == rows and rd.read_status()["updated"] == status["updated"]


def test_a_damaged_config_is_rewritten_by_the_next_run_of_the_experiment(tiny_toml, tmp_path, capsys):
    # Hostile test of issue 12: a config.json that is not JSON dropped a finished run from every table,
    # although the driver holds the exact config whose hash is the run id.
    from scalescope.store import load

    rd, cfg, store = _tiny(tiny_toml, tmp_path, "cfg.toml")
    good = rd.config_path.read_bytes()
    rd.config_path.write_text('{"model": {"d_mod')
    assert rd.id not in set(load(store).runs["id"])
    Store(store).add(cfg)
    assert "rewritten from the experiment" in capsys.readouterr().err
    assert json.loads(rd.config_path.read_bytes()) == json.loads(good)
    assert rd.id in set(load(store).runs["id"]) and load(store).problems == []
