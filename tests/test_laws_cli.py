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
