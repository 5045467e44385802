"""Run configuration: typed dataclasses, parsing with one-line errors, TOML loading and run ids.

A *run config* (:class:`RunConfig`) is everything a run depends on; its hash is the run id. An
*experiment file* is a run config in TOML plus an optional ``[sweep]`` table that expands it into many
(:mod:`scalescope.sweep`). The ``[data]`` table belongs to its source: each source's config class lives
beside the source in :mod:`scalescope.data` and registers here (:func:`register_source`), so this module
imports no data module.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(kw_only=True)
class SourceConfig:
    """The ``[data]`` table: which source (``kind``) and that source's own fields.

    Each data source in :mod:`scalescope.data` defines its own keyword-only dataclass subclass, registered
    under its kind with :func:`register_source`; the subclass owns its fields, their checks and defaults
    (:meth:`resolve`) and builds its source (:meth:`build`). This module only knows the shape.
    """

    kind: ClassVar[str] = ""
    # Tokens are vectors read in through model.input_dim (the model's float-input mode), not token ids.
    vector_tokens: ClassVar[bool] = False
    # Every source picks its language (which chain, which tasks) with this seed, not with the run seed.
    seed: int = 0

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        """Check this source's fields against each other and the model; fill in resolved defaults (in place)."""

    def build(self, stream_seed: int) -> Any:
        """The :class:`~scalescope.data.base.Source` this config describes, sampling with ``stream_seed``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The serialized table: v0.1's flat layout (see LEGACY_DATA_DEFAULTS) overlaid with this source's fields."""
        return {**LEGACY_DATA_DEFAULTS, "kind": self.kind, **dataclasses.asdict(self)}

    def identity(self) -> dict[str, Any]:
        """What of this table enters the run id: by default all of :meth:`to_dict`. A source whose data
        are files (text) hashes their content instead of their location."""
        return self.to_dict()


SOURCE_CONFIGS: dict[str, type[SourceConfig]] = {}
DEFAULT_KIND = "markov"
_S = TypeVar("_S", bound=type[SourceConfig])


def register_source(kind: str) -> Callable[[_S], _S]:
    """Class decorator: ``@register_source("markov")`` on a source's config dataclass. The built-in sources
    register when :mod:`scalescope.data` is imported, which ``import scalescope`` does first."""

    def deco(cls: _S) -> _S:
        if kind in SOURCE_CONFIGS:
            raise ValueError(f"data kind {kind!r} is registered twice")
        cls.kind = kind
        SOURCE_CONFIGS[kind] = cls
        return cls

    return deco


# The [data] table of v0.1, where one flat dataclass held every source's fields. A config serializes (and
# so hashes: its run id) as this layout overlaid with its source's own fields, so every run id computed
# before sources owned their configs stays the same; a stored v0.1 config.json lists every field, and
# parsing ignores the ones that belong to another source while they hold these defaults. A new source
# adds nothing here: its own fields are simply serialized after these.
LEGACY_DATA_DEFAULTS: dict[str, Any] = {
    "kind": "markov", "seed": 0, "vocab_size": 64, "order": 1, "support": 8, "concentration": 0.5,
    "n_hidden": 16, "transition_concentration": 0.3, "path": None, "tokenizer": "bytes", "bpe_vocab_size": 1024,
    "val_fraction": 0.1, "span_min": None, "span_max": None, "n_triggers": None, "seq_len": None, "dim": None,
    "noise_std": 0.0, "task_pool": None, "curriculum_steps": None, "n_tasks": None, "n_inputs": None,
    "n_outputs": None, "n_classes": None, "n_labels": None, "item_dim": None, "context_pairs": None,
    "within_class_noise": None, "zipf_exponent": None, "burstiness": None, "p_bursty": None,
}  # fmt: skip


