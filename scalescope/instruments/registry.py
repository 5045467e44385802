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
import inspect
import math
from collections.abc import Callable, Mapping
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
    "Option",
    "Probe",
    "ProbeContext",
    "Result",
    "available",
    "build",
    "check",
    "check_options",
    "check_token_input",
    "register",
    "requires_data_kind",
    "resolve",
]

Result = dict[str, "float | np.ndarray"]
Probe = Callable[["ProbeContext"], Result]


@dataclass(frozen=True)
class Option:
    """One option of an instrument: its type and allowed values, checked when an experiment loads (before any
    run starts), so that ``batch_size = -3`` is a one-line :class:`ConfigError` and not a failure mid-run.

    ``kind``: ``int``, ``float`` (an integer is accepted), ``bool``, ``str`` or ``list``; bounds ``ge``/``gt``/
    ``le``/``lt`` (numbers, or each item of a list); ``choices``: the allowed values (of a string, or of each
    item of a list); ``item``: the type of a list's items; ``optional``: None is allowed (TOML cannot write
    None: it is the default of an option left out, or a Python caller's value).
    """

    kind: type
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    item: type | None = None
    optional: bool = False

    def describe(self) -> str:
        """What is expected, for the error message: ``an integer >= 1``, ``a number in [0, 1)``."""
        tp = self.item if self.kind is list else self.kind
        if self.choices is not None:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
                tp or object, "a value"
            )
            lo = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
            hi = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
            if lo and hi:
                what += f" in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
            elif lo:
                what += f" {'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
            elif hi:
                what += f" {'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
        return f"a list, each item {what}" if self.kind is list else what

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind is list:
            return isinstance(value, list) and all(self._accepts_one(v, self.item) for v in value)
        return self._accepts_one(value, self.kind)

    def _accepts_one(self, v: Any, tp: type | None) -> bool:
        # bool is an int in Python; TOML's true is never meant as 1. Integers must be written as integers
        # (2.0 is refused): the factory receives the value as written, and the run id hashes it as written.
        if tp is int and not (isinstance(v, int) and not isinstance(v, bool)):
            return False
        if tp is float and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            return False
        if tp is bool and not isinstance(v, bool):
            return False
        if tp is str and not isinstance(v, str):
            return False
        if self.choices is not None and v not in self.choices:
            return False
        if tp in (int, float):
            return not (
                (self.ge is not None and v < self.ge)
                or (self.gt is not None and v <= self.gt)
                or (self.le is not None and v > self.le)
                or (self.lt is not None and v >= self.lt)
            )
        return True


# Options every instrument accepts; the hook consumes them, the factory never sees them.
COMMON_OPTIONS: dict[str, Option] = {
    "every": Option(int, ge=1),  # run on every n-th evaluation
    "batch_size": Option(int, ge=1, optional=True),  # sequences per probe batch (default: the training's)
}

_REGISTRY: dict[str, Callable[..., Probe]] = {}
_OPTIONS: dict[str, dict[str, Option]] = {}


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


def register(
    name: str, options: Mapping[str, Option] | None = None
) -> Callable[[Callable[..., Probe]], Callable[..., Probe]]:
    """Decorator: ``@register("name", options={"n_batches": Option(int, ge=1)})`` on a factory
    ``make(**options) -> probe``. ``options`` declares every parameter of the factory (checked here, at import,
    so a declaration cannot drift from the signature); :func:`check_options` validates a config against it."""
    declared = dict(options or {})

    def deco(factory: Callable[..., Probe]) -> Callable[..., Probe]:
        params = list(inspect.signature(factory).parameters)
        if sorted(params) != sorted(declared):
            raise TypeError(
                f"instrument {name!r}: options declared {sorted(declared)} do not match the factory's "
                f"parameters {sorted(params)}"
            )
        clash = set(declared) & set(COMMON_OPTIONS)
        if clash:
            raise TypeError(f"instrument {name!r}: {sorted(clash)} are common options, consumed by the hook")
        _REGISTRY[name] = factory
        _OPTIONS[name] = declared
        return factory

    return deco


def _signature_options(factory: Callable[..., Probe]) -> dict[str, Option] | None:
    """A user's factory declares no types: any value for each of its parameters (None: it takes ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a callable without an introspectable signature: nothing to check
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name: Option(object, optional=True)
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def check_options(name: str, opts: Mapping[str, Any]) -> None:
    """Validate an instrument's options (the common ones and its own) against their declarations; raise a
    :class:`ConfigError` naming ``instruments.<name>.<option>``. A user's ``package.module:factory`` is
    checked against its signature (names only: it declares no types)."""
    factory = resolve(name)
    own = _OPTIONS[name] if name in _REGISTRY else _signature_options(factory)
    for key, value in opts.items():
        field = f"instruments.{name}.{key}"
        spec = COMMON_OPTIONS.get(key) or (own.get(key) if own is not None else Option(object, optional=True))
        if spec is None:
            valid = sorted([*COMMON_OPTIONS, *(own or {})])
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid options: {', '.join(valid)}"
            raise ConfigError(f"unknown option{hint}", field=field)
        if spec.kind is not object and not spec.accepts(value):
            raise ConfigError(f"expected {spec.describe()}, got {value!r}", field=field)


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
        check_options(name, opts)
        opts = dict(opts)
        every = opts.pop("every", 1)
        bs = opts.pop("batch_size", None)
        factory = resolve(name)
        try:
            probe = factory(**opts)
        except TypeError as e:
            raise ConfigError(f"bad options: {e}", field=f"instruments.{name}") from None
        out.append(Instrument(name, probe, every, bs))
    return out


def check(cfg: Any) -> None:
    """What the run config alone shows to be wrong with its instruments, raised as :class:`ConfigError`
    before any run starts: an unknown name, bad options (:func:`check_options`, via :func:`build`), and each probe's own
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
