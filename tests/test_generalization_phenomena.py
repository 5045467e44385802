"""Reduced versions of the generalization experiments (issue 15), trained in-process, and the analysis that
summarises them (``scalescope generalization``) checked on stores whose answer is known."""

import json
from pathlib import Path

import numpy as np
import pytest

from scalescope import config as C
from scalescope.analyses.generalization import analyze
from scalescope.store import Store
from scalescope.sweep import expand
from scalescope.train import train

from .conftest import ROOT

EXPERIMENTS = ROOT / "scalescope" / "experiments"


def run_all(raw: dict, store: Path) -> Store:
    s = Store(store)
    for cfg in expand(raw):
        rd = s.add(cfg, experiment="test")
        out = train(cfg, rd.path, threads=1)
        assert out.status == "finished", out.error
    return s


def test_random_features_double_descent_peaks_at_the_interpolation_threshold(tmp_path):
    # The double_descent experiment at n = 100 (it uses 500): the same closed-form model, milliseconds a run.
    raw = {
        "data": {"kind": "digits", "n_train": 100},
        "model": {"arch": "random_features"},
        "sweep": {"model.d_model": [20, 50, 80, 100, 120, 200, 1000], "model.ridge": [0.0, 1.0]},
    }
    run_all(raw, tmp_path)
    res = analyze(tmp_path)
    dd = {e["ridge"]: e for e in res["double_descent"]}
    clean, ridge = dd[0.0], dd[1.0]
    # Ground truth (Belkin et al. 2019; exact linear algebra): the minimum-norm readout's test error blows up
    # where N = n, because the feature matrix is square and its smallest singular values vanish there.
    assert clean["peak_at"] == 1.0 and clean["target_met"] and clean["significant"]
    assert clean["peak_ratio"] > 3
    assert ridge["peak_error"] < clean["peak_error"] / 2 and ridge["verdict"].startswith("flattened")
    assert "double_descent" in res["found"]


def test_sample_wise_double_descent(tmp_path):
    raw = {
        "data": {"kind": "digits"},
        "model": {"arch": "random_features", "d_model": 100},
        "sweep": {"data.n_train": [30, 60, 90, 100, 110, 150, 400]},
    }
    run_all(raw, tmp_path)
    (e,) = analyze(tmp_path)["double_descent"]
    assert e["kind"].startswith("sample-wise") and e["axis"] == "n/N"
    assert 0.8 <= e["peak_at"] <= 1.2 and e["significant"]  # more data hurts up to n = N, then helps


def test_random_labels_are_fitted_and_test_accuracy_falls_to_chance(tmp_path):
    # random_labels reduced: 300 digits, a narrower MLP, clean labels against fully random ones and random pixels.
    raw = C.load_toml(EXPERIMENTS / "random_labels.toml")
    raw["data"]["n_train"] = 300
    raw["model"]["d_model"] = 256
    raw["train"].update(steps=400, eval_every=20)
    raw.pop("instruments")
    raw.pop("name")
    raw["sweep"] = {"(data.label_noise, data.inputs)": [[0.0, "clean"], [1.0, "clean"], [0.0, "random_pixels"]]}
    run_all(raw, tmp_path)
    (grp,) = analyze(tmp_path)["random_labels"]
    by = {(r["label_noise"], r["inputs"]): r for r in grp["runs"]}
    clean, rand, pixels = by[(0.0, "clean")], by[(1.0, "clean")], by[(0.0, "random_pixels")]
    for r in (clean, rand, pixels):
        assert r["final_train_acc"] == 1.0 and r["steps_to_fit"] is not None
    assert rand["fit_ratio_to_clean"] > 1.5  # random labels take longer to fit (Zhang et al.: a modest factor)
    assert clean["final_test_acc"] > 0.85
    # 359 test digits: chance 0.1, binomial s.d. 0.016; 0.2 is > 6 s.d. above chance.
    assert rand["final_test_acc"] < 0.2 and pixels["final_test_acc"] < 0.2
    assert grp["rademacher"] == pytest.approx(0.5)  # every random label fitted: the class's maximum
    assert rand["rademacher_bound_test_error"] > 1  # vacuous, as Zhang et al. argue


def _fake_run(store: Store, raw: dict, curves: dict[str, dict[int, float]], steps: int) -> str:
    """A finished run whose metrics are given (the analysis reads only configs and metrics)."""
    cfg = C.from_dict(raw)
    rd = store.add(cfg, experiment="fake")
    rows = [
        {"step": s, "tokens": 0, "flops": 0.0, "wall_s": 0.0, "metric": m, "value": v}
        for m, c in curves.items()
        for s, v in c.items()
    ]
    rd.append_metrics(sorted(rows, key=lambda r: r["step"]))
    rd.write_status("finished", step=steps, total_steps=steps)
    return rd.id


