"""Experiment and run configuration: typed dataclasses, TOML loading and one-line validation errors.

A *run config* (:class:`RunConfig`) is everything a run depends on; its hash is the run id. An
*experiment file* is a run config in TOML plus an optional ``[sweep]`` table that expands it into many.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad experiment file or config value. ``str(err)`` is one line naming the file and field."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = None if file is None else str(file)
        self.field = field
        self.message = message
        parts = [p for p in (self.file, field) if p]
        super().__init__(": ".join([*parts, message]))


@dataclass
class DataConfig:
    """Where tokens come from. ``kind`` picks the source; the other fields apply to some kinds."""

    kind: Literal[
        "markov",
        "hmm",
        "text",
        "repeated_spans",
        "markov_triggers",
        "linear_regression",
        "discrete_tasks",
        "bursty_classification",
    ] = "markov"
    # The language itself (which random chain/HMM) is a function of this seed, not of the run seed.
    seed: int = 0
    # markov / hmm: number of token types.
    vocab_size: int = 64
    # markov: how many previous tokens the next one depends on.
    order: int = 1
    # markov: allowed next tokens per state (None: all vocab_size); hmm: allowed emissions per hidden state.
    support: int | None = 8
    # Dirichlet concentration of each next-token (markov) or emission (hmm) distribution.
    concentration: float = 0.5
    # hmm: number of hidden states and the Dirichlet concentration of their transition rows.
    n_hidden: int = 16
    transition_concentration: float = 0.3
    # text: a file or a directory of text files.
    path: str | None = None
    # text: byte-level tokens (vocab 256) or a byte-level BPE trained locally with `tokenizers`.
    tokenizer: Literal["bytes", "bpe"] = "bytes"
    bpe_vocab_size: int = 1024
    # text: fraction of tokens (taken from the end of the corpus) held out for validation.
    val_fraction: float = 0.1
    # repeated_spans (induction, Olsson et al. 2022): uniform random tokens whose last n tokens repeat an
    # earlier span, n uniform in [span_min, span_max] (defaults: max(2, (seq_len + 1) // 4) and
    # (seq_len + 1) // 2), at a random offset; see data/repeat.py.
    span_min: int | None = None
    span_max: int | None = None
    # markov_triggers (induction, Bietti et al. 2023): a first-order markov chain (vocab_size, support,
    # concentration) in which each of n_triggers trigger tokens is followed by a per-sequence target token;
    # see data/triggers.py. Resolved to 1 when omitted.
    n_triggers: int | None = None
    # repeated_spans / markov_triggers / linear_regression: the sequence length the task is laid out for;
    # resolved to model.seq_len.
    seq_len: int | None = None
    # linear_regression (in-context regression, Garg et al. 2022): x, w ~ N(0, I_dim), y = w·x + noise_std·ε,
    # ceil(seq_len / 2) (x, y) pairs per sequence; w fresh per sequence, or uniform over a fixed pool of
    # task_pool tasks (Raventós et al. 2023). dim resolves to 5 when omitted; see data/regression.py.
    dim: int | None = None
    noise_std: float = 0.0
    task_pool: int | None = None
    # linear_regression: train steps of a curriculum over the dimension and the number of points counted
    # (Garg et al. 2022); None: none. See data/regression.py.
    curriculum_steps: int | None = None
    # discrete_tasks (task identification, issue 5): a pool of n_tasks random maps {0..n_inputs-1} ->
    # {0..n_outputs-1} shown as few-shot demonstrations; resolved to 16 tasks, 4 outputs and
    # vocab_size - n_outputs inputs when omitted. See data/discrete_tasks.py.
    n_tasks: int | None = None
    n_inputs: int | None = None
    n_outputs: int | None = None
    # bursty_classification (few-shot classification, Chan et al. 2022; Reddy 2023): n_classes Gaussian
    # centres in item_dim dimensions, items (mu + within_class_noise·eta) / sqrt(1 + noise²), class k labelled
    # k mod n_labels, class frequencies ∝ rank^-zipf_exponent; context_pairs item-label pairs and a query, a
    # sequence bursty (context_pairs / burstiness classes, burstiness copies each, the query's among them) with
    # probability p_bursty. Resolved to 128 classes, 32 labels, D = 63, noise 0.1, exponent 0, p_bursty 1,
    # (seq_len - 1) // 2 pairs and the largest burstiness <= 4 dividing them. See data/bursty.py.
    n_classes: int | None = None
    n_labels: int | None = None
    item_dim: int | None = None
    context_pairs: int | None = None
    within_class_noise: float | None = None
    zipf_exponent: float | None = None
    burstiness: int | None = None
    p_bursty: float | None = None


# Fields added after run ids were first published: left out of the hash while they hold their default, so
# every run id computed before they existed stays the same (tests/test_tasks_repeat.py checks old ids).
HASH_OMIT_IF_DEFAULT: dict[str, dict[str, Any]] = {
    "data": {
        "span_min": None,
        "span_max": None,
        "n_triggers": None,
        "seq_len": None,
        "dim": None,
        "noise_std": 0.0,
        "task_pool": None,
        "curriculum_steps": None,
        "n_tasks": None,
        "n_inputs": None,
        "n_outputs": None,
        "n_classes": None,
        "n_labels": None,
        "item_dim": None,
        "context_pairs": None,
        "within_class_noise": None,
        "zipf_exponent": None,
        "burstiness": None,
        "p_bursty": None,
    },
    "model": {"positions": "learned", "input_dim": None},
}


@dataclass
class ModelConfig:
    """A decoder-only transformer: pre-LayerNorm, learned (or rotary) positions, GELU MLP."""

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
    # Warmup steps; a value in (0, 1) is read as a fraction of the total steps.
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


@dataclass
class RunConfig:
    """Everything one run depends on. Its hash (:func:`run_id`) names the run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Instrument name -> options, e.g. {"param_norm": {}, "attention": {"every": 2}}; see instruments/.
    instruments: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0


