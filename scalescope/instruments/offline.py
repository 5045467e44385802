"""Loading a stored run at a given step, for instruments run offline (``scalescope probe ...``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config as C
from ..data import build_source
from ..data.base import Source
from ..model import GPT
from ..rundir import RunDir
from ..train import make_optimizer, pick_device
from . import ProbeContext


@dataclass
class LoadedRun:
    cfg: C.RunConfig
    model: GPT
    optimizer: torch.optim.Optimizer
    has_optimizer_state: bool  # False when only weights were kept at that step
    source: Source
    step: int
    device: torch.device
    run_dir: RunDir

    def context(self, batch_size: int | None = None) -> ProbeContext:
        """A probe context like the one the training loop gives instruments."""
        from ..schedule import lr_at
        from ..train import budget_steps

        total = budget_steps(self.cfg, self.model.flops_per_token())
        return ProbeContext(
            model=self.model,
            optimizer=self.optimizer,
            source=self.source,
            step=self.step,
            seq_len=self.cfg.model.seq_len,
            batch_size=batch_size or self.cfg.train.micro_batch_size or self.cfg.train.batch_size,
            device=self.device,
            train_cfg=self.cfg.train,
            lr=lr_at(min(self.step, total - 1), self.cfg.train, total),
        )


def check_batch_options(n_batches: int, batch_size: int | None) -> None:
    """The options every offline probe that averages over probe batches takes: one line per mistake."""
    if n_batches < 1:
        raise C.ConfigError(f"expected a positive integer, got {n_batches}", field="--n-batches")
    if batch_size is not None and batch_size < 1:
        raise C.ConfigError(f"expected a positive integer, got {batch_size}", field="--batch-size")


def available_steps(rd: RunDir) -> list[int]:
    steps = []
    for p in (rd.path / "checkpoints").glob("step_*.pt"):
        m = re.fullmatch(r"step_(\d+)\.pt", p.name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def load_run(
    run_dir: str | Path, step: int | None = None, *, attention: str | None = "math", device: str = "auto"
) -> LoadedRun:
    """The run's model (and optimizer, when its state is stored) at ``step`` (None: the latest checkpoint).

    ``attention="math"`` switches the model to the explicit attention path, which Hessian-vector
    products need; the weights are the same either way.
    """
    rd = RunDir(Path(run_dir))
    cfg_path = rd.path / "config.json"
    if not cfg_path.is_file():
        raise C.ConfigError("not a run directory (no config.json)", file=rd.path)
    cfg = C.from_dict(json.loads(cfg_path.read_text()), str(cfg_path))
    if attention:
        cfg.model.attention = attention
    dev = pick_device(device)
    source = build_source(cfg.data, seed=cfg.seed)
    source.prepare(rd.path.parent.parent / "cache")
    model = GPT(cfg.model, source.vocab_size)
    opt = make_optimizer(model, cfg.train)
    latest = None
    if rd.checkpoint_path.exists():
        latest = torch.load(rd.checkpoint_path, map_location="cpu", weights_only=False)
    has_opt = False
    if step is None or (latest is not None and latest["step"] == step):
        if latest is None:
            raise C.ConfigError("run has no checkpoint yet", file=rd.path)
        model.load_state_dict(latest["model"])
        opt.load_state_dict(latest["optimizer"])
        step, has_opt = latest["step"], True
    else:
        wp = rd.weights_path(step)
        if not wp.exists():
            steps = available_steps(rd) + ([latest["step"]] if latest else [])
            raise C.ConfigError(
                f"no weights at step {step}; available steps: {sorted(set(steps)) or 'none'} "
                "(set train.keep_weights = true to keep weights at every evaluation)",
                file=rd.path,
                field="--step",
            )
        model.load_state_dict(torch.load(wp, map_location="cpu", weights_only=True))
    model.to(dev)
    if has_opt:  # move optimizer state next to the parameters
        for st in opt.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    st[k] = v.to(dev)
    model.eval()
    return LoadedRun(cfg, model, opt, has_opt, source, step, dev, rd)
