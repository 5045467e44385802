"""Bursty few-shot classification (Chan et al. 2022; Reddy 2023): the source against its definitions, the
config fields, the fewshot instrument and offline probe, bad input, and short training runs."""

import json
import math
import subprocess

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.data import build_source
from scalescope.data.bursty import BurstyClassificationSource, default_burstiness, zipf_probs
from scalescope.instruments.fewshot import fewshot_metrics
from scalescope.model import GPT

from .conftest import cli_cmd, train_tiny


def _cfg(data=None, model=None, train=None, **kw):
    return C.from_dict(
        {
            "data": {"kind": "bursty_classification", "n_classes": 64, "n_labels": 8, "item_dim": 16, **(data or {})},
            "model": {"n_layer": 2, "d_model": 32, "n_head": 1, "seq_len": 17, "attn_only": True, **(model or {})},
            "train": train or {},
            **kw,
        }
    )


def _src(**kw):
    args = {
        "n_classes": 64,
        "n_labels": 8,
        "item_dim": 16,
        "seq_len": 17,
        "burstiness": 2,
        "seed": 0,
        "stream_seed": 1,
        **kw,
    }
    return BurstyClassificationSource(
        args.pop("n_classes"), args.pop("n_labels"), args.pop("item_dim"), args.pop("seq_len"), **args
    )


# ---------------------------------------------------------------------------------------------------
# The source


def test_layout_and_purity():
    src = _src()
    N, D, L = 8, 16, 8
    b = src.batch("train", 3, 5, 19)  # two zero positions of padding after the query
    s = src.sample("train", 3, 5)
    assert b.inputs.shape == (5, 19, D + L) and b.inputs.dtype == torch.float32
    assert b.targets.dtype == torch.int64 and b.loss_mask.shape == (5, 19)
    inp = b.inputs.numpy()
    np.testing.assert_allclose(inp[:, 0 : 2 * N + 1 : 2, :D], s["items"], rtol=1e-6, atol=1e-7)
    assert (inp[:, 0 : 2 * N + 1 : 2, D:] == 0).all() and (inp[:, 1 : 2 * N : 2, :D] == 0).all()
    np.testing.assert_array_equal(inp[:, 1 : 2 * N : 2, D:].argmax(-1), s["labels"][:, :N])
    assert (inp[:, 1 : 2 * N : 2, D:].sum(-1) == 1).all() and (inp[:, 2 * N + 1 :] == 0).all()
    # The loss counts the query only, whose target is the query's label.
    assert b.loss_mask.sum().item() == 5 and b.loss_mask[:, 2 * N].all()
    np.testing.assert_array_equal(b.targets[:, 2 * N].numpy(), s["labels"][:, N])
    # Pure in (config, seed, split, index); the mixture belongs to the data seed, not the run seed.
    assert torch.equal(src.batch("train", 3, 5, 19).inputs, b.inputs)
    assert not torch.equal(src.batch("val", 3, 5, 19).inputs, b.inputs)
    assert not torch.equal(src.batch("train", 4, 5, 19).inputs, b.inputs)
    other = src.with_stream_seed(2)
    assert not torch.equal(other.batch("train", 3, 5, 19).inputs, b.inputs)
    np.testing.assert_array_equal(other.centres, src.centres)
    assert not np.allclose(_src(seed=1).centres, src.centres)
    for mode in ("icl", "iwl"):
        a, _ = src.probe_batch(mode, 0, 4, 17)
        assert torch.equal(a.inputs, src.probe_batch(mode, 0, 4, 17)[0].inputs)
        assert not torch.equal(a.inputs, src.batch("probe", 0, 4, 17).inputs)


