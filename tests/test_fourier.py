"""The fourier instrument (issue 15): Fourier progress measures of a modular-arithmetic transformer."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scalescope import config as C
from scalescope.cli.run import EXPERIMENTS_DIR
from scalescope.data.modular import ModularConfig
from scalescope.instruments import fourier as FO  # registers "fourier" on import
from scalescope.model import GPT
from scalescope.sweep import load_experiment

from .conftest import train_tiny

# float64 throughout: exact identities hold to rounding, far below these tolerances.
TOL = 1e-9


def test_top_share_of_an_embedding_made_of_known_frequencies():
    p, d = 31, 12
    x = np.arange(p)[:, None]
    rng = np.random.default_rng(0)
    u, v, w = rng.normal(size=(3, d))
    emb = (
        np.cos(2 * np.pi * 3 * x / p) * u
        + np.sin(2 * np.pi * 7 * x / p) * v
        + 0.3 * np.cos(2 * np.pi * 7 * x / p + 1.0) * w
        + rng.normal(size=d)  # a constant row offset: centred away, carries no frequency
    )
    power = FO.frequency_power(torch.tensor(emb))
    assert power.shape == ((p - 1) // 2,)
    # Parseval: the powers sum to the centred squared norm.
    assert math.isclose(float(power.sum()), float(((emb - emb.mean(0)) ** 2).sum()), rel_tol=TOL)
    others = np.delete(power.numpy(), [2, 6])
    assert others.max() < TOL * float(power.sum())
    for k in (2, 3, 10):
        share, freqs = FO.top_share(power, k)
        assert math.isclose(share, 1.0, rel_tol=TOL) and set(freqs[:2]) == {3, 7}
    share1, (top,) = FO.top_share(power, 1)
    assert top == int(power.argmax()) + 1 and share1 < 0.99
    assert math.isclose(share1, float(power.max() / power.sum()), rel_tol=TOL)
    # A random embedding spreads its norm: 2 of 15 frequencies hold far less than all of it.
    share_rand, _ = FO.top_share(FO.frequency_power(torch.tensor(rng.normal(size=(p, d)))), 2)
    assert share_rand < 0.5


def fourier_table(p: int, freqs: list[int], op: str, seed: int) -> torch.Tensor:
    """Logits (p², p): Σ_k α_k cos(w_k(a ∘ b - c) + φ_k), pairs in the order a·p + b."""
    rng = np.random.default_rng(seed)
    a, b, c = np.meshgrid(np.arange(p), np.arange(p), np.arange(p), indexing="ij")
    s = a + b if op == "+" else a - b
    out = np.zeros((p, p, p))
    for k in freqs:
        out += rng.uniform(1, 4) * np.cos(2 * np.pi * k * (s - c) / p + rng.uniform(0, 2 * np.pi))
    return torch.tensor(out.reshape(p * p, p))


@pytest.mark.parametrize("op", ["+", "-"])
def test_restricted_and_excluded_losses_on_pure_fourier_logits(op):
    p = 13
    a, b = np.divmod(np.arange(p * p), p)
    labels = torch.tensor((a + b if op == "+" else a - b) % p)
    train = torch.tensor(np.random.default_rng(1).random(p * p) < 0.3)
    key, rest = fourier_table(p, [2, 5], op, 0), fourier_table(p, [3], op, 1)

    def ce(z: torch.Tensor) -> float:
        return float(F.cross_entropy(z[train], labels[train]))

    # Every component key: restricted = the original loss, excluded = uniform logits, ln p.
    dirs_all = FO.key_directions(p, [2, 3, 5], op)
    assert torch.allclose(dirs_all.T @ dirs_all, torch.eye(6, dtype=torch.float64), atol=TOL)
    r, e = FO.restricted_excluded_losses(key + rest, labels, train, dirs_all)
    assert math.isclose(r, ce(key + rest), rel_tol=TOL) and math.isclose(e, math.log(p), rel_tol=TOL)
    # Key frequencies {2, 5} of {2, 3, 5}: restricted keeps exactly them, excluded exactly the rest; a bias per
    # answer (the mean over the pairs) stays in both.
    bias = torch.tensor(np.random.default_rng(2).normal(size=p))[None, :]
    r, e = FO.restricted_excluded_losses(key + rest + bias, labels, train, FO.key_directions(p, [2, 5], op))
    assert math.isclose(r, ce(key + bias), rel_tol=TOL) and math.isclose(e, ce(rest + bias), rel_tol=TOL)


def modular_model(p: int = 11, seed: int = 0) -> tuple[GPT, object]:
    dc = ModularConfig(p=p, train_fraction=0.4)
    mc = C.ModelConfig(n_layer=1, d_model=16, n_head=2, tie_embeddings=False)
    dc.resolve(mc, None)
    torch.manual_seed(seed)
    return GPT(mc, int(dc.vocab_size or p + 1)).eval(), dc.build(0)


def test_on_a_gpt_the_grid_lines_up_with_the_training_set():
    p = 11
    model, src = modular_model(p)
    m = FO.fourier_metrics(model, src, k=5)  # p = 11: all 5 frequencies are key
    # With every frequency key, the restricted logits are the projection onto functions of s = a + b mod p: the
    # mean of the model's logits over the p pairs with the same s. Computed here from the training arrays alone.
    xs = np.concatenate([src.train.x, src.val.x])
    with torch.no_grad():
        logits = model(torch.from_numpy(xs))[:, -1, :p].double()
    s = torch.from_numpy((xs[:, 0] + xs[:, 1]) % p)
    class_mean = torch.zeros(p, p, dtype=torch.float64).index_add_(0, s, logits) / p  # each s has p pairs
    n_tr = len(src.train)
    want = F.cross_entropy(class_mean[s[:n_tr]], torch.from_numpy(src.train.y))
    assert math.isclose(m["fourier/restricted_loss"], float(want), rel_tol=1e-6)  # float32 forward pass
    assert math.isclose(m["fourier/embed_top_share"], 1.0, rel_tol=TOL)
    norm = math.sqrt(sum(float(q.detach().double().pow(2).sum()) for q in model.parameters()))
    assert math.isclose(m["fourier/weight_norm"], norm, rel_tol=TOL)
    assert m["fourier/embed_power"].shape == (5,) and m["fourier/embed_power"].dtype == np.float32
    m2 = FO.fourier_metrics(model, src, k=2)
    assert 0 < m2["fourier/embed_top_share"] < 1 and np.isfinite(m2["fourier/excluded_loss"])


def experiment(tmp_path, data: str, opts: str = "") -> str:
    path = tmp_path / "g.toml"
    path.write_text(f"[data]\n{data}\n[model]\nn_layer = 1\nd_model = 16\n[instruments.fourier]\n{opts}\n")
    return str(path)


@pytest.mark.parametrize(
    ("data", "opts", "field", "words"),
    [
        ('kind = "markov"', "", "instruments.fourier", "needs a modular source"),
        ('kind = "modular"\np = 11\nop = "*"', "", "instruments.fourier", "data.op = '*'"),
        ('kind = "modular"\np = 11', "k = 6", "instruments.fourier.k", "5 nonzero frequencies"),
        ('kind = "modular"\np = 11', "k = 0", "instruments.fourier.k", "integer >= 1"),
    ],
)
def test_refused_at_load_time(tmp_path, data, opts, field, words):
    path = experiment(tmp_path, data, opts)
    with pytest.raises(C.ConfigError) as e:
        load_experiment(path)
    assert e.value.field == field and words in str(e.value) and "\n" not in str(e.value)


MODULAR = """
[data]
kind = "modular"
p = 11
train_fraction = 0.5
[model]
n_layer = 1
d_model = 16
n_head = 2
[train]
full_batch = true
steps = 12
eval_every = 6
weight_decay = 1.0
[instruments.fourier]
k = 2
"""


def test_runs_on_the_schedule(tmp_path):
    def write(extra: str, name: str):
        path = tmp_path / name
        path.write_text(extra)
        return path

    rd = train_tiny(write, tmp_path, MODULAR, "m.toml")
    rows = rd.read_metrics()
    names = {r["metric"] for r in rows}
    assert {f"fourier/{n}" for n in ("embed_top_share", "restricted_loss", "excluded_loss", "weight_norm")} <= names
    steps = rd.artifact_steps("fourier/embed_power")
    assert 12 in steps and np.load(steps[12]).shape == (5,)


def test_the_builtin_experiment_is_a_weight_decay_control_pair():
    exp = load_experiment(EXPERIMENTS_DIR / "grokking.toml")
    on, off = exp.runs
    assert (on.train.weight_decay, off.train.weight_decay) == (1.0, 0.0)
    off.train.weight_decay = 1.0
    assert C.to_dict(on) == C.to_dict(off)  # nothing else differs
    assert on.data.kind == "modular" and on.train.full_batch and on.train.schedule == "constant"
    assert on.train.batch_size == 1044 and "fourier" in on.instruments  # full batch: 30% of 59² pairs
