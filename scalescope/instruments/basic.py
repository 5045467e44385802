"""Small built-in instruments; they also show how to write one."""

from __future__ import annotations

import numpy as np
import torch

from .registry import Option, ProbeContext, register


@register("param_norm", options={})
def make_param_norm():
    """Global L2 norm of the parameters, and per top-level module."""

    def probe(ctx: ProbeContext) -> dict:
        out: dict[str, float] = {}
        total = 0.0
        for name, p in ctx.model.named_parameters():
            sq = float(p.detach().double().pow(2).sum())
            total += sq
            key = "param_norm/" + name.split(".")[0]
            out[key] = out.get(key, 0.0) + sq
        out = {k: v**0.5 for k, v in out.items()}
        out["param_norm"] = total**0.5
        return out

    return probe


@register("attention", options={"index": Option(int, ge=0)})
def make_attention(index: int = 0):
    """Attention patterns (n_layer, B, n_head, T, T) on a fixed probe batch, stored as an artifact,
    and the mean attention entropy per layer as metrics."""

    def probe(ctx: ProbeContext) -> dict:
        b = ctx.probe_batch(index)
        pats = ctx.model.attention_patterns(b.inputs)  # type: ignore[operator]  # a GPT method, not nn.Module's
        arr = torch.stack(pats).float().cpu().numpy()
        out: dict = {"attention": arr.astype(np.float16)}
        ent = -(torch.stack(pats).clamp_min(1e-12).log() * torch.stack(pats)).sum(-1).mean(dim=(1, 2, 3))
        for i, e in enumerate(ent.tolist()):
            out[f"attention_entropy/layer{i}"] = e
        return out

    return probe