def test_items_are_normalized_gaussian_mixture():
    eps, D = 0.5, 16
    src = _src(n_classes=512, item_dim=D, within_class_noise=eps, p_bursty=0.0)
    s = src.sample("train", 0, 4000)
    x, k = s["items"].reshape(-1, D), s["classes"].reshape(-1)
    # E|x|² = (E|mu|² + eps² E|eta|²) / (1 + eps²) = 1. The centres are fixed: their mean |mu|² over 512
    # classes has sd sqrt(2 / (D K)) ~ 0.016, the sampling adds ~0.003; 0.06 is ~4 sd.
    assert abs((x**2).sum(1).mean() - 1.0) < 0.06
    # Within class: x - mu_k / sqrt(1 + eps²) = eps eta / sqrt(1 + eps²), per-coordinate variance
    # eps² / ((1 + eps²) D); 36,000 items x 16 coordinates give a relative sd ~0.2%, tolerance 3%.
    r = x - src.centres[k] / math.sqrt(1 + eps**2)
    assert r.var() == pytest.approx(eps**2 / ((1 + eps**2) * D), rel=0.03)
    assert abs(r.mean()) < 1e-3
    # The centres themselves: mu_k ~ N(0, I / D).
    assert src.centres.var() == pytest.approx(1 / D, rel=0.05)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_zipf_class_frequencies(alpha):
    p = zipf_probs(10, alpha)
    assert p.sum() == pytest.approx(1.0) and p[0] / p[1] == pytest.approx(2.0**alpha)
    assert p[0] / p[9] == pytest.approx(10.0**alpha)
    # Non-bursty sequences draw every item and the query i.i.d. from p(k): empirical frequencies within
    # 5 binomial standard deviations of p(k) for every class.
    src = _src(n_classes=10, n_labels=2, zipf_exponent=alpha, p_bursty=0.0)
    c = src.sample("train", 0, 5000)["classes"].reshape(-1)
    n = len(c)
    f = np.bincount(c, minlength=10) / n
    assert np.all(np.abs(f - p) < 5 * np.sqrt(p * (1 - p) / n))


def test_burstiness_structure_and_fraction():
    N, B = 8, 2
    src = _src(n_classes=64, burstiness=B, p_bursty=0.3)
    s = src.sample("train", 0, 4000)
    bursty, classes = s["bursty"], s["classes"]
    # p_bursty: the fraction of bursty sequences, within 5 binomial sd (sd = 0.007).
    assert abs(bursty.mean() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 4000)
    for row in classes[bursty]:
        ctx, q = row[:N], row[N]
        counts = np.bincount(ctx)
        # N / B classes drawn from p(k), B copies each (a class drawn twice shows 2B times); the query's
        # class is one of them.
        assert np.all(counts[counts > 0] % B == 0) and len(np.unique(ctx)) <= N // B and q in ctx
    # Non-bursty: i.i.d., so the query's class is in the context only by chance (1 - (63/64)^8 ~ 12% for
    # uniform classes, vs 100% when bursty).
    hit = np.mean([row[N] in row[:N] for row in classes[~bursty]])
    assert 0.08 < hit < 0.17
    assert default_burstiness(8) == 4 and default_burstiness(9) == 3 and default_burstiness(7) == 1


def test_label_assignment_and_probe_distributions():
    src = _src(n_classes=64, n_labels=8, burstiness=2)
    s = src.sample("train", 0, 500)
    # Reddy's assignment: class k carries label k mod L.
    np.testing.assert_array_equal(s["labels"], s["classes"] % 8)
    # ICL: novel classes (no training centre nearby), labels random per sequence but consistent within it,
    # distinct across the N / B = 4 classes of a context; the query's class is among them.
    icl = src.sample("probe", 0, 500, "icl")
    assert (icl["classes"] == -1).all()
    x = icl["items"]
    for j in range(len(x)):
        d2 = ((x[j, :, None] - x[j, None, :]) ** 2).sum(-1)
        same = d2 < 0.2  # same novel class: |x - x'|² ~ 2 eps² / (1 + eps²) = 0.02; others ~ 2
        lab = icl["labels"][j]
        assert np.all((lab[:, None] == lab[None, :]) == same)
        assert len(np.unique(lab[:-1])) == 4 and lab[-1] in lab[:-1]
    far = ((x[:, :, None, :] - src.centres[None, None] / math.sqrt(1.01)) ** 2).sum(-1).min(-1)
    assert far.min() > 0.2
    # Labels are uniform over the L labels across sequences (sd of each frequency ~0.006 over 4,500 items).
    assert np.abs(np.bincount(icl["labels"].reshape(-1), minlength=8) / icl["labels"].size - 1 / 8).max() < 0.03
    # IWL: training classes, the query's class never in the context.
    iwl = src.sample("probe", 0, 500, "iwl")
    assert not (iwl["classes"][:, :-1] == iwl["classes"][:, -1:]).any()
    np.testing.assert_array_equal(iwl["labels"], iwl["classes"] % 8)


