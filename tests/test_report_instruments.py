"""Report panels for the instruments (issue 4): present with figures when their metrics exist, absent when
they do not, thresholds drawn where the theory puts them; and the SGD-vs-AdamW example experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import scalescope
from scalescope import config as C
from scalescope.cli import main
from scalescope.report import Context, build_sections
from scalescope.report.panels.instruments import critical_batch, eos_figure, pick_steps
from scalescope.store import Store, load
from scalescope.sweep import load_experiment

INSTRUMENT_PANELS = ("noise_scale", "critical_batch", "edge_of_stability", "spectral_density", "covariance")

TOML = """
name = "tiny-sgd-adamw"
[data]
kind = "markov"
vocab_size = 16
support = 4
[model]
n_layer = 1
d_model = 16
n_head = 2
seq_len = 16
[train]
batch_size = 8
tokens = 2560
eval_every = 10
eval_batches = 2
schedule = "cosine"
warmup = 4
[instruments.noise_scale]
n_micro = 4
hessian_every = 3
[instruments.curvature]
every = 2
top_k = 2
trace_matvecs = 9
slq_steps = 10
density_points = 64
[sweep]
"(train.optimizer, train.lr)" = [["sgd", 0.1], ["adamw", 0.01]]
"""

COVARIANCE = """
[instruments.covariance]
every = 2
top_k = 2
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two tiny runs, SGD and AdamW, with the noise-scale, curvature (and covariance) instruments (~15 s)."""
    d = tmp_path_factory.mktemp("instr")
    toml = TOML.replace("[sweep]", COVARIANCE + "[sweep]")
    (d / "exp.toml").write_text(toml)
    assert main(["run", str(d / "exp.toml"), "--store", str(d / "s"), "--workers", "2", "--quiet"]) == 0
    return d / "s"


def _ctx(path: Path) -> Context:
    t = load(path)
    return Context(path, t.runs, t.metrics, bootstrap=50)


def _sections(path: Path) -> dict:
    """The instrument panels that are shown (those that do not apply are listed at the page's end)."""
    return {s.key: s for s in build_sections(_ctx(path), INSTRUMENT_PANELS) if s.shown}


def _skipped(path: Path) -> dict:
    return {s.key: s.skipped for s in build_sections(_ctx(path), INSTRUMENT_PANELS) if not s.shown}


def _synthetic(tmp_path: Path, rows_of, configs) -> Path:
    """A store whose runs' metrics are written directly: ``rows_of(cfg)`` gives (step, metric, value) rows."""
    st = Store(tmp_path / "s").ensure_writable()
    for raw in configs:
        cfg = C.from_dict(raw)
        rd = st.add(cfg, experiment="synthetic")
        rows = [
            {"step": int(s), "tokens": int(s) * 1024, "flops": 0.0, "wall_s": 0.0, "metric": m, "value": float(v)}
            for s, m, v in rows_of(cfg)
        ]
        rd.append_metrics(rows)
        rd.write_status("finished", step=max(r["step"] for r in rows))
    return st.path


def test_panels_appear_with_figures(store):
    secs = _sections(store)
    expected = {"noise_scale", "edge_of_stability", "spectral_density", "covariance"}
    assert set(secs) == expected  # no critical batch: the batch size does not vary
    for key in expected:
        assert secs[key].skipped is None, (key, secs[key].skipped)
        assert secs[key].body.count("<img") == 1, key


def test_plain_store_has_no_instrument_panels(tmp_path):
    def rows(cfg):
        return [(s, "val_loss", 3.0 / (1 + s) + 1.0) for s in range(0, 50, 10)]

    path = _synthetic(tmp_path, rows, [{"model": {"d_model": d}} for d in (16, 32)])
    assert _sections(path) == {}
    # Each is listed, with what it lacks, in the page's closing "not shown" line.
    assert _skipped(path) == {
        "noise_scale": "no noise_scale metrics (instruments.noise_scale)",
        "critical_batch": "needs runs at 3 or more batch sizes (train.batch_size) with val_loss",
        "edge_of_stability": "no curvature metrics (instruments.curvature)",
        "spectral_density": "no Hessian density saved (instruments.curvature with density)",
        "covariance": "no covariance metrics (instruments.covariance)",
    }


def test_eos_thresholds_are_two_over_lr_and_adams(store):
    ctx = _ctx(store)
    fig = eos_figure(ctx)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["SGD", "AdamW"]  # side by side, SGD first
    m, runs = ctx.metrics, ctx.runs.set_index("id")
    for ax, opt in zip(fig.axes, ("sgd", "adamw")):
        lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
        (rid,) = runs.index[runs["train.optimizer"] == opt]
        lr = m[(m["id"] == rid) & (m["metric"] == "lr")].set_index("step")["value"]
        assert lr.nunique() > 2  # warmup then cosine: the threshold must follow the lr of each step
        drawn = {q: ln for g, ln in lines.items() for q in [g.split(":", 1)[1]] if g.startswith(rid)}
        assert "eig_1" in drawn and "eig_2" in drawn
        if opt == "sgd":
            steps, y = drawn["threshold_gd"].get_data()
            np.testing.assert_allclose(y, 2.0 / lr.loc[list(steps)].to_numpy(), rtol=1e-9)
            mu = runs.loc[rid, "train.momentum"]
            steps, y = drawn["threshold_momentum"].get_data()
            np.testing.assert_allclose(y, (2 + 2 * mu) / lr.loc[list(steps)].to_numpy(), rtol=1e-9)
            assert "threshold_adam" not in drawn and "precond_sharpness" not in drawn
        else:
            b1 = runs.loc[rid, "train.beta1"]
            steps, y = drawn["threshold_adam"].get_data()
            np.testing.assert_allclose(y, (2 + 2 * b1) / (lr.loc[list(steps)].to_numpy() * (1 - b1)), rtol=1e-9)
            assert "precond_sharpness" in drawn and "threshold_gd" not in drawn


def test_pick_steps_spreads_on_a_log_scale():
    assert pick_steps([0, 2, 8]) == [0, 2, 8]
    steps = [0, 1, 2, 4, 8, 16, 32, 50, 100, 150, 200, 250, 300]
    got = pick_steps(steps, 4)
    assert len(got) == 4 and got[0] == 0 and got[-1] == 300 and got == sorted(got)
    assert got[1] < 50  # early steps are not crowded out by the linear tail


def test_covariance_panel_from_metrics_alone(tmp_path):
    def rows(cfg):
        sgd = cfg.train.optimizer == "sgd"
        return [
            (s, f"covariance/{k}", v)
            for s in (0, 2, 8, 32, 100)
            for k, v in (("overlap", 0.2 if sgd else 0.5), ("commutator", 0.1), ("grad_fraction", 0.7))
        ]

    path = _synthetic(tmp_path, rows, [{"train": {"optimizer": o}} for o in ("sgd", "adamw")])
    secs = _sections(path)
    assert set(secs) == {"covariance"} and "<img" in secs["covariance"].body


B_STAR, ALPHA_B = 2000.0, 0.5


def _steps_needed(L, B):
    L = np.asarray(L)
    return 50.0 / (L - 1.0) ** 2 * (1 + B_STAR / L ** (1 / ALPHA_B) / B)  # Kaplan eq. 5.1 solved for S


def test_critical_batch_panel_on_a_batch_size_sweep(tmp_path):
    """Loss curves that invert Kaplan's S(B, L) with a known B_crit(L) = B*/L^(1/α_B) (as in
    test_critical_batch.py): the panel fits it, with B_simple = B_crit/2 beside it."""
    grid = np.linspace(4.0, 1.5, 2000)

    def rows(cfg):
        B = cfg.train.batch_size
        S_of_L = _steps_needed(grid, B) * (1.0 if cfg.train.lr == 2e-3 else 1.3)
        out = []
        for s in np.arange(0, int(S_of_L[-1]), 8):
            L = float(np.interp(s, S_of_L, grid))
            out += [
                (s, "val_loss", L),
                (s, "noise_scale/G2", 2.0),
                (s, "noise_scale/trace_sigma", B_STAR / L ** (1 / ALPHA_B)),
                (s, "covariance/nqm_B_crit", 3 * B_STAR / L ** (1 / ALPHA_B)),
            ]
        return out

    configs = [{"train": {"batch_size": B, "lr": lr}} for B in (32, 128, 512, 2048) for lr in (1e-3, 2e-3)]
    path = _synthetic(tmp_path, rows, configs)
    ctx = _ctx(path)
    ((name, res),) = critical_batch(ctx)
    assert name == "all runs" and len(res.targets) == 5
    for t in res.targets:
        assert t.B_crit == pytest.approx(B_STAR / t.target ** (1 / ALPHA_B), rel=0.05)
        assert t.ratio == pytest.approx(2.0, rel=0.05)
        assert t.B_crit_nqm == pytest.approx(3 * t.B_crit, rel=0.05)
    assert res.law["alpha_B"] == pytest.approx(ALPHA_B, rel=0.05)
    secs = _sections(path)
    assert set(secs) == {"critical_batch"}  # G2, tr(Σ), nqm_B_crit alone: nothing for the other panels
    body = secs["critical_batch"].body
    assert secs["critical_batch"].skipped is None and "<img" in body and "NQM B_crit" in body


def test_example_experiment_expands_into_sgd_and_adamw_per_size():
    exp = load_experiment(Path(scalescope.__file__).parent / "experiments" / "sgd_vs_adamw.toml")
    cells = {(c.model.d_model, c.train.optimizer): c for c in exp.runs}
    sizes = sorted({d for d, _ in cells})
    assert len(exp.runs) == 4 and len(sizes) == 2
    assert set(cells) == {(d, o) for d in sizes for o in ("sgd", "adamw")}
    for (_, opt), cfg in cells.items():
        assert cfg.train.lr == (0.3 if opt == "sgd" else 3e-3)
        assert set(cfg.instruments) >= {"noise_scale", "curvature", "covariance"}
        assert cfg.instruments["curvature"].get("density", True)
        assert cfg.data.kind == "markov" and cfg.train.grad_clip == 0.0
    assert len({c.model.n_layer for c in exp.runs}) == 1  # one family: only the width changes
