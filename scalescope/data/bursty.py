"""Few-shot classification with bursty contexts and Zipf-distributed classes (Chan et al. 2022, "Data
Distributional Properties Drive Emergent In-Context Learning in Transformers"; Reddy 2023, "The mechanistic
basis of data dependence and abrupt learning in an in-context classification task", ICLR 2024).

Following Reddy's setup (sec. 2 and his released code):

* K classes, each a Gaussian centre mu_k ~ N(0, I_D / D) (a function of ``data.seed``, not of the run seed);
* an item of class k is x = (mu_k + eps * eta) / sqrt(1 + eps²), eta ~ N(0, I_D / D), so E|x|² = 1;
* class k carries label k mod L (L <= K labels, as in Reddy's ``labels_class = tile(arange(L), K / L)``);
* class frequencies follow a Zipf law, p(k) ∝ (k + 1)^(-alpha), k = 0 .. K-1 (alpha = 0: uniform);
* a sequence is N item-label pairs then a query item. With probability p_bursty it is *bursty*: N / B classes
  drawn from p(k), B copies each, shuffled, and the query's class is one of them (uniform over the N slots);
  otherwise the N context classes and the query's class are drawn i.i.d. from p(k). (Reddy's code draws a
  sequence bursty with probability p_B; Chan et al. call it p_bursty.)

The model predicts the query's label. Two probe distributions separate the two strategies:

* **ICL** (Chan et al.'s holdout classes; Reddy's "novel classes"): a bursty sequence of N / B *fresh* centres
  drawn per sequence, each given a random label (distinct labels while N / B <= L), so only the context can
  tell the query's label;
* **IWL**: the query's class drawn from p(k) and every context class drawn from p(k) *without* it, so only
  the weights can tell its label.

Layout (float tokens of width D + L, read in by the model's linear embedding; seq_len >= 2N + 1): position 2i
holds (x_i, 0), position 2i + 1 holds (0, onehot(label_i)), position 2N holds (x_query, 0); positions after
2N are zeros. Item and label tokens live in disjoint coordinates, so no type flag is needed. The target at
position 2N is the query's label (int64) and ``loss_mask`` marks that position only.

Why the query only, not every item whose label follows: burstiness is a statement about the *query* (its class
is in the context); an item at position 2i has its class among the earlier items only by chance, so counting
those positions would add mostly in-weights pressure and change the ICL/IWL trade-off the task exists to
study. This matches Reddy's and Chan et al.'s losses.

``vocab_size`` is L: in float-input mode it is the width of the read-out, and int64 targets make the loss
cross-entropy over the L labels (chance: log L nats).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import ModelConfig, SourceConfig, register_source
from ..errors import ConfigError
from .base import Batch, Split, stream_rng, task_seq_len

__all__ = ["BurstyClassificationConfig", "BurstyClassificationSource", "Mode", "default_burstiness", "zipf_probs"]

Mode = Literal["train", "icl", "iwl"]

DEFAULT_N_CLASSES = 128
DEFAULT_N_LABELS = 32
DEFAULT_ITEM_DIM = 63  # Reddy's D
DEFAULT_NOISE = 0.1  # Reddy's eps
# The centres are a dense (K, D) float64 table held by every worker: 400 MB at this size.
MAX_CENTRE_ENTRIES = 50_000_000
# Separate streams for the probe distributions, next to the splits' (train 0, val 1, probe 2).
_MODE_STREAM = {"icl": 11, "iwl": 12}


def zipf_probs(n_classes: int, alpha: float) -> np.ndarray:
    """p(k) ∝ (k + 1)^(-alpha), k = 0 .. K-1: class 0 is the most frequent (rank 1)."""
    w = np.arange(1, int(n_classes) + 1, dtype=np.float64) ** (-float(alpha))
    return w / w.sum()


def default_burstiness(n_pairs: int) -> int:
    """The largest divisor of N that is at most 4 (Reddy's largest B, with N = 8)."""
    return max(b for b in (1, 2, 3, 4) if n_pairs % b == 0)


@register_source("bursty_classification")
@dataclass(kw_only=True)
class BurstyClassificationConfig(SourceConfig):
    """``[data] kind = "bursty_classification"`` (few-shot classification, Chan et al. 2022; Reddy 2023):
    n_classes Gaussian centres in item_dim dimensions, items (mu + within_class_noise·eta) / sqrt(1 + noise²),
    class k labelled k mod n_labels, class frequencies ∝ rank^-zipf_exponent; context_pairs item-label pairs
    and a query, a sequence bursty (context_pairs / burstiness classes, burstiness copies each, the query's
    among them) with probability p_bursty. Resolved to 128 classes, 32 labels, D = 63, noise 0.1, exponent 0,
    p_bursty 1, (seq_len - 1) // 2 pairs and the largest burstiness <= 4 dividing them."""

    vector_tokens = True
    n_classes: int | None = None
    n_labels: int | None = None
    item_dim: int | None = None
    context_pairs: int | None = None
    within_class_noise: float | None = None
    zipf_exponent: float | None = None
    burstiness: int | None = None
    p_bursty: float | None = None
    # The sequence length the task is laid out for: resolved to model.seq_len.
    seq_len: int | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        self.seq_len = task_seq_len(self.seq_len, model.seq_len, file)
        _resolve(self, model, file)

    def build(self, stream_seed: int) -> BurstyClassificationSource:
        d = self
        if (
            d.seq_len is None
            or d.n_classes is None
            or d.n_labels is None
            or d.item_dim is None
            or d.within_class_noise is None
            or d.zipf_exponent is None
            or d.p_bursty is None
        ):
            raise ConfigError("needs its resolved fields (resolve the config first)", field="data.seq_len")
        lang = _language(
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
        )
        return lang.with_stream_seed(stream_seed)


# The class centres do not depend on the run seed: cached per process.
@lru_cache(maxsize=4)
def _language(
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


def _resolve(d: BurstyClassificationConfig, m: ModelConfig, file: str | None) -> None:
    """Fill in and check the fields (in place), and resolve the model's float-input width to
    item_dim + n_labels. One-line errors naming the field."""
    d.n_classes = DEFAULT_N_CLASSES if d.n_classes is None else d.n_classes
    d.n_labels = DEFAULT_N_LABELS if d.n_labels is None else d.n_labels
    d.item_dim = DEFAULT_ITEM_DIM if d.item_dim is None else d.item_dim
    d.within_class_noise = DEFAULT_NOISE if d.within_class_noise is None else d.within_class_noise
    d.zipf_exponent = 0.0 if d.zipf_exponent is None else d.zipf_exponent
    d.p_bursty = 1.0 if d.p_bursty is None else d.p_bursty

    def bad(msg: str, name: str) -> ConfigError:
        return ConfigError(msg, file=file, field=f"data.{name}")

    if d.n_labels < 2:
        raise bad(f"expected an integer >= 2, got {d.n_labels}", "n_labels")
    if d.n_classes < d.n_labels:
        raise bad(f"needs at least as many classes as labels (n_labels = {d.n_labels}), got {d.n_classes}", "n_classes")
    if d.item_dim < 1:
        raise bad(f"expected a positive integer, got {d.item_dim}", "item_dim")
    if d.n_classes * d.item_dim > MAX_CENTRE_ENTRIES:
        raise bad(
            f"n_classes x item_dim = {d.n_classes * d.item_dim} centre coordinates is too many (at most "
            f"{MAX_CENTRE_ENTRIES:,})",
            "n_classes",
        )
    if d.within_class_noise < 0:
        raise bad(f"expected a number >= 0, got {d.within_class_noise}", "within_class_noise")
    if d.zipf_exponent < 0:
        raise bad(f"expected a number >= 0, got {d.zipf_exponent}", "zipf_exponent")
    if not 0 <= d.p_bursty <= 1:
        raise bad(f"expected a number in [0, 1], got {d.p_bursty}", "p_bursty")
    T = m.seq_len
    if d.context_pairs is None:
        d.context_pairs = (T - 1) // 2
    if d.context_pairs < 1 or 2 * d.context_pairs + 1 > T:
        raise bad(
            f"{d.context_pairs} item-label pairs and a query need 2N + 1 = {2 * d.context_pairs + 1} "
            f"positions; the context (model.seq_len {T}) holds 1 .. {(T - 1) // 2} pairs",
            "context_pairs",
        )
    N = d.context_pairs
    if d.burstiness is None:
        d.burstiness = default_burstiness(N)
    if d.burstiness < 1 or N % d.burstiness:
        raise bad(f"must be a positive divisor of context_pairs ({N}), got {d.burstiness}", "burstiness")
    width = d.item_dim + d.n_labels
    if m.input_dim is not None and m.input_dim != width:
        raise ConfigError(
            f"must equal data.item_dim + data.n_labels ({width}) or be omitted, got {m.input_dim}",
            file=file,
            field="model.input_dim",
        )
    m.input_dim = width


class BurstyClassificationSource:
    """Bursty few-shot classification over a Gaussian mixture; see the module doc."""

    entropy_rate: float | None = None

    def __init__(
        self,
        n_classes: int,
        n_labels: int,
        item_dim: int,
        seq_len: int,
        *,
        context_pairs: int | None = None,
        within_class_noise: float = DEFAULT_NOISE,
        zipf_exponent: float = 0.0,
        burstiness: int | None = None,
        p_bursty: float = 1.0,
        seed: int = 0,
        stream_seed: int = 0,
    ):
        self.n_classes, self.n_labels, self.item_dim = int(n_classes), int(n_labels), int(item_dim)
        self.seq_len = int(seq_len)
        self.n_pairs = (self.seq_len - 1) // 2 if context_pairs is None else int(context_pairs)
        self.burstiness = default_burstiness(self.n_pairs) if burstiness is None else int(burstiness)
        if self.n_pairs < 1 or 2 * self.n_pairs + 1 > self.seq_len or self.n_pairs % self.burstiness:
            raise ConfigError(
                f"{self.n_pairs} pairs with burstiness {self.burstiness} do not fit a context of {self.seq_len}",
                field="data.context_pairs",
            )
        self.eps, self.alpha, self.p_bursty = float(within_class_noise), float(zipf_exponent), float(p_bursty)
        self.vocab_size = self.n_labels
        self.input_dim = self.item_dim + self.n_labels
        self.seed, self.stream_seed = int(seed), int(stream_seed)
        # The mixture is part of the task distribution: a function of the data seed, not of the run seed.
        rng = np.random.default_rng([self.seed, 0xB0257])
        self.centres = rng.standard_normal((self.n_classes, self.item_dim)) / math.sqrt(self.item_dim)
        self.class_labels = np.arange(self.n_classes) % self.n_labels
        self.class_probs = zipf_probs(self.n_classes, self.alpha)

    def with_stream_seed(self, stream_seed: int) -> BurstyClassificationSource:
        out = copy.copy(self)
        out.stream_seed = int(stream_seed)
        return out

    def prepare(self, cache_dir: Path) -> None:
        pass

    # ------------------------------------------------------------------------------------------------

    def _items(self, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
        """(mu + eps * eta) / sqrt(1 + eps²), eta ~ N(0, I / D), for centres (..., D)."""
        eta = rng.standard_normal(centres.shape) / math.sqrt(self.item_dim)
        return (centres + self.eps * eta) / math.sqrt(1.0 + self.eps**2)

    def _bursty_slots(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots (n, N) in 0 .. N/B-1, each B times in random order; query slot (n,) uniform over the N items)."""
        N, B = self.n_pairs, self.burstiness
        perm = rng.random((n, N)).argsort(axis=1)
        slots = np.tile(np.arange(N // B), B)[perm]
        return slots, slots[np.arange(n), rng.integers(0, N, size=n)]

    def sample(self, split: Split, index: int, batch_size: int, mode: Mode = "train") -> dict[str, np.ndarray]:
        """Sequences of batch ``index`` of ``split``: ``items`` (n, N+1, D) with the query last, ``labels``
        (n, N+1) int64, ``classes`` (n, N+1) (-1: a novel class), ``bursty`` (n,) bool. ``mode`` "train" is
        the training distribution; "icl" and "iwl" are the probe distributions of the module doc, each on
        its own stream."""
        n, N, K = int(batch_size), self.n_pairs, self.n_classes
        if mode == "train":
            rng = stream_rng(self.stream_seed, split, index)
        elif mode in _MODE_STREAM:
            rng = np.random.default_rng([self.stream_seed, _MODE_STREAM[mode], int(index)])
        else:
            raise ValueError(f"unknown mode {mode!r}")
        p = self.class_probs
        if mode == "icl":
            nb = N // self.burstiness
            fresh = rng.standard_normal((n, nb, self.item_dim)) / math.sqrt(self.item_dim)
            L = self.n_labels
            lab = rng.random((n, L)).argsort(axis=1)[:, :nb] if nb <= L else rng.integers(0, L, size=(n, nb))
            slots, q = self._bursty_slots(rng, n)
            slots = np.concatenate([slots, q[:, None]], axis=1)  # (n, N+1)
            rows = np.arange(n)[:, None]
            items = self._items(rng, fresh[rows, slots])
            return {
                "items": items,
                "labels": lab[rows, slots].astype(np.int64),
                "classes": np.full((n, N + 1), -1, dtype=np.int64),
                "bursty": np.ones(n, dtype=bool),
            }
        if mode == "iwl":
            q = rng.choice(K, size=n, p=p)
            ctx = rng.choice(K, size=(n, N), p=p)
            clash = ctx == q[:, None]
            while clash.any():  # redraw context items of the query's class: p(k | k != q)
                ctx[clash] = rng.choice(K, size=int(clash.sum()), p=p)
                clash = ctx == q[:, None]
            classes = np.concatenate([ctx, q[:, None]], axis=1)
            bursty = np.zeros(n, dtype=bool)
        else:
            nb = N // self.burstiness
            chosen = rng.choice(K, size=(n, nb), p=p)
            slots, qs = self._bursty_slots(rng, n)
            rows = np.arange(n)[:, None]
            b_classes = np.concatenate([chosen[rows, slots], chosen[np.arange(n), qs][:, None]], axis=1)
            iid = rng.choice(K, size=(n, N + 1), p=p)
            bursty = rng.random(n) < self.p_bursty
            classes = np.where(bursty[:, None], b_classes, iid)
        items = self._items(rng, self.centres[classes])
        return {
            "items": items,
            "labels": self.class_labels[classes].astype(np.int64),
            "classes": classes,
            "bursty": bursty,
        }

    def layout(self, s: dict[str, np.ndarray], seq_len: int) -> Batch:
        """Float tokens (n, seq_len, D + L), targets (n, seq_len) int64 and the query-only loss mask."""
        items, labels = s["items"], s["labels"]
        n, N, D = items.shape[0], items.shape[1] - 1, self.item_dim
        if 2 * N + 1 > seq_len:
            raise ConfigError(
                f"a context of {seq_len} positions is too short for {N} pairs and a query", field="data.context_pairs"
            )
        tok = np.zeros((n, seq_len, self.input_dim), dtype=np.float32)
        tok[:, 0 : 2 * N + 1 : 2, :D] = items
        rows = np.arange(n)[:, None]
        tok[rows, np.arange(1, 2 * N, 2)[None, :], D + labels[:, :N]] = 1.0
        tgt = np.zeros((n, seq_len), dtype=np.int64)
        tgt[:, 2 * N] = labels[:, N]
        mask = np.zeros((n, seq_len), dtype=bool)
        mask[:, 2 * N] = True
        return Batch(torch.from_numpy(tok), torch.from_numpy(tgt), torch.from_numpy(mask))

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        return self.layout(self.sample(split, index, batch_size), seq_len)

    def probe_batch(self, mode: Mode, index: int, batch_size: int, seq_len: int) -> tuple[Batch, dict[str, np.ndarray]]:
        """Batch ``index`` of the "icl" or "iwl" probe distribution, with its raw sample."""
        s = self.sample("probe", index, batch_size, mode)
        return self.layout(s, seq_len), s

    def describe(self) -> dict:
        return {
            "kind": "bursty_classification",
            "n_classes": self.n_classes,
            "n_labels": self.n_labels,
            "item_dim": self.item_dim,
            "context_pairs": self.n_pairs,
            "within_class_noise": self.eps,
            "zipf_exponent": self.alpha,
            "burstiness": self.burstiness,
            "p_bursty": self.p_bursty,
            "input_dim": self.input_dim,
            "chance_loss": math.log(self.n_labels),
        }
