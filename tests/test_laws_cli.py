"""``scalescope fit ...`` run in-process through argparse: the JSON contract and one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from scalescope.cli import build_parser, main
from scalescope.cli.fit import run_fit
from scalescope.laws import chinchilla_loss

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    args = build_parser().parse_args(argv)
    assert args.fn is run_fit
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def chin_csv(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    Ng, Dg = np.meshgrid(np.logspace(7, 10, 10), np.logspace(9, 12, 10))
    N, D = Ng.ravel(), Dg.ravel()
    loss = chinchilla_loss(N, D, **TRUE) * np.exp(rng.normal(0, 0.005, N.size))
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    pd.DataFrame({"n": N, "tokens": D, "flops": 6 * N * D, "val_loss": loss, "name": "run"}).to_csv(path, index=False)
    return str(path)


def test_fit_chinchilla_json(chin_csv: str, capsys) -> None:
    argv = ["fit", "chinchilla", "--csv", chin_csv, "--n", "n", "--d", "tokens", "--loss", "val_loss"]
    rc, out, err = _run([*argv, "--bootstrap", "100", "--seed", "3", "--grid", "coarse", "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert {"E", "A", "B", "alpha", "beta", "ci", "n_points", "r2", "rmsle", "compute_optimal", "varpro"} <= set(res)
    assert res["n_points"] == 100 and set(res["ci"]) == {"E", "A", "B", "alpha", "beta"}
    # 100 points with 0.5% noise: relative s.d. ~0.8% (E), 1.3% (alpha), 2.3% (beta), scaled from the
    # simulation in test_laws_chinchilla.py by noise and sqrt(n); tolerances ~4 s.d.
    for k, tol in (("E", 0.03), ("alpha", 0.05), ("beta", 0.1)):
        assert res[k] == pytest.approx(TRUE[k], rel=tol), k
        lo, hi = res["ci"][k]
        assert lo <= res[k] <= hi
    assert res["compute_optimal"]["a"] == pytest.approx(res["beta"] / (res["alpha"] + res["beta"]))
    assert res["varpro"]["agrees"] is True and res["agrees"] is True
    assert res["bootstrap"] == 100

    # With --flops, D = C/(6N) reproduces the tokens column exactly, so the fit is the same.
    argv_c = ["fit", "chinchilla", "--csv", chin_csv, "--n", "n", "--flops", "flops", "--loss", "val_loss"]
    rc, out_c, _ = _run([*argv_c, "--bootstrap", "0", "--grid", "coarse", "--json"], capsys)
    assert rc == 0
    res_c = json.loads(out_c)
    for k in TRUE:
        assert res_c[k] == pytest.approx(res[k], rel=1e-6)
    assert res_c["ci"]["E"] == [None, None]  # no bootstrap: NaN becomes JSON null


def test_fit_chinchilla_holdout_and_text(chin_csv: str, capsys) -> None:
    argv = ["fit", "chinchilla", "--csv", chin_csv, "--n", "n", "--d", "tokens", "--loss", "val_loss"]
    rc, out, _ = _run([*argv, "--bootstrap", "0", "--grid", "coarse", "--holdout-largest", "5", "--json"], capsys)
    h = json.loads(out)["holdout"]
    # 0.5% noise, extrapolating only within the grid's far corner: errors at the noise level (< 2%).
    assert rc == 0 and h["k"] == 5 and h["max_abs_rel_error"] < 0.02
    rc, out, _ = _run([*argv, "--bootstrap", "0", "--grid", "coarse"], capsys)
    assert rc == 0 and "alpha" in out and "variable projection: agree" in out


def test_fit_power_json(tmp_path, capsys) -> None:
    x = np.logspace(6, 10, 20)
    path = tmp_path / "p.csv"
    pd.DataFrame({"steps": x, "loss": 1.8 + 200.0 * x**-0.3, "pure": 50 * x**-0.2}).to_csv(path, index=False)
    rc, out, _ = _run(["fit", "power", "--csv", str(path), "--x", "steps", "--y", "pure", "--json"], capsys)
    res = json.loads(out)
    assert rc == 0 and res["law"] == "power"
    assert res["alpha"] == pytest.approx(0.2, rel=1e-9) and res["A"] == pytest.approx(50, rel=1e-9)
    argv = ["fit", "power", "--csv", str(path), "--x", "steps", "--y", "loss", "--offset", "--bootstrap", "50"]
    rc, out, _ = _run([*argv, "--json"], capsys)
    res = json.loads(out)
    assert rc == 0 and res["law"] == "saturating_power"
    assert res["E"] == pytest.approx(1.8, rel=1e-6) and res["alpha"] == pytest.approx(0.3, rel=1e-6)


def test_fit_bnsl_predictions_and_fit_max(tmp_path, capsys) -> None:
    x = np.logspace(1, 8, 71)
    y = 0.5 + 2.0 * x**-0.1 * (1 + (x / 1e4) ** (1 / 0.3)) ** (-0.5 * 0.3)
    path = tmp_path / "b.csv"
    pd.DataFrame({"x": x, "err": y}).to_csv(path, index=False)
    argv = ["fit", "bnsl", "--csv", str(path), "--x", "x", "--y", "err", "--breaks", "1", "--fit-max", "1e7"]
    rc, out, err = _run([*argv, "--predict", "1e8,3e8", "--bootstrap", "30", "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["n_points"] == int(np.sum(x <= 1e7)) == 61
    assert set(res["predictions"]) == {"1e8", "3e8"}
    for key, xv in (("1e8", 1e8), ("3e8", 3e8)):
        truth = 0.5 + 2.0 * xv**-0.1 * (1 + (xv / 1e4) ** (1 / 0.3)) ** (-0.5 * 0.3)
        assert res["predictions"][key] == pytest.approx(truth, rel=1e-4)  # noiseless: exact model
        lo, hi = res["prediction_intervals"][key]
        assert lo <= res["predictions"][key] <= hi


def _one_error_line(rc: int, out: str, err: str) -> str:
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("table", "cols", "expect"),
    [
        (None, ("n", "d", "loss"), "no such file"),
        (
            {"n": [1e7, 1e8], "d": [1e9, 1e9], "loss": [3, 2]},
            ("n", "tokens", "loss"),
            "column 'tokens' not in .*; available: n, d, loss",
        ),
        (
            {"n": [1e7, 1e8, 1e9], "d": [1e9, 1e9, 1e9], "loss": [3, "abc", 2]},
            ("n", "d", "loss"),
            "column 'loss' has a non-numeric value 'abc' at line 3",
        ),
        (
            {"n": [1e7, 0, 1e9], "d": [1e9, 1e9, 1e9], "loss": [3, 2, 2]},
            ("n", "d", "loss"),
            "column 'n' must be positive",
        ),
        (
            {"n": [1e7, 1e8, 1e9], "d": [1e9, 1e9, 1e9], "loss": [3, 2.5, 2]},
            ("n", "d", "loss"),
            "need at least 6 points to fit 5 parameters, got 3",
        ),
        (
            {"n": [1e7, 1e8, 1e9], "d": [1e9, None, 1e9], "loss": [3, 2.5, 2]},
            ("n", "d", "loss"),
            "column 'd' has a missing or infinite value at line 3",
        ),
    ],
)
def test_chinchilla_bad_input_is_one_line(tmp_path, capsys, table, cols, expect: str) -> None:
    path = tmp_path / "t.csv"
    if table is not None:
        pd.DataFrame(table).to_csv(path, index=False)
    n, d, loss = cols
    argv = ["fit", "chinchilla", "--csv", str(path), "--n", n, "--d", d, "--loss", loss, "--json"]
    line = _one_error_line(*_run(argv, capsys))
    assert re.search(expect, line), line


def test_other_bad_input(tmp_path, capsys) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 0.5, 0.3, 0.2]}).to_csv(path, index=False)
    argv = ["fit", "bnsl", "--csv", str(path), "--x", "x", "--y", "y", "--predict", "1e3,abc"]
    assert "--predict" in _one_error_line(*_run(argv, capsys))
    argv = ["fit", "bnsl", "--csv", str(path), "--x", "x", "--y", "y", "--fit-max", "2"]
    assert "need at least 7 points to fit 6 parameters, got 2" in _one_error_line(*_run(argv, capsys))
    argv = ["fit", "power", "--csv", str(path), "--x", "x", "--y", "y", "--holdout-largest", "4"]
    assert "holdout k" in _one_error_line(*_run(argv, capsys))
    argv = ["fit", "chinchilla", "--csv", str(path), "--n", "x", "--loss", "y"]
    assert "needs --d or --flops" in _one_error_line(*_run(argv, capsys))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    argv = ["fit", "power", "--csv", str(empty), "--x", "x", "--y", "y"]
    assert "is empty" in _one_error_line(*_run(argv, capsys))


# --- constrained and reduced laws, --store everywhere, --where with dotted names ------------------------------

from tests.test_forecast_laws import LAW, law_store  # noqa: E402 - the hand-written store of a known law


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # 4 sizes x 3 budgets from LAW with 0.3% noise; the runs' entropy rate is LAW's E.
    return str(law_store(tmp_path_factory.mktemp("store") / "s", noise=0.003).path)


def test_fit_chinchilla_constrained_from_store(store: str, capsys) -> None:
    base = ["fit", "chinchilla", "--store", store, "--grid", "coarse", "--bootstrap", "30"]
    rc, out, err = _run([*base, "--fix-E", "entropy", "--shared-exponent", "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["E"] == LAW["E"] and res["alpha"] == res["beta"]
    assert res["constraints"]["fixed"] == ["E", "beta"] and res["constraints"]["free_params"] == 3
    assert res["entropy_rate"] == LAW["E"] and res["constraint_sources"] == {"fix_E": "entropy rate"}
    # The generating law has alpha 0.35, beta 0.3: the shared exponent lands between them (0.3% noise).
    assert 0.28 < res["alpha"] < 0.37
    assert res["diagnostics"]["verdict"] in ("ok", "weak", "unidentified")
    rc, out, _ = _run([*base, "--E-min", "2.0", "--min-tokens-per-param", "2"], capsys)
    assert rc == 0
    assert "note: dropped" in out and "D/N < 2" in out and "E >= 2" in out and "verdict:" in out
    assert "variable projection: not run" in out  # the cross-check has no constraints
    rc, out, _ = _run([*base, "--fix-E", "2.0"], capsys)
    assert rc == 0 and "E = 2   fixed" in out


def test_fit_where_takes_dotted_names(store: str, capsys) -> None:
    argv = ["fit", "chinchilla", "--store", store, "--grid", "coarse", "--bootstrap", "0", "--json"]
    rc, out, _ = _run([*argv, "--where", "train.tokens >= 80000 and model.d_model != 16"], capsys)
    assert rc == 0 and json.loads(out)["n_points"] == 6
    rc, out, _ = _run([*argv, "--where", "`train.tokens` >= 80000"], capsys)  # the old form still works
    assert rc == 0 and json.loads(out)["n_points"] == 8


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--where", "train.tokenz > 1"], "error: --where: unknown column 'train.tokenz'; did you mean train.tokens"),
        (
            ["--where", "train.tokens > 1e12"],
            "error: --where: 'train.tokens > 1e12' keeps none of the 12 finished runs",
        ),
        (["--fix-E", "9"], "error: --fix-E: 9 is not below the smallest observed loss"),
        (["--fix-E", "high"], "error: --fix-E: expected a number or 'entropy'"),
        (
            ["--where", "model.d_model == 16", "--fix-E", "entropy", "--shared-exponent"],
            "error: need at least 4 points to fit 3 free parameters (E, beta fixed), got 3",
        ),
        (["--min-tokens-per-param", "1e9"], "error: --min-tokens-per-param: no run has D/N >= 1e+09"),
    ],
)
def test_store_bad_input_is_one_line(store: str, capsys, extra: list[str], expect: str) -> None:
    argv = ["fit", "chinchilla", "--store", store, "--grid", "coarse", "--bootstrap", "0", *extra]
    assert _one_error_line(*_run(argv, capsys)).startswith(expect)


def test_fix_E_entropy_needs_a_known_entropy_rate(chin_csv: str, capsys) -> None:
    argv = [
        "fit",
        "chinchilla",
        "--csv",
        chin_csv,
        "--n",
        "n",
        "--d",
        "tokens",
        "--loss",
        "val_loss",
        "--fix-E",
        "entropy",
    ]
    assert "--fix-E: entropy needs a known entropy rate" in _one_error_line(*_run(argv, capsys))
    # With --entropy-rate it is that value (the CSV was generated with E = 1.69).
    rc, out, _ = _run([*argv, "--entropy-rate", "1.69", "--bootstrap", "0", "--grid", "coarse", "--json"], capsys)
    res = json.loads(out)
    assert rc == 0 and res["E"] == 1.69
    for k, tol in (("alpha", 0.05), ("beta", 0.1)):  # as test_fit_chinchilla_json, E now exact
        assert res[k] == pytest.approx(TRUE[k], rel=tol), k


def test_fit_power_and_bnsl_from_store(store: str, tmp_path, capsys) -> None:
    # Noiseless runs at one budget D: L(N) = (E + B D^-beta) + A N^-alpha exactly, a saturating power law.
    st = law_store(tmp_path / "one_d", d_models=(16, 24, 32, 48, 64, 96), tokens=(320_000,))
    argv = ["fit", "power", "--store", str(st.path), "--x", "params", "--offset", "--bootstrap", "20", "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    res = json.loads(out)
    D = 2500 * 128  # 320,000 tokens in whole steps of 128
    assert res["E"] == pytest.approx(LAW["E"] + LAW["B"] * D ** -LAW["beta"], rel=1e-6)
    assert res["alpha"] == pytest.approx(LAW["alpha"], rel=1e-6) and res["A"] == pytest.approx(LAW["A"], rel=1e-5)
    assert res["source"]["x"] == "params_nonembedding" and res["source"]["y"] == "final_val_loss"
    # On the grid store a law in N alone mixes budgets: said so; --where selects one.
    rc, out, _ = _run(["fit", "power", "--store", store, "--x", "params", "--bootstrap", "0"], capsys)
    assert rc == 0 and "note: the runs span 3 values of tokens" in out
    argv = ["fit", "bnsl", "--store", str(st.path), "--x", "params", "--breaks", "0", "--bootstrap", "0", "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["c0"] == pytest.approx(LAW["alpha"], rel=1e-4)  # BNSL with no break is the same law
    rc, out, err = _run(["fit", "power", "--store", store, "--x", "nope", "--bootstrap", "0"], capsys)
    assert "column 'nope' not in store" in _one_error_line(rc, out, err)


def test_fit_frontier_csv(tmp_path, capsys) -> None:
    T = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    rows = []
    for c in np.logspace(18, 22, 7):
        n0 = (T["alpha"] * T["A"] / (T["beta"] * T["B"])) ** (1 / (T["alpha"] + T["beta"])) * (c / 6) ** (
            T["beta"] / (T["alpha"] + T["beta"])
        )
        for f in (0.5, 1.0, 2.0):
            rows.append({"flops": c, "loss": chinchilla_loss(n0 * f, c / (6 * n0 * f), **T)})
    path = tmp_path / "iso.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    argv = ["fit", "frontier", "--csv", str(path), "--flops", "flops", "--loss", "loss", "--bootstrap", "20", "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    res = json.loads(out)
    # The frontier is each budget's compute-optimal run, on which L(C) = E + A C^-gamma exactly.
    assert res["law"] == "compute_frontier" and res["frontier"]["points"] == 7 and len(res["frontier_runs"]) == 7
    assert res["gamma"] == pytest.approx(T["alpha"] * T["beta"] / (T["alpha"] + T["beta"]), rel=1e-6)
    assert res["E"] == pytest.approx(T["E"], rel=1e-6)


def test_fit_auto_on_a_store(store: str, capsys) -> None:
    argv = ["fit", "auto", "--store", store, "--grid", "coarse", "--starts", "4", "--bootstrap", "10"]
    rc, out, err = _run([*argv, "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    names = {c["name"] for c in res["candidates"]}
    assert {"chinchilla", "chinchilla_fixed_E", "chinchilla_shared", "chinchilla_fixed_E_shared", "frontier"} <= names
    assert res["scale"] == "N" and len(res["scales"]) == 4 and res["entropy_rate"] == LAW["E"]
    chosen = next(c for c in res["candidates"] if c["name"] == res["chosen"])
    # Data from the law itself (0.3% noise): the chosen law extrapolates the held-out largest size within 2%.
    assert chosen["eligible"] and chosen["largest_scale_error"] < 0.02
    assert res["reason"].startswith(chosen["label"]) and "held-out largest N" in res["reason"]
    from scalescope.cli.fit import _print_text

    _print_text(res)  # the text form of the same result (a second run would double the time)
    out = capsys.readouterr().out
    assert "chosen: " in out and "why: " in out and "skipped power_N" in out and "<- chosen" in out
