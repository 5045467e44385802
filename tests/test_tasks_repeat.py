"""The repeated-random-spans source (induction data): its layout, its stated entropy bounds, its config
fields and errors, and that adding it left every earlier run id unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scalescope import config as C
from scalescope.data import build_source
from scalescope.data.base import stream_rng
from scalescope.data.repeat import RepeatedSpansSource, sample_repeated, span_range
from scalescope.sweep import load_experiment

EXPERIMENTS = Path(C.__file__).parent / "experiments"


def test_layout_tail_repeats_a_span_at_varying_offsets():
    rng = np.random.default_rng(0)
    L, V = 65, 50
    tokens, n, a = sample_repeated(rng, 2000, L, V, 8, 32)
    assert tokens.shape == (2000, L) and tokens.min() >= 0 and tokens.max() < V
    assert n.min() == 8 and n.max() == 32
    for row, ni, ai in zip(tokens[:200], n[:200], a[:200]):
        assert 0 <= ai <= L - 2 * ni
        np.testing.assert_array_equal(row[L - ni :], row[ai : ai + ni])
    offsets = L - n - a
    # The pitfall: a fixed offset lets a positional head earn the score. Offsets cover n .. L - n.
    assert len(np.unique(offsets)) > 40 and offsets.min() >= 8 and offsets.max() <= L - 8
    # The non-copied tokens are uniform.
    free = np.concatenate([row[: L - ni] for row, ni in zip(tokens, n)])
    counts = np.bincount(free, minlength=V) / free.size
    assert np.abs(counts - 1 / V).max() < 0.2 / V


def test_source_is_pure_function_of_split_and_index():
    s = RepeatedSpansSource(32, 40, seed=1, stream_seed=3)
    a, b = s.batch("train", 5, 4, 40), s.batch("train", 5, 4, 40)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, s.batch("train", 6, 4, 40).inputs)
    assert not np.array_equal(a.inputs, s.batch("val", 5, 4, 40).inputs)
    assert not np.array_equal(a.inputs, s.with_stream_seed(4).batch("train", 5, 4, 40).inputs)
    assert a.inputs.shape == (4, 40) and np.array_equal(a.inputs[:, 1:], a.targets[:, :-1])


def test_entropy_bounds_and_ideal_loss_by_position_match_the_layouts():
    V, T = 16, 31
    s = RepeatedSpansSource(V, T)
    lo, hi = s.span_min, s.span_max
    assert (lo, hi) == (8, 16) == span_range(T, None, None)
    ns = np.arange(lo, hi + 1)
    assert s.entropy_rate == pytest.approx((T - ns.mean()) * math.log(V) / T)
    # H(n, a) by brute force over the joint distribution of the layout.
    probs = [1 / len(ns) / (T + 2 - 2 * n) for n in ns for _ in range(T + 2 - 2 * n)]
    h = -sum(p * math.log(p) for p in probs)
    assert s.entropy_rate_error == pytest.approx(h / T)
    d = s.describe()
    assert d["entropy_rate_upper"] == pytest.approx(s.entropy_rate + h / T)
    assert d["random_token_entropy"] == pytest.approx(math.log(V)) and d["ideal_copy_loss"] == 0.0
    # Which targets are copies, from sampled layouts, against the stated per-position probabilities.
    _, n, _ = sample_repeated(stream_rng(0, "train", 0), 20000, T + 1, V, lo, hi)
    t = np.arange(T)
    is_copy = (t[None, :] + 1) >= (T + 1 - n[:, None]) + 1  # target x_{t+1} after the repeat's first token
    np.testing.assert_allclose(is_copy.mean(0), s.copyable_fraction_by_position(T), atol=0.015)
    ideal = s.ideal_loss_by_position(T)
    assert ideal[: T - hi + 1] == pytest.approx(math.log(V)) and ideal[-1] == 0.0
    # A perfect induction predictor: the first repeated token is still a surprise.
    assert ideal.mean() == pytest.approx((T - ns.mean() + 1) * math.log(V) / T)


def test_config_resolves_seq_len_and_builds_the_source():
    cfg = C.from_dict(
        {"data": {"kind": "repeated_spans", "vocab_size": 32, "span_min": 4, "span_max": 10}, "model": {"seq_len": 24}}
    )
    assert cfg.data.seq_len == 24
    src = build_source(cfg.data, seed=0)
    assert isinstance(src, RepeatedSpansSource) and (src.span_min, src.span_max) == (4, 10)
    assert src.describe()["kind"] == "repeated_spans" and src.vocab_size == 32
    # A swept seq_len resolves per run, and the source follows it.
    other = C.from_dict({"data": {"kind": "repeated_spans"}, "model": {"seq_len": 48}})
    assert other.data.seq_len == 48 and C.run_id(other) != C.run_id(C.from_dict({"data": {"kind": "repeated_spans"}}))


@pytest.mark.parametrize(
    "data, model, field, match",
    [
        ({"span_max": 40}, {"seq_len": 64}, "data.span_max", "cannot exceed"),
        ({"span_min": 20, "span_max": 10}, {}, "data.span_min", "exceeds span_max"),
        ({"span_min": 1}, {}, "data.span_min", ">= 2"),
        ({}, {"seq_len": 2}, "model.seq_len", "too short"),
        ({"seq_len": 32}, {"seq_len": 64}, "data.seq_len", "must equal model.seq_len"),
        ({"vocab_size": 1}, {}, "data.vocab_size", ">= 2"),
    ],
)
def test_impossible_parameters_are_one_line_errors(data, model, field, match):
    with pytest.raises(C.ConfigError, match=match) as e:
        C.from_dict({"data": {"kind": "repeated_spans", **data}, "model": model}, "exp.toml")
    assert e.value.field == field and "\n" not in str(e.value) and str(e.value).startswith(f"exp.toml: {field}: ")


def test_span_fields_belong_to_their_kind():
    with pytest.raises(C.ConfigError, match="only applies to kind = 'repeated_spans'") as e:
        C.from_dict({"data": {"kind": "markov", "span_max": 8}})
    assert e.value.field == "data.span_max"
    with pytest.raises(C.ConfigError, match="unknown key"):
        C.from_dict({"data": {"kind": "repeated_spans", "span": 8}})


# Run ids computed before the repeated_spans fields existed (commit 08866a6): they must never change.
OLD_IDS = {
    "default": "b13f09528031",
    "hmm_attn_only": "0f1e30e09c51",
}
# Text runs' ids changed on purpose when the corpus's content replaced its path in the id (issue 11; see
# tests/test_run_identity.py and the re-pinned text cases in tests/fixtures/run_ids.json).


def test_old_run_ids_are_unchanged():
    assert C.run_id(C.from_dict({})) == OLD_IDS["default"]
    assert (
        C.run_id(
            C.from_dict(
                {
                    "data": {"kind": "hmm", "vocab_size": 32},
                    "model": {"attn_only": True, "n_layer": 1},
                    "instruments": {"attention": {}},
                }
            )
        )
        == OLD_IDS["hmm_attn_only"]
    )
    # The first demo's first three runs (d_model 32; the demo itself was redesigned in issue 11).
    first_demo = {
        "data": {"kind": "markov", "vocab_size": 256, "order": 1, "support": 16, "concentration": 0.5, "seed": 0},
        "model": {"n_layer": 2, "n_head": 4, "seq_len": 64, "d_model": 32},
        "train": {"lr": 3e-3, "batch_size": 32, "eval_every": 100, "eval_batches": 8},
    }
    ids = [
        C.run_id(C.from_dict({**first_demo, "train": {**first_demo["train"], "tokens": t}}))
        for t in (250_000, 1_000_000, 4_000_000)
    ]
    assert ids == ["86f590c77466", "514c9bd00a5d", "fe6df5d93c9f"]
    crit = load_experiment(EXPERIMENTS / "critical_batch.toml")
    # The lr grid moved up 2x after a real run: its first two runs are the old second and third.
    assert [C.run_id(r) for r in crit.runs][:3] == ["66787b2b7e32", "db3bc421dfbf", "b580e569d714"]
