"""Linear probes with control tasks (issue 15): the sources' latents, the probe on planted ground truth, the
Bayes references, load-time errors, and the instrument on the schedule and offline."""

import itertools
import math

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.cli import main
from scalescope.data.discrete_tasks import DiscreteTasksConfig, DiscreteTasksSource
from scalescope.data.hmm import HMMConfig, HMMSource
from scalescope.data.markov import MarkovConfig
from scalescope.instruments import linear_probe as LP
from scalescope.instruments import registry
from scalescope.sweep import load_experiment

from .conftest import train_tiny

MODEL = C.ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=12)


def _source(cfg):
    cfg.resolve(MODEL, None)
    return cfg.build(7)


# --- the sources' latents ---------------------------------------------------------------------------------


def test_latents_align_with_batch():
    B, T = 16, 12
    hmm = HMMSource(24, n_hidden=5, support=3, seed=7, entropy_sequences=64, entropy_length=8)
    x = hmm.batch("probe", 3, B, T).inputs.numpy()
    s = hmm.latents("probe", 3, B, T)["hmm_state"]
    assert s.shape == (B, T) and s.dtype == np.int64
    # Every input token is one the state at its position can emit: the latents are those sequences' states.
    assert all(x[b, t] in hmm.emit_tokens[s[b, t]] for b in range(B) for t in range(T))
    assert not np.array_equal(s, hmm.latents("probe", 4, B, T)["hmm_state"])

    mk = _source(MarkovConfig(vocab_size=10, order=2, support=3))
    b = mk.batch("train", 5, B, T)
    ctx = mk.latents("train", 5, B, T)["context"]
    x, y = b.inputs.numpy(), b.targets.numpy()
    assert (ctx[:, 0] == -1).all()  # the start state: no chain row drew token 1 from a context at t = 0
    np.testing.assert_array_equal(ctx[:, 1:] % 10, x[:, 1:])
    np.testing.assert_array_equal(ctx[:, 1:] // 10, x[:, :-1])
    # The context is the state that drew the next token: the target lies in that state's support.
    assert all(y[i, t] in mk.next_tokens[ctx[i, t]] for i in range(B) for t in range(1, T))
    m1 = _source(MarkovConfig(vocab_size=10, order=1, support=3))  # order 1: the context is the input token
    np.testing.assert_array_equal(m1.latents("val", 0, B, T)["context"], m1.batch("val", 0, B, T).inputs.numpy())

    dt = _source(DiscreteTasksConfig(vocab_size=8, n_inputs=4, n_outputs=3, n_tasks=6))
    x = dt.batch("probe", 2, B, T).inputs.numpy()
    task = dt.latents("probe", 2, B, T)["task"]
    assert (task == task[:, :1]).all() and len(np.unique(task[:, 0])) > 1
    np.testing.assert_array_equal(dt.pool[task[:, 0][:, None], x[:, 0::2]], x[:, 1::2] - 4)


def test_latent_names_are_class_attributes_outside_the_run_id():
    for cls, names in ((HMMConfig, ("hmm_state",)), (MarkovConfig, ("context",)), (DiscreteTasksConfig, ("task",))):
        assert cls.latent_names == names and "latent_names" not in cls().to_dict()
    assert LP.latent_names("hmm") == ("hmm_state",) and LP.latent_names("repeated_spans") == ()


# --- the probe on planted ground truth --------------------------------------------------------------------


class _AddLatent(torch.nn.Module):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def forward(self, x):
        return x + self.owner.planted


class Planted(torch.nn.Module):
    """A stand-in for a GPT with one block: layer 0 is a fixed random token embedding in ``d_tok`` dimensions
    (one is too few to tell 64 token types apart), the block adds a one-hot code of the true latent (looked up from
    the source by sequence), so that layer 1 encodes the latent linearly and the token type barely."""

    def __init__(self, src, latent, seq_len, n_seq, n_classes, d_tok):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.randn(src.vocab_size, d_tok, generator=g)
        self.n_classes = n_classes
        self.table = {}
        for i in (0, 1):
            x = src.batch("probe", i, n_seq, seq_len).inputs
            for row, lat in zip(x, src.latents("probe", i, n_seq, seq_len)[latent], strict=True):
                self.table[tuple(row.tolist())] = torch.as_tensor(lat)
        self.blocks = torch.nn.ModuleList([_AddLatent(self)])

    def forward(self, idx):
        lat = torch.stack([self.table[tuple(r.tolist())] for r in idx])
        x = torch.cat([self.emb[idx], torch.zeros(*idx.shape, self.n_classes)], dim=-1)
        self.planted = torch.cat([torch.zeros(*idx.shape, self.emb.shape[1]), 3.0 * torch.nn.functional.one_hot(
            lat.clamp_min(0), self.n_classes).float()], dim=-1)  # fmt: skip
        for block in self.blocks:
            x = block(x)
        return x


def test_planted_linear_latent_gives_high_selectivity():
    src = HMMSource(64, n_hidden=8, support=32, seed=7, entropy_sequences=64, entropy_length=8)
    data = LP.probe_data(src, "hmm_state", seq_len=12, n_sequences=48)
    r = LP.probe_layers(Planted(src, "hmm_state", 12, 48, 8, d_tok=1), data, [0, 1])
    # Layer 1 holds a clean one-hot code of the state: the probe reads it (one class per code, exact).
    assert r["linear_probe/acc/layer1"] == 1.0
    # The control must be read from the token type, which one random dimension cannot separate into 64 types:
    # it stays far below 1 (measured 0.48; the state code helps a little: each state emits 32 of the 64 tokens).
    assert r["linear_probe/control/layer1"] < 0.6
    assert r["linear_probe/selectivity/layer1"] > 0.4
    # Layer 0 is the 1-d token embedding alone: the state is only as knowable as the token says (measured
    # acc 0.37, selectivity 0.02).
    assert r["linear_probe/acc/layer0"] < 0.7 and r["linear_probe/selectivity/layer1"] > r[
        "linear_probe/selectivity/layer0"] + 0.3  # fmt: skip
    assert 0 < r["linear_probe/majority"] < 0.5 and r["linear_probe/ideal"] >= r["linear_probe/majority"]


def test_latent_that_is_the_input_type_has_zero_selectivity():
    # Markov order 1: the context is the token itself, a function of the input type; so is the control task.
    src = _source(MarkovConfig(vocab_size=24, order=1, support=4))
    data = LP.probe_data(src, "context", seq_len=12, n_sequences=48)
    model = Planted(src, "context", 12, 48, 24, d_tok=24)
    model.emb = torch.eye(24)  # one-hot token features: every type its own direction
    r = LP.probe_layers(model, data, [0, 1])
    for i in (0, 1):
        # Both probes only have to separate 24 one-hot directions: both exact, selectivity 0.
        assert r[f"linear_probe/acc/layer{i}"] == 1.0 and r[f"linear_probe/control/layer{i}"] == 1.0
        assert r[f"linear_probe/selectivity/layer{i}"] == 0.0


def test_control_labels_follow_the_latent_distribution():
    y = np.repeat([3, 5, 9], [600, 300, 100])
    table = LP.control_labels(y, 4000, seed=1)
    assert set(np.unique(table)) == {3, 5, 9}
    # Multinomial draws of 4,000: each share within 4 standard errors (<= 0.032) of 0.6, 0.3, 0.1.
    np.testing.assert_allclose([np.mean(table == v) for v in (3, 5, 9)], [0.6, 0.3, 0.1], atol=0.032)
    np.testing.assert_array_equal(table, LP.control_labels(y, 4000, seed=1))
    assert not np.array_equal(table, LP.control_labels(y, 4000, seed=2))


def test_softmax_probe_recovers_a_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = np.argmax(x[:, :3] @ np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]), axis=1) * 10  # labels 0, 10, 20
    p = LP.SoftmaxProbe(l2=1e-3).fit(x[:400], y[:400])
    assert list(p.classes_) == [0, 10, 20] and p.score(x[400:], y[400:]) > 0.97
    assert p.score(x[400:], np.full(200, 7)) == 0.0  # a label never seen in fit is always a miss


