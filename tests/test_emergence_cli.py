"""``scalescope emergence``: per-run phase changes, transitions over scale with the metric-robustness test,
and crossing forecasts recorded in the ledger and scored by ``scalescope forecast --store DIR --score``, on stores
written by hand with a known answer (Schaeffer et al. 2023's model: a per-token loss falling as a power
law, a discontinuous metric exp(-L·loss))."""

import dataclasses
import json
import math

import numpy as np
import pytest

from scalescope import config as C
from scalescope.analyses.emergence import analyze, capability, record_forecast
from scalescope.cli import main as cli_main
from scalescope.store import Store, load

# Ground truth of the synthetic capability: copy loss ℓ(N) = A·N^-α (so copy log-prob = -ℓ) and copy
# accuracy exp(-L·ℓ) with L = 10 (abrupt in log N although ℓ is smooth: a metric artifact).
A, ALPHA, L_ABRUPT = 30.0, 0.5, 10
NS = np.geomspace(100, 1e6, 9)


def loss_of(n):
    return A * np.asarray(n, float) ** -ALPHA


def fake_run(
    store: Store,
    d_model: int,
    n: float,
    finals: dict[str, float],
    *,
    steps: int = 100,
    series: dict[str, list[tuple[int, float]]] | None = None,
    state: str = "finished",
) -> str:
    """A run directory written by hand: config (d_model sets the id), meta (N, tokens per step), status,
    and metrics.jsonl with ``finals`` at the last step (plus ``series`` of (step, value))."""
    cfg = C.RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=d_model, n_head=1))
    rd = store.add(cfg, experiment="fake")
    tps = cfg.train.batch_size * cfg.model.seq_len
    (rd.path / "meta.json").write_text(
        json.dumps(
            {
                "params_total": n * 1.5,
                "params_embedding": n * 0.5,
                "params_nonembedding": n,
                "flops_per_token": 6 * n,
                "tokens_per_step": tps,
                "total_steps": steps,
            }
        )
    )
    rows = [
        {"step": s, "tokens": s * tps, "flops": 6.0 * n * s * tps, "wall_s": 0.1 * s, "metric": m, "value": v}
        for m, pts in (series or {}).items()
        for s, v in pts
    ]
    rows += [
        {
            "step": steps,
            "tokens": steps * tps,
            "flops": 6.0 * n * steps * tps,
            "wall_s": 0.1 * steps,
            "metric": m,
            "value": v,
        }
        for m, v in finals.items()
    ]
    if state == "finished" and "val_loss" not in finals:
        # A finished run has evaluated its last step (the store checks a finished status against it).
        last = {"step": steps, "tokens": steps * tps, "flops": 6.0 * n * steps * tps, "wall_s": 0.1 * steps}
        rows.append({**last, "metric": "val_loss", "value": 2.0})
    rd.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rd.write_status(state, step=steps, experiment="fake")
    return rd.id


def scale_store(path, ns=NS, L=L_ABRUPT, noise=0.0, seed=0) -> Store:
    """One finished run per N with copy log-prob -ℓ(N) and copy accuracy exp(-L·ℓ(N)) (+ noise)."""
    rng = np.random.default_rng(seed)
    st = Store(path).ensure_writable()
    for i, n in enumerate(ns):
        ell = loss_of(n) * math.exp(rng.normal(0, noise))
        acc = float(np.clip(math.exp(-L * ell) + rng.normal(0, noise), 0, 1))
        fake_run(
            st,
            8 + 4 * i,
            float(n),
            {"induction/copy_accuracy": acc, "induction/copy_logprob": -ell, "val_loss": 1.0 + ell},
        )
    return st


def test_capability_names_resolve():
    assert capability("final_induction/copy_accuracy").name == "copy"
    assert capability("copy").continuous == "induction/copy_logprob"
    assert capability("induction/copy_logprob", twin=True).metric == "induction/copy_accuracy"
    assert capability("induction/copy_logprob") is None  # a twin is not a metric to forecast
    assert capability("no/such") is None


