"""K discrete tasks (issue 5): the source, the exact ideal observers, the task_id instrument and its offline
probe, the demonstrations-against-K growth fits and the report panel."""

import json
import math

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.analyses.prompt_length import analyze, compare_growth, demos_table
from scalescope.data import build_source
from scalescope.data.discrete_tasks import (
    DiscreteTasksSource,
    accuracy_logprob,
    lookup_observer,
    n_pairs,
    pool_observer,
)
from scalescope.instruments import task_id as TI
from scalescope.model import GPT

from .conftest import train_tiny


def _cfg(data=None, model=None, **kw):
    return C.from_dict(
        {
            "data": {"kind": "discrete_tasks", "vocab_size": 12, "n_inputs": 8, **(data or {})},
            "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "seq_len": 15, **(model or {})},
            **kw,
        }
    )


# ---------------------------------------------------------------------------------------------------
# The source


def test_layout_mask_and_purity():
    src = DiscreteTasksSource(5, 6, 3, 11, vocab_size=10, seed=1, stream_seed=2)
    b = src.batch("train", 3, 4, 11)
    xs, ys, task, maps = src.sample("train", 3, 4, 11)
    assert n_pairs(11) == 6 and xs.shape == (4, 6)
    assert b.inputs.shape == (4, 11) and b.targets.shape == (4, 11) and b.inputs.dtype == torch.int64
    tok = torch.cat([b.inputs, b.targets[:, -1:]], dim=1).numpy()
    np.testing.assert_array_equal(tok[:, 0::2], xs)  # inputs in [0, n_in)
    np.testing.assert_array_equal(tok[:, 1::2], 6 + ys)  # outputs in [n_in, n_in + n_out)
    np.testing.assert_array_equal(ys, np.take_along_axis(src.pool[task], xs, axis=1))
    # The loss counts exactly the output targets, i.e. the targets at the inputs' positions.
    assert b.loss_mask[:, 0::2].all() and not b.loss_mask[:, 1::2].any()
    assert (b.targets[b.loss_mask] >= 6).all() and (b.targets[~b.loss_mask] < 6).all()
    assert torch.equal(src.batch("train", 3, 4, 11).inputs, b.inputs)
    assert not torch.equal(src.batch("val", 3, 4, 11).inputs, b.inputs)
    assert not torch.equal(src.with_stream_seed(5).batch("train", 3, 4, 11).inputs, b.inputs)


def test_pool_and_unseen_tasks():
    src = DiscreteTasksSource(40, 6, 3, 31, seed=4)
    assert src.pool.shape == (40, 6) and len({m.tobytes() for m in src.pool}) == 40  # distinct maps
    np.testing.assert_array_equal(src.with_stream_seed(9).pool, src.pool)  # the data seed picks the pool
    assert not np.array_equal(DiscreteTasksSource(40, 6, 3, 31, seed=5).pool, src.pool)
    _, _, task, maps = src.sample("probe", 0, 300, 31)
    assert len(set(task)) == 40
    _, _, task_u, maps_u = src.sample("probe", 0, 300, 31, unseen=True)
    pool = {m.tobytes() for m in src.pool}
    assert (task_u == -1).all() and not any(m.tobytes() in pool for m in maps_u)
    # 2^3 = 8 maps, 5 in the pool: unseen prompts use the other 3, uniformly (600 draws: each count is
    # 200 +- 11.5; 60 is over 5 standard deviations).
    small = DiscreteTasksSource(5, 3, 2, 7)
    _, _, _, maps_s = small.sample("probe", 1, 600, 7, unseen=True)
    keys, counts = np.unique(maps_s, axis=0, return_counts=True)
    assert len(keys) == 3 and not {k.tobytes() for k in keys} & {m.tobytes() for m in small.pool}
    assert (abs(counts - 200) < 60).all()
    # A family with 2^2 = 4 maps: a pool of all 4 is every map once, and no unseen task exists.
    full = DiscreteTasksSource(4, 2, 2, 7)
    assert sorted(map(tuple, full.pool)) == [(0, 0), (0, 1), (1, 0), (1, 1)] and not full.has_unseen
    with pytest.raises(C.ConfigError, match="no unseen tasks"):
        full.sample("probe", 0, 2, 7, unseen=True)