@dataclass
class ModelConfig:
    """A decoder-only transformer: pre-LayerNorm, learned (or rotary) positions, GELU MLP; or (``arch``) a
    classifier of vector examples (:mod:`scalescope.classifiers`)."""

    # "gpt": the transformer below. "mlp": n_layer hidden ReLU layers of width d_model. "random_features":
    # d_model fixed random ReLU features with a closed-form least-squares readout (ridge below). The last two
    # read the vector examples of a classification data set (digits, gaussian_mixture).
    arch: Literal["gpt", "mlp", "random_features"] = "gpt"
    # random_features: the readout's ridge penalty λ (0: the minimum-norm interpolating solution).
    ridge: float = 0.0
    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    # Hidden width of the MLP; None means 4 * d_model.
    d_mlp: int | None = None
    seq_len: int = 64
    tie_embeddings: bool = True
    # No MLP blocks at all (for induction-head studies, Olsson et al. 2022).
    attn_only: bool = False
    # "sdpa": torch's fused scaled_dot_product_attention (fast); "math": explicit softmax(QK^T)V that
    # supports double backward (Hessian-vector products) and exposes attention patterns to probes.
    attention: Literal["sdpa", "math"] = "sdpa"
    init_std: float = 0.02
    bias: bool = True
    # "learned": absolute position embeddings (GPT-2); "rope": rotary embeddings on queries and keys (Su et al.
    # 2021), no position parameters. Rotary positions make relative (e.g. previous-token) attention easy to
    # learn: induction heads form several times sooner (scalescope/experiments/induction.toml).
    positions: Literal["learned", "rope"] = "learned"
    # Float-input mode (task sources with vector tokens, e.g. linear_regression): tokens are vectors of
    # this width read in by a linear map instead of the token embedding; the read-out then has the
    # source's vocab_size outputs (1: a scalar), the loss is squared error and embeddings are never tied.
    # Resolved from the data source; None: token ids.
    input_dim: int | None = None