def test_scale_analysis_finds_the_metric_artifact_and_json_shape(tmp_path, capsys):
    st = scale_store(tmp_path / "s")
    # A pending run is left out of the analysis (only finished runs count).
    fake_run(st, 200, 5e6, {"induction/copy_accuracy": 0.0, "induction/copy_logprob": -9.0}, state="running")
    assert cli_main(["emergence", "--store", str(st.path), "--json", "--bootstrap", "20"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"store", "threshold", "runs", "scale", "steps", "forecasts"} and res["steps"] == []
    (entry,) = res["scale"]
    assert entry["x"] == "params_nonembedding" and entry["group"] == {}
    (cap,) = entry["capabilities"]  # only the copy metrics were logged
    assert cap["capability"] == "copy" and cap["n_runs"] == len(NS)
    # exp(-10·30·N^-0.5) has its midpoint where ℓ = ln 2 / 10: N = (A·L / ln 2)^2 ≈ 1.9e5; the sigmoid's x0 is
    # within a factor 2 of that (the curve is not a logistic, so not exactly).
    x0_true = (A * L_ABRUPT / math.log(2)) ** 2
    t = cap["transition"]
    assert t["abrupt"] and x0_true / 2 < t["x0"] < 2 * x0_true, t
    assert t["x0_ci"][0] <= t["x0"] <= t["x0_ci"][1] and t["width_decades"] > 0
    assert cap["verdict"] == "metric artifact", cap["reason"]
    assert cap["continuous_transition"]["abrupt"] is False
    # The smooth trend of -log-prob recovers the power law exactly (noise-free data).
    assert cap["continuous_transition"]["smooth"]["alpha"] == pytest.approx(ALPHA, rel=1e-3)


def test_groups_split_runs_by_what_varies_other_than_scale(tmp_path, capsys):
    st = scale_store(tmp_path / "s", ns=NS[:3])
    # Three more runs that differ in the learning rate: two groups of three, each too small to fit.
    for i, n in enumerate(NS[3:6]):
        cfg = C.RunConfig()
        cfg = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, lr=1e-2),
            model=dataclasses.replace(cfg.model, d_model=100 + 4 * i, n_head=1),
        )
        rd = st.add(cfg)
        (rd.path / "meta.json").write_text(
            json.dumps({"params_nonembedding": float(n), "tokens_per_step": 10, "flops_per_token": 6.0 * n})
        )
        rd.metrics_path.write_text(
            json.dumps(
                {
                    "step": 5,
                    "tokens": 50,
                    "flops": 1.0,
                    "wall_s": 1.0,
                    "metric": "induction/copy_accuracy",
                    "value": 0.5,
                }
            )
            + "\n"
        )
        rd.write_status("finished", step=5)
    res = analyze(st.path, bootstrap=10)
    groups = sorted(e["group"]["train.lr"] for e in res["scale"])
    assert len(groups) == 2 and groups[1] == pytest.approx(1e-2)
    for e in res["scale"]:
        (cap,) = e["capabilities"]
        assert "needs 6" in cap["error"] and cap["n_runs"] == 3


def test_forecast_is_recorded_then_scored_by_the_ledger(tmp_path, capsys):
    # The crossing of copy accuracy exp(-ℓ) (L = 1, the copy capability's link) through 0.5: ℓ = ln 2,
    # N* = (A / ln 2)^2 ≈ 1873. Fitted on the 5 runs with N <= 1300 (all below N*), scored on the rest.
    st = scale_store(tmp_path / "s", ns=np.geomspace(100, 1e5, 12), L=1)
    n_true = (A / math.log(2)) ** 2
    argv = [
        "emergence",
        "--store",
        str(st.path),
        "--forecast",
        "induction/copy_accuracy",
        "--threshold",
        "0.5",
        "--x",
        "params_nonembedding",
        "--up-to",
        "1300",
        "--bootstrap",
        "50",
        "--json",
    ]
    assert cli_main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["kind"] == "emergence_crossing" and rec["n_points"] == 5 and rec["fit_max_x"] < n_true
    assert rec["metric"] == "final_induction/copy_accuracy"
    assert rec["continuous_metric"] == "final_induction/copy_logprob"
    # Noise-free power law: the forecast is exact up to the 4,001-point search grid (~0.002 decades).
    assert rec["predicted"] == pytest.approx(n_true, rel=0.01)
    assert rec["interval"] == pytest.approx([rec["predicted"]] * 2, rel=0.01)  # no noise: no spread
    # Recording the same forecast again is a no-op (same content, same id).
    assert cli_main(argv[:-1]) == 0 and "was already recorded" in capsys.readouterr().out
    assert len(list((st.path / "forecasts").glob("*.json"))) == 1
    # Scored by the ledger's own command: the observed crossing interpolates between the runs bracketing
    # N* in log N, whose error at this spacing (0.27 decades, a curved exp(-ℓ)) is under 5%.
    assert cli_main(["forecast", "--store", str(st.path), "--score", "--json"]) == 0
    (scored,) = json.loads(capsys.readouterr().out)
    s = scored["score"]
    assert s["observed"] == pytest.approx(n_true, rel=0.05)
    assert abs(s["log10_error"]) < 0.03 and len(s["observed_runs"]) == 12


