import pytest
import torch

from scalescope.config import ModelConfig
from scalescope.model import GPT, flops_per_token, param_counts


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("attn_only", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_param_counts_match_module(tie, attn_only, bias):
    cfg = ModelConfig(
        n_layer=3, d_model=32, n_head=4, seq_len=16, tie_embeddings=tie, attn_only=attn_only, bias=bias, d_mlp=48
    )
    m = GPT(cfg, vocab_size=50)
    pc = m.param_counts()
    assert pc.total == sum(p.numel() for p in m.parameters())  # parameters() de-duplicates tied weights
    emb = 50 * 32 + 16 * 32 + (0 if tie else 50 * 32)
    assert pc.embedding == emb
    assert pc.nonembedding == pc.total - emb


def test_kaplan_count_is_about_12_L_d2():
    # Kaplan et al. 2020: N ~ 12 n_layer d^2 (ignoring biases and norms); exact up to O(L d) terms.
    cfg = ModelConfig(n_layer=4, d_model=256, n_head=4, seq_len=64, bias=False)
    n = param_counts(cfg, 100).nonembedding
    assert n == 12 * 4 * 256**2 + (2 * 4 + 1) * 256  # + LayerNorm weights


def test_flops_per_token_formula():
    cfg = ModelConfig(n_layer=2, d_model=64, n_head=4, seq_len=32)
    n = param_counts(cfg, 64).nonembedding
    assert flops_per_token(cfg, 64) == 6 * n + 12 * 2 * 32 * 64


def test_math_and_sdpa_paths_agree():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, seq_len=16)
    a = GPT(cfg, 20)
    b = GPT(ModelConfig(**{**cfg.__dict__, "attention": "math"}), 20)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 20, (3, 16))
    # float32 softmax-attention in two orders of summation: agreement to ~1e-6 relative.
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_math_path_supports_double_backward():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=8, attention="math")
    m = GPT(cfg, 10)
    x = torch.randint(0, 10, (2, 8))
    params = [p for p in m.parameters()]
    loss = m.loss(x, x)
    g = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params, retain_graph=True)
    # Hessian-vector product is symmetric: v' H w == w' H v.
    w = [torch.randn_like(p) for p in params]
    hw = torch.autograd.grad(sum((gi * wi).sum() for gi, wi in zip(g, w)), params, retain_graph=True)
    vhw = sum((a * b).sum() for a, b in zip(v, hw))
    whv = sum((a * b).sum() for a, b in zip(w, hv))
    assert torch.isclose(vhw, whv, rtol=1e-3, atol=1e-5)


def test_attention_patterns_are_causal_distributions():
    cfg = ModelConfig(n_layer=2, d_model=16, n_head=2, seq_len=8)
    m = GPT(cfg, 10)
    pats = m.attention_patterns(torch.randint(0, 10, (3, 8)))
    assert len(pats) == 2 and pats[0].shape == (3, 2, 8, 8)
    torch.testing.assert_close(pats[1].sum(-1), torch.ones(3, 2, 8))
    assert float(pats[0].triu(1).abs().max()) == 0.0
    assert m.blocks[0].attn.last_pattern is None  # recording switched off again


def test_attn_only_has_no_mlp():
    m = GPT(ModelConfig(n_layer=2, d_model=16, n_head=2, seq_len=8, attn_only=True), 10)
    assert all(b.mlp is None for b in m.blocks)