@dataclass
class TrainConfig:
    """The optimization: optimizer, schedule, batch, budget, evaluation and checkpoint cadence."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # sgd: heavy-ball momentum (Nesterov off).
    momentum: float = 0.9
    schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    # Warmup: a fraction of the run in [0, 1), or a whole number of steps (>= 1); shorter than the run either way
    # (checked where the run's steps are known: scalescope.schedule.check_warmup, when an experiment loads).
    warmup: float = 0.05
    # Final lr as a fraction of the peak (cosine and the decay of wsd).
    min_lr_ratio: float = 0.1
    # wsd: fraction of the steps spent in the final (linear) decay (Hu et al. 2024, MiniCPM).
    decay_fraction: float = 0.2
    # Clip the global gradient norm to this (0: no clipping).
    grad_clip: float = 1.0
    # Sequences per optimizer step; split into micro-batches of micro_batch_size (gradient accumulation).
    batch_size: int = 32
    micro_batch_size: int | None = None
    # Budget: tokens or flops (training FLOPs, 6N + 12 L T d per token, see model.py), not both.
    # With neither, 1,000,000 tokens.
    tokens: int | None = None
    flops: float | None = None
    # Or a budget in optimizer steps (full-batch training counts epochs this way).
    steps: int | None = None
    # Every step uses the whole training set (a finite data set: digits, gaussian_mixture, modular): batch_size
    # resolves to its size. Gradient descent rather than SGD, as grokking and clean double descent need.
    full_batch: bool = False
    # Evaluate at steps 0, 1, 2, 4, ... below eval_every, then every eval_every steps, and at the end.
    eval_every: int = 100
    eval_batches: int = 8
    # Full checkpoint (for resume) every this many steps, and at every evaluation.
    checkpoint_every: int = 200
    # Also keep the model weights at every evaluation step (for offline probes).
    keep_weights: bool = False
    # A train loss above this multiple of the step-0 validation loss counts as divergence.
    diverge_factor: float = 3.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Arithmetic of the forward and backward passes. "fp32": float32 throughout; "bf16": matmuls and
    # activations in bfloat16 under torch.autocast, while weights, optimizer state and the loss reduction stay
    # float32 (mixed precision, Micikevicius et al. 2018; bf16 needs no loss scaling). On the CPU bf16 is
    # emulated and slower: it is there to check a run, not to speed it up.
    precision: Literal["fp32", "bf16"] = "fp32"
    # On CUDA (Ampere and later), let float32 matmuls use TF32 tensor cores (10-bit mantissa inputs,
    # float32 accumulation): about 8x the fp32 rate on an A100/H100 at a relative error near 1e-3 per
    # product. No effect on the CPU. false: full fp32 matmuls.
    tf32: bool = True
    # Log the training loss (mean over the steps since the last log) every this many steps, beside the
    # evaluations; None: only at evaluations.
    log_every: int | None = None


@dataclass
class RunConfig:
    """Everything one run depends on. Its hash (:func:`run_id`) names the run."""

    data: SourceConfig = field(default_factory=lambda: SOURCE_CONFIGS[DEFAULT_KIND]())
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Instrument name -> options, e.g. {"param_norm": {}, "attention": {"every": 2}}; see instruments/.
    instruments: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0


SECTIONS = ("data", "model", "train", "instruments", "sweep", "seed", "name", "executor", "log")
# Tables of an experiment file that describe how it is run and watched, not what a run is: they never enter
# a run config (scalescope.sweep reads them).
EXPERIMENT_ONLY = ("sweep", "name", "executor", "log")


# ----------------------------------------------------------------------------------------------------
# Parsing a nested dict into the dataclasses, with a precise message for every mistake.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or omitted)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, path: str, file: str | None) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path, file)
            except ConfigError:
                pass
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is dict:
        if isinstance(value, dict):
            return value
    else:  # pragma: no cover - only the types above are used
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", file=file, field=path)


def unknown_key(key: str, valid: list[str], path: str, file: str | None) -> ConfigError:
    """The error for a key that is not a field, with the nearest valid one as a hint."""
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key{hint}", file=file, field=path)


def _build(
    cls: type, raw: Any, prefix: str, file: str | None, *, skip: Callable[[str, Any], bool] | None = None
) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a table, got {raw!r}", file=file, field=prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            if skip is not None and skip(key, value):
                continue
            raise unknown_key(key, names, path, file)
        tp = hints[key]
        if key == "data" and cls is RunConfig:
            kwargs[key] = _build_data(value, file)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, file)
        else:
            kwargs[key] = _coerce(value, tp, path, file)
    return cls(**kwargs)


def _kinds_with(name: str) -> list[str]:
    return [k for k, c in SOURCE_CONFIGS.items() if name in {f.name for f in dataclasses.fields(c)}]


def _build_data(raw: Any, file: str | None) -> SourceConfig:
    """The ``[data]`` table as its source's config class, chosen by ``kind``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a table, got {raw!r}", file=file, field="data")
    kind = raw.get("kind", DEFAULT_KIND)
    if kind not in SOURCE_CONFIGS:
        raise ConfigError(
            f"expected one of {', '.join(map(repr, SOURCE_CONFIGS))}, got {kind!r}", file=file, field="data.kind"
        )
    cls = SOURCE_CONFIGS[kind]

    def other_source(key: str, value: Any) -> bool:
        """True for a field of another source at its v0.1 default (a stored config.json lists them all);
        a field of another source set to anything else is a mistake."""
        if key == "kind" or (key in LEGACY_DATA_DEFAULTS and value == LEGACY_DATA_DEFAULTS[key]):
            return True
        owners = _kinds_with(key)
        if len(owners) == 1:
            raise ConfigError(f"only applies to kind = {owners[0]!r}, not {kind!r}", file=file, field=f"data.{key}")
        if owners:
            raise ConfigError(
                f"only applies to kinds {', '.join(map(repr, owners))}, not {kind!r}", file=file, field=f"data.{key}"
            )
        return False

    return typing.cast(SourceConfig, _build(cls, raw, "data", file, skip=other_source))


