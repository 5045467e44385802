"""Classification and modular-arithmetic data sets, their corruptions, and the config checks of issue 15."""

import numpy as np
import pytest
import torch

from scalescope import classifiers
from scalescope import config as C
from scalescope.data import build_source
from scalescope.data.dataset import Arrays, FiniteSource, corrupt
from scalescope.data.modular import is_prime
from scalescope.errors import ConfigError


def cfg_of(data: dict, model: dict | None = None, train: dict | None = None) -> C.RunConfig:
    return C.from_dict(
        {"data": data, "model": model or {"arch": "mlp"}, "train": train or {"steps": 10, "batch_size": 16}}
    )


def source_of(data: dict, model: dict | None = None, seed: int = 0) -> FiniteSource:
    cfg = cfg_of(data, model)
    return build_source(cfg.data, seed=seed)


# --- modular arithmetic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,fn", [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)])
def test_modular_answers_are_exact_and_splits_partition_the_pairs(op, fn):
    p = 13
    src = source_of({"kind": "modular", "p": p, "op": op, "train_fraction": 0.3}, {"arch": "gpt"})
    pairs = []
    for arr in (src.train, src.val):
        a, b, eq = arr.x[:, 0], arr.x[:, 1], arr.x[:, 2]
        assert np.all(eq == p)  # the "=" token
        assert np.array_equal(arr.y, fn(a, b) % p)
        pairs += list(zip(a.tolist(), b.tolist()))
    assert len(pairs) == len(set(pairs)) == p * p  # disjoint and complete
    assert src.n_train == round(0.3 * p * p)
    assert src.vocab_size == p + 1


def test_modular_batch_counts_the_answer_only():
    src = source_of({"kind": "modular", "p": 7, "train_fraction": 0.5}, {"arch": "gpt"})
    b = src.batch("train", 0, 5, 3)
    assert b.inputs.shape == (5, 3) and b.loss_mask is not None
    assert b.loss_mask[:, -1].all() and not b.loss_mask[:, :-1].any()
    assert torch.equal(b.targets[:, -1], (b.inputs[:, 0] + b.inputs[:, 1]) % 7)


def test_model_context_resolves_to_the_task():
    cfg = cfg_of({"kind": "modular", "p": 7}, {"arch": "gpt", "seq_len": 64}, {"steps": 5, "batch_size": 8})
    assert cfg.model.seq_len == 3
    cfg = cfg_of({"kind": "digits"})
    assert cfg.model.seq_len == 1 and cfg.model.input_dim == 64


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


# --- finite data: batches, full batch, epochs ------------------------------------------------------------


def test_an_epoch_of_minibatches_covers_every_example_once_and_is_deterministic():
    src = source_of({"kind": "digits", "n_train": 100})
    seen = np.concatenate([src.train_indices(i, 20) for i in range(5)])
    assert sorted(seen.tolist()) == list(range(100))
    again = source_of({"kind": "digits", "n_train": 100})
    assert torch.equal(src.batch("train", 7, 20, 1).inputs, again.batch("train", 7, 20, 1).inputs)
    # A batch that straddles two epochs draws from both permutations, still without repeats within an epoch.
    straddle = src.train_indices(2, 40)  # positions 80..119: 20 of epoch 0, 20 of epoch 1
    assert len(set(straddle[:20].tolist())) == 20


def test_full_batch_resolves_the_batch_to_the_training_set():
    cfg = cfg_of({"kind": "digits", "n_train": 321}, train={"steps": 5, "full_batch": True})
    assert cfg.train.batch_size == 321
    src = build_source(cfg.data, seed=0)
    b = src.batch("train", 3, cfg.train.batch_size, 1)
    assert b.inputs.shape == (321, 1, 64) and b.targets.shape == (321, 1)


def test_digits_split_and_standardization():
    src = source_of({"kind": "digits"})
    assert src.n_train + src.n_val == 1797 and src.n_val == round(1797 * 0.2)
    x = src.train.x
    assert np.allclose(x.mean(0), 0, atol=1e-5)  # standardized with the training set's moments
    std = x.std(0)
    assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))  # constant pixels stay at 0


# --- corruptions ----------------------------------------------------------------------------------------