def test_config_resolves_and_keeps_old_ids():
    cfg = _cfg({"n_tasks": 32})
    assert (cfg.data.n_tasks, cfg.data.n_inputs, cfg.data.n_outputs, cfg.data.seq_len) == (32, 8, 4, 15)
    src = build_source(cfg.data, seed=0)
    assert isinstance(src, DiscreteTasksSource) and src.vocab_size == 12 and len(src.pool) == 32
    d = C.from_dict({"data": {"kind": "discrete_tasks", "vocab_size": 20}}).data
    assert (d.n_tasks, d.n_outputs, d.n_inputs) == (16, 4, 16)  # defaults
    assert C.run_id(_cfg({"n_tasks": 2})) != C.run_id(_cfg({"n_tasks": 4}))
    # New fields at their defaults stay out of every other kind's run id.
    assert all(C.HASH_OMIT_IF_DEFAULT["data"][f] is None for f in ("n_tasks", "n_inputs", "n_outputs"))


@pytest.mark.parametrize(
    "data,field",
    [
        ({"n_tasks": 0}, "data.n_tasks"),
        ({"n_outputs": 1}, "data.n_outputs"),
        ({"n_inputs": 9}, "data.vocab_size"),  # 9 + 4 symbols > vocab 12
        ({"vocab_size": 4, "n_inputs": None}, "data.n_inputs"),  # no input symbols left
        ({"n_inputs": 2, "n_outputs": 2, "n_tasks": 5}, "data.n_tasks"),  # only 2^2 = 4 distinct maps
        ({"n_tasks": 2_000_000, "n_inputs": 8}, "data.n_tasks"),
        ({"seq_len": 2}, "model.seq_len"),  # no room for a demonstration before a query
    ],
)
def test_bad_configs(data, field):
    data = dict(data)
    model = {"seq_len": data.pop("seq_len")} if "seq_len" in data else None
    with pytest.raises(C.ConfigError) as e:
        _cfg(data, model)
    assert e.value.field == field and "\n" not in str(e.value)


def test_fields_of_another_kind_rejected():
    with pytest.raises(C.ConfigError, match="only applies to kind = 'discrete_tasks'") as e:
        C.from_dict({"data": {"kind": "markov", "n_tasks": 4}})
    assert e.value.field == "data.n_tasks"


# ---------------------------------------------------------------------------------------------------
# Ideal observers: exact small cases computed by hand


def test_pool_observer_two_tasks_by_hand():
    pool = np.array([[0, 0], [0, 1]])  # f1: everything -> 0; f2: identity
    xs, ys = np.array([[1, 0, 1], [0, 1, 1]]), np.array([[1, 0, 1], [0, 1, 1]])  # both prompts from f2
    p = pool_observer(xs, ys, pool, 2)
    # Prompt 1: k=0 query 1: tasks disagree, 1/2 each; the pair (1, 1) rules out f1, then certainty.
    np.testing.assert_allclose(p[0], [[0.5, 0.5], [1, 0], [0, 1]])
    # Prompt 2: k=0 query 0: both tasks say 0; (0, 0) rules out nothing, so query 1 is still 1/2 - 1/2.
    np.testing.assert_allclose(p[1], [[1, 0], [0.5, 0.5], [0, 1]])
    acc, lp = accuracy_logprob(p, ys)
    np.testing.assert_allclose(acc, [[0.5, 1, 1], [1, 0.5, 1]])  # ties count 1/2
    np.testing.assert_allclose(lp, np.log([[0.5, 1, 1], [1, 0.5, 1]]))


def test_pool_observer_three_tasks_by_hand():
    pool = np.array([[0, 0], [0, 1], [1, 1]])
    xs, ys = np.array([[1, 0]]), np.array([[1, 0]])  # from the middle task
    p = pool_observer(xs, ys, pool, 2)
    # k=0, query 1: the tasks say 0, 1, 1 -> (1/3, 2/3); after (1, 1) tasks 2 and 3 remain, saying 0 and 1.
    np.testing.assert_allclose(p[0], [[1 / 3, 2 / 3], [0.5, 0.5]])
    acc, lp = accuracy_logprob(p, ys)
    np.testing.assert_allclose(acc[0], [1, 0.5])
    np.testing.assert_allclose(lp[0], np.log([2 / 3, 0.5]))