SECTIONS = ("data", "model", "train", "instruments", "sweep", "seed", "name")


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


def _unknown(key: str, valid: list[str], path: str, file: str | None) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key{hint}", file=file, field=path)


def _build(cls: type, raw: Any, prefix: str, file: str | None) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a table, got {raw!r}", file=file, field=prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise _unknown(key, names, path, file)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, file)
        else:
            kwargs[key] = _coerce(value, tp, path, file)
    return cls(**kwargs)


def _positive(cfg: RunConfig, path: str, file: str | None, *, allow_none: bool = False) -> None:
    section, name = path.split(".")
    v = getattr(getattr(cfg, section), name)
    if v is None and allow_none:
        return
    if v is None or v <= 0:
        raise ConfigError(f"expected a positive number, got {v!r}", file=file, field=path)


def validate(cfg: RunConfig, file: str | None = None) -> RunConfig:
    """Check the relations between fields that types alone cannot; raise :class:`ConfigError`."""
    for p in (
        "model.n_layer",
        "model.d_model",
        "model.n_head",
        "model.seq_len",
        "model.init_std",
        "train.lr",
        "train.batch_size",
        "train.eval_every",
        "train.eval_batches",
        "train.checkpoint_every",
        "train.diverge_factor",
        "data.concentration",
        "data.transition_concentration",
        "data.n_hidden",
        "data.vocab_size",
        "data.order",
        "data.bpe_vocab_size",
    ):
        _positive(cfg, p, file)
    for p in ("model.d_mlp", "data.support", "train.micro_batch_size", "train.tokens", "train.flops"):
        _positive(cfg, p, file, allow_none=True)
    m, t, d = cfg.model, cfg.train, cfg.data
    if m.d_model % m.n_head:
        raise ConfigError(
            f"d_model ({m.d_model}) must be divisible by n_head ({m.n_head})", file=file, field="model.d_model"
        )
    if t.tokens is not None and t.flops is not None:
        raise ConfigError("give one budget, train.tokens or train.flops, not both", file=file, field="train.tokens")
    if t.tokens is None and t.flops is None:
        t.tokens = 1_000_000
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
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"expected a number in (0, 1), got {d.val_fraction}", file=file, field="data.val_fraction")
    if d.kind == "text" and not d.path:
        raise ConfigError("a text source needs a path to a file or directory", file=file, field="data.path")
    if d.kind in ("markov", "hmm", "markov_triggers") and d.support is not None and d.support > d.vocab_size:
        raise ConfigError(
            f"support ({d.support}) cannot exceed vocab_size ({d.vocab_size})", file=file, field="data.support"
        )
    if d.kind == "markov" and d.vocab_size**d.order > 4_000_000:
        raise ConfigError(
            f"vocab_size**order = {d.vocab_size**d.order} states is too many (at most 4,000,000)",
            file=file,
            field="data.order",
        )
    # Task sources (induction): their layout depends on the context length, which they take from the model.
    own_fields = {
        "repeated_spans": ("span_min", "span_max"),
        "markov_triggers": ("n_triggers",),
        "linear_regression": ("dim", "task_pool", "curriculum_steps"),
        "discrete_tasks": ("n_tasks", "n_inputs", "n_outputs"),
        "bursty_classification": (
            "n_classes",
            "n_labels",
            "item_dim",
            "context_pairs",
            "within_class_noise",
            "zipf_exponent",
            "burstiness",
            "p_bursty",
        ),
    }
    for kind, names in [*own_fields.items(), (d.kind, ())]:
        for p in names if kind != d.kind else ():
            if getattr(d, p) is not None:
                raise ConfigError(f"only applies to kind = {kind!r}, not {d.kind!r}", file=file, field=f"data.{p}")
    if d.kind in own_fields:
        if d.seq_len is not None and d.seq_len != m.seq_len:
            raise ConfigError(
                f"must equal model.seq_len ({m.seq_len}) or be omitted, got {d.seq_len}",
                file=file,
                field="data.seq_len",
            )
        d.seq_len = m.seq_len
        if d.vocab_size < 2:
            raise ConfigError(f"expected an integer >= 2, got {d.vocab_size}", file=file, field="data.vocab_size")
    elif d.seq_len is not None:
        raise ConfigError(
            f"only applies to kinds {', '.join(map(repr, own_fields))}, not {d.kind!r}",
            file=file,
            field="data.seq_len",
        )
    if d.kind == "repeated_spans":
        from .data.repeat import span_range

        span_range(m.seq_len, d.span_min, d.span_max, file=file)
    if d.kind == "markov_triggers":
        if d.order != 1:
            raise ConfigError(
                f"markov_triggers uses a first-order chain, got order {d.order}", file=file, field="data.order"
            )
        if d.n_triggers is None:
            d.n_triggers = 1
        if not 1 <= d.n_triggers < d.vocab_size:
            raise ConfigError(
                f"expected an integer in [1, vocab_size - 1 = {d.vocab_size - 1}], got {d.n_triggers}",
                file=file,
                field="data.n_triggers",
            )
    _validate_regression(cfg, file)
    if d.kind in SOURCE_RESOLVERS:
        importlib.import_module(f"scalescope.data.{SOURCE_RESOLVERS[d.kind]}").resolve_config(cfg, file)
    for name, opts in cfg.instruments.items():
        if not isinstance(opts, dict):
            raise ConfigError(f"expected a table of options, got {opts!r}", file=file, field=f"instruments.{name}")
    return cfg


