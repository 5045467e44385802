"""Classification data sets for the generalization experiments (issue 15): scikit-learn's digits and Gaussian
mixtures, each with the corruptions of :mod:`scalescope.data.dataset` as data options.

* ``kind = "digits"``: the 1,797 8x8 handwritten digits that ship inside scikit-learn (UCI optdigits test
  set; no download), 10 classes, 64 features; ``val_fraction`` held out by one seeded permutation.
* ``kind = "gaussian_mixture"``: ``n_classes`` isotropic unit-variance Gaussians in ``dim`` dimensions with
  equal priors, means drawn once from ``data.seed`` at pairwise distance about ``separation``. The Bayes
  classifier is the nearest mean, so the best possible validation accuracy is known (``bayes_val_acc`` in the
  run's meta, computed on the validation set itself).

Inputs are standardized with the training set's per-feature mean and standard deviation (a constant feature is
left at 0), so widths and learning rates carry over between the two. They are vector examples: models
``arch = "mlp"`` or ``"random_features"`` (see :mod:`scalescope.classifiers`), one example per "token".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from .. import classifiers
from ..config import ModelConfig, SourceConfig, register_source
from ..errors import ConfigError
from .dataset import Arrays, FiniteSource, InputCorruption, check_fraction, corrupt, split_indices

__all__ = ["ClassificationConfig", "DigitsConfig", "GaussianMixtureConfig"]

VECTOR_ARCHS = ("mlp", "random_features")
DIGITS_N, DIGITS_DIM, DIGITS_CLASSES = 1797, 64, 10
MAX_GAUSSIAN_EXAMPLES = 1_000_000


def check_memory(need: int, what: str, field: str, file: str | None) -> None:
    """Refuse, in one line naming ``field``, what needs more bytes than this machine has available now."""
    have = classifiers.available_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"{what} about {need / 2**30:.1f} GiB; this machine has {have / 2**30:.1f} GiB available",
            file=file,
            field=field,
        )


@dataclass(kw_only=True)
class ClassificationConfig(SourceConfig):
    """The fields every classification source shares: the corruptions, a smaller training set, the
    random-label phase. Subclasses give the data (:meth:`arrays`) and their sizes."""

    vector_tokens: ClassVar[bool] = True
    # Use only the first n_train examples of the (seeded) training split; None: all of it.
    n_train: int | None = None
    label_noise: float = 0.0
    inputs: InputCorruption = "clean"
    random_label_steps: int = 0

    # --- what a subclass gives -----------------------------------------------------------------------
    def arrays(self) -> tuple[Arrays, Arrays, int]:
        """(train, validation, n_classes) before corruption, inputs not yet standardized."""
        raise NotImplementedError

    def available_train(self) -> int:
        raise NotImplementedError

    def n_features(self) -> int:
        raise NotImplementedError

    def n_labels(self) -> int:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------------
    def train_size(self) -> int:
        """The number of training examples (full-batch training uses them all in every step)."""
        return self.n_train if self.n_train is not None else self.available_train()

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        self.check(file)
        if model.arch not in VECTOR_ARCHS:
            raise ConfigError(
                f"a {self.kind!r} data set is classified by model.arch = 'mlp' or 'random_features', "
                f"not {model.arch!r}",
                file=file,
                field="model.arch",
            )
        check_fraction(self.label_noise, "label_noise", file)
        if self.inputs not in ("clean", "shuffled_pixels", "random_pixels", "gaussian"):
            raise ConfigError(
                f"expected 'clean', 'shuffled_pixels', 'random_pixels' or 'gaussian', got {self.inputs!r}",
                file=file,
                field="data.inputs",
            )
        avail = self.available_train()
        if self.n_train is not None and not 1 <= self.n_train <= avail:
            raise ConfigError(
                f"expected an integer in [1, {avail}] (the training split's size), got {self.n_train}",
                file=file,
                field="data.n_train",
            )
        if self.inputs == "gaussian" and self.train_size() < 2:
            raise ConfigError(
                "Gaussian inputs take the training inputs' mean and covariance: n_train must be at least 2",
                file=file,
                field="data.inputs",
            )
        if self.random_label_steps < 0:
            raise ConfigError(
                f"expected a number of steps >= 0, got {self.random_label_steps}",
                file=file,
                field="data.random_label_steps",
            )
        if model.arch == "random_features":
            self._check_memory(model, file)
        # One example is one position; the model reads a vector of the data's width.
        model.seq_len = 1
        model.input_dim = self.n_features()

    def check(self, file: str | None) -> None:
        """A subclass's own field checks."""

    def _check_memory(self, model: ModelConfig, file: str | None) -> None:
        """The closed-form readout holds the n x N feature matrix and its SVD: refuse a width this machine
        cannot hold, saying how much it needs."""
        n = self.train_size()
        need = classifiers.readout_bytes(n, model.d_model) + 4 * self.n_features() * model.d_model  # + the weights
        what = f"{model.d_model:,} random features on {n:,} examples need"
        check_memory(need, what, "model.d_model", file)

    def build(self, stream_seed: int) -> FiniteSource:
        train, val, facts = _prepared(self)
        return FiniteSource(
            train,
            val,
            n_classes=self.n_labels(),
            vocab_size=self.n_labels(),
            stream_seed=stream_seed,
            random_label_steps=self.random_label_steps,
            data_seed=self.seed,
            facts=facts,
        )


