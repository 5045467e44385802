"""Checks of an experiment against the machine, before any run directory exists: a model too big for the memory
and a budget (training or evaluation) that would run for days.

Loading an experiment (:func:`scalescope.sweep.load_experiment`) checks what the file alone shows; these checks
depend on the machine, so they run where a run is about to start (``scalescope run``, ``demo``), not where an
experiment is only read (``forecast``). Both estimates are closed forms of the config, so a ``model.d_model =
1e9`` fails in milliseconds with the field named, not after the allocator gives up.

Time: each run's training FLOPs (steps x tokens per step x matmul FLOPs per token, 6N + 12 L T d + 6 V d) and
evaluation FLOPs (evaluations x ``eval_batches`` x micro-batch x ``seq_len`` x a forward pass, a third of
that), divided by the machine's measured large-matmul rate, and never less than a fixed floor per forward
pass. Both the rate (training reaches a fraction of it) and the floor (see FORWARD_FLOOR_S) are optimistic, so
the estimate is a *lower bound*: a refused run would really take at least that long.

Memory: parameters x optimizer bytes (fp32 weights, gradients and AdamW's two moments: 16 bytes per parameter;
SGD with momentum 12) plus activations (see ACTIVATION_BYTES), against the memory available now (``MemAvailable``
on the CPU, free memory on a CUDA device).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config as C
from .errors import ConfigError
from .model import matmul_flops_per_token, param_counts
from .schedule import check_warmup, eval_count
from .sweep import run_steps

if TYPE_CHECKING:
    import torch

    from .store import Store
    from .sweep import Experiment

__all__ = ["Estimate", "available_memory", "check_experiment", "estimate", "flops_per_s"]

# Estimates above this are printed: ten minutes is where a user would want to know before waiting.
NOTICE_S = 600.0
# One run whose lower-bound estimate exceeds a day is refused without --yes. Per run, not per sweep: a sweep of
# many reasonable runs is a legitimate multi-day job (it resumes, and workers share it), while a single run
# that cannot finish in a day even at the optimistic rate is almost always a typo (tokens = 1e18).
REFUSE_S = 24 * 3600.0
# A floor on the wall time of one forward pass of one micro-batch: the kernel launches and Python of a
# transformer forward (~20 ops per layer at >= ~2 us each). The smallest model (1 layer, d_model 16, 8 x 16
# tokens) measures ~200 us on one CPU thread; the floor is 4x below that, so it holds on faster machines and
# on CUDA, where each launch costs ~5 us. It is what makes eval_batches = 1e8 of a tiny model visible.
FORWARD_FLOOR_S = 50e-6
# A training micro-step (forward, backward ~2 forwards, optimizer) is at least this many forward passes.
STEP_FORWARDS = 3
# Bytes per parameter: fp32 weights + gradients (8), plus AdamW's two moments (8) or SGD's momentum buffer (4).
BYTES_PER_PARAM = {"adamw": 16, "sgd": 12}
# Activations kept for the backward pass, bytes per token per layer per unit of d_model: Korthikanti et al.
# 2022 (eq. 2) count 34 s b h bytes per layer in 16-bit without the attention scores; fp32 doubles that.
ACTIVATION_BYTES = 68
# The logits, their softmax and its gradient (fp32), bytes per token per vocabulary entry.
LOGIT_BYTES = 12
# The explicit ("math") attention keeps the scores and probabilities (fp32): bytes per head per (T x T) entry.
SCORE_BYTES = 8
# The fastest a device could plausibly train (FLOP/s): 1e13, a large many-core CPU's fp32 peak; 2e15, a current
# GPU's dense 16-bit peak. A sweep that takes under MEASURE_S even at this rate is not worth measuring the
# machine for (the measured rate is rarely 1000x below the ceiling, so such a sweep stays under NOTICE_S).
CEILING_FLOPS_PER_S = {"cpu": 1e13, "cuda": 2e15}
MEASURE_S = 0.5


@dataclass(frozen=True)
class Estimate:
    """What one run will cost: FLOPs and forward-pass counts (for the time), bytes (for the memory)."""

    train_flops: float
    eval_flops: float
    train_forwards: float  # micro-steps x STEP_FORWARDS
    eval_forwards: float
    param_bytes: float
    activation_bytes: float

    def seconds(self, flops_per_s: float) -> tuple[float, float]:
        """Lower bounds on the (training, evaluation) wall time at ``flops_per_s``."""
        return (
            max(self.train_flops / flops_per_s, self.train_forwards * FORWARD_FLOOR_S),
            max(self.eval_flops / flops_per_s, self.eval_forwards * FORWARD_FLOOR_S),
        )


def _vocab(data: C.SourceConfig) -> int:
    """The vocabulary the model will have, as far as the config tells before the data are prepared (a byte-level
    text corpus has at most 256 symbols, a BPE one at most ``bpe_vocab_size``)."""
    if getattr(data, "tokenizer", None) == "bpe":
        return int(getattr(data, "bpe_vocab_size", 256))
    labels = getattr(data, "n_labels", None)
    if callable(labels):  # a classification data set: its classes are the model's outputs
        return int(labels())
    for name in ("vocab_size", "n_labels"):
        v = getattr(data, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return 256


def _finite_examples(data: C.SourceConfig) -> int:
    """Training plus validation examples of a finite data set (digits, Gaussian mixtures, modular arithmetic)."""
    n_train = int(data.train_size())  # type: ignore[attr-defined]
    if hasattr(data, "n_val_examples"):
        return n_train + int(data.n_val_examples)
    if hasattr(data, "p"):
        return int(data.p) ** 2
    return max(n_train, 1797)  # digits: the training split plus the held-out digits


def _memory(model: C.ModelConfig, micro: int, vocab: int, optimizer: str) -> tuple[float, float]:
    """(parameter bytes, activation bytes) of training one micro-batch; see the module doc for the constants."""
    params = param_counts(model, vocab).total * BYTES_PER_PARAM.get(optimizer, 16)
    tokens = micro * model.seq_len
    act = tokens * model.d_model * model.n_layer * ACTIVATION_BYTES + tokens * vocab * LOGIT_BYTES
    if model.attention == "math":
        act += micro * model.n_head * model.seq_len**2 * model.n_layer * SCORE_BYTES
    return float(params), float(act)


def estimate(cfg: C.RunConfig) -> Estimate:
    """The cost of one run, from its config alone (closed forms: instant for any size)."""
    m, t = cfg.model, cfg.train
    vocab = _vocab(cfg.data)
    steps = run_steps(cfg)
    micro = t.micro_batch_size or t.batch_size
    fpt = matmul_flops_per_token(m, vocab)
    tokens_per_step = t.batch_size * m.seq_len
    evals = eval_count(t.eval_every, steps)
    eval_tokens = float(evals) * t.eval_batches * micro * m.seq_len
    if callable(getattr(cfg.data, "train_size", None)):
        # A finite data set is evaluated whole, both splits (train.evaluate_finite): the training set and the rest.
        eval_tokens = float(evals) * _finite_examples(cfg.data) * m.seq_len
    params, act = _memory(m, micro, vocab, t.optimizer)
    return Estimate(
        train_flops=float(steps) * tokens_per_step * fpt,
        eval_flops=eval_tokens * fpt / 3,  # a forward pass is a third of a training step's 6N
        train_forwards=float(steps) * (t.batch_size // micro) * STEP_FORWARDS,
        eval_forwards=float(evals) * t.eval_batches,
        param_bytes=params,
        activation_bytes=act,
    )


@functools.cache
def flops_per_s(kind: str) -> float:
    """The device's large-matmul rate (FLOP/s), measured once per process (~50 ms on a CPU). Training reaches a
    fraction of it, so times divided by it are lower bounds."""
    from .throughput import matmul_flops_per_s

    # 512 on the CPU: large enough to reach the BLAS rate, small enough to take milliseconds; a GPU needs
    # a larger product to be busy.
    return matmul_flops_per_s(n=512 if kind == "cpu" else 4096, repeats=5, device=kind)


def available_memory(device: torch.device) -> float | None:
    """Bytes available now on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        import torch

        return float(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _hours(s: float) -> str:
    return f"{s / 60:.0f} min" if s < 3600 else f"{s / 3600:.3g} h"


def _gb(b: float) -> str:
    return f"{b / 1e9:.3g} GB"


def _blame(cfg: C.RunConfig) -> str:
    """The size field most responsible for the memory estimate: the one whose reset to its default shrinks the
    estimate the most (a d_model of 1e9 names model.d_model, a batch of 1e9 names train.batch_size)."""
    m, t = cfg.model, cfg.train
    mb_field = "train.micro_batch_size" if t.micro_batch_size else "train.batch_size"
    micro, vocab = t.micro_batch_size or t.batch_size, _vocab(cfg.data)
    default = C.ModelConfig()

    def total(model: C.ModelConfig, mb: int, v: int) -> float:
        return sum(_memory(model, mb, v, t.optimizer))

    now = total(m, micro, vocab)
    shrunk = {
        f"model.{name}": total(dataclasses.replace(m, **{name: getattr(default, name)}), micro, vocab)
        for name in ("n_layer", "d_model", "d_mlp", "seq_len", "n_head")
    }
    shrunk[mb_field] = total(m, min(micro, C.TrainConfig().batch_size), vocab)
    if hasattr(cfg.data, "vocab_size"):
        shrunk["data.vocab_size"] = total(m, micro, min(vocab, 64))
    return max(shrunk, key=lambda k: now / max(shrunk[k], 1.0))


def _device(cfg: C.RunConfig, device: Any, file: str | None) -> torch.device:
    import torch

    from .device import check_precision, pick_device

    if device is not None:
        return torch.device(device)
    try:
        dev = pick_device(cfg.train.device)
        check_precision(dev, cfg.train.precision)
        return dev
    except ConfigError as e:
        raise ConfigError(e.message, file=file, field=e.field) from None


def check_experiment(
    exp: Experiment, *, assume_yes: bool = False, device: Any = None, store: Store | None = None
) -> list[str]:
    """Check every run of ``exp`` against this machine before any run starts; return the lines to print.

    Raises :class:`ConfigError` naming the field and the estimate when a run's parameters and optimizer state
    alone exceed the available memory (always), when with activations they do, or when one run's time
    estimate (a lower bound) exceeds REFUSE_S; the last two unless ``assume_yes``, in which case they become
    lines of the result. The whole sweep's estimate is a line when it exceeds NOTICE_S. ``device``: where
    the runs will train (default: each run's ``train.device``); ``store``: runs already done in it are left out.
    """
    file = exp.file
    notes: list[str] = []
    runs = [cfg for cfg in exp.runs if not _done(store, cfg)]
    checked: list[tuple[C.RunConfig, Estimate, torch.device, str]] = []
    for cfg in runs:
        # Checked again here for experiments built in code (load_experiment checks those from files).
        check_warmup(cfg.train, run_steps(cfg), file)
        dev = _device(cfg, device, file)
        est = estimate(cfg)
        label = f"run {C.run_id(cfg)}" if len(exp.runs) > 1 else "the run"
        notes += _check_memory(cfg, est, dev, label, file, assume_yes)
        checked.append((cfg, est, dev, label))
    fastest = sum(sum(e.seconds(CEILING_FLOPS_PER_S.get(d.type, 2e15))) for _, e, d, _ in checked)
    if fastest < MEASURE_S:
        return notes
    total_s = 0.0
    for cfg, est, dev, label in checked:
        rate = flops_per_s(dev.type)
        train_s, eval_s = est.seconds(rate)
        total_s += train_s + eval_s
        if train_s + eval_s > REFUSE_S:
            budget = next(f"train.{k}" for k in ("tokens", "flops", "steps") if getattr(cfg.train, k) is not None)
            field = "train.eval_batches" if eval_s > train_s else budget
            msg = (
                f"{label} needs an estimated {_hours(train_s + eval_s)} on {dev.type} (a lower bound: training "
                f"{est.train_flops:.2g} FLOPs, evaluation {est.eval_flops:.2g} FLOPs at the measured "
                f"{rate:.2g} FLOP/s), over the {REFUSE_S / 3600:g} h limit for one run"
            )
            if not assume_yes:
                raise ConfigError(msg + "; lower it, or pass --yes to run anyway", file=file, field=field)
            notes.append(f"{field}: {msg}; running anyway (--yes)")
    if total_s > NOTICE_S:
        where = "/".join(sorted({d.type for _, _, d, _ in checked}))
        n = len(checked)
        notes.append(
            f"estimated compute: at least {_hours(total_s)} for {n} run{'s' * (n != 1)} on {where} "
            "(training and evaluation FLOPs at the measured matmul rate; a lower bound)"
        )
    return notes


def _done(store: Store | None, cfg: C.RunConfig) -> bool:
    if store is None:
        return False
    rd = store.run_dir(C.run_id(cfg))
    return rd.path.is_dir() and rd.is_done()


def _check_memory(
    cfg: C.RunConfig, est: Estimate, dev: torch.device, label: str, file: str | None, assume_yes: bool
) -> list[str]:
    avail = available_memory(dev)
    need = est.param_bytes + est.activation_bytes
    if avail is None or need <= avail:
        return []
    field = _blame(cfg)
    n_params = est.param_bytes / BYTES_PER_PARAM.get(cfg.train.optimizer, 16)
    what = (
        f"{label} needs about {_gb(need)} of memory ({n_params:.3g} parameters x "
        f"{BYTES_PER_PARAM.get(cfg.train.optimizer, 16)} bytes with {cfg.train.optimizer} = {_gb(est.param_bytes)}, "
        f"activations ~{_gb(est.activation_bytes)}), more than the {_gb(avail)} available on {dev.type}"
    )
    if est.param_bytes > avail:  # the parameters alone cannot fit: certain to fail, --yes cannot help
        raise ConfigError(what, file=file, field=field)
    if not assume_yes:  # the activation term is a rough estimate: let the user try
        raise ConfigError(what + "; make it smaller, or pass --yes to try anyway", file=file, field=field)
    return [f"{field}: {what}; trying anyway (--yes)"]
