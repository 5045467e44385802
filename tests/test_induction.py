"""Induction-head scores (Olsson et al. 2022) against a model whose attention patterns are known exactly,
the ICL score against a brute-force per-position loss, both instruments inside a training run, and
the offline probe commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from scalescope import config as C
from scalescope.data.base import Batch
from scalescope.instruments import build
from scalescope.instruments.icl import icl_curves, icl_summary, resolve_positions
from scalescope.instruments.induction import RepeatedProbe, forward_with_patterns, induction_scores


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.record_pattern = False
        self.last_pattern = None


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _Attn()


class HandMadeInduction(nn.Module):
    """Two layers of two heads with patterns set by hand: layer 0 = (previous token, uniform), layer 1 =
    (induction: attend to the token after the most recent earlier occurrence of the current token, else to
    position 0; uniform). The logits copy what the induction head attends to."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.blocks = nn.ModuleList([_Block(), _Block()])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        causal = torch.ones(T, T).tril()
        uniform = (causal / causal.sum(-1, keepdim=True)).expand(B, T, T)
        prev = torch.zeros(B, T, T)
        prev[:, 0, 0] = 1
        prev[:, torch.arange(1, T), torch.arange(T - 1)] = 1
        ind = torch.zeros(B, T, T)
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            for t in range(T):
                earlier = [j for j in range(t) if idx[b, j] == idx[b, t]]
                src = earlier[-1] + 1 if earlier else 0
                ind[b, t, src] = 1
                logits[b, t, idx[b, src]] = 30.0
        pats = [torch.stack([prev, uniform], 1), torch.stack([ind, uniform], 1)]
        for blk, p in zip(self.blocks, pats):
            if blk.attn.record_pattern:
                blk.attn.last_pattern = p
        return logits


def _brute_force_scores(pats: torch.Tensor, probe: RepeatedProbe) -> tuple[np.ndarray, np.ndarray]:
    """The definitions, one query at a time (Olsson et al. 2022): prefix matching from repeat token i
    (position p + n + i) to p + i + 1; previous token from t to t - 1."""
    L, _, H = pats.shape[:3]
    pm, prev = np.zeros((L, H)), np.zeros((L, H))
    n_pm = n_prev = 0
    for b, (n, p) in enumerate(zip(probe.n.tolist(), probe.p.tolist())):
        for i in range(n - 1):
            pm += pats[:, b, :, p + n + i, p + i + 1].numpy()
            n_pm += 1
        for t in range(1, probe.seq_len):
            prev += pats[:, b, :, t, t - 1].numpy()
            n_prev += 1
    return pm / n_pm, prev / n_prev


def test_scores_match_the_definitions_on_known_patterns():
    vocab, T = 5000, 24
    probe = RepeatedProbe(vocab, T, n_sequences=20, seed=3)
    # The probe's own layout: a random prefix, then a span, then the span again, at varying offsets.
    for row, n, p in zip(probe.tokens.numpy(), probe.n, probe.p):
        assert p == T - 2 * n and np.array_equal(row[p + n :], row[p : p + n])
    assert len(set(probe.n.tolist())) > 3
    model = HandMadeInduction(vocab)
    s = induction_scores(model, probe, batch_size=7)  # batches that split the probe unevenly
    _, pats = forward_with_patterns(model, probe.tokens)
    pm, prev = _brute_force_scores(pats, probe)
    np.testing.assert_allclose(s["prefix_matching"], pm, rtol=1e-12)
    np.testing.assert_allclose(s["previous_token"], prev, rtol=1e-12)
    assert s["prefix_matching"][1, 0] > 0.99 and s["previous_token"][0, 0] == pytest.approx(1.0)
    assert s["prefix_matching"][0, 0] < 0.1  # a previous-token head does not prefix-match
    assert s["duplicate_token"][1, 0] < 0.01
    assert s["copy_accuracy"] > 0.99 and s["copy_logprob"] > -0.01
    assert s["random_accuracy"] < 0.05 and s["chance_logprob"] == pytest.approx(-math.log(vocab))
    # Recording is switched off again.
    assert all(not b.attn.record_pattern and b.attn.last_pattern is None for b in model.blocks)


def test_real_model_patterns_and_uniform_attention_at_init():
    from scalescope.model import GPT

    torch.manual_seed(0)
    cfg = C.ModelConfig(n_layer=2, d_model=32, n_head=2, seq_len=32, attn_only=True, init_std=1e-6)
    model = GPT(cfg, 64).eval()
    probe = RepeatedProbe(64, 32, n_sequences=16)
    s = induction_scores(model, probe)
    # With (almost) zero weights every pattern is uniform over the causal prefix: the score of every head is
    # the mean of 1 / (q + 1) over the queries.
    expect_pm = np.mean([1 / (q + 1) for q in probe.q.tolist()])
    expect_prev = np.mean([1 / (t + 1) for t in range(1, 32)])
    np.testing.assert_allclose(s["prefix_matching"], expect_pm, rtol=1e-4)
    np.testing.assert_allclose(s["previous_token"], expect_prev, rtol=1e-4)
    assert s["prefix_matching"].shape == (2, 2)


