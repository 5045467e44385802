"""A stored run at a given step, for instruments run offline (``scalescope probe NAME RUN_DIR``).

It rebuilds what the training loop held at that step (the config, the data source, the model, and the
optimizer when its state is stored) from the run directory alone; it never trains, and it imports nothing
of the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from . import config as C
from .checkpoint import TrainState, load_checkpoint, load_weights, mismatch
from .data import build_source
from .data.base import Source
from .device import pick_device
from .errors import ConfigError, StoreError
from .model import Model, build_model, flops_per_token
from .optim import make_optimizer
from .rundir import RunDir
from .schedule import budget_steps, lr_at
from .store import Store

__all__ = ["LoadedRun", "check_batch_options", "load_run"]


@dataclass
class LoadedRun:
    cfg: C.RunConfig
    model: Model
    optimizer: torch.optim.Optimizer
    has_optimizer_state: bool  # False when only weights were kept at that step
    source: Source
    step: int
    device: torch.device
    run_dir: RunDir

    @property
    def lr(self) -> float:
        """The learning rate the schedule gives at this step, as the training loop gives it to instruments."""
        total = budget_steps(self.cfg, flops_per_token(self.cfg.model, self.source.vocab_size))
        return lr_at(min(self.step, total - 1), self.cfg.train, total)


def check_batch_options(n_batches: int, batch_size: int | None) -> None:
    """The arguments of every offline probe that averages over ``n_batches`` probe batches of ``batch_size``
    (None: the run's micro-batch or batch size); an error names the argument."""
    if n_batches < 1:
        raise ConfigError(f"expected a positive integer, got {n_batches}", field="n_batches")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"expected a positive integer, got {batch_size}", field="batch_size")


def load_run(
    run_dir: str | Path,
    step: int | None = None,
    *,
    attention: Literal["sdpa", "math"] | None = "math",
    device: str = "auto",
) -> LoadedRun:
    """The run's model (and optimizer, when its state is stored) at ``step`` (None: the latest checkpoint).

    ``attention="math"`` switches the model to the explicit attention path, which Hessian-vector
    products need; the weights are the same either way. A ``step`` with nothing stored raises
    :class:`ConfigError` with ``field="step"``, listing the steps there are.
    """
    rd = RunDir(Path(run_dir))
    if not rd.exists():
        raise ConfigError("not a run directory (no config.json)", file=rd.path)
    cfg = C.from_dict(rd.read_config(), str(rd.config_path))
    if attention:
        cfg.model.attention = attention
    dev = pick_device(device)
    source = build_source(cfg.data, seed=cfg.seed)
    source.prepare(Store.containing(rd).cache_dir)
    model = build_model(cfg.model, source.vocab_size)
    opt = make_optimizer(model, cfg.train)
    # Loaded with weights_only=True (scalescope.checkpoint): a checkpoint from an untrusted store runs no code.
    latest: TrainState | None = load_checkpoint(rd.checkpoint_path) if rd.checkpoint_path.exists() else None
    diff = mismatch(latest, run_id=rd.id) if latest is not None else None
    if diff:
        raise StoreError(f"{rd.checkpoint_path}: checkpoint of another run: {diff}")
    has_opt = False
    if step is None or (latest is not None and latest.step == step):
        if latest is None:
            raise ConfigError("run has no checkpoint yet", file=rd.path)
        model.load_state_dict(latest.model)
        opt.load_state_dict(latest.optimizer)
        step, has_opt = latest.step, True
    else:
        wp = rd.weights_path(step)
        if not wp.exists():
            steps = rd.weight_steps() + ([latest.step] if latest else [])
            raise ConfigError(
                f"no weights at step {step}; available steps: {sorted(set(steps)) or 'none'} "
                "(set train.keep_weights = true to keep weights at every evaluation)",
                file=rd.path,
                field="step",
            )
        model.load_state_dict(load_weights(wp))
    model.to(dev)
    if has_opt:  # move optimizer state next to the parameters
        for st in opt.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    st[k] = v.to(dev)
    model.eval()
    return LoadedRun(cfg, model, opt, has_opt, source, step, dev, rd)
