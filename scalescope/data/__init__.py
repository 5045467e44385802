"""Data sources: synthetic languages with known entropy rates, in-context task sources, and user text.

Each source lives in one module that owns its config dataclass (``[data] kind = ...``, registered with
:func:`scalescope.config.register_source`), its validation, the source itself and its ideal predictors.
The imports below are the registry: adding a source is one new module plus one line here.

``data.seed`` picks the language (which chain, HMM or task pool); the run seed only picks the sampling
stream, so every run of a sweep sees the same language.
"""

from __future__ import annotations

from ..config import SOURCE_CONFIGS, SourceConfig
from ..errors import ConfigError
from .base import Batch, Source, Split, stream_rng

# The registry lines: each module registers its config class on import.
from .markov import MarkovConfig, MarkovSource  # isort: skip
from .hmm import HMMConfig, HMMSource  # isort: skip
from .text import TextConfig, TextSource  # isort: skip
from .repeat import RepeatedSpansConfig, RepeatedSpansSource  # isort: skip
from .triggers import MarkovTriggersConfig, MarkovTriggersSource  # isort: skip
from .regression import LinearRegressionConfig, LinearRegressionSource  # isort: skip
from .discrete_tasks import DiscreteTasksConfig, DiscreteTasksSource  # isort: skip
from .bursty import BurstyClassificationConfig, BurstyClassificationSource  # isort: skip
from .quanta import QuantaConfig, QuantaSource  # isort: skip
from .classification import DigitsConfig, GaussianMixtureConfig  # isort: skip
from .modular import ModularConfig  # isort: skip

__all__ = [
    "SOURCE_CONFIGS",
    "Batch",
    "BurstyClassificationConfig",
    "BurstyClassificationSource",
    "DigitsConfig",
    "DiscreteTasksConfig",
    "DiscreteTasksSource",
    "GaussianMixtureConfig",
    "HMMConfig",
    "HMMSource",
    "LinearRegressionConfig",
    "LinearRegressionSource",
    "MarkovConfig",
    "MarkovSource",
    "MarkovTriggersConfig",
    "MarkovTriggersSource",
    "ModularConfig",
    "QuantaConfig",
    "QuantaSource",
    "RepeatedSpansConfig",
    "RepeatedSpansSource",
    "Source",
    "SourceConfig",
    "Split",
    "TextConfig",
    "TextSource",
    "build_source",
    "stream_rng",
]


def build_source(data_cfg: SourceConfig, seed: int) -> Source:
    """The source ``data_cfg`` describes, sampling with run seed ``seed``.

    Text sources still need :meth:`TextSource.prepare` (tokenization) before their first batch.
    """
    if not isinstance(data_cfg, SourceConfig):
        raise ConfigError(f"expected a source config, got {type(data_cfg).__name__}", field="data")
    src: Source = data_cfg.build(seed)
    return src