def _prepared(cfg: ClassificationConfig) -> tuple[Arrays, Arrays, dict[str, Any]]:
    """Split, subsample, standardize and corrupt (cached: a sweep builds the same data many times)."""
    key = repr(sorted(cfg.to_dict().items()))
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _prepare(cfg)
    return _CACHE[key]


_CACHE: dict[str, tuple[Arrays, Arrays, dict[str, Any]]] = {}


def _prepare(cfg: ClassificationConfig) -> tuple[Arrays, Arrays, dict[str, Any]]:
    train, val, k = cfg.arrays()
    if cfg.n_train is not None:
        train = train.take(np.arange(cfg.n_train))
    mean, std = train.x.mean(0), train.x.std(0)
    std = np.where(std > 0, std, 1.0)
    train = Arrays(((train.x - mean) / std).astype(np.float32), train.y)
    val = Arrays(((val.x - mean) / std).astype(np.float32), val.y)
    clean_val = val
    train, val = corrupt(train, val, k, label_noise=cfg.label_noise, inputs=cfg.inputs, seed=cfg.seed)
    facts: dict[str, Any] = {
        "label_noise": cfg.label_noise,
        "inputs": cfg.inputs,
        # The share of training labels that differ from the true ones (label_noise·(1 - 1/K) expected).
        "labels_changed": float(np.mean(train.y != _true_train_labels(cfg, k))),
        "chance_acc": 1.0 / k,
    }
    bayes = getattr(cfg, "bayes_accuracy", None)
    if callable(bayes):
        facts["bayes_val_acc"] = bayes(clean_val, mean, std)
    return train, val, facts


def _true_train_labels(cfg: ClassificationConfig, k: int) -> np.ndarray:
    train, _, _ = cfg.arrays()
    return train.y[: cfg.n_train] if cfg.n_train is not None else train.y


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: only digits runs pay scikit-learn's import

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


@register_source("digits")
@dataclass(kw_only=True)
class DigitsConfig(ClassificationConfig):
    """``[data] kind = "digits"``: scikit-learn's 8x8 digits (see the module doc)."""

    val_fraction: float = 0.2

    def check(self, file: str | None) -> None:
        check_fraction(self.val_fraction, "val_fraction", file, open_interval=True)

    def arrays(self) -> tuple[Arrays, Arrays, int]:
        x, y = _digits()
        tr, va = split_indices(len(y), self.val_fraction, self.seed)
        # The training split in a seeded order, so that n_train takes a random subset, not the first writers.
        tr = np.random.default_rng([self.seed, 20]).permutation(tr)
        return Arrays(x[tr], y[tr]), Arrays(x[va], y[va]), DIGITS_CLASSES

    def available_train(self) -> int:
        return DIGITS_N - min(DIGITS_N - 1, max(1, int(round(DIGITS_N * self.val_fraction))))

    def n_features(self) -> int:
        return DIGITS_DIM

    def n_labels(self) -> int:
        return DIGITS_CLASSES


