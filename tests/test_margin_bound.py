"""The spectral_bound instrument (scalescope/instruments/margin_bound.py): its norms against numpy, the bound's
terms on a one-layer linear model computed by hand, the folding of biases, the scale invariance of the normalized
margin, and the refusal of a run that is not an MLP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import scalescope.config as C
from scalescope.classifiers import MLP
from scalescope.config import ModelConfig
from scalescope.data import build_source
from scalescope.errors import ConfigError
from scalescope.instruments import ProbeContext, check
from scalescope.instruments import margin_bound as mb

# float64 throughout: norms and margins agree with numpy's to rounding (1e-10 relative is ~1e5 ulps of slack).
RTOL = 1e-10


def _mlp(d: int, k: int, n_layer: int, width: int, bias: bool, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="mlp", n_layer=n_layer, d_model=width, bias=bias, input_dim=d)
    return MLP(cfg, k).double()


@pytest.mark.parametrize("shape", [(7, 3), (3, 7), (20, 20), (1, 5)])
def test_norms_match_numpy(shape):
    a = np.random.default_rng(sum(shape)).standard_normal(shape)
    t = torch.from_numpy(a)
    assert mb.spectral_norm(t) == pytest.approx(np.linalg.norm(a, 2), rel=RTOL)
    # ||Aᵀ||_{2,1}: the 1-norm over Aᵀ's columns (A's rows) of their 2-norms.
    assert mb.norm_2_1(t) == pytest.approx(sum(np.linalg.norm(a[i]) for i in range(shape[0])), rel=RTOL)
    # A rank-one matrix u vᵀ has spectral norm |u||v| and (2,1) norm Σ_i |u_i| |v|: R_A of it alone = ||Aᵀ||_{2,1}.
    u, v = a[:, 0], a[0]
    r1 = torch.from_numpy(np.outer(u, v))
    assert mb.spectral_norm(r1) == pytest.approx(np.linalg.norm(u) * np.linalg.norm(v), rel=RTOL)
    assert mb.norm_2_1(r1) == pytest.approx(np.abs(u).sum() * np.linalg.norm(v), rel=RTOL)


def test_one_layer_linear_model_by_hand():
    """One linear layer, no bias: R_A = ||W||_σ (||Wᵀ||_{2,1} / ||W||_σ)^{(2/3)(3/2)} = ||Wᵀ||_{2,1}; margins
    from X Wᵀ in numpy; the bound's terms from their definitions."""
    d, k, n = 6, 4, 50
    model = _mlp(d, k, n_layer=0, width=8, bias=False)
    w = model.linear_layers()[0].weight.detach().numpy()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((n, d)), rng.integers(0, k, n)
    out = mb.bound_terms(model, torch.from_numpy(x)[:, None, :], torch.from_numpy(y)[:, None], quantile=0.25)

    logits = x @ w.T
    right = logits[np.arange(n), y]
    other = np.where(np.eye(k, dtype=bool)[y], -np.inf, logits).max(1)
    m = right - other
    gamma = np.quantile(m, 0.25)
    r_a = np.linalg.norm(w, axis=1).sum()
    xf = np.linalg.norm(x)
    assert out["spectral_complexity"] == pytest.approx(r_a, rel=RTOL)
    assert out["prod_spectral"] == pytest.approx(np.linalg.norm(w, 2), rel=RTOL)
    assert out["prod_frobenius"] == pytest.approx(np.linalg.norm(w), rel=RTOL)
    assert out["margin"] == pytest.approx(gamma, rel=RTOL)
    assert out["margin_min"] == pytest.approx(m.min(), rel=RTOL)
    assert out["input_norm"] == pytest.approx(xf, rel=RTOL)
    assert out["width"] == max(d, k) and out["n_params"] == d * k and out["n_train"] == n
    assert out["normalized_margin"] == pytest.approx(gamma * n / (r_a * xf), rel=RTOL)
    if gamma > 0:  # a random linear map: check both branches below
        ramp = np.clip(1 - m / gamma, 0, 1).mean()
        comp = xf * r_a * math.log(max(d, k)) / (gamma * n) + math.sqrt(math.log(1 / 0.05) / n)
        assert out["ramp_risk"] == pytest.approx(ramp, rel=RTOL)
        assert out["complexity_noconst"] == pytest.approx(comp, rel=RTOL)
        assert out["bound_noconst"] == pytest.approx(ramp + comp, rel=RTOL)
    else:
        assert math.isnan(out["complexity_noconst"]) and math.isnan(out["ramp_risk"])


