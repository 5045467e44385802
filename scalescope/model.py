"""A decoder-only transformer small enough to read in one sitting (in the spirit of nanoGPT).

Pre-LayerNorm blocks, learned positions (or rotary ones: ``positions="rope"``), GELU MLP (or none:
``attn_only``), tied or untied embeddings.
Attention runs through ``scaled_dot_product_attention`` by default; ``attention="math"`` switches to
the explicit softmax(QKᵀ/√d)V path, which supports double backward (Hessian-vector products) and can
return the attention patterns to probes.

Float-input mode (``input_dim`` set, for vector-token tasks such as in-context regression): a linear
read-in of width ``input_dim`` replaces the token embedding, the read-out has ``vocab_size`` outputs (1: a
scalar), embeddings are never tied, and :meth:`GPT.loss` is the squared error. The read-in and read-out
count as embedding parameters; FLOPs per token are the same formula, a "token" being one sequence position
(an x or a y of the regression layout).

Parameter counts follow Kaplan et al. 2020: N (``params_nonembedding``) excludes the token embedding,
the position embedding and an untied unembedding; it is the N of the scaling laws and of the FLOP
formula below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import classifiers
from .config import ModelConfig


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (seq_len, head_dim // 2), of the angles t·base^(−2i/head_dim) (Su et al. 2021, RoFormer)."""
    inv = base ** (-torch.arange(0, head_dim - 1, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs (x[i], x[i + hs/2]) of (..., T, hs) by their angle at position t (the GPT-NeoX
    layout of RoFormer's rotation), so that a query at t and a key at s interact through t − s only. An
    odd last feature (odd hs) is left as it is."""
    T, half = x.shape[-2], cos.shape[-1]
    c, s = cos[:T], sin[:T]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rot = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return rot if 2 * half == x.shape[-1] else torch.cat([rot, x[..., 2 * half :]], dim=-1)


class CausalSelfAttention(nn.Module):
    # Buffers registered in __init__ (declared here for the type checker; nn.Module's __getattr__ is untyped).
    causal: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.d_model = cfg.n_head, cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.math = cfg.attention == "math"
        self.register_buffer("causal", torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).tril(), persistent=False)
        self.rope = cfg.positions == "rope"
        if self.rope:
            cos, sin = rotary_tables(cfg.seq_len, cfg.d_model // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # Probes set this to True to receive the (B, nh, T, T) patterns in ``last_pattern``.
        self.record_pattern = False
        self.last_pattern: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.d_model, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if self.rope:
            q, k = apply_rotary(torch.stack([q, k]), self.rope_cos, self.rope_sin).unbind(0)  # one call for both
        if self.math or self.record_pattern:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
            att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(dim=-1)
            if self.record_pattern:
                self.last_pattern = att.detach()
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.d_mlp or 4 * cfg.d_model
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = None if cfg.attn_only else nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = None if cfg.attn_only else MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        if self.mlp is not None and self.ln2 is not None:  # both or neither (attn_only)
            x = x + self.mlp(self.ln2(x))
        return x


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # token + position embeddings, and the unembedding when untied
    nonembedding: int  # Kaplan's N


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.float_inputs = cfg.input_dim is not None
        # (B, T) ids -> (B, T, C) by lookup, or (B, T, input_dim) vectors -> (B, T, C) by a linear map.
        self.tok_emb = (
            nn.Linear(cfg.input_dim, cfg.d_model, bias=cfg.bias)
            if cfg.input_dim is not None
            else nn.Embedding(vocab_size, cfg.d_model)
        )
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings and not self.float_inputs:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init)
        # GPT-2's scaled init of the residual projections: std / sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            bias = getattr(module, "bias", None)  # an Embedding has none, a Linear may have none
            if bias is not None:
                nn.init.zeros_(bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab); float mode: vectors (B, T, input_dim) -> (B, T, vocab)."""
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds model.seq_len {self.cfg.seq_len}")
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy in nats over the (masked) positions; with float targets (float-input
        mode) the mean squared error, summed over the read-out's outputs."""
        return self.loss_from_logits(self(idx), targets, mask)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`loss` of logits already computed (an evaluation that also wants the predictions)."""
        if targets.is_floating_point():
            pred = logits.squeeze(-1) if logits.size(-1) == 1 else logits
            per = (pred - targets) ** 2
            per = per if per.dim() == 2 else per.sum(-1)  # (B, T)
            if mask is None:
                return per.mean()
            m = mask.to(per.dtype)
            return (per * m).sum() / m.sum().clamp_min(1)
        if mask is None:
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        per = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        m = mask.reshape(-1).to(per.dtype)
        return (per * m).sum() / m.sum().clamp_min(1)

    @torch.no_grad()
    def attention_patterns(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every layer, each (B, n_head, T, T), via the explicit path."""
        attns = [cast(Block, b).attn for b in self.blocks]
        for a in attns:
            a.record_pattern = True
        try:
            self(idx)
            patterns = []
            for a in attns:
                assert a.last_pattern is not None  # recorded by the forward pass just made
                patterns.append(a.last_pattern)
            return patterns
        finally:
            for a in attns:
                a.record_pattern, a.last_pattern = False, None

    def param_counts(self) -> ParamCounts:
        return param_counts(self.cfg, self.vocab_size)

    def flops_per_token(self) -> float:
        return flops_per_token(self.cfg, self.vocab_size)


# Every model the trainer builds (``model.arch``).
Model = GPT | classifiers.MLP | classifiers.RandomFeatures


def build_model(cfg: ModelConfig, vocab_size: int) -> Model:
    """The model ``cfg.arch`` names: the GPT, or a classifier of vector examples (``vocab_size`` then
    counts classes). Every model has ``loss(inputs, targets, mask)``, ``cfg`` and ``vocab_size``."""
    if cfg.arch == "gpt":
        return GPT(cfg, vocab_size)
    return classifiers.MLP(cfg, vocab_size) if cfg.arch == "mlp" else classifiers.RandomFeatures(cfg, vocab_size)


def param_counts(cfg: ModelConfig, vocab_size: int) -> ParamCounts:
    """Closed-form parameter counts (checked against the module in the tests)."""
    if cfg.arch != "gpt":
        return ParamCounts(*classifiers.counts(cfg, vocab_size))
    d, L = cfg.d_model, cfg.n_layer
    h = cfg.d_mlp or 4 * d
    b = 1 if cfg.bias else 0
    ln = d + b * d
    attn = d * 3 * d + b * 3 * d + d * d + b * d
    mlp = 0 if cfg.attn_only else (d * h + b * h + h * d + b * d + ln)
    nonemb = L * (ln + attn + mlp) + ln
    pos = cfg.seq_len * d if cfg.positions == "learned" else 0
    if cfg.input_dim is not None:  # linear read-in (with bias) and an untied read-out
        emb = cfg.input_dim * d + b * d + pos + vocab_size * d
    else:
        emb = vocab_size * d + pos + (0 if cfg.tie_embeddings else vocab_size * d)
    return ParamCounts(total=nonemb + emb, embedding=emb, nonembedding=nonemb)


def flops_per_token(cfg: ModelConfig, vocab_size: int) -> float:
    """Training FLOPs per token, 6N + 12·n_layer·seq_len·d_model (PaLM, Chowdhery et al. 2022, app. B).

    N is the non-embedding parameter count (Kaplan et al. 2020's convention); the attention term counts
    the QKᵀ and AV products over the full context. This is the C of the scaling laws and the budget
    ``train.flops``; :func:`matmul_flops_per_token` adds the unembedding for hardware utilization.
    For the classifiers (``cfg.arch``), a token is one example: :func:`scalescope.classifiers.flops_per_example`.
    """
    if cfg.arch != "gpt":
        return classifiers.flops_per_example(cfg, vocab_size)
    n = param_counts(cfg, vocab_size).nonembedding
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.seq_len * cfg.d_model


def matmul_flops_per_token(cfg: ModelConfig, vocab_size: int) -> float:
    """FLOPs the hardware actually does per training token: :func:`flops_per_token` plus the
    unembedding matmul (6·V·d), which is large for small models. Used for FLOP/s in benchmarks."""
    if cfg.arch != "gpt":
        return flops_per_token(cfg, vocab_size)
    return flops_per_token(cfg, vocab_size) + 6.0 * vocab_size * cfg.d_model