def positive(value: Any, path: str, file: str | None, *, allow_none: bool = False) -> None:
    """Raise a one-line :class:`ConfigError` naming ``path`` unless ``value`` is a positive number."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"expected a positive number, got {value!r}", file=file, field=path)


def validate(cfg: RunConfig, file: str | None = None) -> RunConfig:
    """Check the relations between fields that types alone cannot; raise :class:`ConfigError`."""
    m, t, d = cfg.model, cfg.train, cfg.data
    for name in ("n_layer", "d_model", "n_head", "seq_len", "init_std"):
        if m.arch == "random_features" and name == "n_layer":
            continue  # one layer of random features, whatever n_layer says
        positive(getattr(m, name), f"model.{name}", file)
    for name in ("lr", "batch_size", "eval_every", "eval_batches", "checkpoint_every", "diverge_factor"):
        positive(getattr(t, name), f"train.{name}", file)
    positive(m.d_mlp, "model.d_mlp", file, allow_none=True)
    for name in ("micro_batch_size", "tokens", "flops", "log_every", "steps"):
        positive(getattr(t, name), f"train.{name}", file, allow_none=True)
    if m.arch == "gpt" and m.d_model % m.n_head:
        raise ConfigError(
            f"d_model ({m.d_model}) must be divisible by n_head ({m.n_head})", file=file, field="model.d_model"
        )
    budgets = [k for k in ("tokens", "flops", "steps") if getattr(t, k) is not None]
    if len(budgets) > 1:
        raise ConfigError(
            f"give one budget, train.tokens, train.flops or train.steps, not {' and '.join(budgets)}",
            file=file,
            field=f"train.{budgets[0]}",
        )
    if not budgets:
        t.tokens = 1_000_000
    if m.ridge < 0:
        raise ConfigError(f"expected a number >= 0, got {m.ridge}", file=file, field="model.ridge")
    mb = t.micro_batch_size
    if mb is not None and t.batch_size % mb:
        raise ConfigError(
            f"batch_size ({t.batch_size}) must be a multiple of micro_batch_size ({mb})",
            file=file,
            field="train.micro_batch_size",
        )
    if t.warmup < 0:
        raise ConfigError(f"expected a number >= 0, got {t.warmup}", file=file, field="train.warmup")
    for p in ("min_lr_ratio", "decay_fraction", "beta1", "beta2", "momentum"):
        v = getattr(t, p)
        if not 0 <= v <= 1:
            raise ConfigError(f"expected a number in [0, 1], got {v}", file=file, field=f"train.{p}")
    if t.weight_decay < 0 or t.grad_clip < 0:
        field_ = "train.weight_decay" if t.weight_decay < 0 else "train.grad_clip"
        raise ConfigError("expected a number >= 0", file=file, field=field_)
    d.resolve(m, file)
    _resolve_finite(cfg, file)
    if m.input_dim is not None and not d.vector_tokens:
        vector = [k for k, c in SOURCE_CONFIGS.items() if c.vector_tokens]
        raise ConfigError(
            f"float inputs need a vector-token source ({', '.join(vector)}), not {d.kind!r}",
            file=file,
            field="model.input_dim",
        )
    for name, opts in cfg.instruments.items():
        if not isinstance(opts, dict):
            raise ConfigError(f"expected a table of options, got {opts!r}", file=file, field=f"instruments.{name}")
    return cfg


def _resolve_finite(cfg: RunConfig, file: str | None) -> None:
    """Relations of the classifiers and of full-batch training with the data set's size (issue 15)."""
    m, t, d = cfg.model, cfg.train, cfg.data
    train_size = getattr(d, "train_size", None)
    if m.arch != "gpt" and not (d.vector_tokens and callable(train_size)):
        finite = [k for k, c in SOURCE_CONFIGS.items() if c.vector_tokens and hasattr(c, "train_size")]
        raise ConfigError(
            f"model.arch = {m.arch!r} classifies the vector examples of {', '.join(map(repr, finite))}, not {d.kind!r}",
            file=file,
            field="model.arch",
        )
    if m.ridge and m.arch != "random_features":
        raise ConfigError(
            f"the ridge penalty is the random-features readout's; model.arch = {m.arch!r} has none",
            file=file,
            field="model.ridge",
        )
    if callable(train_size) and not t.full_batch and m.arch != "random_features" and t.batch_size > train_size():
        raise ConfigError(
            f"{t.batch_size} is more than the {train_size()} training examples; for the whole set in every step "
            "use train.full_batch = true",
            file=file,
            field="train.batch_size",
        )
    if m.arch != "gpt" and t.flops is not None:
        raise ConfigError(
            "a FLOP budget is defined for the transformer (6N + 12LTd per token); give train.tokens (examples) "
            "or train.steps",
            file=file,
            field="train.flops",
        )
    if t.full_batch:
        if not callable(train_size):
            raise ConfigError(
                f"full-batch training needs a finite data set (digits, gaussian_mixture, modular), not {d.kind!r}",
                file=file,
                field="train.full_batch",
            )
        if t.micro_batch_size is not None:
            raise ConfigError(
                "full-batch training takes the whole training set in one batch; leave micro_batch_size out",
                file=file,
                field="train.micro_batch_size",
            )
        t.batch_size = int(train_size())
    if m.arch == "random_features":
        # The readout is solved in one step (the whole training set at once); no gradient steps follow.
        t.tokens, t.flops, t.steps, t.full_batch, t.micro_batch_size = None, None, 1, False, None
        t.batch_size = int(train_size()) if callable(train_size) else 0


