"""What a run records about itself once, before its first step (``meta.json``, see :mod:`scalescope.rundir`):
sizes, FLOPs per token, the budget in steps and tokens, the data source, software versions and hardware."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .data.base import Source
from .device import peak_flops
from .model import flops_per_token, param_counts


def run_meta(
    cfg: RunConfig, model: nn.Module, source: Source, total_steps: int, device: torch.device
) -> dict[str, Any]:
    """The content of ``meta.json``. FLOPs per token follow PaLM appendix B (Chowdhery et al. 2022):
    6N + 12 * n_layer * seq_len * d_model, N = non-embedding parameters."""
    pc = param_counts(cfg.model, source.vocab_size)
    peak = peak_flops(device, cfg.train.precision, cfg.train.tf32)
    return {
        "params_total": pc.total,
        "params_embedding": pc.embedding,
        "params_nonembedding": pc.nonembedding,
        "flops_per_token": flops_per_token(cfg.model, source.vocab_size),
        "flops_convention": "6N + 12*n_layer*seq_len*d_model, N = non-embedding params (PaLM app. B)",
        "total_steps": total_steps,
        "tokens_per_step": cfg.train.batch_size * cfg.model.seq_len,
        "tokens_budget": total_steps * cfg.train.batch_size * cfg.model.seq_len,
        "vocab_size": source.vocab_size,
        "entropy_rate": source.entropy_rate,
        "source": source.describe(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__},
        "hardware": {
            "device": str(device),
            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            # Which machine trained it (a Ray or Slurm worker may be any node); meta.json is not hashed
            # into the run id, so this never changes which run a config is.
            "host": socket.gethostname(),
            # The arithmetic, and the peak the run's "mfu" rows divide by (None: no MFU reported).
            "precision": cfg.train.precision,
            "tf32": cfg.train.tf32 if device.type == "cuda" else None,
            "peak_flops": peak[0],
            "peak_flops_source": peak[1],
        },
    }
