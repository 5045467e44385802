"""Abrupt transitions, the metric-robustness test (Schaeffer et al. 2023) and crossing forecasts, each
against synthetic data with a known answer."""

import json
import math
import types

import numpy as np
import pandas as pd
import pytest

from scalescope.analyses.transitions import detect_transition, exact_match_link, metric_robustness
from scalescope.errors import FitError, NotFittedError
from scalescope.forecast.crossing import (
    crossing_record,
    forecast_crossing,
    implied_metric,
    link_from_record,
    observed_crossing,
    record_crossing_forecast,
    score_crossing,
)
from scalescope.laws.sigmoid import SigmoidLaw, width_decades

X = np.geomspace(1e3, 1e10, 22)


def sigmoid(x, lo, hi, x0, w):
    return lo + (hi - lo) / (1 + np.exp(-(np.log(x) - np.log(x0)) / w))


def test_sigmoid_law_recovers_parameters_and_follows_the_contract():
    rng = np.random.default_rng(1)
    y = sigmoid(X, 0.05, 0.9, 1e6, 0.6) + rng.normal(0, 0.02, X.size)
    law = SigmoidLaw(bootstrap=100, random_state=0)
    assert law.fit(X, y) is law
    assert law.params_["x0"] == pytest.approx(1e6, rel=0.5)
    assert law.params_["w"] == pytest.approx(0.6, rel=0.3)
    for name, true in {"lo": 0.05, "hi": 0.9, "x0": 1e6, "w": 0.6}.items():
        lo, hi = law.ci_[name]
        assert lo <= true <= hi, (name, lo, hi)
    assert law.width_decades_ == pytest.approx(width_decades(law.params_["w"]))
    assert width_decades(1.0) == pytest.approx(2 * math.log(9) / math.log(10))
    assert law.r2_ > 0.98 and law.rmse_ < 0.03
    lo, hi = law.predict_interval(X, kind="prediction")
    assert np.mean((lo <= y) & (y <= hi)) > 0.8
    assert law.clone().get_params() == law.get_params()
    with pytest.raises(NotFittedError):
        SigmoidLaw().predict(X)


@pytest.mark.parametrize(
    ("x", "y", "msg"),
    [
        (X[:4], np.zeros(4), "at least 5 points"),
        (-X, np.zeros(X.size), "must be positive"),
        (X, np.where(np.arange(X.size) == 3, np.nan, 0.5), "NaN"),
        (np.repeat(X[:3], 2), np.arange(6.0), "distinct"),
    ],
)
def test_sigmoid_law_bad_input(x, y, msg):
    with pytest.raises(FitError, match=msg):
        SigmoidLaw(bootstrap=0).fit(x, y)


def test_detects_a_sigmoid_and_recovers_where_and_how_wide():
    rng = np.random.default_rng(0)
    y = sigmoid(X, 0.05, 0.9, 1e6, 0.6) + rng.normal(0, 0.02, X.size)
    t = detect_transition(X, y, bootstrap=100, random_state=0)
    assert t.abrupt, t.reason
    assert t.direction == "increasing"
    assert t.x0_ci[0] <= 1e6 <= t.x0_ci[1]
    assert t.width_ci[0] <= width_decades(0.6) <= t.width_ci[1]
    assert t.gain > 3
    assert json.dumps(t.as_dict())


def test_a_power_law_is_not_a_transition():
    rng = np.random.default_rng(0)
    loss = 1.7 + 30 * X**-0.3 * np.exp(rng.normal(0, 0.01, X.size))
    t = detect_transition(X, loss, holdout="interleaved", bootstrap=20, random_state=0)
    assert not t.abrupt
    assert t.direction == "decreasing"
    assert "better than the smooth trend" in t.reason or "wide" in t.reason


