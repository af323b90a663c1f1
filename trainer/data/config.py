"""``[data]`` of the recipe: what ``prepare-data`` reads and how training streams it."""

from __future__ import annotations

from dataclasses import dataclass, field

from artifacts.config import check as _check
from trainer.data.clean import CleanConfig
from trainer.data.dedup import MODES


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: text in, token shards out (``trainer.data.prepare``), streamed as packed blocks (``trainer.data.stream``)."""

    train_files: tuple[str, ...] = ()
    """Text files: local paths (globs allowed) or store URIs of files or prefixes."""
    generated_corpus: bool = False
    """Use the deterministic generated corpus (``trainer.data.corpus``) instead of ``train_files``."""
    generated_corpus_bytes: int = 400_000
    """Size of the generated corpus in bytes."""
    tokenizer: str | None = None
    """Existing tokenizer folder (local or store URI); None: train a byte-level BPE locally."""
    vocab_size: int = 512
    """Vocabulary size of the tokenizer trained locally."""
    block_size: int = 64
    """Tokens per packed training block (the model's context length)."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation (chosen by a seeded hash of each document's position)."""
    tokenizer_sample_bytes: int = 1_000_000_000
    """Text the tokenizer is trained on: sources in a seeded order, each from its start, until this many bytes."""
    shard_bytes: int = 128 * 1024 * 1024
    """Target size of one token shard (``.bin``) in ``<run>/cache/data/``; small values are for tests."""
    workers: int = 0
    """Tokenizer processes of ``prepare-data``; 0: one per CPU core (``--workers`` overrides)."""
    shuffle_window: int = 4
    """Shards whose blocks are shuffled together; memory and local disk grow with it, not with the corpus."""
    local_cache_shards: int = 8
    """Shards kept in the node-local cache when training reads them from a remote store (least recently used evicted)."""
    dedup: str = field(default="exact", metadata={"choices": MODES})
    """Duplicate removal before tokenizing: ``exact`` (same text up to whitespace), ``minhash``
    (FineWeb's near-duplicates: 5-grams, 14 bands × 8 hashes) or ``off`` (``trainer.data.dedup``)."""
    clean: CleanConfig = field(default_factory=CleanConfig)
    """``[data.clean]``: NFC, control characters, length and Gopher filters (``trainer.data.clean``)."""

    def __post_init__(self) -> None:
        _check(
            self.generated_corpus or bool(self.train_files),
            "data.train_files",
            "is empty; list text files or set data.generated_corpus = true",
        )
        _check(self.vocab_size >= 260, "data.vocab_size", f"must be >= 260, got {self.vocab_size}")
        _check(self.block_size >= 8, "data.block_size", f"must be >= 8, got {self.block_size}")
        _check(
            0.0 < self.val_fraction < 0.5,
            "data.val_fraction",
            f"must be in (0, 0.5), got {self.val_fraction}",
        )
        _check(
            self.tokenizer_sample_bytes >= 10_000,
            "data.tokenizer_sample_bytes",
            f"must be >= 10000, got {self.tokenizer_sample_bytes}",
        )
        _check(
            self.shard_bytes >= 1024,
            "data.shard_bytes",
            f"must be >= 1024, got {self.shard_bytes}",
        )
        _check(self.workers >= 0, "data.workers", f"must be >= 0, got {self.workers}")
        _check(
            self.shuffle_window >= 1,
            "data.shuffle_window",
            f"must be >= 1, got {self.shuffle_window}",
        )
        _check(
            self.local_cache_shards >= self.shuffle_window,
            "data.local_cache_shards",
            f"must be >= data.shuffle_window ({self.shuffle_window}), got {self.local_cache_shards}",
        )
        _check(
            self.generated_corpus_bytes >= 10_000,
            "data.generated_corpus_bytes",
            f"must be >= 10000, got {self.generated_corpus_bytes}",
        )