def from_dict(raw: dict[str, Any], file: str | None = None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested dict (no ``sweep`` key)."""
    cfg = _build(RunConfig, raw, "", file)
    return validate(cfg, file)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The serialized config (what ``config.json`` holds); :func:`from_dict` reads it back."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    out["data"] = cfg.data.to_dict()
    out["model"] = dataclasses.asdict(cfg.model)
    out["train"] = dataclasses.asdict(cfg.train)
    out["instruments"] = {k: dict(v) for k, v in cfg.instruments.items()}
    return out


# Fields added after run ids were first published: left out of the hash while they hold their default, so
# every run id computed before they existed stays the same (tests/test_architecture.py pins the ids).
HASH_OMIT_IF_DEFAULT: dict[str, dict[str, Any]] = {
    "data": {
        k: LEGACY_DATA_DEFAULTS[k]
        for k in (
            "span_min",
            "span_max",
            "n_triggers",
            "seq_len",
            "dim",
            "noise_std",
            "task_pool",
            "curriculum_steps",
            "n_tasks",
            "n_inputs",
            "n_outputs",
            "n_classes",
            "n_labels",
            "item_dim",
            "context_pairs",
            "within_class_noise",
            "zipf_exponent",
            "burstiness",
            "p_bursty",
        )
    },
    "model": {"positions": "learned", "input_dim": None, "arch": "gpt", "ridge": 0.0},
    "train": {"precision": "fp32", "steps": None, "full_batch": False},
}

# Fields that say how a run executes or is watched, not what it computes: left out of the run id, so that
# switching them on for a sweep never retrains a finished run. (tf32 changes CUDA matmuls at the 1e-3 level, as
# the device itself does; both are recorded in meta.json.)
EXECUTION_ONLY = ("device", "tf32", "log_every")


def run_id(cfg: RunConfig) -> str:
    """Content hash of the resolved config (seed included): the same config always gets the same id.

    ``train.device``, ``train.tf32`` and ``train.log_every`` are left out (:data:`EXECUTION_ONLY`): where and
    how a run executes, and how densely it logs, are not part of what it is.
    """
    d = to_dict(cfg)
    d["data"] = cfg.data.identity()
    d["train"] = {k: v for k, v in d["train"].items() if k not in EXECUTION_ONLY}
    for section, defaults in HASH_OMIT_IF_DEFAULT.items():
        d[section] = {k: v for k, v in d[section].items() if k not in defaults or v != defaults[k]}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an experiment file; a missing or malformed file raises :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("no such experiment file", file=p)
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"malformed TOML: {e}", file=p) from None
    except UnicodeDecodeError:
        raise ConfigError("not a UTF-8 text file", file=p) from None
    for key in raw:
        if key not in SECTIONS:
            raise unknown_key(key, list(SECTIONS), key, str(p))
    return raw
