"""Tokens from a user's text file or directory: raw bytes or a byte-level BPE trained locally.

``prepare(cache_dir)`` tokenizes the corpus once into ``cache_dir/<key>/tokens.bin`` (a flat uint16
or uint32 array, opened as a read-only memmap) and ``meta.json``. The key hashes the files' relative
names and bytes plus the tokenizer settings, so a changed corpus gets a fresh cache and an unchanged
one is reused; worker processes simply call ``prepare`` again and find it. The cache directory is
built under a temporary name and renamed into place, so a crash never leaves a half-written cache.

The last ``val_fraction`` of the tokens is the validation split; train batches are random windows
of the rest, drawn from :func:`stream_rng` so batch ``i`` is the same for every run of a sweep.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import ModelConfig, SourceConfig, positive, register_source
from ..errors import ConfigError
from .base import Batch, Split, stream_rng
from .markov import combine_seeds

# Bump when the cache layout or the tokenization changes, so old caches are not reused.
CACHE_VERSION = 1
# Texts handed to the BPE tokenizer are cut (at line ends) to about this many characters.
_CHUNK_CHARS = 1 << 20


def corpus_files(path: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every regular, non-hidden file under ``path``, sorted by name.

    A file path gives just itself. Hidden means any path component starting with a dot.
    """
    if path.is_file():
        return [(path.name, path)]
    out = []
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append((rel.as_posix(), p))
    return sorted(out)


def corpus_fingerprint(path: str | Path) -> str:
    """sha256 of the corpus's content: every file's relative name and bytes, length-prefixed so that no two
    different corpora hash the same stream. It enters the run id (``data.fingerprint``), so editing a corpus
    never silently reuses runs trained on the old text."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no such file or directory: {p}", field="data.path")
    files = corpus_files(p)
    stats = tuple((name, f.stat().st_size, f.stat().st_mtime_ns) for name, f in files)
    return _fingerprint(str(p.resolve()), stats)


@lru_cache(maxsize=32)
def _fingerprint(path: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    # Cached on (path, names, sizes, mtimes): a sweep parses one corpus's config once per run.
    h = hashlib.sha256()
    root = Path(path)
    for name, _, _ in stats:
        data = (root if root.is_file() else root / name).read_bytes()
        for field in (name.encode(), data):
            h.update(len(field).to_bytes(8, "little"))
            h.update(field)
    return h.hexdigest()[:24]


def _chunks(text: str) -> list[str]:
    """Cut text at line ends into pieces of about ``_CHUNK_CHARS`` (bounded memory in the encoder)."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + _CHUNK_CHARS)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


