"""train.precision (bf16 autocast), train.log_every, bits per byte for text, and MFU's peak table: what they
write, that they resume exactly, and that the defaults leave every run id as it was."""

import math

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.device import PEAK_FLOPS, autocast, peak_flops
from scalescope.errors import LockLost
from scalescope.store import Store
from scalescope.sweep import load_experiment
from scalescope.train import train

from .conftest import train_tiny


def rows(rd, metric):
    return [(r["step"], r["value"]) for r in rd.read_metrics() if r["metric"] == metric]


def interrupted_then_resumed(cfg, path, cache, calls: int):
    """Train with a guard that stops the run (as a lost lock does: nothing more is written) at its
    ``calls``-th write group, then resume it to the end in a second call."""
    n = {"calls": 0}

    def guard():
        n["calls"] += 1
        if n["calls"] >= calls:
            raise LockLost("stopped by the test")

    assert train(cfg, path, cache_dir=cache, threads=1, guard=guard).status == "failed"
    return train(cfg, path, cache_dir=cache, threads=1)


def test_run_ids_change_with_the_arithmetic_but_not_with_how_a_run_executes_or_logs(tiny_toml):
    cfg = load_experiment(tiny_toml()).runs[0]
    rid = C.run_id(cfg)
    bf16 = load_experiment(tiny_toml('precision = "bf16"\n', name="bf16.toml")).runs[0]
    assert bf16.train.precision == "bf16" and C.run_id(bf16) != rid  # another arithmetic: another run
    # TF32 (CUDA only, like the device itself) and the logging density do not change what is computed: turning
    # them on for a sweep must not retrain its finished runs.
    for extra in ("tf32 = false\n", "log_every = 5\n"):
        other = load_experiment(tiny_toml(extra, name="o.toml")).runs[0]
        assert C.run_id(other) == rid, extra


def test_gpu_names_map_to_their_own_peak_only():
    from scalescope.device import gpu_model

    names = {
        "NVIDIA H100 80GB HBM3": "H100",
        "NVIDIA H100 PCIe": "H100 PCIe",
        "NVIDIA A100-SXM4-80GB": "A100",
        "Tesla V100-SXM2-16GB": "V100",
        "NVIDIA L40S": "L40S",
        "NVIDIA L40": None,  # not an L4 (1.5x its bf16 peak)
        "NVIDIA RTX A1000": None,  # not an A100
        "NVIDIA T400": None,  # not a T4
    }
    assert {n: gpu_model(n) for n in names} == names


def test_log_every_writes_train_loss_between_evaluations_and_resumes_exactly(tiny_toml, tmp_path):
    extra = "log_every = 3\n"
    # 30 steps, evaluations at 0,1,2,4,8,10,20,30 (log-spaced then every 10): log_every adds 3,6,9,12,...
    ref = train_tiny(tiny_toml, tmp_path, extra, "ref.toml")
    steps = [s for s, _ in rows(ref, "train_loss")]
    assert steps == sorted(set(steps))  # one row per step, in order
    assert {3, 6, 9, 12, 15, 18, 21, 24, 27} <= set(steps)
    assert {1, 2, 4, 8, 10, 20, 30} <= set(steps)  # the evaluations keep theirs
    # The mean since the previous row: no step is counted twice. Rows at 8 and 9 cover steps 5-8 (after the
    # row at 6: 7-8) and 9 alone; a constant check is that each value is a finite loss below the initial one.
    assert all(math.isfinite(v) for _, v in rows(ref, "train_loss"))

    cfg = load_experiment(tiny_toml(extra, name="cut.toml")).runs[0]
    store = Store(tmp_path / "cut").ensure_writable()
    rd = store.add(cfg)
    assert interrupted_then_resumed(cfg, rd.path, store.cache_dir, calls=9).status == "finished"
    assert rows(rd, "train_loss") == rows(ref, "train_loss")  # bitwise, the accumulators resumed too
    assert rows(rd, "val_loss") == rows(ref, "val_loss")