def test_detect_transition_bad_input():
    with pytest.raises(FitError, match="at least 6 points"):
        detect_transition(X[:5], np.ones(5))
    with pytest.raises(FitError, match="above the ceiling"):
        detect_transition(X, np.linspace(0, 1.5, X.size), direction="increasing")
    with pytest.raises(ValueError, match="holdout"):
        detect_transition(X, np.linspace(0, 1, X.size), holdout="kfold")  # type: ignore[arg-type]


# Schaeffer et al. 2023: per-token loss falls as a power law; exact match of L tokens is exp(-L·loss).
XS = np.geomspace(1e1, 1e9, 22)
L_TOKENS = 10


def _artifact(seed=0):
    rng = np.random.default_rng(seed)
    loss = (XS / 1e2) ** -0.6 * np.exp(rng.normal(0, 0.01, XS.size))
    acc = np.clip(np.exp(-L_TOKENS * loss) + rng.normal(0, 0.01, XS.size), 0, 1)
    return loss, acc


def test_exact_match_of_a_smooth_loss_is_a_metric_artifact():
    loss, acc = _artifact()
    r = metric_robustness(XS, acc, loss, bootstrap=20, random_state=0)
    assert r.discontinuous.abrupt, r.discontinuous.reason
    assert r.verdict == "metric artifact", r.reason
    assert r.continuous is not None and not r.continuous.abrupt


def test_both_metrics_jump_is_real():
    rng = np.random.default_rng(2)
    acc = sigmoid(XS, 0.0, 0.95, 1e5, 0.5) + rng.normal(0, 0.01, XS.size)
    loss = sigmoid(XS, 3.0, 0.5, 1e5, 0.5) + rng.normal(0, 0.02, XS.size)
    r = metric_robustness(XS, np.clip(acc, 0, 1), loss, bootstrap=20, random_state=0)
    assert r.verdict == "real", r.reason
    assert "same scale" in r.reason


def test_a_smooth_accuracy_has_no_jump():
    acc = 1 - 0.9 * (XS / XS[0]) ** -0.08
    r = metric_robustness(XS, acc, -np.log(acc), bootstrap=0)
    assert r.verdict == "no jump" and r.continuous is None


def test_forecast_crossing_from_small_runs_brackets_the_true_crossing():
    loss, acc = _artifact()
    true = 1e2 * (math.log(2) / L_TOKENS) ** (-1 / 0.6)  # exp(-L·loss) = 0.5
    fc = forecast_crossing(XS, loss, 0.5, link=exact_match_link(L_TOKENS), fit_below=1e3, bootstrap=200, random_state=0)
    assert fc.fit_max_x <= 1e3 < true  # an extrapolation
    assert fc.interval[0] <= true <= fc.interval[1]
    assert fc.x_cross == pytest.approx(true, rel=0.2)
    assert fc.fraction_crossing > 0.9
    # The two forms of the exact-match link agree: p^L with p = exp(-loss).
    assert exact_match_link(L_TOKENS, of="prob")(np.exp(-loss)) == pytest.approx(exact_match_link(L_TOKENS)(loss))
    assert observed_crossing(XS, acc, 0.5) == pytest.approx(true, rel=0.3)


def test_a_crossing_forecast_whose_resamples_all_fail_says_so(monkeypatch):
    # Issue 11: every bootstrap resample of the trend failing made np.percentile raise on an empty array.
    from scalescope.laws.power import SaturatingPowerLaw

    def fail(self, X, y, p0):
        raise RuntimeError("injected: this resample cannot be fitted")

    monkeypatch.setattr(SaturatingPowerLaw, "_refit", fail)
    loss, _ = _artifact()
    fc = forecast_crossing(XS, loss, 0.5, link=exact_match_link(L_TOKENS), fit_below=1e3, bootstrap=20, random_state=0)
    assert math.isfinite(fc.x_cross) and all(math.isnan(v) for v in fc.interval)
    assert fc.verdict == "unidentified" and "every bootstrap resample" in fc.reason
    rec = crossing_record(fc, x_column="params_nonembedding", metric="final_exact_match", continuous_metric="loss")
    assert rec["interval"] == [None, None] and not rec["informative"]
    json.dumps(rec, allow_nan=False)  # strict JSON, as the ledger writes it
    _, acc = _artifact()
    assert score_crossing(rec, XS, acc)["status"] == "uninformative"


