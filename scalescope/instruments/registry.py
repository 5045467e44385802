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

Built-in instruments register themselves with :func:`register` when ``scalescope.instruments`` imports
them (one line each there); this module imports none of them, so they can import it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.base import Batch, Source
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..offline import LoadedRun

__all__ = [
    "COMMON_OPTIONS",
    "Instrument",
    "Probe",
    "ProbeContext",
    "Result",
    "available",
    "build",
    "check",
    "check_token_input",
    "register",
    "requires_data_kind",
    "resolve",
]

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

    @classmethod
    def of_run(cls, run: LoadedRun, batch_size: int | None = None) -> ProbeContext:
        """The context the training loop would give instruments at the step of a stored run (loaded by
        :func:`scalescope.offline.load_run`); ``batch_size`` defaults to the run's micro-batch or batch size."""
        train = run.cfg.train
        return cls(
            model=run.model,
            optimizer=run.optimizer,
            source=run.source,
            step=run.step,
            seq_len=run.cfg.model.seq_len,
            batch_size=batch_size or train.micro_batch_size or train.batch_size,
            device=run.device,
            train_cfg=train,
            lr=run.lr,
        )

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
    """The registered instrument names, sorted."""
    return sorted(_REGISTRY)


def resolve(name: str) -> Callable[..., Probe]:
    """The factory registered as ``name``, or a user's ``"package.module:function"``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            # The one importlib use in scalescope: a module the user names, unknown until run time.
            factory: Callable[..., Probe] = getattr(importlib.import_module(mod), attr)
            return factory
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import instrument: {e}", field=f"instruments.{name}") from None
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
