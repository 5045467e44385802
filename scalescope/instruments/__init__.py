"""The instrument hook: measurements that run on the evaluation schedule and are stored with the run.

An instrument is a factory ``make(**options) -> probe`` registered under a name; ``probe(ctx)`` gets a
:class:`ProbeContext` (the model, the optimizer, a batch source, the step) and returns a dict of named
results: floats become rows of ``metrics.jsonl``, arrays become ``artifacts/<name>/step_<step>.npy``.

Experiments switch instruments on in an ``[instruments]`` table, one sub-table of options each::

    [instruments.param_norm]
    [instruments.attention]
    every = 2          # run on every 2nd evaluation (default 1: every evaluation)
    batch_size = 4

A name of the form ``"package.module:function"`` imports a user's own factory, so a researcher's probe
needs no change to scalescope. Instruments run inside ``torch.random.fork_rng`` with the model in eval
mode, so they never change the training trajectory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..data.base import Batch, Source

Result = dict[str, "float | np.ndarray"]
Probe = Callable[["ProbeContext"], Result]

_REGISTRY: dict[str, Callable[..., Probe]] = {}

# Options every instrument accepts; the hook consumes them, the factory never sees them.
COMMON_OPTIONS = ("every", "batch_size")


@dataclass
class ProbeContext:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    source: Source
    step: int
    seq_len: int
    batch_size: int
    device: torch.device
    # The training config, e.g. for the learning rate and betas an edge-of-stability probe needs.
    train_cfg: Any = None
    lr: float = 0.0

    def probe_batch(self, index: int = 0, batch_size: int | None = None) -> Batch:
        """A batch from the source's probe stream: fixed per run, so values compare over time."""
        bs = batch_size or self.batch_size
        return self.source.batch("probe", index, bs, self.seq_len).to(self.device)

    def train_batch(self, index: int, batch_size: int | None = None) -> Batch:
        bs = batch_size or self.batch_size
        return self.source.batch("train", index, bs, self.seq_len).to(self.device)


def register(name: str) -> Callable[[Callable[..., Probe]], Callable[..., Probe]]:
    """Decorator: ``@register("name")`` on a factory ``make(**options) -> probe``."""

    def deco(factory: Callable[..., Probe]) -> Callable[..., Probe]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def resolve(name: str) -> Callable[..., Probe]:
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import instrument: {e}", field=f"instruments.{name}") from None
    import difflib

    near = difflib.get_close_matches(name, available(), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f"; available: {', '.join(available())}"
    raise ConfigError(f"unknown instrument{hint}", field=f"instruments.{name}")


@dataclass
class Instrument:
    name: str
    probe: Probe
    every: int = 1
    batch_size: int | None = None


def build(spec: dict[str, dict[str, Any]]) -> list[Instrument]:
    """Instantiate the configured instruments; bad names or options raise :class:`ConfigError`."""
    out = []
    for name, opts in spec.items():
        opts = dict(opts)
        every = opts.pop("every", 1)
        bs = opts.pop("batch_size", None)
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"expected a positive integer, got {every!r}", field=f"instruments.{name}.every")
        factory = resolve(name)
        try:
            probe = factory(**opts)
        except TypeError as e:
            raise ConfigError(f"bad options: {e}", field=f"instruments.{name}") from None
        out.append(Instrument(name, probe, every, bs))
    return out


def check(cfg: Any) -> None:
    """What the run config alone shows to be wrong with its instruments, raised as :class:`ConfigError`
    before any run starts: an unknown name, bad options (:func:`build`), and each probe's own
    ``check_config(cfg)`` hook where it has one (a data source it cannot measure, positions past the
    context). Training calls :func:`build` again; the probes themselves still check what they are given."""
    for ins in build(cfg.instruments):
        hook = getattr(ins.probe, "check_config", None)
        if hook is not None:
            hook(cfg)


def check_token_input(cfg: Any, name: str) -> None:
    """Instrument ``name`` reads token sequences: a run whose model reads vectors (``model.input_dim``, set by
    the regression and bursty-classification sources) cannot give them."""
    if cfg.model.input_dim is not None:
        raise ConfigError(
            f"{name} needs token data, but data.kind = {cfg.data.kind!r} gives the model vectors",
            field=f"instruments.{name}",
        )


def requires_data_kind(probe: Probe, kind: str, name: str) -> Probe:
    """Give ``probe`` a ``check_config`` hook: instrument ``name`` measures only ``data.kind = kind`` runs."""

    def check_config(cfg: Any) -> None:
        if cfg.data.kind != kind:
            raise ConfigError(
                f"{name} needs a {kind} source (data.kind = '{kind}'), not {cfg.data.kind!r}",
                field=f"instruments.{name}",
            )

    probe.check_config = check_config  # type: ignore[attr-defined]
    return probe


# Built-in instrument modules register themselves on import; imported on first use, so a module being
# absent (or slow to import) costs nothing until an experiment names one of its instruments.
BUILTIN_MODULES = (
    "basic",
    "noise_scale",
    "curvature",
    "covariance",
    "icl",
    "induction",
    "icl_regression",
    "task_id",
    "fewshot",
)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for m in BUILTIN_MODULES:
        try:
            importlib.import_module(f"{__name__}.{m}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{m}":
                raise