@register_source("gaussian_mixture")
@dataclass(kw_only=True)
class GaussianMixtureConfig(ClassificationConfig):
    """``[data] kind = "gaussian_mixture"``: ``n_classes`` unit Gaussians in ``dim`` dimensions (module doc)."""

    n_classes: int | None = 2
    dim: int | None = 20
    separation: float = 3.0
    n_examples: int = 1000
    n_val_examples: int = 1000

    def check(self, file: str | None) -> None:
        for name in ("n_classes", "dim", "n_examples", "n_val_examples"):
            v = getattr(self, name)
            lo = 2 if name == "n_classes" else 1
            if v is None or v < lo:
                raise ConfigError(f"expected an integer >= {lo}, got {v!r}", file=file, field=f"data.{name}")
        if self.n_examples + self.n_val_examples > MAX_GAUSSIAN_EXAMPLES:
            raise ConfigError(
                f"n_examples + n_val_examples must be at most {MAX_GAUSSIAN_EXAMPLES:,}",
                file=file,
                field="data.n_examples",
            )
        assert self.dim is not None and self.n_classes is not None  # checked just above
        # The data (float32), and the float32 class means, must fit in memory several times over.
        need = 4 * ((self.n_examples + self.n_val_examples) * self.dim + self.n_classes * self.dim) * 3
        what = f"{self.n_examples + self.n_val_examples:,} examples of {self.dim:,} dimensions need"
        check_memory(need, what, "data.dim", file)
        if not (np.isfinite(self.separation) and self.separation >= 0):
            raise ConfigError(f"expected a number >= 0, got {self.separation!r}", file=file, field="data.separation")

    def _means(self) -> np.ndarray:
        assert self.n_classes is not None and self.dim is not None  # checked in check()
        g = np.random.default_rng([self.seed, 30]).standard_normal((self.n_classes, self.dim))
        # Random directions at radius s/√2: two independent ones are about s apart (orthogonal in high dim).
        return self.separation / np.sqrt(2.0) * g / np.linalg.norm(g, axis=1, keepdims=True)

    def arrays(self) -> tuple[Arrays, Arrays, int]:
        mu, k = self._means(), int(self.n_classes or 2)

        def draw(n: int, stream: int) -> Arrays:
            rng = np.random.default_rng([self.seed, stream])
            y = rng.integers(0, k, size=n)
            return Arrays((mu[y] + rng.standard_normal((n, mu.shape[1]))).astype(np.float32), y.astype(np.int64))

        return draw(self.n_examples, 31), draw(self.n_val_examples, 32), k

    def bayes_accuracy(self, val: Arrays, mean: np.ndarray, std: np.ndarray) -> float:
        """Accuracy of the Bayes classifier (nearest true mean, equal priors and covariances) on the clean,
        standardized validation set: the ceiling any model can reach on it."""
        x = val.x * std + mean  # back to the raw scale, where the means live
        mu = self._means()
        # ||x - mu||^2 = ||x||^2 - 2 x.mu + ||mu||^2: an n x K table, never n x K x dim.
        d = (x**2).sum(1)[:, None] - 2.0 * x @ mu.T + (mu**2).sum(1)[None, :]
        return float(np.mean(d.argmin(1) == val.y))

    def available_train(self) -> int:
        return self.n_examples

    def n_features(self) -> int:
        return int(self.dim or 0)

    def n_labels(self) -> int:
        return int(self.n_classes or 0)