def test_label_noise_changes_the_expected_share_of_training_labels_only():
    clean, noisy = source_of({"kind": "digits"}), source_of({"kind": "digits", "label_noise": 0.5})
    changed = np.mean(clean.train.y != noisy.train.y)
    # Each label is redrawn with probability 0.5 and lands on another class with probability 0.9: 0.45 expected;
    # binomial s.d. over 1,438 labels is 0.013, so 4 s.d. is 0.052.
    assert abs(changed - 0.45) < 0.052
    assert np.array_equal(clean.val.y, noisy.val.y)
    assert np.array_equal(clean.train.x, noisy.train.x)
    rand = source_of({"kind": "digits", "label_noise": 1.0})
    # p = 1: labels independent of the truth, agreement with it at chance (0.1 ± 4 s.d. = 0.032).
    assert abs(np.mean(rand.train.y == clean.train.y) - 0.1) < 0.032


def test_pixel_corruptions():
    rng = np.random.default_rng(0)
    train = Arrays(rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 3, 50))
    val = Arrays(rng.normal(size=(20, 8)).astype(np.float32), rng.integers(0, 3, 20))
    sh, shv = corrupt(train, val, 3, label_noise=0.0, inputs="shuffled_pixels", seed=1)
    # One permutation for every example: some column order maps train onto the shuffled train exactly.
    perm = [int(np.argmin(np.abs(train.x[:, [j]] - sh.x).sum(0))) for j in range(8)]
    assert np.allclose(train.x[:, np.argsort(perm)], sh.x) and sorted(perm) == list(range(8))
    assert np.allclose(val.x[:, np.argsort(perm)], shv.x)
    rp, _ = corrupt(train, val, 3, label_noise=0.0, inputs="random_pixels", seed=1)
    assert np.allclose(np.sort(rp.x, 1), np.sort(train.x, 1))  # each example keeps its values...
    orders = {tuple(np.argsort(np.argsort(r))) for r in rp.x}
    assert len(orders) > 40  # ...in its own order
    big = Arrays(rng.normal(loc=3.0, size=(4000, 3)).astype(np.float32), np.zeros(4000, dtype=np.int64))
    g, _ = corrupt(big, big.take(np.arange(2)), 1, label_noise=0.0, inputs="gaussian", seed=1)
    # Moments of 4,000 draws: mean s.e. 1/√4000 = 0.016 per feature; 0.08 is 5 s.e.
    assert np.allclose(g.x.mean(0), big.x.mean(0), atol=0.08)
    assert np.allclose(np.cov(g.x, rowvar=False), np.cov(big.x, rowvar=False), atol=0.15)


def test_random_label_phase_then_true_labels():
    src = source_of({"kind": "digits", "n_train": 200, "random_label_steps": 10})
    early = src.batch("train", 0, 200, 1).targets[:, 0].numpy()
    late = src.batch("train", 10, 200, 1).targets[:, 0].numpy()
    truth = src.train.y
    assert np.array_equal(late, truth)
    assert np.mean(early == truth) < 0.25  # random labels agree at chance (0.1)
    assert src.phase_starts == (10,)
    # The trainer's train-set evaluation uses the labels after the random phase.
    ys = np.concatenate([b.targets[:, 0].numpy() for b, _ in src.full_batches("train", 64)])
    assert np.array_equal(ys, truth)


def test_gaussian_mixture_bayes_accuracy_is_the_nearest_mean_rule():
    src = source_of({"kind": "gaussian_mixture", "n_classes": 2, "dim": 5, "separation": 2.0, "n_val_examples": 4000})
    # Two unit Gaussians whose means are about 2 apart: Bayes accuracy Φ(Δ/2) with Δ the actual distance.
    from scipy.stats import norm

    mu = cfg_of({"kind": "gaussian_mixture", "n_classes": 2, "dim": 5, "separation": 2.0})
    means = mu.data._means()  # type: ignore[attr-defined]
    exact = norm.cdf(np.linalg.norm(means[0] - means[1]) / 2)
    # 4,000 validation draws: binomial s.e. ≈ 0.007; 0.03 is > 4 s.e.
    assert abs(src.describe()["bayes_val_acc"] - exact) < 0.03


