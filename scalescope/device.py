"""The torch device a run asks for (``train.device``), and the arithmetic it runs in (``train.precision``)."""

from __future__ import annotations

import contextlib
import re

import torch

from .errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; ``cuda`` without CUDA is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "CUDA requested but not available on this machine (torch.cuda.is_available() is false)",
            field="train.device",
        )
    return torch.device(name)


def set_matmul_precision(device: torch.device, tf32: bool) -> None:
    """TF32 tensor-core matmuls (and cuDNN convolutions) on CUDA when ``tf32``; set both ways on every run,
    because a Ray worker process trains many runs one after another and the flags are process-wide."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def check_precision(device: torch.device, precision: str) -> None:
    """bf16 on a GPU without bfloat16 arithmetic (before Ampere: V100, T4) would run emulated, many times
    slower than fp32: refuse it in one line rather than let a sweep crawl."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"bf16 is not supported by {torch.cuda.get_device_name(device)} (no bfloat16 tensor cores); use fp32",
            field="train.precision",
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the forward pass runs in: bfloat16 autocast for ``bf16`` (weights and optimizer state stay
    float32; torch keeps softmax, layer norm and the cross-entropy in float32 under autocast), nothing for
    ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Dense (no 2:4 sparsity) tensor-core peaks in FLOP/s from the vendors' data sheets, by precision, for the
# GPUs researchers most often have; the key is a substring of torch.cuda.get_device_name(). MFU (model FLOPs
# utilization, Chowdhery et al. 2022, PaLM appendix B) is achieved model FLOP/s over this peak.
# fp32 here means the TF32 tensor-core rate when TF32 is on, the plain fp32 rate otherwise.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "tf32": 494.7e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "tf32": 494.7e12, "fp32": 67e12},  # SXM (and NVL)
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "V100": {"bf16": 0.0, "tf32": 0.0, "fp32": 15.7e12},  # no bf16 or TF32 tensor cores
    "T4": {"bf16": 0.0, "tf32": 0.0, "fp32": 8.1e12},
}


def peak_flops(device: torch.device, precision: str, tf32: bool) -> tuple[float | None, str]:
    """(peak FLOP/s of this device at this precision, where the figure comes from); None off CUDA or for a
    GPU not in :data:`PEAK_FLOPS` (then no MFU is reported rather than a guessed one)."""
    if device.type != "cuda":
        return None, "no published peak for a CPU"
    name = torch.cuda.get_device_name(device)
    key = "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")
    gpu = gpu_model(name)
    if gpu is not None and PEAK_FLOPS[gpu][key] > 0:
        peak = PEAK_FLOPS[gpu][key]
        return peak, f"{gpu} {key} dense peak {peak / 1e12:.4g} TFLOP/s (data sheet)"
    return None, f"no peak known for {name!r} at {key}"


def gpu_model(name: str) -> str | None:
    """The :data:`PEAK_FLOPS` key a device name is: the longest key found as whole words ("NVIDIA H100 PCIe"
    is "H100 PCIe"; "NVIDIA L40" is no "L4", "RTX A1000" no "A100"), or None."""
    hits = [k for k in PEAK_FLOPS if re.search(rf"(?<![\w-]){re.escape(k)}(?!\w)", name)]
    return max(hits, key=len) if hits else None
