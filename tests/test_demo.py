"""The demo: its experiment, its size, and its closing summary (fast checks; the full demo's figures are in
VALIDATION.md, "A demo whose own law is right")."""

from __future__ import annotations

import numpy as np
import pytest

from scalescope.cli.demo import check_law, format_check, summarize, validation_floor
from scalescope.cli.run import EXPERIMENTS_DIR
from scalescope.data import build_source
from scalescope.data.markov import MarkovSource
from scalescope.laws.chinchilla import chinchilla_loss
from scalescope.model import matmul_flops_per_token
from scalescope.sweep import load_experiment

DEMO = EXPERIMENTS_DIR / "demo.toml"


def test_demo_experiment_is_the_designed_sweep() -> None:
    exp = load_experiment(DEMO)
    assert len(exp.runs) == 18
    widths = sorted({c.model.d_model for c in exp.runs})
    assert widths == [16, 24, 32, 48, 64, 96]
    # The learning rate scales as 1/width (0.768 / d_model), the rule the pilots measured.
    assert all(c.train.lr * c.model.d_model == pytest.approx(0.768) for c in exp.runs)
    # Budgets in the power-law regime only.
    assert sorted({c.train.tokens for c in exp.runs}) == [1_000_000, 2_000_000, 4_000_000]


def test_demo_language_has_its_stated_entropy_rate_and_zipf_spread() -> None:
    cfg = load_experiment(DEMO).runs[0]
    src = build_source(cfg.data, seed=cfg.seed)
    assert isinstance(src, MarkovSource)
    # The figure VALIDATION.md and the README quote (exact: stationary distribution to 1e-13).
    assert src.entropy_rate == pytest.approx(1.03773, abs=5e-5)
    # Zipf-tilted successors give a heavy-tailed stationary distribution: the most frequent token is far
    # more frequent than the median one (for the untilted chain the ratio is about 3).
    pi = np.sort(src.pi)[::-1]
    assert pi[0] / pi[len(pi) // 2] > 100


def test_tilted_chain_entropy_rate_matches_monte_carlo() -> None:
    # The stated rate H = sum_s pi(s) H(p(.|s)) against the true model's loss on fresh stationary samples
    # (Cover & Thomas eq. 4.27): within 4 standard errors, as tests/test_data_markov.py does untilted.
    src = MarkovSource(256, 1, 16, 0.5, seed=0, zipf_exponent=2.0)
    nll = -src.log_prob(src.sample(np.random.default_rng(7), 512, 257))
    per_seq = nll.mean(axis=1)  # sequences are independent; positions within one are not
    se = per_seq.std(ddof=1) / np.sqrt(len(per_seq))
    assert abs(per_seq.mean() - src.entropy_rate) < 4 * se


def test_zipf_exponent_zero_is_the_untilted_chain_bit_for_bit() -> None:
    a = MarkovSource(64, 1, 8, 0.5, seed=3)
    b = MarkovSource(64, 1, 8, 0.5, seed=3, zipf_exponent=0.0)
    assert np.array_equal(a.probs, b.probs) and a.entropy_rate == b.entropy_rate
    c = MarkovSource(64, 1, 8, 0.5, seed=3, zipf_exponent=1.5)
    # Same successor sets, tilted probabilities: rows still sum to 1.
    assert np.array_equal(a.next_tokens, c.next_tokens)
    assert np.allclose(c.probs.sum(axis=1), 1.0, atol=1e-12)


def test_zipf_exponent_config() -> None:
    from scalescope import config as C
    from scalescope.errors import ConfigError

    base = {"data": {"kind": "markov", "vocab_size": 64}}
    zero = {"data": {"kind": "markov", "vocab_size": 64, "zipf_exponent": 0}}
    # An explicit 0 is the untilted chain, with the same run id as leaving the field out.
    assert C.run_id(C.from_dict(zero)) == C.run_id(C.from_dict(base))
    with pytest.raises(ConfigError, match="zipf_exponent"):
        C.from_dict({"data": {"kind": "markov", "zipf_exponent": -1}})


def test_demo_size_against_the_first_demo() -> None:
    # Side by side on the same 2-core machine the new sweep took 1.7 times the first demo's wall time
    # (VALIDATION.md); its matmul FLOPs are 1.19x and its tokens 2.7x the first demo's (2.01e13 FLOPs and
    # 15.75M tokens). The bounds keep a later edit from quietly doubling the demo.
    exp = load_experiment(DEMO)
    flops = sum(matmul_flops_per_token(c.model, c.data.vocab_size) * c.train.tokens for c in exp.runs)
    tokens = sum(c.train.tokens for c in exp.runs)
    assert flops <= 1.3 * 2.01e13
    assert tokens <= 3.0 * 15.75e6


def test_validation_floor_is_the_true_chains_loss_on_the_validation_batches() -> None:
    cfg = load_experiment(DEMO).runs[0]
    floor = validation_floor(cfg)
    assert floor is not None
    # A sample mean of -log p over 16 x 32 x 64 tokens: within a few standard errors (~0.004, measured
    # batch to batch) of the entropy rate.
    assert abs(floor - 1.03773) < 0.02


def _grid(rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    N = np.repeat([6.6e3, 1.4e4, 2.5e4, 5.7e4, 1.0e5, 2.2e5], 3)
    D = np.tile([1e6, 2e6, 4e6], 6)
    # The demo's measured law (E fixed at H): the ground truth here.
    y = chinchilla_loss(N, D, 1.0377, 103.0, 182.0, 0.86, 0.60) * np.exp(rng.normal(0, noise, N.size))
    return N, D, y


def test_check_law_recovers_a_known_law_and_prints_its_checks() -> None:
    N, D, y = _grid(np.random.default_rng(0), 0.001)
    check = check_law(N, D, y, entropy_rate=1.0377, val_floor=1.04, bootstrap=60)
    p = check.law.params_
    # 0.1% noise on 18 points: exponents within 0.1 of the truth (their bootstrap intervals are ~±0.05).
    assert p["E"] == 1.0377 and abs(p["alpha"] - 0.86) < 0.1 and abs(p["beta"] - 0.60) < 0.1
    # The free fit puts E within 2% of the floor it was generated with.
    assert abs(check.free.params_["E"] / 1.0377 - 1) < 0.02
    # The held-out prediction of an exact law with 0.1% noise is within 1%.
    assert abs(check.holdout.rel_error[0]) < 0.01
    text = format_check(check)
    for needle in (
        "L(N, D) = 1.0377 +",
        "E - H =",
        "H = 1.0377",
        "validation batches",
        "Held-out check",
        "N = 220,000",
    ):
        assert needle in text, needle


def test_check_law_without_an_entropy_rate_fits_e_freely() -> None:
    N, D, y = _grid(np.random.default_rng(1), 0.001)
    check = check_law(N, D, y, entropy_rate=None, bootstrap=20)
    assert check.free is None and check.law.fix_E is None
    assert "entropy rate is not known" in format_check(check)


def test_summary_on_a_tiny_store(tiny_toml, tmp_path) -> None:
    """The demo's closing text from a real (tiny) store: a runs table and a fitted law, no traceback; one line
    for the held-out check when the runs left without the largest size are too few to fit (4 runs for 4
    parameters), and one line, not a traceback, when the store holds too few runs for the law itself."""
    from scalescope.store import Store
    from scalescope.train import train

    path = tiny_toml(
        """
        [sweep]
        "model.d_model" = [8, 16, 24]
        "train.tokens" = [1280, 5120]
        """
    )
    exp = load_experiment(path)
    store = Store(tmp_path / "store").ensure_writable()
    for cfg in exp.runs:
        rd = store.add(cfg)
        assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    text = summarize(exp, store.path, bootstrap=10)
    assert "val loss" in text and "L(N, D) =" in text and "Held-out check: not possible here" in text
    few = load_experiment(tiny_toml('[sweep]\n"train.tokens" = [1280, 2560]\n', name="few.toml"))
    assert "could not be fitted" in summarize(few, store.path, bootstrap=20)
