"""The emergence report panels: ICL score with prefix matching against step, regression error against k with
baselines, capabilities against scale with fits and forecasts; each renders from a store written by hand
with known numbers, and skips with its reason when the store lacks the data."""

import math

import numpy as np
import pytest

from scalescope import config as C
from scalescope.analyses.emergence import record_forecast
from scalescope.report import Context, build_sections
from scalescope.rundir import RunDir
from scalescope.store import Store, load

from .test_emergence_cli import A, fake_run, scale_store


def _ctx(path, bootstrap=5) -> Context:
    t = load(path)
    return Context(path, t.runs, t.metrics, bootstrap=bootstrap)


def _one(ctx, key):
    (sec,) = build_sections(ctx, [key])
    return sec


def test_icl_induction_panel_renders_both_scores_and_the_half_way_steps(tmp_path):
    st = Store(tmp_path / "s").ensure_writable()
    steps = [0, 20, 40, 60, 80, 100]
    fake_run(
        st,
        32,
        1e4,
        {},
        series={
            "induction/max_prefix_matching": list(zip(steps, [0.1, 0.1, 0.1, 0.8, 0.8, 0.8], strict=True)),
            "icl/score": list(zip(steps, [0.0, 0.0, 0.0, -3.0, -3.0, -3.0], strict=True)),
        },
    )
    sec = _one(_ctx(st.path), "icl_induction")
    assert sec.skipped is None, sec.skipped
    assert sec.body.count("<img") == 1
    # Table row: final prefix matching 0.800, step at 0.4 = 40 + 20·0.3/0.7 ≈ 49, both half-way steps 50.
    assert '<td class="num">0.800</td>' in sec.body and '<td class="num">49</td>' in sec.body
    assert sec.body.count('<td class="num">50</td>') == 2 and "-3.000" in sec.body


def test_icl_regression_panel_reads_the_last_steps_error_curves(tmp_path):
    st = Store(tmp_path / "s").ensure_writable()
    rid = fake_run(st, 32, 1e4, {"val_loss": 1.0})
    rd = RunDir(st.runs_dir / rid)
    k = np.arange(11, dtype=float)
    # Step 10 is older; the panel must show step 20's curves (model error 1/(1+k): 1/11 at k = 10).
    rd.save_artifact("icl_regression/error_by_k/model", 10, np.ones(11))
    rd.save_artifact("icl_regression/error_by_k/model", 20, 1 / (1 + k))
    rd.save_artifact("icl_regression/error_by_k/least_squares", 20, np.maximum(0, 1 - k / 5))
    rd.save_artifact("icl_regression/error_by_k/nearest_3", 20, np.full(11, 0.7))
    sec = _one(_ctx(st.path), "icl_regression_error")
    assert sec.skipped is None, sec.skipped
    assert sec.body.count("<img") == 1 and '<td class="num">20</td>' in sec.body
    # At k = 10: model 1/11, least squares 0, 3-NN 0.7; step 10's model error (1.000) is not shown.
    assert f"{1 / 11:.3f}" in sec.body and "0.700" in sec.body and "0.000" in sec.body
    assert "1.000" not in sec.body


def test_capability_panel_draws_both_metrics_and_a_forecast(tmp_path):
    # copy accuracy exp(-ℓ), ℓ = 30·N^-0.5: crosses 0.5 at N* = (30 / ln 2)^2 ≈ 1873 (see test_emergence_cli).
    ns = np.concatenate([np.geomspace(100, 1500, 5), np.geomspace(4000, 1e5, 3)])
    st = scale_store(tmp_path / "s", ns=ns, L=1)
    rec, created = record_forecast(st.path, "copy", 0.5, up_to=1500, bootstrap=20)
    assert created and rec["predicted"] == pytest.approx((A / math.log(2)) ** 2, rel=0.01)
    sec = _one(_ctx(st.path), "capability_scale")
    assert sec.skipped is None, sec.skipped
    assert sec.body.count("<img") == 1
    # The summary table: the copy capability over 8 runs with a verdict, and the forecast's row, pending
    # until `scalescope forecast --score` runs (the panel shows the ledger's stored score).
    assert '<td>copy</td><td class="num">8</td>' in sec.body
    assert rec["id"] in sec.body and "pending" in sec.body


def _pool_run(st: Store, m: int, fresh_model: float, pool_model: float) -> str:
    """A finished regression run with a pool of ``m`` tasks and flat error curves over k = 0 .. 3, whose k = 0
    entry (no examples: the prior's error, 1.0) the panel must leave out of its mean over k >= 1."""
    cfg = C.from_dict({"data": {"kind": "linear_regression", "dim": 3, "task_pool": m}})
    rd = st.add(cfg, experiment="fake")
    rd.write_status("finished", step=10, experiment="fake")
    curves = {
        "fresh/error_by_k/model": fresh_model,
        "fresh/error_by_k/pool_posterior": fresh_model + 0.1,
        "fresh/error_by_k/ridge": 0.25,
        "error_by_k/model": pool_model,
    }
    for name, v in curves.items():
        rd.save_artifact("icl_regression/" + name, 10, np.array([1.0, v, v, v]))
    return rd.id


def test_task_diversity_panel_puts_fresh_error_against_the_pool_size(tmp_path):
    st = Store(tmp_path / "s").ensure_writable()
    _pool_run(st, 2, fresh_model=1.3, pool_model=0.09)
    _pool_run(st, 8192, fresh_model=0.26, pool_model=0.24)
    sec = _one(_ctx(st.path), "task_diversity")
    assert sec.skipped is None, sec.skipped
    assert sec.body.count("<img") == 1
    # Rows sorted by M: M = 2 (model 1.300, dMMSE 1.400, ridge 0.250, own tasks 0.090), then M = 8,192.
    body = sec.body.replace('<td class="num">', "<td>")
    assert body.index("<td>2</td>") < body.index("<td>8192</td>")
    for v in ("1.300", "1.400", "0.250", "0.090", "0.260", "0.360", "0.240"):
        assert f"<td>{v}</td>" in body, v
    assert "1.000" not in body  # k = 0 is not averaged in


def test_panels_skip_with_reasons_on_a_plain_store(tmp_path):
    st = Store(tmp_path / "s").ensure_writable()
    fake_run(st, 32, 1e4, {"val_loss": 2.0})
    ctx = _ctx(st.path)
    reasons = {
        s.key: s.skipped
        for s in build_sections(ctx, ["icl_induction", "icl_regression_error", "task_diversity", "capability_scale"])
    }
    assert "instruments.icl" in reasons["icl_induction"]
    assert "instruments.icl_regression" in reasons["icl_regression_error"]
    assert "data.task_pool" in reasons["task_diversity"]
    assert "capability metric" in reasons["capability_scale"]


def test_run_small_multiples_share_the_y_axis(tmp_path):
    """Per-run panels (ICL score, regression error) show one quantity each: their axes share y, so the runs'
    heights compare at a glance (issue 11, item 9)."""
    from scalescope.report.panels.emergence import _run_axes

    st = Store(tmp_path / "s").ensure_writable()
    ids = [fake_run(st, d, n, {"val_loss": 1.0}) for d, n in ((16, 1e4), (32, 4e4), (64, 1.6e5), (96, 3e5))]
    fig, shown, axes = _run_axes(_ctx(st.path), ids, height=3.0)
    assert len(shown) == 4 and len(axes) == 6  # a 2 x 3 grid, smallest model first
    assert all(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes[1:])