# --- the Bayes references -----------------------------------------------------------------------------------


def test_hmm_ideal_matches_brute_force_posterior():
    src = HMMSource(4, n_hidden=3, support=2, seed=3, entropy_sequences=64, entropy_length=8)
    T, B = 4, 40
    x = src.batch("probe", 0, B, T).inputs.numpy()
    s = src.latents("probe", 0, B, T)["hmm_state"]
    hits = np.zeros((B, T))
    for b, t in itertools.product(range(B), range(T)):
        post = np.zeros(3)
        for path in itertools.product(range(3), repeat=t + 1):  # p(s_0..t, x_0..t), summed over s_<t
            p = src.pi[path[0]] * src.emission[path[0], x[b, 0]]
            for u in range(1, t + 1):
                p *= src.transition[path[u - 1], path[u]] * src.emission[path[u], x[b, u]]
            post[path[-1]] += p
        hits[b, t] = post.argmax() == s[b, t]
    mask = np.ones((B, T), dtype=bool)
    assert math.isclose(LP.ideal_accuracy(src, "hmm_state", x, s, mask), hits.mean(), rel_tol=1e-12)


def test_task_ideal_is_one_over_the_consistent_tasks():
    src = DiscreteTasksSource(8, n_inputs=3, n_outputs=2, seq_len=12, seed=0)  # 8 of the 2^3 maps: all of them
    x = src.batch("probe", 0, 32, 12).inputs.numpy()
    y = src.latents("probe", 0, 32, 12)["task"]
    at = np.zeros((32, 12), dtype=bool)
    at[:, 0] = True  # no pair shown yet: all 8 tasks alike
    assert LP.ideal_accuracy(src, "task", x, y, at) == pytest.approx(1 / 8)
    at[:] = False
    at[:, -1] = True  # 6 pairs of random inputs: the map is known once all 3 inputs have been shown
    seen_all = np.array([len(set(r[0:12:2])) == 3 for r in x])
    assert LP.ideal_accuracy(src, "task", x, y, at) >= seen_all.mean() > 0.5


