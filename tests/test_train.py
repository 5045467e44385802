import json

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.data.base import Batch
from scalescope.lab import run_experiment
from scalescope.model import GPT
from scalescope.store import Store, load
from scalescope.sweep import load_experiment
from scalescope.train import accumulate_gradients, train


def test_run_finishes_with_pythia_eval_rows_and_learns(tiny_toml, tmp_path):
    exp = load_experiment(tiny_toml())
    cfg = exp.runs[0]
    store = Store(tmp_path / "s").ensure_writable()
    rd = store.add(cfg)
    out = train(cfg, rd.path, cache_dir=store.cache_dir, threads=1)
    assert out.status == "finished" and out.steps == 30
    rows = rd.read_metrics()
    val = [r for r in rows if r["metric"] == "val_loss"]
    assert [r["step"] for r in val] == [0, 1, 2, 4, 8, 10, 20, 30]
    assert val[-1]["value"] < val[0]["value"] - 0.3  # it learned something (log 16 = 2.77 at init)
    names = {r["metric"] for r in rows}
    assert {"val_loss", "train_loss", "lr", "grad_norm", "tokens_per_s"} <= names
    r30 = [r for r in rows if r["step"] == 30][0]
    assert r30["tokens"] == 30 * 8 * 16
    meta = json.loads((rd.path / "meta.json").read_text())
    assert r30["flops"] == pytest.approx(30 * 8 * 16 * meta["flops_per_token"])
    assert meta["entropy_rate"] > 0
    # A finished run is never redone.
    again = train(cfg, rd.path, cache_dir=store.cache_dir, threads=1)
    assert again.skipped and rd.read_metrics() == rows


def test_same_config_same_numbers(tiny_toml, tmp_path):
    cfg = load_experiment(tiny_toml()).runs[0]
    res = []
    for name in ("a", "b"):
        store = Store(tmp_path / name).ensure_writable()
        rd = store.add(cfg)
        train(cfg, rd.path, cache_dir=store.cache_dir, threads=1)
        res.append([(r["step"], r["metric"], r["value"]) for r in rd.read_metrics() if r["metric"] != "tokens_per_s"])
    assert res[0] == res[1]


def test_gradient_accumulation_matches_full_batch():
    torch.manual_seed(0)
    m = GPT(C.ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=8), 10)
    b = Batch.from_tokens(torch.randint(0, 10, (8, 9)))
    accumulate_gradients(m, b, 8, torch.device("cpu"), 0.0)
    full = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    accumulate_gradients(m, b, 2, torch.device("cpu"), 0.0)
    for g, p in zip(full, m.parameters()):
        # Same mean gradient, summed in a different order: float32 rounding only.
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_divergence_is_recorded_and_sweep_goes_on(tiny_toml, tmp_path):
    p = tiny_toml("""
    [sweep]
    "train.lr" = [0.01, 1e4]
    "train.optimizer" = ["sgd"]
    "train.grad_clip" = [0.0]
    """)
    exp = load_experiment(p)
    store = Store(tmp_path / "s")
    outs = {o.id: o for o in run_experiment(exp, store, workers=2, progress=False)}
    t = load(store.path)
    status = dict(zip(t.runs["train.lr"], t.runs["status"]))
    assert status == {0.01: "finished", 1e4: "diverged"}
    assert sorted(o.status for o in outs.values()) == ["diverged", "finished"]


def test_crashing_run_is_isolated(tiny_toml, tmp_path):
    p = tiny_toml("""
    [sweep]
    "(instruments)" = [[{}], [{"tests.helpers_instruments:make_crash" = {}}]]
    """)
    exp = load_experiment(p)
    store = Store(tmp_path / "s")
    outs = run_experiment(exp, store, workers=2, progress=False)
    assert sorted(o.status for o in outs) == ["failed", "finished"]
    failed = [o for o in outs if o.status == "failed"][0]
    assert "instrument exploded" in failed.error
    t = load(store.path)
    assert set(t.runs["status"]) == {"failed", "finished"}


def test_instruments_write_metrics_and_artifacts(tiny_toml, tmp_path):
    p = tiny_toml("""
    [instruments.param_norm]
    [instruments.attention]
    every = 2
    batch_size = 2
    [instruments."tests.helpers_instruments:make_step_echo"]
    scale = 3
    """)
    cfg = load_experiment(p).runs[0]
    store = Store(tmp_path / "s").ensure_writable()
    rd = store.add(cfg)
    assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    rows = rd.read_metrics()
    pn = [r for r in rows if r["metric"] == "param_norm"]
    assert [r["step"] for r in pn] == [0, 1, 2, 4, 8, 10, 20, 30]
    echo = {r["step"]: r["value"] for r in rows if r["metric"] == "tests.helpers_instruments:make_step_echo/echo"}
    assert echo[20] == 60
    arts = sorted((rd.path / "artifacts" / "attention").glob("*.npy"))
    assert [a.name for a in arts] == [f"step_{s:07d}.npy" for s in (0, 2, 8, 20)]  # every 2nd evaluation
    arr = np.load(arts[0])
    assert arr.shape == (1, 2, 2, 16, 16)
    np.testing.assert_allclose(arr.astype(np.float32).sum(-1), 1.0, atol=2e-3)  # float16 storage


def test_instruments_do_not_change_training(tiny_toml, tmp_path):
    base = load_experiment(tiny_toml()).runs[0]
    with_probe = load_experiment(tiny_toml("[instruments.attention]\n", name="b.toml")).runs[0]
    vals = []
    for i, cfg in enumerate((base, with_probe)):
        store = Store(tmp_path / f"s{i}").ensure_writable()
        rd = store.add(cfg)
        train(cfg, rd.path, cache_dir=store.cache_dir, threads=1)
        vals.append([r["value"] for r in rd.read_metrics() if r["metric"] == "val_loss"])
    assert vals[0] == vals[1]


def test_unknown_instrument_is_a_config_error():
    from scalescope.instruments import build

    with pytest.raises(C.ConfigError, match="instruments.param_nrm: unknown instrument; did you mean 'param_norm'"):
        build({"param_nrm": {}})


@pytest.mark.parametrize("kind", ["text-bytes", "text-bpe", "hmm"])
def test_other_sources_train_end_to_end(kind, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    data = {
        "text-bytes": {"kind": "text", "path": str(corpus)},
        "text-bpe": {"kind": "text", "path": str(corpus), "tokenizer": "bpe", "bpe_vocab_size": 300},
        "hmm": {"kind": "hmm", "vocab_size": 16, "n_hidden": 4, "support": 4},
    }[kind]
    cfg = C.from_dict(
        {
            "data": data,
            "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "seq_len": 16},
            "train": {"batch_size": 8, "tokens": 8 * 16 * 20, "eval_every": 10, "eval_batches": 2},
        }
    )
    store = Store(tmp_path / "s").ensure_writable()
    rd = store.add(cfg)
    out = train(cfg, rd.path, cache_dir=store.cache_dir, threads=1)
    assert out.status == "finished", out.error
    meta = json.loads((rd.path / "meta.json").read_text())
    assert (meta["entropy_rate"] is None) == kind.startswith("text")
    assert meta["vocab_size"] == (256 if kind == "text-bytes" else 16 if kind == "hmm" else meta["vocab_size"])
    val = [r["value"] for r in rd.read_metrics() if r["metric"] == "val_loss"]
    assert val[-1] < val[0]
