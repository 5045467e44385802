"""The optimizer of a run, built from its train config (used by training, offline probes and the benchmark)."""

from __future__ import annotations

import torch

from .config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, *, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD+momentum. Weight decay applies to matrices only (not biases, norms) as in GPT-2.

    ``fused``: torch's fused AdamW kernel (None: torch's default choice)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
