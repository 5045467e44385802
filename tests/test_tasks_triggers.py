"""The Markov chain with in-context trigger -> target pairs (Bietti et al. 2023): its sequences, its exact
per-sequence Bayes-optimal loss against a brute-force computation, and its config."""

from __future__ import annotations

import math

import pytest

from scalescope import config as C
from scalescope.data import build_source
from scalescope.data.base import stream_rng
from scalescope.data.triggers import MarkovTriggersSource


@pytest.fixture(scope="module")
def src() -> MarkovTriggersSource:
    return MarkovTriggersSource(12, 24, n_triggers=2, support=3, seed=1)


def test_triggers_are_followed_by_one_target_per_sequence(src):
    tokens = src.sample(stream_rng(0, "train", 0), 300, 40)
    trig = set(src.triggers.tolist())
    assert len(trig) == 2
    seen_different_targets = set()
    for row in tokens:
        after: dict[int, int] = {}
        for t in range(39):
            a, b = int(row[t]), int(row[t + 1])
            if a in trig:
                assert after.setdefault(a, b) == b  # the same target every time in this sequence
            else:  # an ordinary chain transition, inside the state's support
                assert b in src.chain.next_tokens[a]
        seen_different_targets |= {(k, v) for k, v in after.items()}
    assert len(seen_different_targets) > 6  # targets change from sequence to sequence


def test_ideal_loss_matches_brute_force(src):
    tokens = src.sample(stream_rng(0, "val", 3), 40, 25)
    got = src.ideal_loss(tokens)
    trig = set(src.triggers.tolist())
    for b, row in enumerate(tokens):
        seen = set()
        for t in range(24):
            a, nxt = int(row[t]), int(row[t + 1])
            if a in trig:
                want = 0.0 if a in seen else math.log(12)
                seen.add(a)
            else:
                j = list(src.chain.next_tokens[a]).index(nxt)
                want = -math.log(src.chain.probs[a, j])
            assert got[b, t] == pytest.approx(want, abs=1e-12)
    curve = src.ideal_loss_by_position(24)
    assert curve.shape == (24,) and src.entropy_rate == pytest.approx(curve.mean())
    assert 0 < src.entropy_rate_error < 0.05
    # In-context learning pays: the Bayes-optimal loss falls along the context as targets get known.
    assert curve[-4:].mean() < curve[:4].mean()
    d = src.describe()
    assert d["kind"] == "markov_triggers" and d["triggers"] == src.triggers.tolist()


def test_config_and_errors():
    cfg = C.from_dict({"data": {"kind": "markov_triggers", "vocab_size": 16, "support": 4}, "model": {"seq_len": 20}})
    assert cfg.data.n_triggers == 1 and cfg.data.seq_len == 20
    s = build_source(cfg.data, seed=2)
    assert isinstance(s, MarkovTriggersSource) and s.batch("train", 0, 3, 20).inputs.shape == (3, 20)
    for data, field, match in [
        ({"order": 2}, "data.order", "first-order"),
        ({"n_triggers": 16}, "data.n_triggers", r"\[1, vocab_size - 1 = 15\]"),
        ({"span_min": 4}, "data.span_min", "only applies to kind = 'repeated_spans'"),
        ({"support": 20}, "data.support", "cannot exceed"),
    ]:
        with pytest.raises(C.ConfigError, match=match) as e:
            C.from_dict({"data": {"kind": "markov_triggers", "vocab_size": 16, **data}})
        assert e.value.field == field
    with pytest.raises(C.ConfigError, match="only applies to kind = 'markov_triggers'") as e:
        C.from_dict({"data": {"kind": "markov", "n_triggers": 2}})
    assert e.value.field == "data.n_triggers"
    with pytest.raises(C.ConfigError, match="only applies to kinds") as e:
        C.from_dict({"data": {"kind": "hmm", "seq_len": 64}})
    assert e.value.field == "data.seq_len"
