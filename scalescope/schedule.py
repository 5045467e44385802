"""A run's schedules: its length in steps, the learning rate and the evaluations, pure functions of the step.

Being pure functions of the step is what makes resume exact: the scheduler's whole state is the step.
"""

from __future__ import annotations

import math

from .config import RunConfig, TrainConfig
from .errors import ConfigError


def budget_steps(cfg: RunConfig, flops_per_token: float) -> int:
    """Optimizer steps that spend the token or FLOP budget (rounded up: at least one step), or ``train.steps``."""
    if cfg.train.steps is not None:
        return int(cfg.train.steps)
    tokens_per_step = cfg.train.batch_size * cfg.model.seq_len
    if cfg.train.tokens is not None:
        tokens: float = cfg.train.tokens
    else:
        assert cfg.train.flops is not None, "config validation requires train.tokens or train.flops"
        tokens = cfg.train.flops / flops_per_token
    return max(1, math.ceil(tokens / tokens_per_step))


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """``cfg.warmup`` in steps: values in (0, 1) are a fraction of the run (:func:`check_warmup` checks it)."""
    w = cfg.warmup
    return int(round(w * total_steps)) if 0 < w < 1 else int(w)


def check_warmup(cfg: TrainConfig, total_steps: int, file: str | None = None) -> None:
    """Raise :class:`ConfigError` (``train.warmup``) unless the warmup is a fraction in [0, 1) or a whole number
    of steps, and shorter than the run: ``1.5`` would be read as 1 step, and a warmup of the whole run never
    reaches the peak learning rate (it trains at a fraction of it and still ends ``finished``)."""
    w = cfg.warmup
    if not (math.isfinite(w) and w >= 0 and (w < 1 or float(w).is_integer())):
        raise ConfigError(
            f"expected a fraction of the run in [0, 1) or a whole number of steps, got {w:g}",
            file=file,
            field="train.warmup",
        )
    n = warmup_steps(cfg, total_steps)
    if n >= total_steps:
        raise ConfigError(
            f"warmup of {n} steps is not shorter than the run ({total_steps} steps): the whole run would train "
            "below train.lr; use fewer steps, a fraction in [0, 1), or a larger budget",
            file=file,
            field="train.warmup",
        )


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    - ``constant``: linear warmup, then ``lr``.
    - ``cosine``: linear warmup, then cosine decay to ``min_lr_ratio * lr`` at the last step.
    - ``wsd`` (warmup-stable-decay; Hu et al. 2024, MiniCPM): warmup, constant, then a linear decay to
      ``min_lr_ratio * lr`` over the final ``decay_fraction`` of the steps.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    w = warmup_steps(cfg, total_steps)
    if step < w:
        return peak * (step + 1) / w
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, total_steps - 1 - w)
        progress = min(1.0, (step - w) / span)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    # wsd
    decay = max(1, int(round(cfg.decay_fraction * total_steps)))
    start = total_steps - decay
    if step < start:
        return peak
    progress = min(1.0, (step - start + 1) / decay)
    return peak + (floor - peak) * progress


def is_eval_step(step: int, every: int, total_steps: int) -> bool:
    """Pythia-style schedule: 0, 1, 2, 4, 8, ... below ``every``, then every ``every`` steps, and the end.

    ``step`` counts optimizer steps already taken, so step 0 is the untrained model.
    """
    if step == total_steps or step == 0:
        return True
    if step < every:
        return step & (step - 1) == 0  # a power of two
    return step % every == 0


def eval_steps(every: int, total_steps: int) -> list[int]:
    return [s for s in range(total_steps + 1) if is_eval_step(s, every, total_steps)]


def eval_count(every: int, total_steps: int) -> int:
    """``len(eval_steps(every, total_steps))`` without listing them (a budget of 1e18 tokens has ~1e14 steps)."""
    below = min(every - 1, total_steps)  # the powers of two 1, 2, 4, ... <= below
    powers = below.bit_length() if below >= 1 else 0
    multiples = total_steps // every
    if total_steps < every:  # the last step is already counted when it is a power of two
        end = 1 if total_steps >= 1 and total_steps & (total_steps - 1) else 0
    else:
        end = 1 if total_steps % every else 0
    return 1 + powers + multiples + end