def test_lookup_observer_by_hand_and_closed_form():
    xs, ys = np.array([[3, 1, 3, 3, 1]]), np.array([[2, 0, 2, 2, 0]])
    acc, lp = accuracy_logprob(lookup_observer(xs, ys, 4), ys)
    np.testing.assert_allclose(acc[0], [0.25, 0.25, 1, 1, 1])
    np.testing.assert_allclose(lp[0], [-math.log(4)] * 2 + [0] * 3)
    # On fresh maps its expected accuracy after k pairs is 1 - (1 - 1/n_out)(1 - 1/n_in)^k. 4,000 prompts: the
    # standard error of a mean accuracy is <= 0.5 / sqrt(4000) = 0.008; 0.035 is over 4 of them.
    src = DiscreteTasksSource(3, 8, 4, 31)
    xs, ys, _, _ = src.sample("probe", 0, 4000, 31, unseen=True)
    acc, _ = accuracy_logprob(lookup_observer(xs, ys, 4), ys)
    k = np.arange(xs.shape[1])
    np.testing.assert_allclose(acc.mean(0), 1 - 0.75 * (7 / 8) ** k, atol=0.035)
    # And the pool observer is Bayes-optimal on pool prompts: never worse than lookup on average.
    xs, ys, _, _ = src.sample("probe", 0, 2000, 31)
    a_pool = accuracy_logprob(pool_observer(xs, ys, src.pool, 4), ys)[0].mean(0)
    a_look = accuracy_logprob(lookup_observer(xs, ys, 4), ys)[0].mean(0)
    assert (a_pool >= a_look - 1e-9).all() and a_pool[2] > a_look[2] + 0.2


def test_demos_needed_interpolates():
    assert TI.demos_needed(np.array([0.2, 0.6, 1.0]), 0.8) == pytest.approx(1.5)
    assert TI.demos_needed(np.array([0.9, 1.0]), 0.8) == 0.0
    assert math.isnan(TI.demos_needed(np.array([0.2, 0.3]), 0.8))


# ---------------------------------------------------------------------------------------------------
# The instrument, online and offline


def test_probe_on_fresh_model():
    cfg = _cfg({"n_tasks": 8})
    src = build_source(cfg.data, seed=0)
    torch.manual_seed(0)
    model = GPT(cfg.model, src.vocab_size).eval()
    probe = TI.make(n_batches=1, target=0.8)
    ctx = type("Ctx", (), {"model": model, "source": src, "seq_len": 15, "batch_size": 64, "device": "cpu"})()
    out = probe(ctx)
    n = (15 + 1) // 2
    assert out["seen/acc_by_k/model"].shape == (n,) and out["unseen/logp_by_k/ideal"].shape == (n,)
    assert "unseen/acc_by_k/lookup" not in out  # the same as unseen/ideal
    # An untrained model spreads its mass over all 12 tokens: log-prob near -ln 12 (init_std 0.02 keeps
    # logits within ~0.1 of each other), far below the observers' -ln 4 at k = 0.
    assert abs(out["seen/logp_at_0/model"] + math.log(12)) < 0.2
    assert out["seen/logp_at_0/ideal"] >= -math.log(4) - 1e-9
    # K = 8 tasks, 4 outputs: the pool observer reaches 0.8 within a few pairs; lookup alone needs more (its
    # expected accuracy 1 - 0.75 (7/8)^k stays below 0.8 up to k = 9, past this 8-query context).
    look = out["seen/demos_needed/lookup"]
    assert out["seen/demos_needed/ideal"] < 4 and (math.isnan(look) or look > out["seen/demos_needed/ideal"])
    assert math.isnan(out["seen/demos_needed/model"])
    with pytest.raises(C.ConfigError, match="too short"):
        TI.summary({k: v for k, v in out.items() if "_by_k" in k}, 0.8, ks=[n])
    with pytest.raises(C.ConfigError, match="target"):
        TI.make(target=1.5)


DISCRETE = """
name = "disc"
[data]
kind = "discrete_tasks"
vocab_size = 10
n_inputs = 6
n_outputs = 4
n_tasks = 4
[model]
n_layer = 1
d_model = 16
n_head = 2
seq_len = 15
[train]
batch_size = 16
tokens = {tokens}
eval_every = 20
eval_batches = 1
checkpoint_every = 20
lr = 0.01
[instruments.task_id]
n_batches = 1
batch_size = 32
"""


@pytest.fixture(scope="module")
def disc_store(tmp_path_factory):
    """A store with three tiny discrete_tasks runs (K = 2, 4, 16) of 40 steps each."""
    from scalescope.store import Store
    from scalescope.sweep import load_experiment
    from scalescope.train import train

    d = tmp_path_factory.mktemp("disc")
    p = d / "disc.toml"
    p.write_text(DISCRETE.format(tokens=16 * 15 * 40) + '[sweep]\n"data.n_tasks" = [2, 4, 16]\n')
    store = Store(d / "store").ensure_writable()
    for cfg in load_experiment(p).runs:
        assert train(cfg, store.add(cfg).path, cache_dir=store.cache_dir, threads=1).status == "finished"
    return store.path