def test_grokking_steps_and_ratio_from_known_curves(tmp_path):
    store = Store(tmp_path)
    steps = list(range(0, 5001, 100))
    train_acc = {s: min(1.0, s / 1000) for s in steps}  # memorized (>= 0.99) at 990 -> first eval at 1000
    test_acc = {s: 0.05 if s < 3500 else 0.97 for s in steps}  # generalized at 3500
    raw = {"data": {"kind": "modular", "p": 7}, "train": {"steps": 5000, "weight_decay": 1.0, "full_batch": True}}
    _fake_run(store, raw, {"trainset_acc": train_acc, "val_acc": test_acc}, 5000)
    raw0 = {"data": {"kind": "modular", "p": 7}, "train": {"steps": 5000, "weight_decay": 0.0, "full_batch": True}}
    _fake_run(store, raw0, {"trainset_acc": train_acc, "val_acc": {s: 0.1 for s in steps}}, 5000)
    res = analyze(tmp_path)
    g1, g0 = sorted(res["grokking"], key=lambda g: -g["weight_decay"])
    assert (g1["memorization_step"], g1["generalization_step"], g1["ratio"]) == (1000, 3500, 3.5)
    assert g1["grokked"] and not g0["grokked"] and g0["generalization_step"] is None


def test_bad_minima_pairs_the_pretrained_run_with_its_random_start(tmp_path):
    store = Store(tmp_path)
    base = {"data": {"kind": "digits", "n_train": 50}, "model": {"arch": "mlp"}, "train": {"steps": 100}}
    ok = {s: 1.0 for s in (0, 50, 100)}
    _fake_run(store, base, {"trainset_acc": ok, "val_acc": {0: 0.1, 50: 0.9, 100: 0.95}}, 100)
    pre = json.loads(json.dumps(base))
    pre["data"]["random_label_steps"] = 60
    _fake_run(store, pre, {"trainset_acc": ok, "val_acc": {0: 0.1, 50: 0.1, 100: 0.80}}, 100)
    (b,) = analyze(tmp_path)["bad_minima"]
    assert b["test_gap"] == pytest.approx(0.15) and b["both_fit"] and b["random_label_steps"] == 60


def test_cli_json_and_an_empty_store(tmp_path, capsys):
    from scalescope.cli import main

    Store(tmp_path).ensure_writable()
    assert main(["generalization", "--store", str(tmp_path)]) == 0
    assert "no generalization phenomena" in capsys.readouterr().out
    assert main(["generalization", "--store", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["found"] == [] and "steps_to_fit" in res["definitions"]
    assert main(["generalization", "--store", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a store" in err


def test_every_builtin_generalization_experiment_loads():
    from scalescope.sweep import load_experiment

    sizes = {}
    for name in ("random_labels", "double_descent", "double_descent_samples", "double_descent_mlp", "bad_minima"):
        sizes[name] = len(load_experiment(EXPERIMENTS / f"{name}.toml").runs)
    assert sizes == {
        "random_labels": 8,
        "double_descent": 33,
        "double_descent_samples": 11,
        "double_descent_mlp": 22,
        "bad_minima": 6,
    }
    assert np.all(np.array(list(sizes.values())) > 0)


def test_grokking_reduced_memorizes_first_and_generalizes_later(tmp_path):
    # grokking.toml at p = 23 (it uses 59), half the pairs, width 32/128, lr 1e-2: the cheapest setting that groks
    # (about 20 s on one core); memorization by step ~50, generalization by ~750 when measured.
    raw = C.load_toml(EXPERIMENTS / "grokking.toml")
    raw["data"].update(p=23, train_fraction=0.5)
    raw["model"].update(d_model=32, d_mlp=128)
    raw["train"].update(lr=1e-2, steps=1000)
    raw.pop("instruments")
    raw.pop("name")
    raw["sweep"] = {"train.weight_decay": [1.0]}
    run_all(raw, tmp_path)
    (g,) = analyze(tmp_path)["grokking"]
    assert g["memorization_step"] is not None and g["generalization_step"] is not None
    assert g["generalization_step"] >= 4 * g["memorization_step"]  # long after: test accuracy lags by many steps
    assert g["grokked"] and g["final_test_acc"] > 0.95


def test_a_flat_step_or_a_falling_curve_is_no_peak():
    from scalescope.analyses.generalization import _descent_curve

    se = np.full(4, 0.01)
    falling = _descent_curve(np.array([1.0, 2, 4, 10]), np.array([0.5, 0.5, 0.3, 0.05]), se)
    assert not falling["interior_peak"] and not falling["significant"]
    flat = _descent_curve(np.array([1.0, 2, 4, 20]), np.array([0.1616, 0.1448, 0.1448, 0.1393]), se)
    assert not flat["interior_peak"]
    peak = _descent_curve(np.array([0.5, 1.0, 2, 10]), np.array([0.1, 0.7, 0.2, 0.02]), se)
    assert peak["interior_peak"] and peak["significant"] and peak["peak_at"] == 1.0
