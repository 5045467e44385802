"""TextSource: byte and BPE tokenization, the on-disk cache, splits and batches, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from scalescope.data import Source, TextConfig, TextSource, build_source
from scalescope.errors import ConfigError

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i * i}.\n" for i in range(400))


def tokens_of(batch) -> np.ndarray:
    return torch.cat([batch.inputs[:, :1], batch.targets], dim=1).numpy()


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_bytes(TEXT.encode() + bytes([0xFF, 0x00, 0x80]))  # also bytes that are not UTF-8
    return f


def test_bytes_round_trip_and_memmap(corpus, tmp_path):
    src = TextSource(corpus)
    assert src.vocab_size == 256 and src.entropy_rate is None
    src.prepare(tmp_path / "cache")
    assert isinstance(src.tokens, np.memmap) and src.tokens.dtype == np.uint16
    assert bytes(src.tokens.astype(np.uint8)) == corpus.read_bytes()
    d = src.describe()
    assert d["n_tokens"] == corpus.stat().st_size and d["n_val"] == int(0.1 * d["n_tokens"])
    assert isinstance(src, Source)


def test_cache_is_built_once(corpus, tmp_path):
    cache = tmp_path / "cache"
    first = TextSource(corpus)
    first.prepare(cache)
    bin_path = first.cache_path / "tokens.bin"
    mtime = bin_path.stat().st_mtime_ns
    assert first.tokenize_count == 1
    first.prepare(cache)  # idempotent
    again = TextSource(corpus)  # as a worker process would
    again.prepare(cache)
    assert first.tokenize_count == 1 and again.tokenize_count == 0
    assert again.cache_path == first.cache_path and bin_path.stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [first.cache_path.name]  # no temp leftovers
    # Changed content -> another key, tokenized afresh.
    corpus.write_bytes(b"different " * 100)
    changed = TextSource(corpus)
    changed.prepare(cache)
    assert changed.tokenize_count == 1 and changed.cache_path != first.cache_path


def test_bpe_trains_offline(corpus, tmp_path):
    src = TextSource(corpus, tokenizer="bpe", bpe_vocab_size=300)
    assert src.vocab_size is None  # known only after prepare
    src.prepare(tmp_path / "cache")
    assert 256 < src.vocab_size <= 300
    assert int(src.tokens.max()) < src.vocab_size
    assert src.tokens.size < corpus.stat().st_size  # merges compress
    assert src.meta["tokenizer_json"]["model"]["type"] == "BPE"
    tok = src.tokenizer_object()
    assert tok.decode(src.tokens[:200].tolist()) == TEXT[: len(tok.decode(src.tokens[:200].tolist()))]
    again = TextSource(corpus, tokenizer="bpe", bpe_vocab_size=300)
    again.prepare(tmp_path / "cache")
    assert again.tokenize_count == 0 and again.vocab_size == src.vocab_size
    other = TextSource(corpus, tokenizer="bpe", bpe_vocab_size=280)
    other.prepare(tmp_path / "cache")
    assert other.cache_path != src.cache_path and other.vocab_size <= 280


def test_directory_concatenates_sorted_and_skips_hidden(tmp_path):
    root = tmp_path / "docs"
    (root / "sub" / ".git").mkdir(parents=True)
    (root / "b.txt").write_bytes(b"BBB")
    (root / "a.txt").write_bytes(b"AAA")
    (root / "sub" / "c.txt").write_bytes(b"CCC")
    (root / ".hidden").write_bytes(b"XXX")
    (root / "sub" / ".git" / "obj").write_bytes(b"YYY")
    src = TextSource(root)
    src.prepare(tmp_path / "cache")
    assert bytes(src.tokens.astype(np.uint8)) == b"AAABBBCCC"
    assert src.meta["files"] == ["a.txt", "b.txt", "sub/c.txt"]


def test_batches(corpus, tmp_path):
    src = TextSource(corpus, seed=0, stream_seed=3)
    with pytest.raises(RuntimeError, match="prepare"):
        src.batch("train", 0, 4, 16)
    src.prepare(tmp_path / "cache")
    data = bytes(src.tokens.astype(np.uint8))
    train, val = data[: src.n_train], data[src.n_train :]
    x = src.batch("train", 0, 8, 32)
    assert x.inputs.shape == (8, 32) and x.inputs.dtype == torch.long
    assert torch.equal(x.targets[:, :-1], x.inputs[:, 1:])
    assert all(bytes(row.astype(np.uint8)) in train for row in tokens_of(x))
    assert torch.equal(x.inputs, src.batch("train", 0, 8, 32).inputs)
    assert not torch.equal(x.inputs, src.batch("train", 1, 8, 32).inputs)
    v = src.batch("val", 0, 8, 32)
    assert all(bytes(row.astype(np.uint8)) in val for row in tokens_of(v))
    assert tokens_of(v)[0, 0] == src.tokens[src.n_train]  # tiling starts at the split's start
    assert np.array_equal(tokens_of(v)[0, -1], tokens_of(v)[1, 0])  # stride T: windows abut
    # Validation windows are fixed: the same for another run seed; train windows are not.
    other = TextSource(corpus, seed=0, stream_seed=4)
    other.prepare(tmp_path / "cache")
    assert torch.equal(v.inputs, other.batch("val", 0, 8, 32).inputs)
    assert not torch.equal(x.inputs, other.batch("train", 0, 8, 32).inputs)
    p = src.batch("probe", 0, 8, 32)
    assert all(bytes(row.astype(np.uint8)) in val for row in tokens_of(p))
    assert not torch.equal(p.inputs, v.inputs)


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file or directory") as e:
        TextSource(tmp_path / "nope.txt").prepare(tmp_path / "cache")
    assert e.value.field == "data.path"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="no text found"):
        TextSource(empty).prepare(tmp_path / "cache")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ConfigError, match="no text found"):
        TextSource(tmp_path / "emptydir").prepare(tmp_path / "cache")
    short = tmp_path / "short.txt"
    short.write_bytes(b"x" * 100)  # 90 train / 10 val tokens
    src = TextSource(short)
    src.prepare(tmp_path / "cache")
    src.batch("train", 0, 2, 9)  # windows of 10 fit both splits
    with pytest.raises(ConfigError, match=r"data\.path: corpus too short.*validation.*10 tokens.*16") as e:
        src.batch("train", 0, 2, 15)
    assert str(short) in str(e.value)


def test_crash_leftovers_do_not_count_as_cache(corpus, tmp_path):
    cache = tmp_path / "cache"
    src = TextSource(corpus)
    src.prepare(cache)
    os.remove(src.cache_path / "meta.json")  # as if a cache had been half written in place
    again = TextSource(corpus)
    again.prepare(cache)
    assert again.tokenize_count == 1 and bytes(again.tokens.astype(np.uint8)) == corpus.read_bytes()


def test_build_source_text(corpus, tmp_path):
    src = build_source(TextConfig(path=str(corpus), tokenizer="bytes"), seed=2)
    assert isinstance(src, TextSource) and src.stream_seed == 2
    src.prepare(tmp_path / "cache")
    assert src.batch("train", 0, 2, 8).inputs.shape == (2, 8)
    with pytest.raises(ConfigError, match="data.path"):
        build_source(TextConfig(path=None), seed=0)