class TextSource:
    """A text corpus as a token source. ``entropy_rate`` is None: natural text's rate is unknown.

    ``vocab_size`` is 256 for ``tokenizer="bytes"``; for ``"bpe"`` it is the trained vocabulary's size
    (at most ``bpe_vocab_size``) and is only valid after :meth:`prepare` (None before).
    """

    entropy_rate = None

    def __init__(
        self,
        path: str | Path,
        tokenizer: str = "bytes",
        bpe_vocab_size: int = 1024,
        val_fraction: float = 0.1,
        seed: int = 0,
        stream_seed: int = 0,
    ) -> None:
        if tokenizer not in ("bytes", "bpe"):
            raise ConfigError(f"expected 'bytes' or 'bpe', got {tokenizer!r}", field="data.tokenizer")
        if tokenizer == "bpe" and bpe_vocab_size < 256:
            raise ConfigError(
                f"must be at least 256 (the byte alphabet), got {bpe_vocab_size}", field="data.bpe_vocab_size"
            )
        if not 0 < val_fraction < 1:
            raise ConfigError(f"expected a number in (0, 1), got {val_fraction}", field="data.val_fraction")
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.bpe_vocab_size = int(bpe_vocab_size)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.stream_seed = int(stream_seed)
        self.vocab_size: int | None = 256 if tokenizer == "bytes" else None
        self.cache_path: Path | None = None
        self.tokens: np.ndarray | None = None
        # How many times this object actually tokenized (tests check that a cache hit does not).
        self.tokenize_count = 0
        self._token_bytes: np.ndarray | None = None  # token_bytes(), built once per prepare()

    # ------------------------------------------------------------------------------------------------
    # Preparing the cache.

    def _read_corpus(self) -> tuple[list[tuple[str, bytes]], str]:
        """The files' (name, bytes) and the cache key (sha256 of names, sizes, bytes and settings)."""
        if not self.path.exists():
            raise ConfigError(f"no such file or directory: {self.path}", field="data.path")
        files = [(name, p.read_bytes()) for name, p in corpus_files(self.path)]
        if sum(len(b) for _, b in files) == 0:
            raise ConfigError(f"no text found in {self.path}", field="data.path")
        h = hashlib.sha256()
        settings = {"version": CACHE_VERSION, "tokenizer": self.tokenizer}
        if self.tokenizer == "bpe":
            settings["bpe_vocab_size"] = self.bpe_vocab_size
        h.update(json.dumps(settings, sort_keys=True).encode())
        for name, data in files:
            # Length-prefixed fields, so no two different corpora hash the same byte stream.
            for field in (name.encode(), data):
                h.update(len(field).to_bytes(8, "little"))
                h.update(field)
        return files, h.hexdigest()[:24]

    def _tokenize(self, files: list[tuple[str, bytes]]) -> tuple[np.ndarray, int, dict | None]:
        """(token ids, vocab size, tokenizer JSON or None) for the concatenated corpus."""
        self.tokenize_count += 1
        if self.tokenizer == "bytes":
            data = b"".join(b for _, b in files)
            return np.frombuffer(data, dtype=np.uint8), 256, None
        from tokenizers import ByteLevelBPETokenizer

        # BPE needs text: bytes that are not UTF-8 become U+FFFD (byte-exactness is the bytes mode's job).
        texts = [b.decode("utf-8", errors="replace") for _, b in files]
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(
            (piece for t in texts for piece in _chunks(t)),
            vocab_size=self.bpe_vocab_size,
            min_frequency=2,
            show_progress=False,
            special_tokens=[],
        )
        ids = [np.asarray(enc.ids, dtype=np.int64) for t in texts for enc in tok.encode_batch(_chunks(t))]
        return np.concatenate(ids), tok.get_vocab_size(), json.loads(tok.to_str())

    def _write_cache(self, target: Path, files: list[tuple[str, bytes]]) -> None:
        """Tokenize into a temporary directory next to ``target`` and rename it into place."""
        ids, vocab, tokenizer_json = self._tokenize(files)
        if ids.size == 0:
            raise ConfigError(f"no text found in {self.path}", field="data.path")
        dtype = np.uint16 if vocab <= 65535 else np.uint32
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished cache is shared
            ids.astype(dtype).tofile(tmp / "tokens.bin")
            meta = {
                "version": CACHE_VERSION,
                "source": str(self.path),
                "files": [n for n, _ in files],
                "tokenizer": self.tokenizer,
                "vocab_size": int(vocab),
                "n_tokens": int(ids.size),
                "dtype": np.dtype(dtype).name,
                "tokenizer_json": tokenizer_json,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process finished the same cache first (rename onto a non-empty directory).
                if not (target / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def prepare(self, cache_dir: Path) -> None:
        """Tokenize once into ``cache_dir/<key>/`` (or find that cache) and open it as a memmap.

        Idempotent and cheap on a cache hit (one read and hash of the corpus), so worker processes
        call it too.
        """
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        files, key = self._read_corpus()
        target = cache_dir / key
        if not (target / "meta.json").is_file():
            if target.exists():  # a directory without meta.json is not a finished cache
                shutil.rmtree(target)
            self._write_cache(target, files)
        meta = json.loads((target / "meta.json").read_text())
        self.meta = meta
        self._token_bytes = None
        self.cache_path = target
        self.vocab_size = int(meta["vocab_size"])
        self.tokens = np.memmap(target / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
        self.n_val = int(self.tokens.size * self.val_fraction)
        self.n_train = self.tokens.size - self.n_val

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each token id stands for (int64, one per id): what turns a loss per token into bits
        per byte. 1 for every byte token; for byte-level BPE every character of a token's string is one byte
        (GPT-2's byte-to-unicode alphabet), so its length is the byte count of the UTF-8 text it encodes."""
        if self.tokens is None:
            raise RuntimeError("call prepare(cache_dir) first")
        if self._token_bytes is None:  # built once per prepare(): every evaluation asks for it
            tj = self.meta["tokenizer_json"]
            if tj is None:
                self._token_bytes = np.ones(256, dtype=np.int64)
            else:
                self._token_bytes = np.zeros(int(self.meta["vocab_size"]), dtype=np.int64)
                for token, i in tj["model"]["vocab"].items():
                    self._token_bytes[int(i)] = len(token)
        return self._token_bytes

    def tokenizer_object(self):  # -> tokenizers.Tokenizer (imported lazily)
        """The trained BPE tokenizer (for decoding samples); None for bytes."""
        if self.tokens is None:
            raise RuntimeError("call prepare(cache_dir) first")
        if self.meta["tokenizer_json"] is None:
            return None
        from tokenizers import Tokenizer

        return Tokenizer.from_str(json.dumps(self.meta["tokenizer_json"]))

    # ------------------------------------------------------------------------------------------------
    # Batches.

    def _split_tokens(self, split: Split, window: int) -> np.ndarray:
        if self.tokens is None:
            raise RuntimeError(f"TextSource({self.path}) has no tokens yet: call prepare(cache_dir) before batch()")
        for name, n in (("train", self.n_train), ("validation", self.n_val)):
            if n < window:
                raise ConfigError(
                    f"corpus too short: the {name} split of {self.path} has {n} tokens "
                    f"({self.tokens.size} in all, val_fraction={self.val_fraction}) but one sequence "
                    f"needs seq_len + 1 = {window}",
                    field="data.path",
                )
        return self.tokens[: self.n_train] if split == "train" else self.tokens[self.n_train :]

    def batch(self, split: Split, index: int, batch_size: int, seq_len: int) -> Batch:
        """Batch ``index`` of ``split`` as (B, T+1) windows of the corpus.

        train: uniform random offsets from ``stream_rng(seed, "train", index)``. val: a fixed tiling
        of the validation split with stride T (targets of successive windows do not overlap), batch i
        taking windows i*B .. i*B + B - 1 (wrapping around), the same for every run. probe: random
        offsets in the validation split from the probe stream.
        """
        window = seq_len + 1
        data = self._split_tokens(split, window)
        n_offsets = data.size - window + 1
        if split == "val":
            n_tiles = (data.size - 1) // seq_len
            offsets = ((index * batch_size + np.arange(batch_size)) % n_tiles) * seq_len
        else:
            rng = stream_rng(combine_seeds(self.seed, self.stream_seed), split, index)
            offsets = rng.integers(0, n_offsets, size=batch_size)
        tokens = data[offsets[:, None] + np.arange(window)]
        return Batch.from_tokens(tokens.astype(np.int64))

    def fingerprint(self) -> str:
        """The corpus's content hash as it is on disk *now* (:func:`corpus_fingerprint`): a corpus edited
        after a run was configured (its stored ``data.fingerprint`` is the old one) is told apart."""
        return corpus_fingerprint(self.path)

    def describe(self) -> dict:
        d = {
            "kind": "text",
            "path": str(self.path),
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "val_fraction": self.val_fraction,
            "entropy_rate": None,
        }
        if self.tokenizer == "bpe":
            d["bpe_vocab_size"] = self.bpe_vocab_size
        if self.tokens is not None:
            d.update(
                cache=str(self.cache_path),
                n_tokens=int(self.tokens.size),
                n_train=self.n_train,
                n_val=self.n_val,
                files=len(self.meta["files"]),
            )
        return d


@register_source("text")
@dataclass(kw_only=True)
class TextConfig(SourceConfig):
    """``[data] kind = "text"``: the user's own corpus, tokenized once into the store's cache."""

    # A file or a directory of text files.
    path: str | None = None
    # Byte-level tokens (vocab 256) or a byte-level BPE trained locally with `tokenizers`.
    tokenizer: Literal["bytes", "bpe"] = "bytes"
    bpe_vocab_size: int = 1024
    # Fraction of tokens (taken from the end of the corpus) held out for validation.
    val_fraction: float = 0.1
    # The corpus's content hash (corpus_fingerprint), resolved when the config is read: it makes the run id
    # depend on the text, not on the path. A stored config keeps the fingerprint it was trained on.
    fingerprint: str | None = None

    def resolve(self, model: ModelConfig, file: str | None) -> None:
        positive(self.bpe_vocab_size, "data.bpe_vocab_size", file)
        if not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"expected a number in (0, 1), got {self.val_fraction}", file=file, field="data.val_fraction"
            )
        if not self.path:
            raise ConfigError("a text source needs a path to a file or directory", file=file, field="data.path")
        if self.fingerprint is None:
            try:
                self.fingerprint = corpus_fingerprint(self.path)
            except ConfigError as e:
                raise ConfigError(e.message, file=file, field=e.field) from None

    def identity(self) -> dict[str, Any]:
        """The run id hashes the corpus's content (``fingerprint``), not where it lies: a moved corpus keeps
        its runs, an edited one gets new ones."""
        d = self.to_dict()
        if d["fingerprint"] is not None:
            d.pop("path")
        return d

    def build(self, stream_seed: int) -> TextSource:
        """Still needs :meth:`TextSource.prepare` (tokenization) before its first batch."""
        if not self.path:
            raise ConfigError("a text source needs a path to a file or directory", field="data.path")
        return TextSource(
            self.path, self.tokenizer, self.bpe_vocab_size, self.val_fraction, seed=self.seed, stream_seed=stream_seed
        )