# ---------------------------------------------------------------------------------------------------
# Config


def test_config_resolves_and_builds():
    cfg = _cfg({"zipf_exponent": 1.0})
    d = cfg.data
    assert (d.seq_len, d.context_pairs, d.burstiness, d.p_bursty, d.within_class_noise) == (17, 8, 4, 1.0, 0.1)
    assert cfg.model.input_dim == 16 + 8
    src = build_source(d, seed=3)
    assert isinstance(src, BurstyClassificationSource) and src.vocab_size == 8 and src.stream_seed == 3
    assert src.describe()["chance_loss"] == pytest.approx(math.log(8))
    full = C.from_dict({"data": {"kind": "bursty_classification"}, "model": {"seq_len": 33}}).data
    assert (full.n_classes, full.n_labels, full.item_dim, full.context_pairs, full.burstiness) == (128, 32, 63, 16, 4)
    assert C.run_id(_cfg({"burstiness": 2})) != C.run_id(_cfg({"burstiness": 4}))
    # New fields at their defaults leave every other kind's run id alone.
    d0 = C.to_dict(C.from_dict({}))["data"]
    for f in (
        "n_classes",
        "n_labels",
        "item_dim",
        "context_pairs",
        "within_class_noise",
        "zipf_exponent",
        "burstiness",
        "p_bursty",
    ):
        assert d0[f] is None and C.HASH_OMIT_IF_DEFAULT["data"][f] is None


@pytest.mark.parametrize(
    "data,model,field",
    [
        ({"n_labels": 16, "n_classes": 8}, {}, "data.n_classes"),  # more labels than classes
        ({"n_labels": 1}, {}, "data.n_labels"),
        ({"n_classes": 10_000_000}, {}, "data.n_classes"),  # a 160M-entry centre table
        ({"burstiness": 3}, {}, "data.burstiness"),  # does not divide the 8 pairs
        ({"burstiness": 0}, {}, "data.burstiness"),
        ({"context_pairs": 9}, {}, "data.context_pairs"),  # 19 positions needed, 17 available
        ({}, {"seq_len": 2}, "data.context_pairs"),  # no room for even one pair and a query
        ({"item_dim": 0}, {}, "data.item_dim"),
        ({"within_class_noise": -0.1}, {}, "data.within_class_noise"),
        ({"zipf_exponent": -1.0}, {}, "data.zipf_exponent"),
        ({"p_bursty": 1.5}, {}, "data.p_bursty"),
        ({}, {"input_dim": 7}, "model.input_dim"),
    ],
)
def test_bad_configs_name_the_field(data, model, field):
    with pytest.raises(C.ConfigError) as e:
        _cfg(data, model)
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_fields_belong_to_their_kind():
    # (zipf_exponent is the Markov source's too since issue 11: it tilts the chain's successor probabilities.)
    for f, v in [("n_classes", 8), ("burstiness", 2), ("p_bursty", 0.5), ("within_class_noise", 0.2)]:
        with pytest.raises(C.ConfigError, match="only applies") as e:
            C.from_dict({"data": {f: v}})
        assert f"data.{f}" in str(e.value)


