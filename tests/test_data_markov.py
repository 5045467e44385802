"""MarkovSource: exact entropy rate (closed form and against its own samples), determinism, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalescope.data import MarkovConfig, MarkovSource, Source, build_source
from scalescope.errors import ConfigError


def tokens_of(batch) -> np.ndarray:
    """The (B, T+1) tokens a Batch was made from."""
    return torch.cat([batch.inputs[:, :1], batch.targets], dim=1).numpy()


def binary_entropy(p: float) -> float:
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def test_two_state_chain_closed_form():
    # P = [[1-a, a], [b, 1-b]]: pi = (b, a) / (a + b), H = pi_0 h(a) + pi_1 h(b) (Cover & Thomas ex. 4.2).
    a, b = 0.3, 0.1
    src = MarkovSource.from_transitions(np.array([[1 - a, a], [b, 1 - b]]))
    pi = np.array([b, a]) / (a + b)
    assert np.allclose(src.pi, pi, atol=1e-12)
    expected = pi[0] * binary_entropy(a) + pi[1] * binary_entropy(b)
    assert src.entropy_rate == pytest.approx(expected, abs=1e-12)
    assert src.stationary_residual < 1e-12
    assert src.entropy_rate_error < 1e-12


def test_periodic_chain_converges_via_lazy_chain():
    # Period 2 (0 -> {1, 2} -> 0): plain power iteration from uniform oscillates, the lazy chain does not.
    p = 0.25
    probs = np.array([[0, p, 1 - p], [1, 0, 0], [1, 0, 0]], dtype=float)
    src = MarkovSource.from_transitions(probs)
    assert np.allclose(src.pi, [0.5, p / 2, (1 - p) / 2], atol=1e-12)
    assert src.entropy_rate == pytest.approx(0.5 * binary_entropy(p), abs=1e-12)


def test_order2_matches_dense_linear_algebra():
    src = MarkovSource(5, order=2, support=3, concentration=0.7, seed=4)
    n, v = 25, 5
    dense = np.zeros((n, n))
    for s in range(n):
        for tok, p in zip(src.next_tokens[s], src.probs[s], strict=True):
            dense[s, (s * v) % n + tok] += p
    # Stationary pi from the eigenvector of P^T for eigenvalue 1 (the chain here is irreducible).
    w, vecs = np.linalg.eig(dense.T)
    pi = np.real(vecs[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    assert np.allclose(src.pi, pi, atol=1e-10)
    h = -np.sum(np.where(dense > 0, dense * np.log(np.where(dense > 0, dense, 1)), 0), axis=1)
    assert src.entropy_rate == pytest.approx(pi @ h, abs=1e-10)


@pytest.mark.parametrize("vocab,order,support", [(32, 1, 6), (16, 2, 4), (8, 2, None)])
def test_own_cross_entropy_converges_to_entropy_rate(vocab, order, support):
    src = MarkovSource(vocab, order=order, support=support, concentration=0.5, seed=1)
    lp = np.concatenate([src.log_prob(tokens_of(src.batch("probe", i, 256, 256))) for i in range(2)])
    assert np.isfinite(lp).all()
    # Sequences are independent; positions within one are not, so the error is over sequence means.
    per_seq = -lp.mean(axis=1)
    mean, se = per_seq.mean(), per_seq.std(ddof=1) / np.sqrt(per_seq.size)
    print(
        f"V={vocab} k={order} s={support}: stated {src.entropy_rate:.5f} "
        f"(+-{src.entropy_rate_error:.1e}), empirical {mean:.5f} +- {se:.5f}"
    )
    assert abs(mean - src.entropy_rate) < 4 * se + src.entropy_rate_error


def test_sequences_start_stationary():
    # Token marginals at the first and last position both equal pi (order 1: state = token).
    src = MarkovSource(6, order=1, support=3, concentration=0.5, seed=2)
    toks = tokens_of(src.batch("train", 0, 20000, 8))
    tol = 5 * np.sqrt(src.pi * (1 - src.pi) / toks.shape[0]) + 1e-3
    for col in (0, -1):
        freq = np.bincount(toks[:, col], minlength=6) / toks.shape[0]
        assert np.all(np.abs(freq - src.pi) < tol)


def test_support_and_log_prob_of_disallowed_token():
    src = MarkovSource(10, order=1, support=3, seed=0)
    toks = tokens_of(src.batch("train", 0, 64, 32))
    allowed = {s: set(src.next_tokens[s].tolist()) for s in range(10)}
    assert all(toks[b, t + 1] in allowed[toks[b, t]] for b in range(64) for t in range(32))
    bad = next(x for x in range(10) if x not in allowed[0])
    assert src.log_prob(np.array([[0, bad]]))[0, 0] == -np.inf
    assert src.log_prob(np.array([[0, 1, 2]])).shape == (1, 2)


def test_determinism_and_independent_streams():
    a = MarkovSource(16, order=2, support=4, seed=3, stream_seed=7)
    b = MarkovSource(16, order=2, support=4, seed=3, stream_seed=7)
    x = a.batch("train", 5, 8, 32)
    assert torch.equal(x.inputs, b.batch("train", 5, 8, 32).inputs)
    assert torch.equal(x.targets[:, :-1], x.inputs[:, 1:])
    assert x.inputs.dtype == torch.long and x.inputs.shape == (8, 32)
    assert not torch.equal(x.inputs, a.batch("train", 6, 8, 32).inputs)
    assert not torch.equal(x.inputs, a.batch("val", 5, 8, 32).inputs)
    assert not torch.equal(a.batch("val", 5, 8, 32).inputs, a.batch("probe", 5, 8, 32).inputs)
    # Another run seed: same language, other samples.
    c = a.with_stream_seed(8)
    assert c.entropy_rate == a.entropy_rate and c.probs is a.probs
    assert not torch.equal(x.inputs, c.batch("train", 5, 8, 32).inputs)
    # Another language seed: another chain.
    assert MarkovSource(16, order=2, support=4, seed=4).entropy_rate != a.entropy_rate


def test_short_sequences_and_describe():
    src = MarkovSource(4, order=3, support=2, seed=0)
    assert src.batch("train", 0, 3, 1).inputs.shape == (3, 1)  # T + 1 < k still works
    d = src.describe()
    assert d["kind"] == "markov" and d["n_states"] == 64
    for key in ("entropy_rate", "entropy_rate_error", "stationary_residual", "support", "concentration"):
        assert key in d


def test_build_source_caches_the_language():
    cfg = MarkovConfig(vocab_size=32, order=2, support=4, seed=11)
    s1, s2 = build_source(cfg, seed=0), build_source(cfg, seed=1)
    assert isinstance(s1, Source) and isinstance(s1, MarkovSource)
    assert s1.probs is s2.probs  # built once
    assert not torch.equal(s1.batch("train", 0, 4, 16).inputs, s2.batch("train", 0, 4, 16).inputs)
    again = build_source(cfg, seed=0)
    assert torch.equal(s1.batch("train", 0, 4, 16).inputs, again.batch("train", 0, 4, 16).inputs)


def test_bad_support_is_a_config_error():
    with pytest.raises(ConfigError, match="support"):
        MarkovSource(4, support=5)


@pytest.mark.parametrize("vocab,k", [(10, 3), (10, 8)])  # Floyd's branch and the top-k-keys branch
def test_choose_without_replacement_is_uniform(vocab, k):
    from scalescope.data.markov import choose_without_replacement

    rows = choose_without_replacement(np.random.default_rng(0), 20000, vocab, k)
    assert all(len(set(r)) == k for r in rows[:500])
    freq = np.bincount(rows.ravel(), minlength=vocab) / rows.shape[0]  # each token: k / vocab
    p = k / vocab
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / rows.shape[0]))
