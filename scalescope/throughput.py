"""Training-speed benchmark: scalescope's training step against a plain PyTorch GPT of the same shape,
measured side by side in one process, and the machine's large-matmul rate as the yardstick.

``scalescope bench train --n-layer 4 --d-model 128 --n-head 4 --seq-len 128 --batch 32 --steps 20 --json``
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, TrainConfig
from .data.base import Batch
from .device import autocast, peak_flops, pick_device, set_matmul_precision
from .model import GPT, matmul_flops_per_token, param_counts
from .optim import make_optimizer
from .train import accumulate_gradients


def matmul_flops_per_s(n: int = 1024, repeats: int = 7, device: str = "cpu") -> float:
    """Median FLOP/s of an n x n float32 matmul (2 n^3 FLOPs) at the current thread count."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


# --- the reference: a GPT written the obvious way (nanoGPT-style), SDPA attention, AdamW -------------
class _RefBlock(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.o(y)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, n_layer: int, d: int, h: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList([_RefBlock(d, h) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def bench_train(
    *,
    n_layer: int = 4,
    d_model: int = 128,
    n_head: int = 4,
    seq_len: int = 128,
    batch: int = 32,
    steps: int = 20,
    threads: int = 1,
    vocab: int = 256,
    repeats: int = 3,
    device: str = "auto",
    fused: bool | None = None,
    compile: bool = False,
    precision: str = "fp32",
    tf32: bool = True,
) -> dict[str, Any]:
    """Median step time of scalescope's step and of the reference, interleaved over ``repeats`` rounds
    of ``steps`` steps (after warmup), plus the matmul rate. FLOP/s counts the matmul FLOPs really done
    (6N + 12 L T d + the unembedding, see :func:`scalescope.model.matmul_flops_per_token`)."""
    torch.set_num_threads(threads)
    dev = pick_device(device)
    set_matmul_precision(dev, tf32)
    torch.manual_seed(0)
    mcfg = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len)
    tcfg = TrainConfig(batch_size=batch)
    ours = GPT(mcfg, vocab).to(dev)
    opt = make_optimizer(ours, tcfg, fused=fused)
    if compile:
        # An OptimizedModule that forwards attribute access (``loss``) to the GPT it wraps.
        ours = cast(GPT, torch.compile(ours))
    ref = ReferenceGPT(vocab, seq_len, n_layer, d_model, n_head).to(dev)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    data = torch.randint(0, vocab, (steps, batch, seq_len + 1))
    batches = [Batch.from_tokens(d) for d in data]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_ours(n):
        for i in range(n):
            accumulate_gradients(ours, batches[i], batch, dev, 1.0, precision)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def run_ref(n):
        for i in range(n):
            b = batches[i].to(dev)
            with autocast(dev, precision):
                loss = ref(b.inputs, b.targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            ref_opt.step()
            ref_opt.zero_grad(set_to_none=True)
            float(loss.detach())

    run_ours(min(3, steps))
    run_ref(min(3, steps))
    t_ours: list[float] = []
    t_ref: list[float] = []
    for _ in range(repeats):
        for fn, acc in ((run_ours, t_ours), (run_ref, t_ref)):
            sync()
            t0 = time.perf_counter()
            fn(steps)
            sync()
            acc.append((time.perf_counter() - t0) / steps)
    tokens_per_step = batch * seq_len
    fpt = matmul_flops_per_token(mcfg, vocab)
    tps = tokens_per_step / statistics.median(t_ours)
    ref_tps = tokens_per_step / statistics.median(t_ref)
    mm = matmul_flops_per_s(device=dev.type)
    peak, peak_source = peak_flops(dev, precision, tf32)
    return {
        "tokens_per_s": tps,
        "flops_per_s": tps * fpt,
        "matmul_flops_per_s": mm,
        "utilization": tps * fpt / mm,
        # Model FLOPs utilization against the GPU's data-sheet peak (None off CUDA or for an unlisted GPU).
        "mfu": tps * fpt / peak if peak else None,
        "peak_flops_source": peak_source,
        "precision": precision,
        "reference_tokens_per_s": ref_tps,
        "speedup_vs_reference": tps / ref_tps,
        "params_nonembedding": param_counts(mcfg, vocab).nonembedding,
        "params_total": param_counts(mcfg, vocab).total,
        "flops_per_token_counted": fpt,
        "threads": threads,
        "fused_adamw": opt.defaults.get("fused"),
        "compiled": compile,
        "device": str(dev),
        "steps": steps,
        "repeats": repeats,
        "torch": torch.__version__,
        "step_ms_median": 1e3 * statistics.median(t_ours),
        "reference_step_ms_median": 1e3 * statistics.median(t_ref),
        "note": "medians over interleaved rounds; FLOP/s counts 6N + 12LTd + 6Vd per token",
        "finite": math.isfinite(tps),
    }