def test_builtin_experiment_expands():
    from pathlib import Path

    import scalescope
    from scalescope.sweep import load_experiment

    exp = load_experiment(Path(scalescope.__file__).parent / "experiments" / "bursty_fewshot.toml")
    assert len(exp.runs) == 6
    assert sorted({(r.data.p_bursty, r.data.zipf_exponent) for r in exp.runs}) == [
        (0.0, 0.0),
        (0.0, 1.0),
        (0.9, 0.0),
        (0.9, 1.0),
        (1.0, 0.0),
        (1.0, 1.0),
    ]
    assert all(r.model.input_dim == 64 and r.instruments.get("fewshot") is not None for r in exp.runs)


# ---------------------------------------------------------------------------------------------------
# The instrument


def test_probe_on_a_fresh_model_is_at_chance_and_references_are_exact():
    K = 1024
    cfg = _cfg({"burstiness": 2, "n_classes": K})
    src = build_source(cfg.data, 0)
    torch.manual_seed(0)
    m = GPT(cfg.model, src.vocab_size).eval()
    r = fewshot_metrics(m, src, seq_len=17, n_batches=2, batch_size=512)
    L, n = 8, 1024
    assert r["chance/accuracy"] == 1 / L and r["chance/logp"] == pytest.approx(-math.log(L))
    for k in ("icl", "iwl", "train_dist"):
        # Small init: near-uniform outputs, log p within 0.05 nats of -log L. Accuracy: labels are uniform
        # under every probe distribution, but a fresh model's argmax is nearly a fixed function of the query's
        # class, so both the n sequences and the K classes are samples: within 5 sd, sd² = p(1 - p)(1/n + 1/K).
        assert abs(r[f"{k}/logp"] + math.log(L)) < 0.05
        assert abs(r[f"{k}/accuracy"] - 1 / L) < 5 * math.sqrt((1 / L) * (1 - 1 / L) * (1 / n + 1 / K))
    # With distinct labels on N / B = 4 novel classes, a uniform guess among them scores exactly 1/4.
    assert r["icl/context_label_accuracy"] == pytest.approx(0.25, abs=1e-12)
    # eps = 0.1: the nearest item / centre is (almost) always the right class.
    assert r["icl/nearest_item_accuracy"] > 0.99 and r["iwl/nearest_centre_accuracy"] > 0.99


def test_probe_rejects_another_source_and_bad_options():
    from scalescope.instruments import build

    with pytest.raises(C.ConfigError, match="bursty_classification") as e:
        fewshot_metrics(None, build_source(C.RunConfig().data, 0), seq_len=16, n_batches=1, batch_size=2)
    assert "instruments.fewshot" in str(e.value)
    with pytest.raises(C.ConfigError, match="n_batches"):
        build({"fewshot": {"n_batches": 0}})


TOML = """
[data]
kind = "bursty_classification"
n_classes = 32
n_labels = 8
item_dim = 16
burstiness = 2
p_bursty = {p_bursty}
[model]
n_layer = 2
d_model = 32
n_head = 1
seq_len = 9
attn_only = true
[train]
batch_size = 64
tokens = {tokens}
lr = 0.003
weight_decay = 0.0
schedule = "constant"
warmup = 0
eval_every = {steps}
eval_batches = 1
checkpoint_every = {steps}
[instruments.fewshot]
n_batches = 1
batch_size = 256
"""


def _train(tmp_path, *, p_bursty: float, steps: int):
    from scalescope.store import Store
    from scalescope.sweep import load_experiment
    from scalescope.train import train

    p = tmp_path / f"b{p_bursty}.toml"
    p.write_text(TOML.format(p_bursty=p_bursty, tokens=steps * 64 * 9, steps=steps))
    cfg = load_experiment(p).runs[0]
    store = Store(tmp_path / f"store{p_bursty}").ensure_writable()
    rd = store.add(cfg)
    assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    return rd