# --- configuration errors -----------------------------------------------------------------------------------

BAD = """
name = "bad"
[data]
kind = "{kind}"
[model]
n_layer = 1
d_model = 16
n_head = 2
seq_len = 16
[train]
batch_size = 8
tokens = 1280
[instruments.linear_probe]
{opts}
"""


@pytest.mark.parametrize(
    ("kind", "opts", "expected"),
    [
        ("hmm", 'latent = "task"', "instruments.linear_probe.latent: 'task' is not a latent of data.kind = 'hmm'"
         "; its latents: hmm_state"),
        ("repeated_spans", 'latent = "task"', "has no latents to probe (sources with latents: discrete_tasks: task; "
         "hmm: hmm_state; markov: context)"),
        ("markov", "", "instruments.linear_probe.latent: required"),
        ("markov", 'latent = "context"\nlayers = [0, 2]', "instruments.linear_probe.layers: the model has layers 0 .. 1"),
        ("markov", 'latent = "context"\nlayers = []', "instruments.linear_probe.layers: expected at least one layer"),
    ],
)  # fmt: skip
def test_bad_options_fail_at_load_with_one_line(tmp_path, capsys, kind, opts, expected):
    p = tmp_path / "bad.toml"
    p.write_text(BAD.format(kind=kind, opts=opts))
    with pytest.raises(C.ConfigError, match="linear_probe"):
        load_experiment(p)
    assert main(["run", str(p), "--store", str(tmp_path / "s"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "bad.toml" in lines[0], lines
    assert not (tmp_path / "s" / "runs").exists()


def test_registered_options_are_checked():
    with pytest.raises(C.ConfigError, match="instruments.linear_probe.l2"):
        registry.build({"linear_probe": {"latent": "context", "l2": 0.0}})
    with pytest.raises(C.ConfigError, match="instruments.linear_probe.n_sequences"):
        registry.build({"linear_probe": {"latent": "context", "n_sequences": 0}})


# --- on the schedule and offline ------------------------------------------------------------------------------

TINY = """
name = "probe"
[data]
kind = "markov"
vocab_size = 12
order = 2
support = 3
[model]
n_layer = 1
d_model = 16
n_head = 2
seq_len = 12
[train]
batch_size = 8
tokens = 2880       # 30 steps of 8 x 12 tokens
eval_every = 15
eval_batches = 2
lr = 0.01
[instruments.linear_probe]
latent = "context"
n_sequences = 16
max_iter = 50
"""


def test_on_the_schedule_and_offline(tmp_path):
    def write(text, name):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    rd = train_tiny(write, tmp_path, TINY, "p.toml")
    rows = [r for r in rd.read_metrics() if r["metric"].startswith("linear_probe/")]
    last = max(r["step"] for r in rows)
    final = {r["metric"]: r["value"] for r in rows if r["step"] == last}
    for i in range(2):  # layer 0 (embeddings) and the block
        assert math.isclose(final[f"linear_probe/selectivity/layer{i}"],
                            final[f"linear_probe/acc/layer{i}"] - final[f"linear_probe/control/layer{i}"])  # fmt: skip
    assert final["linear_probe/ideal"] == 1.0 and 0 < final["linear_probe/majority"] < 1
    assert {r["step"] for r in rows} == {0, 1, 2, 4, 8, 15, 30}  # every evaluation
    # Offline on the final checkpoint, with the run's own options: the same data and weights, the same numbers.
    r = LP.probe_run(rd.path)
    assert r["options"]["n_sequences"] == 16 and r["options"]["max_iter"] == 50
    assert r["latent"] == "context" and r["layers"] == [0, 1] and r["step"] == last
    np.testing.assert_allclose(r["acc"], [final[f"linear_probe/acc/layer{i}"] for i in range(2)], atol=1e-6)
    np.testing.assert_allclose(r["control"], [final[f"linear_probe/control/layer{i}"] for i in range(2)], atol=1e-6)
    with pytest.raises(C.ConfigError) as e:
        LP.probe_run(rd.path, latent="hmm_state")
    assert e.value.field == "latent" and "context" in str(e.value)
    with pytest.raises(C.ConfigError) as e:
        LP.probe_run(rd.path, l2=0.0)  # refused before the run is loaded
    assert e.value.field == "l2"
