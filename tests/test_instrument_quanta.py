"""The quanta instrument (issue 14): per-skill loss and accuracy, on the schedule and offline."""

import math

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.data.quanta import QuantaSource
from scalescope.instruments import quanta as Q
from scalescope.instruments import registry
from scalescope.model import GPT

from .conftest import train_tiny


class Oracle(torch.nn.Module):
    """Knows skills 0 .. learned-1: probability q on their clean answer (1 - q on the other bit); guesses
    50/50 on the rest. No ln_f: the instrument reads its full logits."""

    def __init__(self, src: QuantaSource, learned: int, q: float):
        super().__init__()
        self.src, self.learned, self.q = src, learned, q

    def forward(self, idx):
        B, T = idx.shape
        n = self.src.n_bits
        skills = (idx[:, n] - 2).numpy()
        clean = torch.as_tensor(self.src.parity(skills, idx[:, :n].numpy()))
        out = torch.full((B, T, self.src.vocab_size), -1e9)
        known = torch.as_tensor(skills < self.learned)
        p_clean = torch.where(known, torch.tensor(self.q), torch.tensor(0.5))
        rows = torch.arange(B)
        out[rows, :, clean] = torch.log(p_clean)[:, None]
        # The other bit; ties (unknown skills) break towards token 0 under argmax, as torch does.
        out[rows, :, 1 - clean] = torch.log1p(-p_clean)[:, None]
        return out


def test_exact_loss_accuracy_and_summary_on_an_oracle():
    eps, q = 0.1, 0.8
    src = QuantaSource(40, 0.4, 10, 3, label_noise=eps, seed=0)
    loss, acc = Q.skill_metrics(Oracle(src, 15, q), src, seq_len=11, examples_per_skill=20, chunk=64)
    assert loss.dtype == np.float32 and loss.shape == (40,) and acc.shape == (40,)
    # The expected noisy-label cross-entropy, exactly (float32 rounding only).
    np.testing.assert_allclose(loss[:15], -(1 - eps) * math.log(q) - eps * math.log(1 - q), rtol=1e-6)
    np.testing.assert_allclose(loss[15:], math.log(2), rtol=1e-6)
    assert (acc[:15] == 1).all() and (acc[15:] < 1).all() and 0.2 < acc[15:].mean() < 0.8
    s = Q.summary(loss, acc, src.skill_probs, 0.9, src.entropy_rate)
    assert s["quanta/skills_learned"] == 15
    assert math.isclose(s["quanta/mean_loss"], float(src.skill_probs @ loss.astype(float)), rel_tol=1e-12)
    # At q = 1 - ε the expected loss is the entropy rate, its minimum.
    loss_best, _ = Q.skill_metrics(Oracle(src, 40, 1 - eps), src, seq_len=11, examples_per_skill=4)
    np.testing.assert_allclose(loss_best, src.entropy_rate, rtol=1e-6)


def test_readout_hook_matches_the_full_forward_pass():
    src = QuantaSource(50, 0.4, 11, 2, label_noise=0.05, seed=0)
    model = GPT(C.ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=12), src.vocab_size).eval()
    x = src.skill_batch(np.arange(50), 0, 12).inputs
    with torch.no_grad():
        full = model(x)[:, 11]
        cut = Q._answer_logits(model, x, 11)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-6)
    assert model(x).shape == (50, 12, src.vocab_size)  # the hook is gone afterwards
    # The probe set is the same however it is chunked: chunk only changes the batching.
    a = Q.skill_metrics(model, src, seq_len=12, examples_per_skill=8, chunk=1024)
    b = Q.skill_metrics(model, src, seq_len=12, examples_per_skill=8, chunk=1024)
    np.testing.assert_array_equal(a[0], b[0])


QUANTA = """
name = "q"
[data]
kind = "quanta"
n_skills = 12
n_bits = 8
bits_per_skill = 2
label_noise = 0.1
[model]
n_layer = 1
d_model = 16
n_head = 2
seq_len = 9
[train]
batch_size = 8
tokens = 2_160       # 30 steps of 8 x 9 tokens
eval_every = 10
eval_batches = 2
lr = 0.01
[instruments.quanta]
examples_per_skill = 8
"""


def test_on_the_schedule_and_offline(tmp_path):
    def write(extra, name):
        (tmp_path / name).write_text(extra)
        return tmp_path / name

    rd = train_tiny(write, tmp_path, QUANTA, "q.toml")
    steps = rd.artifact_steps("quanta/skill_loss")
    assert sorted(steps) == sorted(rd.artifact_steps("quanta/skill_acc")) and len(steps) >= 3
    loss = np.load(steps[max(steps)])
    assert loss.dtype == np.float32 and loss.shape == (12,)
    metrics = {r["metric"] for r in rd.read_metrics()}
    assert {"quanta/mean_loss", "quanta/skills_learned", "quanta/mean_acc", "quanta/entropy_rate"} <= metrics
    # Offline, on the final checkpoint: the same numbers as the stored artifact (same fixed probe set).
    r = Q.probe_run(rd.path, examples_per_skill=8)
    np.testing.assert_allclose(r["skill_loss"], loss, rtol=1e-5)
    assert r["n_skills"] == 12 and len(r["skill_acc"]) == 12 and math.isclose(r["entropy_rate"], 0.3250829733914482)


def test_requires_a_quanta_source_and_checks_options():
    probe = registry.build({"quanta": {}})[0].probe
    cfg = C.from_dict({"data": {"kind": "markov"}, "instruments": {"quanta": {}}})
    with pytest.raises(C.ConfigError, match="quanta needs a quanta source"):
        probe.check_config(cfg)
    for opts, field in (({"examples_per_skill": 0}, "examples_per_skill"), ({"threshold": 0.5}, "threshold")):
        with pytest.raises(C.ConfigError, match=f"instruments.quanta.{field}"):
            registry.build({"quanta": opts})
    with pytest.raises(C.ConfigError) as e:
        Q.probe_run("/nonexistent", threshold=1.5)
    assert e.value.field == "threshold"