def test_short_training_learns_in_weights_and_offline_cli(tmp_path, capsys):
    """Non-bursty data over K = 32 classes: 100 steps learn the class -> label map (IWL accuracy near 1,
    measured 1.0 at 100 steps) and no in-context learning (ICL accuracy stays near chance 1/8)."""
    rd = _train(tmp_path, p_bursty=0.0, steps=100)
    rows = [json.loads(line) for line in (rd.path / "metrics.jsonl").read_text().splitlines()]
    last = {r["metric"]: r["value"] for r in rows if r["step"] == 100}
    assert {"fewshot/icl/accuracy", "fewshot/iwl/logp", "fewshot/chance/accuracy"} <= set(last)
    assert last["fewshot/iwl/accuracy"] > 0.8 and last["fewshot/icl/accuracy"] < 0.3
    first = {r["metric"]: r["value"] for r in rows if r["step"] == 0}
    assert last["fewshot/iwl/logp"] > first["fewshot/iwl/logp"] + 1.0
    r = subprocess.run(
        cli_cmd("probe", "fewshot", str(rd.path), "--json", "--n-batches", "1", "--batch-size", "256"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["step"] == 100 and res["sequences"] == 256 and res["source"]["n_classes"] == 32
    assert res["iwl/accuracy"] > 0.8 and res["chance/accuracy"] == 1 / 8
    # Bad input: one line, exit 2 (in process: the same entry point, without a second interpreter start).
    from scalescope.cli import main

    for extra, field in ((["--n-batches", "0"], "--n-batches"), (["--step", "7"], "--step")):
        capsys.readouterr()
        assert main(["probe", "fewshot", str(rd.path), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0]


def test_offline_probe_of_another_source_is_one_line_exit_2(tiny_toml, tmp_path):
    rd = train_tiny(tiny_toml, tmp_path, "", "markov.toml")
    r = subprocess.run(cli_cmd("probe", "fewshot", str(rd.path), "--json"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bursty_classification" in lines[0] and "markov" in lines[0]


@pytest.mark.slow
def test_bursty_data_learns_in_context_and_iid_data_in_weights(tmp_path):
    """Reduced bursty_fewshot experiment (Chan et al. 2022 fig. 2; Reddy 2023 fig. 1): its runs with Zipf exponent
    0 and p_bursty 1 or 0, cut to 800 of their 1,500 steps (the schedule is constant, so this is a prefix of the
    experiment's runs; ~40 s each on a quiet core). Bursty data: ICL accuracy leaves the 1/4 plateau (copying a
    context label) and passes 0.9 while IWL stays low; i.i.d. data: the reverse. Measured in the experiment's
    p_bursty = 1 run at step 600: ICL accuracy 0.99, IWL 0.07."""
    from pathlib import Path

    import scalescope
    from scalescope.store import Store
    from scalescope.sweep import load_experiment
    from scalescope.train import train

    exp = load_experiment(Path(scalescope.__file__).parent / "experiments" / "bursty_fewshot.toml")
    out = {}
    for cfg in exp.runs:
        if cfg.data.zipf_exponent != 0.0 or cfg.data.p_bursty not in (0.0, 1.0):
            continue
        cfg.train.tokens = 800 * cfg.train.batch_size * cfg.model.seq_len
        cfg.train.eval_every, cfg.train.checkpoint_every = 800, 800
        store = Store(tmp_path / f"s{cfg.data.p_bursty}").ensure_writable()
        rd = store.add(cfg)
        assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
        rows = [json.loads(line) for line in (rd.path / "metrics.jsonl").read_text().splitlines()]
        out[cfg.data.p_bursty] = {r["metric"].removeprefix("fewshot/"): r["value"] for r in rows if r["step"] == 800}
    assert out[1.0]["icl/accuracy"] > 0.9 and out[1.0]["iwl/accuracy"] < 0.3
    assert out[0.0]["iwl/accuracy"] > 0.9 and out[0.0]["icl/accuracy"] < 0.1
    assert out[1.0]["icl/logp"] > out[0.0]["icl/logp"] + 2.0