# --- bad input: one line, at load -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,model,train,field",
    [
        ({"kind": "modular", "p": 12}, {"arch": "gpt"}, {}, "data.p"),
        ({"kind": "modular", "p": 2003}, {"arch": "gpt"}, {}, "data.p"),
        ({"kind": "modular", "p": 7, "vocab_size": 5}, {"arch": "gpt"}, {}, "data.vocab_size"),
        ({"kind": "modular", "train_fraction": 1.0}, {"arch": "gpt"}, {}, "data.train_fraction"),
        ({"kind": "modular", "train_fraction": 0.0}, {"arch": "gpt"}, {}, "data.train_fraction"),
        ({"kind": "modular"}, {"arch": "mlp"}, {}, "model.arch"),
        ({"kind": "digits", "label_noise": 1.5}, {"arch": "mlp"}, {}, "data.label_noise"),
        ({"kind": "digits", "label_noise": -0.1}, {"arch": "mlp"}, {}, "data.label_noise"),
        ({"kind": "digits", "n_train": 5000}, {"arch": "mlp"}, {}, "data.n_train"),
        ({"kind": "digits", "val_fraction": 1.0}, {"arch": "mlp"}, {}, "data.val_fraction"),
        ({"kind": "digits"}, {"arch": "gpt"}, {}, "model.arch"),
        ({"kind": "markov"}, {"arch": "mlp"}, {}, "model.arch"),
        ({"kind": "markov"}, {}, {"full_batch": True}, "train.full_batch"),
        ({"kind": "digits"}, {"arch": "mlp"}, {"flops": 1e9}, "train.flops"),
        ({"kind": "digits"}, {"arch": "mlp"}, {"full_batch": True, "micro_batch_size": 8}, "train.micro_batch_size"),
        ({"kind": "digits"}, {"arch": "mlp"}, {"steps": 5, "tokens": 100}, "train.tokens"),
        ({"kind": "digits"}, {"arch": "random_features", "ridge": -1.0}, {}, "model.ridge"),
        ({"kind": "digits"}, {"arch": "mlp", "ridge": 1.0}, {}, "model.ridge"),
        ({"kind": "digits", "n_train": 50}, {"arch": "mlp"}, {"batch_size": 64}, "train.batch_size"),
        ({"kind": "digits", "n_train": 1, "inputs": "gaussian"}, {"arch": "mlp"}, {}, "data.inputs"),
        ({"kind": "gaussian_mixture", "dim": 10**9}, {"arch": "mlp"}, {}, "data.dim"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(data, model, train, field):
    with pytest.raises(ConfigError) as e:
        C.from_dict({"data": data, "model": model, "train": train})
    assert e.value.field == field
    assert "\n" not in str(e.value)


def test_random_features_too_wide_for_memory_says_how_much(monkeypatch):
    monkeypatch.setattr(classifiers, "available_memory", lambda: 2**30)  # 1 GiB
    with pytest.raises(ConfigError) as e:
        C.from_dict({"data": {"kind": "digits"}, "model": {"arch": "random_features", "d_model": 200_000}})
    assert e.value.field == "model.d_model" and "GiB" in str(e.value) and "1.0 GiB available" in str(e.value)


def test_run_ids_of_existing_kinds_unchanged_by_the_new_fields():
    # The new model/train fields hash only when set (HASH_OMIT_IF_DEFAULT): a plain GPT config's id is the same.
    cfg = C.from_dict({})
    d = C.to_dict(cfg)
    assert d["model"]["arch"] == "gpt" and d["train"]["steps"] is None
    blob = C.run_id(cfg)
    cfg2 = C.from_dict({"model": {"arch": "gpt"}, "train": {"full_batch": False}})
    assert C.run_id(cfg2) == blob


def test_one_dimensional_gaussian_inputs():
    src = source_of({"kind": "gaussian_mixture", "dim": 1, "inputs": "gaussian", "n_examples": 50})
    assert src.train.x.shape == (50, 1) and np.isfinite(src.train.x).all()


def test_a_random_label_phase_as_long_as_the_run_is_refused():
    from scalescope.sweep import expand

    raw = {"data": {"kind": "digits", "random_label_steps": 40}, "model": {"arch": "mlp"}, "train": {"steps": 40}}
    with pytest.raises(ConfigError) as e:
        expand(raw, "exp.toml")
    assert e.value.field == "data.random_label_steps" and "none of the run's 40 steps" in str(e.value)