def test_a_wide_crossing_interval_is_uninformative_not_covered():
    # Half a decade either way (INFORMATIVE_DECADES): an interval [1e3, 1e5] has half-width 1 decade.
    from scalescope.forecast.crossing import INFORMATIVE_DECADES, crossing_verdict, half_width_decades

    assert half_width_decades((1e3, 1e5)) == pytest.approx(1.0)
    assert INFORMATIVE_DECADES < 1.0
    rec = {"threshold": 0.5, "fit_max_x": 1e2, "predicted": 1e4, "interval": [1e3, 1e5], "rising": True}
    x = np.array([1e2, 1e3, 1e4, 1e5])
    s = score_crossing(rec, x, np.array([0.1, 0.3, 0.7, 0.9]))
    assert s["inside"] and not s["informative"] and s["status"] == "uninformative" and not s["covered"]
    assert crossing_verdict("ok", 100, 1.0, 1.0)[0] == "weak"
    assert crossing_verdict("ok", 100, 1.0, 0.2)[0] == "ok"
    assert crossing_verdict("ok", 100, 0.5, math.inf)[0] == "weak"


def test_forecast_crossing_bad_input():
    with pytest.raises(FitError, match="only 2 runs"):
        forecast_crossing(XS, np.linspace(3, 1, XS.size), 0.5, link=exact_match_link(3), fit_below=XS[1])
    with pytest.raises(FitError, match="NaN"):
        forecast_crossing(XS, np.full(XS.size, np.nan), 0.5, link=exact_match_link(3))
    with pytest.raises(ValueError, match="n_tokens"):
        exact_match_link(0)


def test_crossing_forecast_is_recorded_once_and_scored_when_larger_runs_exist(tmp_path, monkeypatch):
    loss, acc = _artifact()
    fc = forecast_crossing(XS, loss, 0.5, link=exact_match_link(L_TOKENS), fit_below=1e3, bootstrap=50, random_state=0)
    opts = dict(
        x_column="params_nonembedding",
        metric="final_exact_match",
        continuous_metric="final_val_loss",
        fitted_on=["a", "b"],
        link="exact_match_10",
    )
    rec, created = record_crossing_forecast(tmp_path, fc, **opts)
    assert created and (tmp_path / "forecasts" / f"{rec['id']}.json").is_file()
    again, created = record_crossing_forecast(tmp_path, fc, **opts)
    assert not created and again["id"] == rec["id"] == crossing_record(fc, **opts)["id"]

    small = XS <= 1e3
    assert score_crossing(rec, XS[small], acc[small]) is None  # no larger run yet
    s = score_crossing(rec, XS, acc)
    assert s["covered"] and abs(s["log10_error"]) < 0.1
    never = score_crossing(rec, XS, np.zeros(XS.size))  # runs past the interval, never crossed
    assert never["observed"] is None and not never["covered"]
    unbounded = {**rec, "predicted": None, "interval": [rec["interval"][0], None]}  # "never", as JSON stores it
    u = score_crossing(unbounded, XS, acc)
    # Inside an open-ended interval is no success: it says nothing about where the crossing is.
    assert u["inside"] and not u["covered"] and u["status"] == "uninformative" and u["rel_error"] is None
    assert s["status"] == "covered" and s["informative"]

    # Through the ledger's own scorer (``scalescope forecast --score``), on a fake store's runs table.
    from scalescope.cli.forecast import _print_scores
    from scalescope.forecast import ledger

    runs = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(XS.size)],
            "status": "finished",
            "params_nonembedding": XS,
            "final_exact_match": acc,
            "final_val_loss": loss,
            "params_total": XS,
            "tokens": 1e6,
            "flops": 1e12,
        }
    )
    monkeypatch.setattr(ledger, "load", lambda store: types.SimpleNamespace(runs=runs))
    recs = ledger.score_store(tmp_path)
    assert recs[0]["score"]["covered"] and len(recs[0]["score"]["observed_runs"]) == XS.size
    on_disk = json.loads((tmp_path / "forecasts" / f"{rec['id']}.json").read_text())
    assert on_disk["score"]["observed"] == pytest.approx(s["observed"])
    _print_scores(recs)  # the ledger's table prints these records too