def test_positive_margin_branch_and_ramp():
    """A linear model that classifies by construction (W = identity on one-hot-like inputs): every margin is
    positive, γ > 0, and the ramp risk counts only the examples below γ, partially."""
    k = 3
    model = _mlp(k, k, n_layer=0, width=4, bias=False)
    with torch.no_grad():
        model.linear_layers()[0].weight.copy_(torch.eye(k, dtype=torch.float64))
    x = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0], [3.0, 0, 0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    out = mb.bound_terms(model, x, y, quantile=0.5)  # margins 1, 2, 4, 3: γ = median = 2.5
    assert out["margin"] == pytest.approx(2.5)
    assert out["ramp_risk"] == pytest.approx(((1 - 1 / 2.5) + (1 - 2 / 2.5)) / 4)
    assert out["margin_error"] == pytest.approx(0.5)
    assert out["spectral_complexity"] == pytest.approx(k)  # ||I_3ᵀ||_{2,1} = 3
    assert out["normalized_margin"] == pytest.approx(2.5 * 4 / (3 * math.sqrt(1 + 4 + 16 + 9)))


def test_biases_fold_into_augmented_matrices_exactly():
    """The augmented bias-free network on [x; 1] computes the MLP's logits: the bound is about this network."""
    model = _mlp(5, 3, n_layer=2, width=7, bias=True)
    with torch.no_grad():
        for layer in model.linear_layers():
            layer.bias.normal_()  # PyTorch's default biases are small; make them matter
    mats, with_bias = mb.augmented_matrices(model.linear_layers())
    assert with_bias and [tuple(a.shape) for a in mats] == [(8, 6), (8, 8), (3, 8)]
    x = torch.randn(11, 5, dtype=torch.float64)
    h = torch.cat([x, torch.ones(11, 1, dtype=torch.float64)], 1).T
    for i, a in enumerate(mats):
        h = a @ h
        if i < len(mats) - 1:
            h = h.clamp_min(0)
    torch.testing.assert_close(h.T, model(x), rtol=1e-12, atol=1e-12)
    out = mb.bound_terms(model, x, torch.zeros(11, dtype=torch.long))
    assert out["input_norm"] == pytest.approx(math.sqrt(float((x**2).sum()) + 11), rel=RTOL)
    assert out["width"] == 8 and out["n_params"] == 5 * 7 + 7 + 7 * 7 + 7 + 7 * 3 + 3


@pytest.mark.parametrize("bias", [True, False])
def test_normalized_margin_invariant_to_scaling_the_last_layer(bias):
    model = _mlp(8, 4, n_layer=2, width=16, bias=bias, seed=3)
    x = torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(-1)  # labels the model fits: γ > 0
    before = mb.bound_terms(model, x, y)
    c = 3.7
    with torch.no_grad():
        last = model.linear_layers()[-1]
        last.weight.mul_(c)
        if last.bias is not None:
            last.bias.mul_(c)
    after = mb.bound_terms(model, x, y)
    assert before["margin"] > 0
    assert after["margin"] == pytest.approx(c * before["margin"], rel=1e-9)  # the raw margin does move
    assert after["spectral_complexity"] == pytest.approx(c * before["spectral_complexity"], rel=1e-9)
    assert after["normalized_margin"] == pytest.approx(before["normalized_margin"], rel=1e-9)
    assert after["complexity_noconst"] == pytest.approx(before["complexity_noconst"], rel=1e-9)
    assert after["ramp_risk"] == pytest.approx(before["ramp_risk"], abs=1e-12)


def test_refused_unless_mlp():
    with pytest.raises(ConfigError) as e:
        check(C.from_dict({"instruments": {"spectral_bound": {}}}))  # model.arch = "gpt"
    assert e.value.field == "instruments.spectral_bound" and "'gpt'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check(C.from_dict({"instruments": {"spectral_bound": {"quantile": 1.5}}}))
    assert e.value.field == "instruments.spectral_bound.quantile"
    mlp = {"data": {"kind": "digits"}, "model": {"arch": "mlp"}, "instruments": {"spectral_bound": {}}}
    check(C.from_dict(mlp))  # accepted


def test_probe_on_digits():
    """The instrument as the trainer calls it: the whole digits training set, keys under spectral_bound/."""
    cfg = C.from_dict({"data": {"kind": "digits"}, "model": {"arch": "mlp", "n_layer": 1, "d_model": 32}})
    source = build_source(cfg.data, seed=0)
    torch.manual_seed(0)
    model = MLP(cfg.model, source.vocab_size).eval()
    ctx = ProbeContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), source=source, step=0,
                       seq_len=1, batch_size=128, device=torch.device("cpu"))  # fmt: skip
    out = mb.make()(ctx)
    assert out["spectral_bound/n_train"] == source.n_train
    assert out["spectral_bound/width"] == 65  # 64 pixels + the constant 1
    assert all(k.startswith("spectral_bound/") and isinstance(v, float) for k, v in out.items())
    # An untrained network has negative margins at its 10th percentile: the bound says nothing (NaN).
    assert out["spectral_bound/margin"] < 0 and math.isnan(out["spectral_bound/bound_noconst"])