def test_bf16_on_the_cpu_trains_close_to_fp32_and_resumes_bitwise(tiny_toml, tmp_path):
    fp32 = train_tiny(tiny_toml, tmp_path, "", "fp32.toml")
    bf16 = train_tiny(tiny_toml, tmp_path, 'precision = "bf16"\n', "bf16.toml")
    v32, v16 = rows(fp32, "val_loss"), rows(bf16, "val_loss")
    assert v16[0][1] != v32[0][1]  # autocast really ran: bf16 rounds the activations (8-bit mantissa)
    # Same initial weights and data: the losses agree to bf16's precision. 2^-8 relative per rounding,
    # accumulated over 30 steps of a tiny model: measured at most 0.06% at any evaluation; allow 0.5%.
    for (s, a), (_, b) in zip(v32, v16):
        assert abs(a - b) / a < 0.005, (s, a, b)
    assert v16[-1][1] < v16[0][1] - 0.05  # and it learns

    cfg = load_experiment(tiny_toml('precision = "bf16"\n', name="bf16cut.toml")).runs[0]
    store = Store(tmp_path / "bf16cut").ensure_writable()
    rd = store.add(cfg)
    assert interrupted_then_resumed(cfg, rd.path, store.cache_dir, calls=5).status == "finished"
    assert rows(rd, "val_loss") == v16


def test_autocast_really_computes_matmuls_in_bfloat16():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with autocast(torch.device("cpu"), "bf16"):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert lin(x).dtype == torch.float32


def test_bits_per_byte_of_byte_tokens_is_the_loss_over_ln2(tmp_path):
    # With one byte per token, bits per byte is exactly the loss in bits: a closed form.
    corpus = tmp_path / "c.txt"
    rng = np.random.default_rng(0)
    corpus.write_text("".join(rng.choice(list("abcdefgh \n"), size=20000)))
    raw = {
        "data": {"kind": "text", "path": str(corpus)},
        "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "seq_len": 16},
        "train": {"batch_size": 4, "tokens": 4 * 16 * 6, "eval_every": 3, "eval_batches": 2},
    }
    cfg = C.from_dict(raw)
    store = Store(tmp_path / "s").ensure_writable()
    rd = store.add(cfg)
    assert train(cfg, rd.path, cache_dir=store.cache_dir, threads=1).status == "finished"
    loss, bpb = dict(rows(rd, "val_loss")), dict(rows(rd, "val_bpb"))
    assert loss.keys() == bpb.keys()
    for s in loss:
        assert bpb[s] == pytest.approx(loss[s] / math.log(2), rel=1e-12)


def test_bpe_token_bytes_add_up_to_the_utf8_length_of_the_text(tmp_path):
    from scalescope.data.text import TextSource

    text = "naïve über café " * 400 + "plain ascii words and more words\n" * 300
    (tmp_path / "c.txt").write_text(text)
    src = TextSource(tmp_path / "c.txt", tokenizer="bpe", bpe_vocab_size=300)
    src.prepare(tmp_path / "cache")
    tb = src.token_bytes()
    assert tb.shape == (src.vocab_size,) and tb.min() >= 1
    # Ground truth: the tokens of the corpus stand for exactly its UTF-8 bytes (byte-level BPE is lossless).
    assert int(tb[np.asarray(src.tokens, dtype=np.int64)].sum()) == len(text.encode("utf-8"))
    assert tb.max() > 1  # merges happened: some tokens are several bytes


def test_no_mfu_on_the_cpu_and_the_peak_table_is_consistent():
    assert peak_flops(torch.device("cpu"), "fp32", True)[0] is None
    for gpu, peaks in PEAK_FLOPS.items():
        # Tensor-core bf16 is 2x TF32 on every generation listed that has both (data sheets, dense).
        if peaks["bf16"] and peaks["tf32"]:
            assert peaks["bf16"] == pytest.approx(2 * peaks["tf32"], rel=0.02), gpu


def test_no_mfu_row_without_a_known_peak(tiny_toml, tmp_path):
    rd = train_tiny(tiny_toml, tmp_path, "", "cpu.toml")
    assert rows(rd, "tokens_per_s") and not rows(rd, "mfu")
