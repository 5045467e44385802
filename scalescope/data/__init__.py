"""Data sources: synthetic languages with known entropy rates (Markov, HMM) and user text.

:func:`build_source` turns a :class:`~scalescope.config.DataConfig` and a run seed into a
:class:`Source`. ``data_cfg.seed`` picks the language (which chain or HMM); the run seed only picks
the sampling stream, so every run of a sweep sees the same language.
"""

from __future__ import annotations

from functools import lru_cache

from scalescope.config import ConfigError, DataConfig
from scalescope.data.base import Batch, Source, Split, stream_rng
from scalescope.data.bursty import BurstyClassificationSource
from scalescope.data.discrete_tasks import DiscreteTasksSource
from scalescope.data.hmm import HMMSource
from scalescope.data.markov import MarkovSource
from scalescope.data.regression import LinearRegressionSource
from scalescope.data.repeat import RepeatedSpansSource
from scalescope.data.text import TextSource
from scalescope.data.triggers import MarkovTriggersSource

__all__ = [
    "Batch",
    "BurstyClassificationSource",
    "DiscreteTasksSource",
    "HMMSource",
    "LinearRegressionSource",
    "MarkovSource",
    "MarkovTriggersSource",
    "RepeatedSpansSource",
    "Source",
    "Split",
    "TextSource",
    "build_source",
    "stream_rng",
]


# Building a language (tables, stationary distribution, entropy rate) is the expensive part and does
# not depend on the run seed, so it is cached per process; each run gets a cheap view with its own
# stream seed. A few entries only: a large Markov chain holds hundreds of MB.
@lru_cache(maxsize=4)
def _markov(vocab_size: int, order: int, support: int | None, concentration: float, seed: int) -> MarkovSource:
    return MarkovSource(vocab_size, order, support, concentration, seed=seed)


@lru_cache(maxsize=4)
def _hmm(
    vocab_size: int,
    n_hidden: int,
    support: int | None,
    concentration: float,
    transition_concentration: float,
    seed: int,
) -> HMMSource:
    return HMMSource(vocab_size, n_hidden, support, concentration, transition_concentration, seed=seed)


@lru_cache(maxsize=4)
def _triggers(
    vocab_size: int, seq_len: int, n_triggers: int, support: int | None, concentration: float, seed: int
) -> MarkovTriggersSource:
    return MarkovTriggersSource(vocab_size, seq_len, n_triggers, support, concentration, seed=seed)


@lru_cache(maxsize=4)
def _discrete(
    n_tasks: int, n_inputs: int, n_outputs: int, seq_len: int, vocab_size: int, seed: int
) -> DiscreteTasksSource:
    return DiscreteTasksSource(n_tasks, n_inputs, n_outputs, seq_len, vocab_size=vocab_size, seed=seed)


@lru_cache(maxsize=4)
def _bursty(
    n_classes: int,
    n_labels: int,
    item_dim: int,
    seq_len: int,
    context_pairs: int | None,
    noise: float,
    alpha: float,
    burstiness: int | None,
    p_bursty: float,
    seed: int,
) -> BurstyClassificationSource:
    return BurstyClassificationSource(
        n_classes,
        n_labels,
        item_dim,
        seq_len,
        context_pairs=context_pairs,
        within_class_noise=noise,
        zipf_exponent=alpha,
        burstiness=burstiness,
        p_bursty=p_bursty,
        seed=seed,
    )


def build_source(data_cfg: DataConfig, seed: int) -> Source:
    """The source ``data_cfg`` describes, sampling with run seed ``seed``.

    Text sources still need :meth:`TextSource.prepare` (tokenization) before their first batch.
    """
    d = data_cfg
    if d.kind == "markov":
        lang = _markov(d.vocab_size, d.order, d.support, float(d.concentration), d.seed)
        return lang.with_stream_seed(seed)
    if d.kind == "hmm":
        lang = _hmm(
            d.vocab_size, d.n_hidden, d.support, float(d.concentration), float(d.transition_concentration), d.seed
        )
        return lang.with_stream_seed(seed)
    if d.kind == "text":
        if not d.path:
            raise ConfigError("a text source needs a path to a file or directory", field="data.path")
        return TextSource(d.path, d.tokenizer, d.bpe_vocab_size, d.val_fraction, seed=d.seed, stream_seed=seed)
    if d.kind == "repeated_spans":
        if d.seq_len is None:
            raise ConfigError(
                "a repeated_spans source needs its seq_len (validate the config first)", field="data.seq_len"
            )
        return RepeatedSpansSource(d.vocab_size, d.seq_len, d.span_min, d.span_max, seed=d.seed, stream_seed=seed)
    if d.kind == "markov_triggers":
        if d.seq_len is None:
            raise ConfigError(
                "a markov_triggers source needs its seq_len (validate the config first)", field="data.seq_len"
            )
        lang = _triggers(d.vocab_size, d.seq_len, d.n_triggers or 1, d.support, float(d.concentration), d.seed)
        return lang.with_stream_seed(seed)
    if d.kind == "linear_regression":
        if d.seq_len is None or d.dim is None:
            raise ConfigError(
                "a linear_regression source needs its seq_len and dim (validate the config first)", field="data.seq_len"
            )
        return LinearRegressionSource(
            d.dim,
            d.seq_len,
            float(d.noise_std),
            d.task_pool,
            curriculum_steps=d.curriculum_steps,
            seed=d.seed,
            stream_seed=seed,
        )
    if d.kind == "discrete_tasks":
        if d.seq_len is None or d.n_tasks is None or d.n_inputs is None or d.n_outputs is None:
            raise ConfigError(
                "a discrete_tasks source needs its seq_len, n_tasks, n_inputs and n_outputs "
                "(validate the config first)",
                field="data.seq_len",
            )
        return _discrete(d.n_tasks, d.n_inputs, d.n_outputs, d.seq_len, d.vocab_size, d.seed).with_stream_seed(seed)
    if d.kind == "bursty_classification":
        fields = (
            "seq_len",
            "n_classes",
            "n_labels",
            "item_dim",
            "context_pairs",
            "within_class_noise",
            "zipf_exponent",
            "burstiness",
            "p_bursty",
        )
        if any(getattr(d, f) is None for f in fields):  # resolved by data.bursty.resolve_config
            raise ConfigError(
                f"a bursty_classification source needs its {', '.join(fields)} (validate the config first)",
                field="data.seq_len",
            )
        return _bursty(
            d.n_classes,
            d.n_labels,
            d.item_dim,
            d.seq_len,
            d.context_pairs,
            float(d.within_class_noise),
            float(d.zipf_exponent),
            d.burstiness,
            float(d.p_bursty),
            d.seed,
        ).with_stream_seed(seed)
    raise ConfigError(f"unknown data kind {d.kind!r}", field="data.kind")