def test_icl_curves_against_brute_force_and_positions():
    from scalescope.data.markov import MarkovSource
    from scalescope.model import GPT

    torch.manual_seed(0)
    src = MarkovSource(16, 1, 4, seed=0)
    model = GPT(C.ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=20), 16).eval()
    batches = [src.batch("probe", i, 5, 20) for i in range(3)]
    mask = torch.ones(5, 20)
    mask[:, 7] = 0  # a masked position does not count
    batches[1] = Batch(batches[1].inputs, batches[1].targets, mask)
    curves = icl_curves(model, batches)
    with torch.no_grad():
        rows = []
        for k, b in enumerate(batches):
            logp = torch.log_softmax(model(b.inputs).double(), -1)
            for i in range(5):
                rows += [
                    (t, -float(logp[i, t, b.targets[i, t]]), float(logp[i, t].argmax() == b.targets[i, t]))
                    for t in range(20)
                    if not (k == 1 and t == 7)
                ]
    for t in (0, 7, 19):
        loss = np.mean([r[1] for r in rows if r[0] == t])
        acc = np.mean([r[2] for r in rows if r[0] == t])
        assert curves["loss_by_position"][t] == pytest.approx(loss, rel=1e-9)
        assert curves["accuracy_by_position"][t] == pytest.approx(acc)
    s = icl_summary(curves, 2, 19)
    assert s["score"] == pytest.approx(curves["loss_by_position"][19] - curves["loss_by_position"][2])
    assert resolve_positions(500, None, None) == (50, 499)  # Olsson et al.'s 50 vs 500, scaled
    assert resolve_positions(64, 3, -2) == (3, 62)
    with pytest.raises(C.ConfigError, match="too short for the requested positions"):
        resolve_positions(8, 10, None)
    with pytest.raises(C.ConfigError, match="too short"):
        resolve_positions(64, 40, 20)


def test_bad_options_are_config_errors():
    with pytest.raises(C.ConfigError, match="expected an integer >= 1"):
        build({"induction": {"n_sequences": 0}})
    with pytest.raises(C.ConfigError, match="instruments.icl.erly: unknown option; did you mean 'early'"):
        build({"icl": {"erly": 3}})
    with pytest.raises(C.ConfigError, match="must come before"):
        build({"icl": {"early": 10, "late": 5}})


# --- in a training run, and offline -----------------------------------------------------------------

RUN = """
[instruments.icl]
n_batches = 2
[instruments.induction]
n_sequences = 16
every = 2
"""


def _train(tiny_toml, tmp_path, extra: str, name: str, data: str = ""):
    from scalescope.store import Store
    from scalescope.sweep import load_experiment
    from scalescope.train import train

    p = tiny_toml(extra, name=name)
    if data:
        # Another source: the Markov chain's own fields (order, support) do not apply to it.
        text = p.read_text().replace("order = 1\n", "").replace("support = 4\n", "")
        p.write_text(text.replace('kind = "markov"', data))
    cfg = load_experiment(p).runs[0]
    store = Store(tmp_path / ("store-" + name)).ensure_writable()
    rd = store.add(cfg)
    assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    return rd


def test_instruments_in_training_log_metrics_and_artifacts_and_change_nothing(tiny_toml, tmp_path):
    rd = _train(tiny_toml, tmp_path, RUN, "both.toml")
    by: dict[str, dict[int, float]] = {}
    for r in rd.read_metrics():
        by.setdefault(r["metric"], {})[r["step"]] = r["value"]
    evals = sorted(by["val_loss"])
    for key in ("score", "loss_early", "loss_late", "accuracy_score", "logprob_late"):
        assert sorted(by[f"icl/{key}"]) == evals, key
    assert set(by["icl/early"].values()) == {1.0} and set(by["icl/late"].values()) == {15.0}
    for key in (
        "max_prefix_matching",
        "max_previous_token",
        "copy_accuracy",
        "copy_logprob",
        "prefix_matching/l0h1",
        "previous_token/l0h0",
    ):
        assert sorted(by[f"induction/{key}"]) == evals[::2], key
    arts = rd.path / "artifacts"
    curves = sorted((arts / "icl_loss_by_position").glob("*.npy"))
    assert len(curves) == len(evals)
    curve = np.load(curves[-1])  # the last evaluation's
    assert curve.shape == (16,)
    assert by["icl/score"][max(evals)] == pytest.approx(float(curve[15] - curve[1]), rel=1e-5)
    mats = sorted((arts / "induction_prefix_matching").glob("*.npy"))
    assert len(mats) == len(evals[::2]) and np.load(mats[-1]).shape == (1, 2)
    plain = _train(tiny_toml, tmp_path, "", "plain.toml")
    assert [r["value"] for r in plain.read_metrics() if r["metric"] == "val_loss"] == [by["val_loss"][s] for s in evals]