# Task sources that fill in and check their own fields with ``resolve_config(cfg, file)`` in their module under
# scalescope/data (imported only when a config uses them); a vector-token one also sets model.input_dim.
SOURCE_RESOLVERS = {"discrete_tasks": "discrete_tasks", "bursty_classification": "bursty"}
# Sources whose tokens are vectors read in through model.input_dim (the model's float-input mode).
VECTOR_KINDS = ("linear_regression", "bursty_classification")


def _validate_regression(cfg: RunConfig, file: str | None) -> None:
    """linear_regression's own fields, and the model's float-input width that follows from them."""
    m, d = cfg.model, cfg.data
    if d.kind != "linear_regression":
        if d.noise_std != 0.0:
            raise ConfigError(
                f"only applies to kind = 'linear_regression', not {d.kind!r}", file=file, field="data.noise_std"
            )
        if m.input_dim is not None and d.kind not in VECTOR_KINDS:
            raise ConfigError(
                f"float inputs need a vector-token source ({', '.join(VECTOR_KINDS)}), not {d.kind!r}",
                file=file,
                field="model.input_dim",
            )
        return
    if d.dim is None:
        d.dim = 5
    if d.dim < 1:
        raise ConfigError(f"expected a positive integer, got {d.dim}", file=file, field="data.dim")
    if d.task_pool is not None and d.task_pool < 1:
        raise ConfigError(f"expected a positive integer, got {d.task_pool}", file=file, field="data.task_pool")
    if d.curriculum_steps is not None and d.curriculum_steps < 1:
        raise ConfigError(
            f"expected a positive integer, got {d.curriculum_steps}", file=file, field="data.curriculum_steps"
        )
    if d.noise_std < 0:
        raise ConfigError(f"expected a number >= 0, got {d.noise_std}", file=file, field="data.noise_std")
    if m.input_dim is not None and m.input_dim != d.dim + 1:
        raise ConfigError(
            f"must equal data.dim + 1 ({d.dim + 1}) or be omitted, got {m.input_dim}",
            file=file,
            field="model.input_dim",
        )
    m.input_dim = d.dim + 1


def from_dict(raw: dict[str, Any], file: str | None = None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested dict (no ``sweep`` key)."""
    cfg = _build(RunConfig, raw, "", file)
    return validate(cfg, file)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def run_id(cfg: RunConfig) -> str:
    """Content hash of the resolved config (seed included): the same config always gets the same id.

    ``train.device`` is left out: where a run executes is not part of what it is.
    """
    d = to_dict(cfg)
    d["train"] = {k: v for k, v in d["train"].items() if k != "device"}
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
            raise _unknown(key, list(SECTIONS), key, str(p))
    return raw
