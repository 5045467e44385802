"""Report and forecast ledger on one tiny store (module-scoped: the runs take ~15 s)."""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from scalescope.cli import main
from scalescope.store import load

TOML = """
name = "tiny-grid"
[data]
kind = "markov"
vocab_size = 16
support = 4
[model]
n_layer = 1
n_head = 2
seq_len = 16
[train]
batch_size = 8
eval_every = 10
eval_batches = 2
lr = 0.01
[sweep]
"model.d_model" = [8, 16, 32]
"train.tokens" = [1280, 2560, 5120]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    (d / "exp.toml").write_text(TOML)
    assert main(["run", str(d / "exp.toml"), "--store", str(d / "s"), "--workers", "2", "--quiet"]) == 0
    return d / "s"


def test_report_is_self_contained_and_renders(store, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--store", str(store), "--out", str(out)]) == 0
    html = out.read_text()
    assert "<script" not in html and 'src="http' not in html and "url(http" not in html
    imgs = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) >= 3  # loss curves, L(N, D) fit, extrapolation
    for b64 in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    for title in ("Validation loss against tokens and FLOPs", "L(N, D) fit", "Checked extrapolation", "6N + 12"):
        assert title in html
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = r.stdout + r.stderr
    assert shot.exists(), log
    assert "Failed to load resource" not in log and "net::ERR" not in log
    import matplotlib.image

    px = matplotlib.image.imread(shot)[..., :3]
    assert px.std() > 0.05  # not a blank page
    assert (px.mean(-1) < 0.9).mean() > 0.02  # a real share of drawn (non-white) pixels


def test_forecast_recorded_before_target_then_scored(store, tmp_path, capsys):
    work = tmp_path / "s"
    shutil.copytree(store, work)
    runs = load(work).runs
    target = runs[(runs["model.d_model"] == 32) & (runs["train.tokens"] == 5120)].iloc[0]
    shutil.rmtree(work / "runs" / target["id"])  # the target does not exist yet
    n, d = int(target["params_nonembedding"]), int(target["tokens"])
    assert (
        main(
            [
                "forecast",
                "--store",
                str(work),
                "--target-n",
                str(n),
                "--target-d",
                str(d),
                "--bootstrap",
                "50",
                "--json",
            ]
        )
        == 0
    )
    rec = json.loads(capsys.readouterr().out)
    assert rec["target"]["N"] == n and rec["target"]["D"] == d
    assert not rec.get("target_existed")
    assert len(rec["fitted_on"]) == 8 and target["id"] not in rec["fitted_on"]
    lo, hi = rec["interval"]
    assert lo <= rec["predicted"] <= hi
    # Nothing to score yet.
    assert main(["forecast", "--store", str(work), "--score", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 1 and recs[0].get("score") is None
    # Now the target run exists (same content hash) and the forecast can be scored.
    shutil.copytree(store / "runs" / target["id"], work / "runs" / target["id"])
    stamps = []
    for _ in range(2):  # idempotent: the second scoring changes nothing
        assert main(["forecast", "--store", str(work), "--score", "--json"]) == 0
        recs = json.loads(capsys.readouterr().out)
        assert len(recs) == 1
        s = recs[0]["score"]
        assert s["observed"] == pytest.approx(target["final_val_loss"])
        assert s["covered"] == bool(lo <= s["observed"] <= hi)
        assert np.isclose(s["rel_error"], (rec["predicted"] - s["observed"]) / s["observed"])
        stamps.append(s["scored_at"])
    assert stamps[0] == stamps[1]


def test_forecast_bad_input(tmp_path, capsys):
    assert main(["forecast", "--store", str(tmp_path / "none"), "--target-n", "1e6", "--target-d", "1e7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
