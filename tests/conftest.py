import os
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
[data]
kind = "markov"
vocab_size = 16
order = 1
support = 4
[model]
n_layer = 1
d_model = 16
n_head = 2
seq_len = 16
[train]
batch_size = 8
tokens = {tokens}
eval_every = {eval_every}
eval_batches = 2
checkpoint_every = {checkpoint_every}
lr = 0.01
"""


@pytest.fixture
def tiny_toml(tmp_path):
    def make(
        extra: str = "",
        tokens: int = 8 * 16 * 30,
        eval_every: int = 10,
        checkpoint_every: int = 5,
        name: str = "exp.toml",
    ) -> Path:
        p = tmp_path / name
        p.write_text(
            TINY.format(tokens=tokens, eval_every=eval_every, checkpoint_every=checkpoint_every)
            + textwrap.dedent(extra)
        )
        return p

    return make


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "scalescope", *args]


def train_tiny(tiny_toml, tmp_path, extra: str, name: str):
    """Train the one run of ``tiny_toml(extra)`` in its own store, in this process; its RunDir."""
    from scalescope.store import Store
    from scalescope.sweep import load_experiment
    from scalescope.train import train

    cfg = load_experiment(tiny_toml(extra, name=name)).runs[0]
    store = Store(tmp_path / ("store-" + name)).ensure_writable()
    rd = store.add(cfg)
    assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    return rd
