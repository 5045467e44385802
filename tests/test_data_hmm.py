"""HMMSource: the Monte-Carlo entropy bracket against the model's own cross-entropy, determinism."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from scalescope.data import HMMConfig, HMMSource, Source, build_source
from scalescope.data.markov import row_entropy


def tokens_of(batch) -> np.ndarray:
    return torch.cat([batch.inputs[:, :1], batch.targets], dim=1).numpy()


@pytest.fixture(scope="module")
def hmm() -> HMMSource:
    return HMMSource(64, n_hidden=16, support=8, concentration=0.5, transition_concentration=0.3, seed=0)


def test_construction_is_fast_and_deterministic(hmm):
    t0 = time.perf_counter()
    again = HMMSource(64, n_hidden=16, support=8, concentration=0.5, transition_concentration=0.3, seed=0)
    elapsed = time.perf_counter() - t0
    print(f"HMMSource(V=64, H=16) built in {elapsed:.2f}s")
    assert again.entropy_rate == hmm.entropy_rate
    assert again.entropy_rate_error == hmm.entropy_rate_error
    assert np.array_equal(again.transition, hmm.transition)


def test_stationary_distribution_and_bracket(hmm):
    assert hmm.pi.min() >= 0 and hmm.pi.sum() == pytest.approx(1.0)
    assert np.abs(hmm.pi @ hmm.transition - hmm.pi).sum() < 1e-10
    assert np.allclose(hmm.emission.sum(axis=1), 1.0)
    assert ((hmm.emission > 0).sum(axis=1) <= 8).all()
    d = hmm.describe()
    assert d["entropy_lower"] <= d["entropy_upper"] + 1e-9
    assert d["entropy_lower"] - 1e-9 <= d["entropy_rate"] <= d["entropy_upper"] + 1e-9
    assert 0 < hmm.entropy_rate_error < 0.01
    assert hmm.entropy_rate < np.log(64)


def test_own_cross_entropy_converges_to_entropy_rate(hmm):
    toks = np.concatenate([tokens_of(hmm.batch("probe", i, 512, 256)) for i in range(2)])
    lp = hmm.log_prob(toks)
    assert lp.shape == toks.shape and np.isfinite(lp).all()
    # Tail positions: E[-log p(x_t | x_<t)] = H(X_t | X_<t) decreases to the rate; by t = 128 the filter
    # has long forgotten its start (the bracket's gap is ~0 already at t = 64).
    per_seq = -lp[:, 128:].mean(axis=1)
    mean, se = per_seq.mean(), per_seq.std(ddof=1) / np.sqrt(per_seq.size)
    print(f"HMM: stated {hmm.entropy_rate:.5f} (+-{hmm.entropy_rate_error:.5f}), empirical {mean:.5f} +- {se:.5f}")
    assert abs(mean - hmm.entropy_rate) < 4 * se + hmm.entropy_rate_error
    # Position 0 is exact: E[-log p(x_1)] = H(pi B), the entropy of the stationary token marginal.
    first = -lp[:, 0]
    h1 = row_entropy(hmm.pi @ hmm.emission)
    assert abs(first.mean() - h1) < 4 * first.std(ddof=1) / np.sqrt(first.size)
    assert h1 >= hmm.entropy_rate  # conditioning reduces entropy


def test_filter_from_true_state_is_a_lower_bound_sample(hmm):
    toks, states = hmm.sample_with_states(np.random.default_rng(5), 256, 64)
    assert ((hmm.emission[states, toks]) > 0).all()
    upper = -hmm.log_prob(toks)[:, 1:].mean()
    lower = -hmm.log_prob(toks, start=states[:, 0])[:, 1:].mean()
    assert lower <= upper


def test_impossible_token_gives_minus_inf_not_nan():
    src = HMMSource(8, n_hidden=2, support=2, seed=0)
    never = np.flatnonzero(src.emission.sum(axis=0) == 0)[0]
    ok = src.sample(np.random.default_rng(0), 1, 6)
    bad = ok.copy()
    bad[0, 2] = never
    lp = src.log_prob(bad)
    assert lp[0, 2] == -np.inf and np.isfinite(lp[0, 3:]).all()


def test_determinism_and_independent_streams(hmm):
    x = hmm.batch("train", 3, 8, 32)
    assert torch.equal(x.inputs, hmm.batch("train", 3, 8, 32).inputs)
    assert x.inputs.shape == (8, 32) and x.inputs.dtype == torch.long
    assert not torch.equal(x.inputs, hmm.batch("train", 4, 8, 32).inputs)
    assert not torch.equal(x.inputs, hmm.batch("val", 3, 8, 32).inputs)
    other = hmm.with_stream_seed(1)
    assert other.transition is hmm.transition
    assert not torch.equal(x.inputs, other.batch("train", 3, 8, 32).inputs)


def test_build_source():
    cfg = HMMConfig(vocab_size=16, n_hidden=4, support=4, seed=0)
    s1, s2 = build_source(cfg, 0), build_source(cfg, 1)
    assert isinstance(s1, Source) and isinstance(s1, HMMSource)
    assert s1.transition is s2.transition  # built once per process
    assert s1.describe()["kind"] == "hmm" and s1.n_hidden == 4
    assert not torch.equal(s1.batch("train", 0, 4, 8).inputs, s2.batch("train", 0, 4, 8).inputs)