def test_forecast_waits_for_larger_runs(tmp_path, capsys):
    st = scale_store(tmp_path / "s", ns=np.geomspace(100, 1000, 6), L=1)
    assert (
        cli_main(
            ["emergence", "--store", str(st.path), "--forecast", "copy", "--threshold", "0.5", "--bootstrap", "20"]
        )
        == 0
    )
    assert "reaches 0.5" in capsys.readouterr().out
    assert cli_main(["forecast", "--store", str(st.path), "--score", "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["score"] is None  # no run is larger than the largest fitted one
    # The analysis lists the record, unscored; the text form gives each capability's verdict and interval.
    assert cli_main(["emergence", "--store", str(st.path), "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert f"forecast {rec['id']}" in out and "not scored yet" in out
    assert "induction/copy_accuracy (continuous: induction/copy_logprob): " in out
    assert "x0 " in out and "decades" in out
    assert cli_main(["emergence", "--store", str(st.path), "--bootstrap", "5", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["forecasts"]] == [rec["id"]]


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["--forecast", "no/such_metric", "--threshold", "0.5"], "unknown metric 'no/such_metric'"),
        (["--forecast", "copy"], "--threshold"),
        (["--forecast", "copy", "--threshold", "0.5", "--up-to", "300"], "the forecast needs at least 5"),
        (["--forecast", "final_val_loss", "--threshold", "0.5"], "no known continuous twin"),
        (["--forecast", "exact_match", "--threshold", "0.5"], "no run logged exact_match"),
        (["--metric", "final_nope"], "no runs-table column(s) final_nope"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, msg):
    st = scale_store(tmp_path / "s", ns=NS[:6], L=1)
    assert cli_main(["emergence", "--store", str(st.path), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err


def test_missing_store_and_too_few_runs(tmp_path, capsys):
    assert cli_main(["emergence", "--store", str(tmp_path / "nope")]) == 2
    assert "no such store" in capsys.readouterr().err
    st = scale_store(tmp_path / "s", ns=NS[:2])
    assert cli_main(["emergence", "--store", str(st.path), "--json"]) == 0  # the analysis reports, it does not fail
    (entry,) = json.loads(capsys.readouterr().out)["scale"]
    assert "needs 6" in entry["capabilities"][0]["error"]
    assert len(load(st.path).runs) == 2


def test_phase_rows_from_step_series(tmp_path, capsys):
    # A prefix-matching score that jumps from 0.1 to 0.8 between steps 40 and 60, and an ICL score that
    # drops from 0 to -3 at the same steps: both half-way steps are 50 (linear interpolation).
    st = Store(tmp_path / "s").ensure_writable()
    steps = [0, 20, 40, 60, 80, 100]
    pm = [0.1, 0.1, 0.1, 0.8, 0.8, 0.8]
    icl = [0.0, 0.0, 0.0, -3.0, -3.0, -3.0]
    fake_run(
        st,
        32,
        1e4,
        {},
        series={
            "induction/max_prefix_matching": list(zip(steps, pm, strict=True)),
            "icl/score": list(zip(steps, icl, strict=True)),
        },
    )
    assert cli_main(["emergence", "--store", str(st.path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert row["d_model"] == 32 and row["induction_transition_step"] == pytest.approx(50)
    assert row["icl_transition_step"] == pytest.approx(50) and row["transition_gap"] == pytest.approx(0)
    # prefix matching crosses 0.4 at 40 + 20·(0.3/0.7)
    assert row["induction_step"] == pytest.approx(40 + 20 * 0.3 / 0.7)
    # The per-run rows alone (what the removed ``python -m scalescope.emergence --json`` printed).
    assert cli_main(["emergence", "--store", str(st.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["id"] == row["id"]
    assert record_forecast  # imported for the API surface


def test_transitions_over_training_steps(tmp_path, capsys):
    # Copy accuracy and log-prob of one finished run over log-spaced steps 1..4096: a logistic in log step
    # with midpoint 500 and scale 0.15 (both metrics jump: a real transition, as an induction-head phase
    # change is), plus a run in progress that the step analysis leaves out.
    st = Store(tmp_path / "s").ensure_writable()
    steps = 2 ** np.arange(13)
    s = 1 / (1 + np.exp(-(np.log(steps) - math.log(500)) / 0.15))
    acc, lp = 0.02 + 0.85 * s, -4.1 + 3.6 * s
    rid = fake_run(
        st,
        32,
        1e4,
        {},
        steps=int(steps[-1]),
        series={
            "induction/copy_accuracy": list(zip(steps.tolist(), acc, strict=True)),
            "induction/copy_logprob": list(zip(steps.tolist(), lp, strict=True)),
        },
    )
    fake_run(
        st,
        16,
        3e3,
        {},
        steps=8,
        state="running",
        series={"induction/copy_accuracy": [(int(k), 0.02) for k in steps[:4]]},
    )
    assert cli_main(["emergence", "--store", str(st.path), "--steps", "--json", "--bootstrap", "20"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["steps"]
    assert entry["id"] == rid and entry["x"] == "step"
    (cap,) = entry["capabilities"]
    assert cap["verdict"] == "real", cap["reason"]
    # Noise-free logistic: the midpoint is recovered within the spacing of the evaluations (factor 2).
    assert 250 < cap["transition"]["x0"] < 1000 and cap["transition"]["width_decades"] < 0.5
    assert cap["n_runs"] == 13  # the 13 evaluations (the name is shared with the scale analysis)
