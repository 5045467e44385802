"""The torch device a run asks for (``train.device``)."""

from __future__ import annotations

import torch

from .errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; ``cuda`` without CUDA is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA requested but not available", field="train.device")
    return torch.device(name)
