"""``scalescope quanta``: the quantization model's exponents, order of learning, skill counts, the seed
question and skills forecasts, on stores written by hand with a known answer.

Ground truth of the synthetic stores (Michaud et al. 2023 sec. 2, built in rather than trained): skills
k = 1..K with p_k ∝ k^-(α+1); a model of N parameters has room for n_cap = N / C skills; skill k is learned
at step t_k = T1·k^(α+1) (it has then been seen a fixed number of times) if k <= n_cap, abruptly (a logistic
in log step, 0.15 decades wide); so at the end n(N) = N/C when data are plentiful and n(D) ∝ D^(1/(α+1))
when capacity is. The final mean loss is written as H + A·x^-a with the theory's a (α for N, α/(α+1) for D)
and 0.3% log-normal scatter: these tests check the analysis, not the model, so the laws hold by construction.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from scalescope.analyses.quanta import (
    RECORD_KIND,
    analyze,
    learned_at,
    record_forecast,
    score_forecasts,
    spearman,
    zipf_probs,
)
from scalescope.cli import main as cli_main
from scalescope.forecast.ledger import score_store
from scalescope.rundir import RunDir
from scalescope.store import Store

ALPHA, K, EPS = 0.5, 120, 0.05
H = -(EPS * math.log(EPS) + (1 - EPS) * math.log(1 - EPS))  # binary entropy of the label noise, nats
LN2 = math.log(2)
C_PER_SKILL, T1, WIDTH = 1000.0, 2.0, 0.08  # parameters per skill; step of skill 1; logistic width in ln step
TPS = 128  # tokens per step
N_SIZES = np.geomspace(2e3, 1e5, 8)  # n_cap 2..100 of K = 120: the staircase stays inside the language
N_STEPS = 8000  # > T1·100^1.5: every skill within capacity is learned by the end of an N-sweep run
D_STEPS = np.geomspace(60, 2400, 8).round()  # n = (S/T1)^(2/3): 9.6..113 skills
BIG_N = 1e6  # room for 1000 skills: capacity plentiful in the D sweep
FORMAT_STEPS = (2, 5)  # evaluations before the model answers with bits at all (accuracy 0, loss ln V)


def _cfg(n: float, steps: float, seed: int, alpha: float) -> dict:
    return {
        "seed": seed,
        "data": {"kind": "quanta", "alpha": alpha, "n_skills": K, "seed": 0, "label_noise": EPS},
        "model": {"d_model": int(n), "n_layer": 2},
        "train": {"tokens": int(steps * TPS)},
    }


def fake_run(
    st: Store,
    n: float,
    steps: float,
    *,
    order: np.ndarray | None = None,
    width: float = WIDTH,
    seed: int = 0,
    artifacts: bool = True,
    alpha: float = ALPHA,
    loss: float | None = None,
    rng: np.random.Generator | None = None,
) -> str:
    """One finished run: meta (N, tokens per step, entropy rate, the source's alpha), status, metrics (val_loss,
    quanta/mean_loss over log-spaced evaluations) and the per-skill artifacts of the ground truth above.
    ``order``: the permutation of skills that sets which is learned when (default: frequency order)."""
    rng = rng or np.random.default_rng(int(n) + int(steps) + seed)
    cfg = _cfg(n, steps, seed, alpha)
    rid = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    rd = RunDir(st.runs_dir / rid)
    rd.create(cfg, experiment="fake")
    total = int(steps)
    rd.write_meta(
        {
            "params_nonembedding": n,
            "params_total": 1.2 * n,
            "flops_per_token": 6 * n,
            "tokens_per_step": TPS,
            "total_steps": total,
            "entropy_rate": H,
            "source": {"kind": "quanta", "alpha": alpha, "n_skills": K, "entropy_rate": H},
        }
    )
    evals = np.unique(np.r_[0, FORMAT_STEPS, np.geomspace(10, total, 30).round()]).astype(int)
    rank = np.arange(1, K + 1) if order is None else order + 1  # the rank whose time each skill takes
    t_k = T1 * rank.astype(float) ** (alpha + 1)
    room = rank <= n / C_PER_SKILL
    rows = []
    for s in evals:
        sig = 1 / (1 + np.exp(-(math.log(max(s, 1e-9)) - np.log(t_k)) / width)) * room
        acc = np.clip(0.5 + 0.5 * sig + rng.normal(0, 0.01, K), 0, 1)
        skill_loss = LN2 - (LN2 - H) * sig
        if s in FORMAT_STEPS:  # the answer's format not learned yet: no bit answered, loss near ln V
            acc, skill_loss = np.zeros(K), np.full(K, 3.0)
        if artifacts:
            rd.save_artifact("quanta/skill_acc", int(s), acc.astype(np.float32))
            rd.save_artifact("quanta/skill_loss", int(s), skill_loss.astype(np.float32))
        # The mean loss over training: a smooth power law in steps (the sum over many staircases).
        ml = 3.0 if s in FORMAT_STEPS else H + 3.0 * max(s, 1) ** (-alpha / (alpha + 1))
        rows += [
            {"step": int(s), "tokens": int(s) * TPS, "flops": 0.0, "wall_s": 0.0, "metric": m, "value": ml}
            for m in ("quanta/mean_loss", "val_loss")
        ]
    final = loss if loss is not None else _final_loss(n, steps)
    final *= math.exp(rng.normal(0, 0.003))
    rows = [r for r in rows if r["step"] != total]
    rows += [
        {"step": total, "tokens": total * TPS, "flops": 0.0, "wall_s": 0.0, "metric": m, "value": final}
        for m in ("quanta/mean_loss", "val_loss")
    ]
    rd.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rd.write_status("finished", step=total, experiment="fake")
    return rid


def _final_loss(n: float, steps: float) -> float:
    """H + A·N^-α in the N sweep (data plentiful), H + B·D^-α/(α+1) in the D sweep (capacity plentiful)."""
    if n >= BIG_N:
        return H + 5.0 * (steps * TPS) ** (-ALPHA / (ALPHA + 1))
    return H + 40.0 * n**-ALPHA


def quanta_store(path: Path, *, d_sweep: bool = True, order: np.ndarray | None = None) -> Store:
    st = Store(path).ensure_writable()
    for n in N_SIZES:
        fake_run(st, float(n), N_STEPS, order=order)
    if d_sweep:
        for s in D_STEPS:
            fake_run(st, BIG_N, float(s), order=order)
    return st


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict]:
    st = quanta_store(tmp_path_factory.mktemp("q") / "s")
    return st, analyze(st.path, bootstrap=200, transition_skills=4, transition_bootstrap=10)


def test_helpers_zipf_learned_at_and_spearman() -> None:
    p = zipf_probs(0.5, 4)
    assert p.sum() == pytest.approx(1) and p[0] / p[1] == pytest.approx(2**1.5)
    acc = np.array([[0.5, 0.95, 0.5], [0.92, 0.99, 0.6]])
    assert learned_at(np.array([10.0, 20.0]), acc, 0.9).tolist() == [20.0, 10.0, math.inf]
    r = spearman(np.arange(50.0), np.arange(50.0) ** 2, bootstrap=100)
    assert r["rho"] == pytest.approx(1.0) and r["ci"][0] > 0.99
    assert spearman(np.arange(5.0), np.ones(5))["rho"] is None  # constant: undefined, not 0


def test_sweeps_fits_and_theory(full: tuple[Store, dict]) -> None:
    _, res = full
    (g,) = res["groups"]
    assert g["alpha"] == ALPHA and g["alpha_from"] == "meta.json source" and g["n_skills"] == K
    assert set(g["sweeps"]) == {"N", "D"}
    sn, sd = g["sweeps"]["N"], g["sweeps"]["D"]
    assert sn["fixed"] == {"tokens": N_STEPS * TPS} and sn["n_scales"] == len(N_SIZES)
    assert sd["fixed"] == {"params_nonembedding": BIG_N} and sd["n_scales"] == len(D_STEPS)
    # Mean loss: exponents by construction α and α/(α+1); 0.3% scatter over 8 points pins them to a few %.
    fn, fd = sn["loss_fit"], sd["loss_fit"]
    assert fn["theory_alpha"] == ALPHA and abs(fn["alpha_rel_dev"]) < 0.05
    assert fd["theory_alpha"] == pytest.approx(1 / 3) and abs(fd["alpha_rel_dev"]) < 0.08
    assert abs(fn["E_rel_dev"]) < 0.01 and fn["entropy_rate"] == pytest.approx(H)
    assert fn["alpha_ci"][0] < fn["alpha"] < fn["alpha_ci"][1] and fn["r2_log"] > 0.99
    assert abs(fn["fixed_E"]["alpha_rel_dev"]) < 0.03  # E held at H: the exponent alone
    # Skills learned: n = floor(N/C) (exponent 1, the floor costs a few % at n = 2) and (S/T1)^(2/3).
    kn, kd = sn["skills_fit"], sd["skills_fit"]
    assert kn["theory_exponent"] == 1.0 and abs(kn["exponent_rel_dev"]) < 0.1, kn
    assert kd["theory_exponent"] == pytest.approx(2 / 3) and abs(kd["exponent_rel_dev"]) < 0.1, kd
    assert sn["points"]["skills_learned"] == [float(math.floor(n / C_PER_SKILL)) for n in N_SIZES]


def test_order_of_learning_follows_frequency(full: tuple[Store, dict]) -> None:
    _, res = full
    (g,) = res["groups"]
    on = g["sweeps"]["N"]["order"]
    # Learned in frequency order by construction, but 100 skills share 8 learning sizes: the ties cap ρ
    # near 0.95 (the ρ of ranks against their own 8-bin staircase), and the interval stays above the 0.8 target.
    assert on["rho"] > 0.9 and on["ci"][0] > 0.85 and on["n_learned_somewhere"] == 100
    assert g["sweeps"]["N"]["learned_at"][0] == N_SIZES[0] and g["sweeps"]["N"]["learned_at"][-1] is None
    steps = g["order_steps"]
    # The smallest model's 2 skills are both learned before the first evaluation (t_2 = 5.7 < 10): a tie, no
    # ρ; the next one's first two tie the same way (ρ = 0.87 over 3 skills). The rest: distinct steps, in order.
    assert steps["n_runs_with_rho"] == 15 and steps["median_rho"] > 0.99 and steps["min_rho"] > 0.8
    met = {c["check"]: c["met"] for c in g["checks"]}
    assert met["order over N (Spearman rho)"] and met["order over steps (median rho)"]
    assert met["L(N) E vs entropy rate"] and met["L(N) exponent"] and met["L(D) exponent"]


def test_seed_question_skills_jump_while_the_mean_loss_is_smooth(full: tuple[Store, dict]) -> None:
    _, res = full
    (g,) = res["groups"]
    for where in ("D", "step"):
        sq = g["seed_question"][where]
        assert sq["n_tested"] == 4 and sq["n_abrupt"] == 4, sq
        assert sq["mean_loss_smooth"] is True, sq["mean_loss"]
        # Each skill's loss jumps with its accuracy (learning is abrupt, not an artifact of the metric).
        assert sq["verdicts"]["real"] == 4
        assert sq["fraction_ci"][0] > 0.4  # Wilson's interval for 4 of 4
    step = g["seed_question"]["step"]
    assert step["run"] in g["sweeps"]["D"]["points"]["id"]  # the run that learned most
    # The format phase (steps 2 and 5: accuracy 0) is left out: the axis starts at chance accuracy.
    assert step["from_step"] == 10 and step["n_points"] == 30
    # Over N the staircase is a perfect step between two of 8 sizes, with no point on the way up: held out,
    # the points beside the step are missed by the sigmoid as by the smooth trend, so the detector calls
    # most such jumps smooth (held-out gain 1.2-1.45 < 1.5). Measured, not hidden: the check says not met.
    sq = g["seed_question"]["N"]
    assert sq["n_tested"] == 4 and sq["mean_loss_smooth"] is True and sq["n_abrupt"] < 4
    met = {c["check"]: c["met"] for c in g["checks"]}
    assert met["skills abrupt, mean loss smooth (over step)"] and not met["skills abrupt, mean loss smooth (over N)"]


def test_shuffled_learning_order_is_detected(tmp_path: Path) -> None:
    # The same store with skills learned in a random order: ρ near 0, and the check says so (could fail).
    order = np.random.default_rng(1).permutation(K)
    st = quanta_store(tmp_path / "s", d_sweep=False, order=order)
    (g,) = analyze(st.path, bootstrap=200, transition_skills=0)["groups"]
    on = g["sweeps"]["N"]["order"]
    # 100 skills learned at random ranks: ρ's sampling s.d. is about 1/sqrt(99) = 0.1, so |ρ| < 0.3 (3 s.d.)
    # and the interval reaches nowhere near the 0.8 target.
    assert abs(on["rho"]) < 0.3 and on["ci"][1] < 0.5, on
    assert {c["check"]: c["met"] for c in g["checks"]}["order over N (Spearman rho)"] is False
    assert g["seed_question"]["step"] is None and "D" not in g["sweeps"]


def test_degenerate_stores_are_flagged_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = Store(tmp_path / "empty").ensure_writable()
    res = analyze(empty.path)
    assert res["groups"] == [] and "no finished runs of the quanta source" in res["flags"][0]
    one = Store(tmp_path / "one").ensure_writable()
    fake_run(one, 5e3, 100)
    (g,) = analyze(one.path, transition_skills=2)["groups"]
    assert "one run: no sweep, no fit" in g["flags"] and g["sweeps"] == {}
    # No skill learned anywhere (tiny models), and runs without artifacts: flagged.
    none = Store(tmp_path / "none").ensure_writable()
    for n in N_SIZES[:3]:
        fake_run(none, n / 1000, N_STEPS)
    fake_run(none, 1.0, N_STEPS, artifacts=False)
    (g,) = analyze(none.path, transition_skills=2, bootstrap=50)["groups"]
    assert any("no run learned any skill" in f for f in g["flags"])
    assert any("without quanta/skill_acc artifacts" in f for f in g["flags"])
    assert "error" in g["sweeps"]["N"]["skills_fit"]
    assert cli_main(["quanta", "--store", str(none.path), "--bootstrap", "20", "--transition-skills", "1"]) == 0
    assert "no run learned any skill" in capsys.readouterr().out


def test_cli_json_and_text(full: tuple[Store, dict], capsys: pytest.CaptureFixture) -> None:
    st, _ = full
    args = ["quanta", "--store", str(st.path), "--bootstrap", "50", "--transition-skills", "0"]
    assert cli_main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"store", "threshold", "n_quanta_runs", "groups", "forecasts"} and out["n_quanta_runs"] == 16
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "L(N) = E + A·N^-a" in text and "theory 0.5" in text and "Spearman" in text
    assert cli_main(["quanta", "--store", str(st.path), "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err


def test_forecast_recorded_and_scored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    st = quanta_store(tmp_path / "s", d_sweep=False)
    # Fit n(N) on the 7 smaller sizes, predict the largest (which exists: scored at once).
    ((rec, created),) = record_forecast(st.path, bootstrap=300)
    assert created and rec["kind"] == RECORD_KIND and rec["target"] == {"N": N_SIZES[-1]}
    assert rec["hindcast"] is True  # the target size was already trained: a check of the method, said so
    assert 0 <= rec["interval"][0] and rec["interval"][1] <= rec["n_skills"]  # a count lies in [0, n_skills]
    assert len(rec["fitted_on"]) == 7 and rec["predicted"] == pytest.approx(100, rel=0.1)
    ((again, created),) = record_forecast(st.path, bootstrap=300)
    assert not created and again["id"] == rec["id"]
    (scored,) = score_forecasts(st.path)
    s = scored["score"]
    assert s["observed"] == 100 and s["count_from"] == "artifacts"
    assert s["skills"]["precision"] > 0.9 and s["skills"]["recall"] > 0.9  # the top of the ranking
    # The ledger scores the kind too (through the store path the record carries).
    (via_ledger,) = [r for r in score_store(st.path) if r["id"] == rec["id"]]
    assert via_ledger["score"]["observed"] == 100
    # A forecast of a size not trained yet stays pending; one below the fitted sizes is refused.
    ((pending, _),) = record_forecast(st.path, at=4e5, bootstrap=100)
    assert pending["target"] == {"N": 4e5} and len(pending["fitted_on"]) == 8 and pending["hindcast"] is False
    assert next(r for r in score_forecasts(st.path) if r["id"] == pending["id"])["score"] is None
    assert cli_main(["quanta", "--store", str(st.path), "--forecast", "--up-to", "5e4", "--at", "1e4"]) == 2
    assert "--at" in capsys.readouterr().err
    assert (
        cli_main(["quanta", "--store", str(st.path), "--forecast", "--transition-skills", "0", "--bootstrap", "100"])
        == 0
    )
    assert "forecast" in capsys.readouterr().out


def test_report_panels_only_with_quanta_runs(full: tuple[Store, dict], tmp_path: Path) -> None:
    from scalescope.report import Context, build_sections
    from scalescope.store import load

    keys = ["quanta_loss", "quanta_staircase", "quanta_skills"]

    def sections(path: Path) -> dict:
        t = load(path)
        return {s.key: s for s in build_sections(Context(path, t.runs, t.metrics, bootstrap=30), keys)}

    st, _ = full
    for key, s in sections(st.path).items():
        assert s.shown and not s.failed and "<img" in s.body, key
    empty = sections(Store(tmp_path / "e").ensure_writable().path)
    assert all(not s.shown and "no finished runs of the quanta source" in (s.skipped or "") for s in empty.values())


def test_damaged_artifacts_are_left_out_and_said(full: tuple[Store, dict], tmp_path: Path) -> None:
    import shutil

    from scalescope.analyses.quanta import analyze

    st = Store(shutil.copytree(full[0].path, tmp_path / "copy"))
    rid = st.run_ids()[0]
    files = sorted(st.run_dir(rid).artifact_steps("quanta/skill_acc").values())
    files[-1].write_bytes(b"")  # an empty file: np.load raises EOFError
    np.save(files[-2], np.full(np.load(files[0]).shape, 7.0))  # an accuracy no probe can give
    np.save(files[-3], np.zeros(3))  # the wrong length
    res = analyze(st.path, bootstrap=20, transition_skills=0)
    dropped = res["dropped_artifacts"]
    assert {str(f) for f in files[-3:]} <= set(dropped)
    assert "EOFError" in dropped[str(files[-1])] and "shape" in dropped[str(files[-3])]
    assert any("left out as damaged" in f for f in res["flags"])
    assert cli_main(["quanta", "--store", str(st.path), "--threshold", "0.5"]) == 2  # chance is not "learned"


def test_forecast_options_without_forecast_are_refused(full: tuple[Store, dict], capsys: pytest.CaptureFixture) -> None:
    # --at and --up-to would be ignored without --forecast: a user would think a forecast was made.
    assert cli_main(["quanta", "--store", str(full[0].path), "--at", "1e6"]) == 2
    assert "--at: only applies with --forecast" in capsys.readouterr().err
