"""The critical-batch analysis on a synthetic store whose loss curves make the S–E trade-off exactly
Kaplan et al. 2020's hyperbola with a known B_crit(L) = B*/L^(1/α_B), and a known B_simple(L)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scalescope import config as C
from scalescope.analyses.critical_batch import critical_batch_analysis, steps_to_loss
from scalescope.store import Store

B_STAR, ALPHA_B = 2000.0, 0.5
BATCHES = [16, 32, 64, 128, 256, 512, 1024, 2048]
LR_SLOWDOWN = {1e-3: 1.4, 2e-3: 1.0, 4e-3: 1.25}  # the middle lr is best at every batch size
SEQ_LEN = 16


def b_crit(L):
    return B_STAR / np.asarray(L) ** (1 / ALPHA_B)


def s_min(L):
    return 50.0 / (np.asarray(L) - 1.0) ** 2


def steps_needed(L, B):
    return s_min(L) * (1 + b_crit(L) / B)  # eq. 5.1 solved for S at E = B S


def b_simple(L):
    return 0.5 * b_crit(L)


def _synthetic_store(tmp_path, *, seeds=(0,), noise_metrics=True):
    """Runs whose loss curve L(s) inverts S(B, L) (times a slowdown per lr), evaluated every 2 steps."""
    store = Store(tmp_path / "cb").ensure_writable()
    grid = np.linspace(4.0, 1.5, 4000)  # S(B, L) increases as L falls, so the inverse is well defined
    for seed in seeds:
        for B in BATCHES:
            for lr, slow in LR_SLOWDOWN.items():
                cfg = C.from_dict({"model": {"seq_len": SEQ_LEN}, "train": {"batch_size": B, "lr": lr}, "seed": seed})
                rd = store.add(cfg, experiment="cb")
                S_of_L = steps_needed(grid, B) * slow * (1 + 0.01 * seed)
                steps = np.arange(0, int(S_of_L[-1]), 2)
                loss = np.interp(steps, S_of_L, grid)  # S_of_L is increasing along the grid
                rows = []
                for s, L in zip(steps, loss):
                    rows.append(
                        {
                            "step": int(s),
                            "tokens": 0,
                            "flops": 0.0,
                            "wall_s": 0.0,
                            "metric": "val_loss",
                            "value": float(L),
                        }
                    )
                    if noise_metrics:
                        # |G|² = 2 and tr(Σ) = 2 B_simple(L): the pooled ratio must give B_simple(L).
                        rows.append(
                            {
                                "step": int(s),
                                "tokens": 0,
                                "flops": 0.0,
                                "wall_s": 0.0,
                                "metric": "noise_scale/G2",
                                "value": 2.0,
                            }
                        )
                        rows.append(
                            {
                                "step": int(s),
                                "tokens": 0,
                                "flops": 0.0,
                                "wall_s": 0.0,
                                "metric": "noise_scale/trace_sigma",
                                "value": 2.0 * float(b_simple(L)),
                            }
                        )
                        # The covariance instrument's NQM prediction: 3 B_simple(L), times a per-run
                        # factor whose geometric mean over the runs is 1.
                        rows.append(
                            {
                                "step": int(s),
                                "tokens": 0,
                                "flops": 0.0,
                                "wall_s": 0.0,
                                "metric": "covariance/nqm_B_crit",
                                "value": 3.0 * float(b_simple(L)) * (2.0 if lr == 1e-3 else 0.5 if lr == 4e-3 else 1),
                            }
                        )
                rd.append_metrics(rows)
                rd.write_status("finished", step=int(steps[-1]))
    return store


def test_steps_to_loss_interpolates_and_smooths():
    steps = np.array([0, 10, 20, 30])
    loss = np.array([4.0, 3.0, 2.0, 1.0])
    assert steps_to_loss(steps, loss, 2.5) == pytest.approx(15.0)
    assert steps_to_loss(steps, loss, 4.0) == 0.0
    assert math.isnan(steps_to_loss(steps, loss, 0.5))
    # One noisy dip below the target is ignored after smoothing over 3 evaluations.
    noisy = np.array([4.0, 3.0, 1.9, 3.0, 2.5, 2.0, 1.5])
    assert steps_to_loss(np.arange(7), noisy, 2.0) == pytest.approx(1 + 1 / 1.1)
    assert steps_to_loss(np.arange(7), noisy, 2.0, smooth=3) > 4


def test_recovers_the_hyperbola_the_law_and_b_simple(tmp_path):
    store = _synthetic_store(tmp_path)
    targets = [2.6, 2.3, 2.0, 1.8]
    (res,) = critical_batch_analysis(store.path, targets, bootstrap=200)
    assert res.group == {} and res.n_runs == len(BATCHES) * len(LR_SLOWDOWN) and res.seq_len == SEQ_LEN
    for t in res.targets:
        assert t.error is None
        assert list(t.table["lr"]) == [2e-3] * len(BATCHES)  # the best lr picked at every batch size
        assert not t.table["lr_at_grid_edge"].any()
        # Linear interpolation between evaluations 2 steps apart: S is exact to a fraction of a step.
        assert t.B_crit == pytest.approx(float(b_crit(t.target)), rel=0.01)
        assert t.S_min == pytest.approx(float(s_min(t.target)), rel=0.01)
        lo, hi = t.B_crit_ci
        assert lo <= t.B_crit <= hi
        assert t.B_simple == pytest.approx(float(b_simple(t.target)), rel=0.01)
        assert t.ratio == pytest.approx(2.0, rel=0.02)
        assert t.B_simple_runs == len(BATCHES) * len(LR_SLOWDOWN)
        assert t.B_crit_nqm == pytest.approx(3.0 * float(b_simple(t.target)), rel=0.01)
    assert res.law["B_star"] == pytest.approx(B_STAR, rel=0.03)
    assert res.law["alpha_B"] == pytest.approx(ALPHA_B, rel=0.03)
    d = res.as_dict()
    assert d["targets"][0]["B_crit_tokens"] == pytest.approx(d["targets"][0]["B_crit"] * SEQ_LEN)


def test_seeds_average_and_groups_split(tmp_path):
    store = _synthetic_store(tmp_path, seeds=(0, 1), noise_metrics=False)
    (res,) = critical_batch_analysis(store.path, [2.0], bootstrap=0)
    t = res.targets[0]
    # Seed 1 is 1% slower: the average over seeds is 0.5% slower, B_crit unchanged (both S and E scale).
    assert t.S_min == pytest.approx(1.005 * float(s_min(2.0)), rel=0.01)
    assert t.B_crit == pytest.approx(float(b_crit(2.0)), rel=0.01)
    assert math.isnan(t.B_simple) and t.B_simple_runs == 0
    # Grouping by a column that varies splits the analysis.
    groups = critical_batch_analysis(store.path, [2.0], bootstrap=0, group_by=["seed"])
    assert [g.group for g in groups] == [{"seed": 0}, {"seed": 1}]


def test_unreachable_targets_are_reported_not_raised(tmp_path):
    store = _synthetic_store(tmp_path, noise_metrics=False)
    (res,) = critical_batch_analysis(store.path, [1.0, 2.0], bootstrap=0)
    by = {t.target: t for t in res.targets}
    assert "at least 3 points" in by[1.0].error and math.isnan(by[1.0].B_crit)
    assert res.law is None and "at least" in res.law_error  # one usable target cannot fit 2 parameters


def test_command_line(tmp_path, capsys):
    from scalescope.cli.critical_batch import add_parser

    store = _synthetic_store(tmp_path, noise_metrics=True)
    import argparse

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(
        ["critical-batch", "--store", str(store.path), "--targets", "2.3,2.0,1.8", "--json", "--bootstrap", "50"]
    )
    assert args.fn(args) == 0
    out = json.loads(capsys.readouterr().out)
    (g,) = out["groups"]
    assert [t["target"] for t in g["targets"]] == [2.3, 2.0, 1.8]
    assert g["targets"][1]["B_crit"] == pytest.approx(float(b_crit(2.0)), rel=0.01)
    assert g["law"]["alpha_B"] == pytest.approx(ALPHA_B, rel=0.03)
    args = p.parse_args(["critical-batch", "--store", str(store.path), "--targets", "2.0"])
    assert args.fn(args) == 0
    assert "B_crit" in capsys.readouterr().out
    bad = p.parse_args(["critical-batch", "--store", str(store.path), "--targets", "two"])
    with pytest.raises(C.ConfigError, match="--targets"):
        bad.fn(bad)
    # Wired into the main command line, with its errors as one line and exit 2.
    from scalescope.cli import main

    assert main(["critical-batch", "--store", str(store.path), "--targets", "2.0", "--bootstrap", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"]
    assert main(["critical-batch", "--store", str(store.path), "--targets", "two"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_experiment_template_expands():
    from pathlib import Path

    import scalescope
    from scalescope.sweep import load_experiment

    exp = load_experiment(Path(scalescope.__file__).parent / "experiments" / "critical_batch.toml")
    pairs = {(c.train.batch_size, c.train.lr) for c in exp.runs}
    batch_sizes = sorted({b for b, _ in pairs})
    assert len(batch_sizes) >= 5
    for B in batch_sizes:  # a small lr grid at every batch size, its optimum inside the grid
        assert len([lr for b, lr in pairs if b == B]) >= 3
    for cfg in exp.runs:
        assert "noise_scale" in cfg.instruments
        assert cfg.train.schedule == "constant"
