"""Models of vector examples for the generalization experiments (issue 15): an MLP, and random ReLU features
with a closed-form readout. Both read a batch of vector examples laid out as one-position sequences,
(B, 1, d) -> logits (B, 1, C) (see :mod:`scalescope.data.dataset`), so the trainer treats them like the GPT.

* ``model.arch = "mlp"``: ``n_layer`` hidden layers of width ``d_model``, ReLU, a linear read-out; PyTorch's
  default initialization (Kaiming-uniform, He et al. 2015), which is what the published MLP experiments use
  (``model.init_std`` does not apply). Cross-entropy loss.
* ``model.arch = "random_features"``: φ(x) = ReLU(W x / √d) with W a fixed standard Gaussian (d, N) matrix,
  N = ``d_model`` features, and a linear read-out fitted in closed form to one-hot targets by least squares
  (Rahimi and Recht 2007; the double-descent model of Belkin, Hsu, Ma and Mandal 2019, sec. 3, and Mei and
  Montanari 2019). With ``ridge`` λ = 0 the read-out is the minimum-norm solution a = Φ⁺Y; with λ > 0 it is
  argmin ||Φa − Y||² + λ||a||², i.e. a = V diag(s / (s² + λ)) Uᵀ Y from the SVD Φ = U S Vᵀ (one formula for
  both, computed in float64). Its loss is the squared error to the one-hot target, summed over classes.

Parameter counts: every weight of the MLP is N (no embeddings); the random-features model's N is its readout,
N·C (the random weights are not learned). FLOPs per example: 6N for the MLP; for random features the forward
pass, 2(d + C)·N.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = ["MLP", "RandomFeatures", "available_memory", "counts", "flops_per_example", "readout_bytes"]

# The singular values kept by the minimum-norm readout: those above this fraction of the largest times
# max(n, N), numpy's pinv default (rcond = max(M, N)·eps) for float64.
_EPS = torch.finfo(torch.float64).eps


def _ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class MLP(nn.Module):
    """Fully connected ReLU network (B, 1, d) -> (B, 1, C)."""

    def __init__(self, cfg: ModelConfig, n_classes: int):
        super().__init__()
        assert cfg.input_dim is not None, "the data source sets model.input_dim"
        self.cfg, self.vocab_size = cfg, n_classes
        widths = [cfg.input_dim] + [cfg.d_model] * cfg.n_layer + [n_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=cfg.bias) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def linear_layers(self) -> list[nn.Linear]:
        """The weight layers from input to output (ReLU between them): what norm-based bounds multiply."""
        return list(self.layers)  # type: ignore[arg-type]

    def loss(self, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_from_logits(self(x), targets, mask)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _ce_loss(logits, targets)


class RandomFeatures(nn.Module):
    """ReLU random features with a closed-form least-squares readout (see the module doc)."""

    closed_form = True
    weight: torch.Tensor
    readout: torch.Tensor

    def __init__(self, cfg: ModelConfig, n_classes: int):
        super().__init__()
        assert cfg.input_dim is not None, "the data source sets model.input_dim"
        self.cfg, self.vocab_size = cfg, n_classes
        # Drawn from the global generator, which the trainer seeds with the run seed (like every init).
        self.register_buffer("weight", torch.randn(cfg.input_dim, cfg.d_model))
        self.register_buffer("readout", torch.zeros(cfg.d_model, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ self.weight / math.sqrt(self.weight.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.readout

    def loss(self, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_from_logits(self(x), targets, mask)

    def loss_from_logits(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        onehot = F.one_hot(targets, self.vocab_size).to(logits.dtype)
        return ((logits - onehot) ** 2).sum(-1).mean()

    @torch.no_grad()
    def fit(self, x: torch.Tensor, targets: torch.Tensor, ridge: float = 0.0) -> None:
        """Set the readout to the ridge (λ > 0) or minimum-norm (λ = 0) least-squares fit of the one-hot targets."""
        phi = self.features(x).reshape(-1, self.weight.shape[1]).double()  # (n, N)
        y = F.one_hot(targets.reshape(-1), self.vocab_size).double()  # (n, C)
        u, s, vh = torch.linalg.svd(phi, full_matrices=False)
        if ridge > 0:
            gain = s / (s**2 + ridge)
        else:
            keep = s > s.max() * max(phi.shape) * _EPS
            gain = torch.where(keep, 1.0 / s.clamp_min(1e-300), torch.zeros_like(s))
        self.readout.copy_((vh.T @ (gain[:, None] * (u.T @ y))).to(self.readout.dtype))


def counts(cfg: ModelConfig, n_classes: int) -> tuple[int, int, int]:
    """(total, embedding, non-embedding) parameter counts of an ``mlp`` or ``random_features`` model."""
    if cfg.arch == "random_features":
        n = cfg.d_model * n_classes
        return n, 0, n
    d = int(cfg.input_dim or 0)
    widths = [d] + [cfg.d_model] * cfg.n_layer + [n_classes]
    b = 1 if cfg.bias else 0
    n = sum(a * c + b * c for a, c in zip(widths[:-1], widths[1:]))
    return n, 0, n


def flops_per_example(cfg: ModelConfig, n_classes: int) -> float:
    """Training FLOPs per example: 6N for the MLP (forward and backward); the forward pass for random features."""
    if cfg.arch == "random_features":
        return 2.0 * (int(cfg.input_dim or 0) + n_classes) * cfg.d_model
    return 6.0 * counts(cfg, n_classes)[0]


def readout_bytes(n_train: int, n_features: int) -> int:
    """Memory the closed-form readout needs at its peak: the float64 feature matrix, its SVD factors (U and Vᵀ
    at min(n, N) columns) and the float32 copy, about 8·(n·N + min(n, N)·(n + N)) + 4·n·N bytes."""
    k = min(n_train, n_features)
    return 8 * (n_train * n_features + k * (n_train + n_features)) + 4 * n_train * n_features


def available_memory() -> int | None:
    """Bytes of memory available now (Linux: MemAvailable), or None when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