def test_icl_on_repeated_spans_reports_the_ideal_score(tiny_toml, tmp_path):
    rd = _train(tiny_toml, tmp_path, "[instruments.icl]\n", "rep.toml", data='kind = "repeated_spans"\nspan_min = 4')
    rows = [r for r in rd.read_metrics() if r["metric"] == "icl/ideal_score"]
    # Position 15 is always a copy (ideal loss 0), position 1 never is (log V).
    assert rows and all(r["value"] == pytest.approx(-math.log(16)) for r in rows)
    meta = json.loads((rd.path / "meta.json").read_text())
    assert meta["source"]["kind"] == "repeated_spans" and meta["entropy_rate"] > 0


def test_offline_probe_commands(tiny_toml, tmp_path, capsys):
    from scalescope.cli import main

    rd = _train(tiny_toml, tmp_path, "", "off.toml")
    assert main(["probe", "induction", str(rd.path), "--json", "--n-sequences", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 30 and np.array(out["prefix_matching"]).shape == (1, 2)
    assert np.array(out["previous_token"]).shape == (1, 2) and 0 <= out["copy_accuracy"] <= 1
    assert main(["probe", "icl", str(rd.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["early"], out["late"]) == (1, 15) and len(out["loss_by_position"]) == 16
    assert out["score"] == pytest.approx(out["loss_by_position"][15] - out["loss_by_position"][1])
    assert main(["probe", "induction", str(rd.path)]) == 0
    assert "prefix-matching" in capsys.readouterr().out
    assert main(["probe", "icl", str(rd.path)]) == 0
    assert "ICL score" in capsys.readouterr().out
    assert main(["probe", "icl", str(rd.path), "--early", "20"]) == 2
    assert main(["probe", "induction", str(rd.path), "--step", "7"]) == 2
    assert main(["probe", "icl", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "too short for the requested positions" in err[0]


def test_transition_and_threshold_steps_locate_a_known_jump():
    from scalescope.analyses.phase_change import threshold_step, transition_step

    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500, 600])
    rise = 0.05 + 0.6 / (1 + np.exp(-(steps - 250) / 10))  # a sigmoid from 0.05 to 0.65 centred on 250
    assert transition_step(steps, rise) == pytest.approx(250, abs=2)
    # The half-way level 0.35 is crossed between the evaluations at 200 and 300; linear interpolation.
    assert 200 < threshold_step(steps, rise, 0.4) < 300
    assert threshold_step(steps, rise, 0.9) is None
    drop = -3.0 / (1 + np.exp(-(steps - 250) / 10))  # an ICL score that falls at the same step
    assert transition_step(steps, drop) == pytest.approx(250, abs=2)
    assert threshold_step(steps, drop, -1.0, rising=False) == pytest.approx(250, abs=30)
    assert transition_step(steps, np.ones_like(steps)) is None
    assert transition_step([0, 1, 2], [0.0, np.nan, 1.0]) == pytest.approx(1.0)


def test_rotary_positions_are_relative_and_match_between_attention_paths():
    from scalescope.model import GPT, apply_rotary, param_counts, rotary_tables

    cos, sin = rotary_tables(40, 8)
    q, k = torch.randn(8), torch.randn(8)

    def rot(v, t):
        return apply_rotary(v.expand(1, 1, 40, 8), cos, sin)[0, 0, t]

    # <R_t q, R_s k> depends on t - s only (Su et al. 2021).
    assert float(rot(q, 9) @ rot(k, 4)) == pytest.approx(float(rot(q, 30) @ rot(k, 25)), rel=1e-5)
    assert float(rot(q, 9) @ rot(k, 4)) != pytest.approx(float(rot(q, 9) @ rot(k, 5)), rel=1e-3)
    torch.manual_seed(0)
    cfg = C.ModelConfig(n_layer=2, d_model=24, n_head=2, seq_len=16, attn_only=True, positions="rope")
    model = GPT(cfg, 32).eval()
    assert model.pos_emb is None
    assert sum(p.numel() for p in model.parameters()) == param_counts(cfg, 32).total
    x = torch.randint(0, 32, (3, 16))
    sdpa = model(x)
    logits, _ = forward_with_patterns(model, x)  # the explicit (math) path
    torch.testing.assert_close(sdpa, logits, rtol=1e-5, atol=1e-5)
    assert C.run_id(C.from_dict({"model": {"positions": "learned"}})) == C.run_id(C.from_dict({}))
    assert C.run_id(C.from_dict({"model": {"positions": "rope"}})) != C.run_id(C.from_dict({}))