def test_command_line_across_scale(monkeypatch, capsys):
    import scalescope.store
    from scalescope.cli import main

    loss, acc = _artifact()
    runs = pd.DataFrame(
        {
            "id": range(XS.size),
            "status": "finished",
            "params_nonembedding": XS,
            "final_exact_match": acc,
            "final_val_loss": loss,
        }
    )
    monkeypatch.setattr(scalescope.store, "load", lambda store: types.SimpleNamespace(runs=runs))
    argv = ["emergence", "--store", "S", "--metric", "final_exact_match", "--continuous", "final_val_loss"]
    assert main([*argv, "--bootstrap", "20"]) == 0
    assert capsys.readouterr().out.startswith("metric artifact:")
    assert main(["emergence", "--store", "S", "--metric", "final_accuracy"]) == 2
    assert "no runs-table column(s) final_accuracy" in capsys.readouterr().err


def test_a_crossing_record_rebuilds_its_link_and_curve():
    # A record carries its link as data and its trend's parameters, so the forecast curve link(trend(x)) can
    # be drawn without re-implementing either; records written before link_spec existed parse their text.
    loss, _ = _artifact()
    fc = forecast_crossing(XS, loss, 0.5, link=exact_match_link(L_TOKENS), fit_below=1e3, bootstrap=20, random_state=0)
    spec = {"name": "exact_match", "n_tokens": L_TOKENS, "of": "loss", "sign": 1.0}
    opts = dict(x_column="params_nonembedding", metric="final_exact_match", continuous_metric="final_val_loss")
    rec = json.loads(json.dumps(crossing_record(fc, link=f"exp(-{L_TOKENS}·(val_loss))", link_spec=spec, **opts)))
    assert rec["link_spec"] == spec and rec["trend_direction"] == "decreasing"
    p = rec["trend_params"]
    expected = np.exp(-L_TOKENS * (p["E"] + p["A"] * XS ** (-p["alpha"])))
    np.testing.assert_allclose(link_from_record(rec)(loss), exact_match_link(L_TOKENS)(loss))
    np.testing.assert_allclose(implied_metric(rec, XS), expected)
    # The crossing of the rebuilt curve is the prediction (to the forecast's 4,001-point grid).
    cross = XS[np.argmax(implied_metric(rec, XS) >= 0.5)]
    assert fc.x_cross <= cross and implied_metric(rec, [fc.x_cross])[0] == pytest.approx(0.5, abs=1e-2)
    # An old record: the link only as text (a log-probability twin: its sign inside), no trend direction.
    old = {k: v for k, v in rec.items() if k not in ("link_spec", "trend_direction", "trend_bound")}
    old["link"] = f"exp(-{L_TOKENS}·(-induction/copy_logprob))"
    np.testing.assert_allclose(implied_metric(old, XS), expected)
    assert link_from_record({**old, "link": "exact_match_10"}) is None  # a link the code never wrote
    assert implied_metric({**old, "trend_params": {}}, XS) is None
    # The new fields are not part of the id: the same forecast recorded before they existed keeps its id.
    assert rec["id"] == crossing_record(fc, link=f"exp(-{L_TOKENS}·(val_loss))", **opts)["id"]