def test_instrument_in_training_and_offline_cli(disc_store, capsys):
    from scalescope.cli import main
    from scalescope.store import load

    t = load(disc_store)
    names = set(t.metrics["metric"])
    assert {"task_id/seen/demos_needed/ideal", "task_id/unseen/acc_at_0/model", "task_id/target"} <= names
    rid = t.runs["id"].iloc[0]
    assert (disc_store / "runs" / rid / "artifacts").is_dir()
    capsys.readouterr()
    assert (
        main(["probe", "task-id", str(disc_store / "runs" / rid), "--json", "--n-batches", "1", "--batch-size", "16"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 40 and len(out["curves"]["seen/acc_by_k/model"]) == 8
    assert 0 <= out["seen/acc_at_0/ideal"] <= 1


def test_offline_probe_refuses_other_sources(tiny_toml, tmp_path, capsys):
    from scalescope.cli import main

    rd = train_tiny(tiny_toml, tmp_path, "", "markov.toml")
    capsys.readouterr()
    assert main(["probe", "task-id", str(rd.path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "discrete_tasks" in err and "'markov'" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# Demonstrations against K: growth fits, analysis and panel


@pytest.mark.parametrize(
    "truth,fn",
    [
        ("log", lambda K: 1.0 + 1.5 * np.log(K)),
        ("power", lambda K: 0.8 * K**0.5),
        ("linear", lambda K: 2.0 + 0.02 * K),
        ("constant", lambda K: 3.0 + 0.0 * K),
    ],
)
def test_growth_fit_picks_the_true_form(truth, fn):
    K = np.repeat(2.0 ** np.arange(1, 11), 2)
    rng = np.random.default_rng(0)
    d = fn(K) * (1 + 0.02 * rng.standard_normal(len(K)))  # 2% noise: small next to the forms' differences
    comp = compare_growth(K, d)
    assert comp.winner == truth
    if truth == "constant":  # every form nests a constant: held-out errors nearly tie, the simplest wins
        assert abs(comp.fits["log"].params[1]) < 0.05
        return
    assert comp.winner_aic == truth
    assert comp.fits[truth].heldout_rmse < 0.5 * min(f.heldout_rmse for n, f in comp.fits.items() if n != truth)
    with pytest.raises(ValueError, match="3 or more"):
        compare_growth([2, 2, 4], [1, 1, 2])


def test_analysis_and_panel_from_a_tiny_store(disc_store, capsys):
    from scalescope.report import Context, Skip
    from scalescope.report.panels.emergence import prompt_length
    from scalescope.store import load

    t = load(disc_store)
    tab = demos_table(t.runs, t.metrics)
    assert sorted(tab["K"].unique()) == [2, 4, 16] and set(tab["series"]) >= {"seen/ideal", "unseen/model"}
    r = analyze(disc_store)
    assert r["target"] == 0.8 and r["series"]["seen/ideal"]["K"] == [2, 4, 16]
    assert r["series"]["seen/ideal"]["fit"]["winner"] in ("log", "power", "linear")
    body = prompt_length(Context(disc_store, t.runs, t.metrics))
    assert body.count("<img") == 1 and "held-out RMSE" in body
    empty = t.metrics[~t.metrics["metric"].str.startswith("task_id/")]
    with pytest.raises(Skip, match="task_id"):
        prompt_length(Context(disc_store, t.runs, empty))
    from scalescope.cli import main

    capsys.readouterr()
    assert main(["prompt-length", "--store", str(disc_store), "--json"]) == 0
    assert "seen/model" in json.loads(capsys.readouterr().out)["series"]
    assert main(["prompt-length", "--store", str(disc_store / "nowhere")]) == 2
    # The continuous twin (mean log-probability of the right output reaching ln 0.8): the pool observer gets
    # there within the 8 queries at every K here (wrong tasks die out as 15 (1/4)^k at K = 16).
    r_logp = analyze(disc_store, metric="demos_needed_logp")
    assert r_logp["series"]["seen/ideal"]["K"] == [2, 4, 16]
    assert all(v is not None for v in r_logp["series"]["seen/ideal"]["demos_mean"])
