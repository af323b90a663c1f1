"""The run recipe: one TOML file per recipe (``configs/pretrain-*.toml``), frozen dataclasses here.

Every section is a frozen dataclass with one docstring per field. Unknown sections or keys and bad
values are errors that name the key and the file (``TrainerError``). The DeepSpeed JSON is generated
from this (``trainer.loop.dsconfig``); the HF ``TrainingArguments`` too (``trainer.loop.train``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.config import build, read_toml
from artifacts.config import check as _check
from trainer.errors import TrainerError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FAMILIES = ("gpt2", "llama")


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: where the run lives and what is kept."""

    name: str = "pretrain"
    """Run name; the default ``--run`` folder under ``runs/`` starts with it."""
    uri: str = ""
    """Run prefix (``s3://bucket/runs/NAME``, ``file://`` or a path); ``--run`` overrides it."""
    scratch_dir: str = ""
    """Local folder for checkpoints before upload and caches; default ``$TWOSTAGE_SCRATCH`` or ``runs/.scratch``."""
    seed: int = 42
    """Seed for model init, data split and shuffling (HF ``TrainingArguments.seed``)."""
    keep_last: int = 3
    """Committed checkpoints kept in the run prefix (older ones are pruned after each commit)."""
    signing_key: str | None = None
    """Ed25519 private key (PEM path) that signs the published ``final/`` manifest; None: unsigned."""
    min_nodes: int | None = None
    """Cluster runs: the fewest nodes to go on with when spot capacity is short (after a capacity
    wait; the run grows back when nodes return). None: every node of the cluster."""
    idle_timeout_minutes: float = 15.0
    """Cluster runs: a node whose trainer has exited leaves (stops billing) when no new launch
    arrives within this, or when the controller's heartbeat is this old."""
    stall_timeout_minutes: float = 60.0
    """Cluster runs: the controller scales to 0 when the global step has not moved for this long."""
    max_hours: float | None = None
    """Cluster runs: stop (checkpoint, scale to 0) after this many hours; None: no cap."""
    max_dollars: float | None = None
    """Cluster runs: stop when the run has cost this many USD (nodes + controller); None: no cap."""
    store_outage_minutes: float = 15.0
    """How long a failing checkpoint upload keeps retrying (training goes on) before the run stops with exit 75."""

    def __post_init__(self) -> None:
        _check(
            bool(self.name) and "/" not in self.name,
            "run.name",
            "must be a non-empty name without '/'",
        )
        _check(self.keep_last >= 1, "run.keep_last", f"must be >= 1, got {self.keep_last}")
        _check(
            self.min_nodes is None or self.min_nodes >= 1,
            "run.min_nodes",
            f"must be >= 1, got {self.min_nodes}",
        )
        for key in ("idle_timeout_minutes", "stall_timeout_minutes"):
            value = getattr(self, key)
            _check(value >= 5, f"run.{key}", f"must be at least 5 (minutes), got {value}")
        for key in ("max_hours", "max_dollars"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"run.{key}", f"must be > 0, got {value}")
        _check(
            self.store_outage_minutes > 0,
            "run.store_outage_minutes",
            f"must be > 0, got {self.store_outage_minutes}",
        )


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: a causal LM built from these sizes, or initialised from a folder."""

    family: str = "gpt2"
    """Architecture family: ``gpt2`` or ``llama``."""
    init_from: str | None = None
    """Local folder or store URI of an HF model to start from (sizes below are then ignored)."""
    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads (must divide ``hidden_size``)."""
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (llama only); None: same as ``num_heads``."""
    intermediate_size: int | None = None
    """MLP width; None: 4 × hidden (gpt2) or the usual 8/3 × hidden rounded to 64 (llama)."""
    tie_word_embeddings: bool = True
    """Share input embeddings and the LM head."""
    dropout: float = 0.0
    """Dropout on residual/attention/embeddings (gpt2 only)."""

    def __post_init__(self) -> None:
        _check(
            self.family in FAMILIES,
            "model.family",
            f"must be one of {FAMILIES}, got {self.family!r}",
        )
        for key in ("hidden_size", "num_layers", "num_heads"):
            _check(
                getattr(self, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(self, key)}"
            )
        _check(
            self.hidden_size % self.num_heads == 0,
            "model.num_heads",
            f"must divide hidden_size {self.hidden_size}, got {self.num_heads}",
        )
        if self.num_kv_heads is not None:
            _check(
                self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0,
                "model.num_kv_heads",
                f"must divide num_heads {self.num_heads}, got {self.num_kv_heads}",
            )
        _check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")


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


@dataclass(frozen=True)
class TrainingConfig:
    """``[training]``: the HF ``TrainingArguments`` this recipe sets."""

    num_train_epochs: int = 100
    """Epoch limit (convergence usually stops earlier)."""
    max_steps: int = -1
    """Step limit overriding epochs when > 0 (for smoke runs)."""
    per_device_train_batch_size: int = 32
    """Micro-batch per GPU (per CPU rank)."""
    per_device_eval_batch_size: int = 32
    """Evaluation batch per device."""
    gradient_accumulation_steps: int = 8
    """Micro-batches accumulated per optimizer step."""
    learning_rate: float = 6e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_scheduler_type: str = "linear"
    """HF scheduler name (``linear``, ``cosine``, ``constant_with_warmup``, ...)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    precision: str = "auto"
    """``auto`` (bf16 where the hardware has it, else fp16 on GPUs, fp32 on CPU), ``bf16``, ``fp16``, ``fp32``."""
    save_steps: int = 10_000
    """Checkpoint every N optimizer steps (also on convergence and on interruption)."""
    save_minutes: float = 30.0
    """Also checkpoint when this many minutes have passed since the last save, whichever of the two
    comes first (0 = off). Bounds the work a preemption can cost when its notice save fails."""
    logging_steps: int = 10
    """Log the training loss every N steps."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    dataloader_num_workers: int = 0
    """DataLoader worker processes per rank."""
    allow_global_batch_change: bool = False
    """Resuming on another world size where the checkpoint's global batch cannot be split exactly: train on with the recipe's split instead of refusing."""

    def __post_init__(self) -> None:
        for key in (
            "num_train_epochs",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "save_steps",
            "logging_steps",
        ):
            _check(
                getattr(self, key) >= 1,
                f"training.{key}",
                f"must be >= 1, got {getattr(self, key)}",
            )
        _check(
            self.learning_rate > 0,
            "training.learning_rate",
            f"must be > 0, got {self.learning_rate}",
        )
        _check(
            self.weight_decay >= 0,
            "training.weight_decay",
            f"must be >= 0, got {self.weight_decay}",
        )
        _check(
            self.warmup_steps >= 0,
            "training.warmup_steps",
            f"must be >= 0, got {self.warmup_steps}",
        )
        _check(
            self.max_grad_norm >= 0,
            "training.max_grad_norm",
            f"must be >= 0, got {self.max_grad_norm}",
        )
        _check(
            self.save_minutes >= 0,
            "training.save_minutes",
            f"must be >= 0 (0 = off), got {self.save_minutes}",
        )
        _check(
            self.precision in PRECISIONS,
            "training.precision",
            f"must be one of {PRECISIONS}, got {self.precision!r}",
        )
        _check(
            self.dataloader_num_workers >= 0,
            "training.dataloader_num_workers",
            f"must be >= 0, got {self.dataloader_num_workers}",
        )


@dataclass(frozen=True)
class ConvergenceConfig:
    """``[convergence]``: when validation loss has stopped improving (``artifacts.convergence``)."""

    min_rel_improvement: float = 0.005
    """An epoch stalls when it improves on the best val loss by less than this fraction of it."""
    patience: int = 5
    """Consecutive stalled epochs after which the run has converged."""

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.min_rel_improvement < 1.0,
            "convergence.min_rel_improvement",
            f"must be in [0, 1), got {self.min_rel_improvement}",
        )
        _check(self.patience >= 1, "convergence.patience", f"must be >= 1, got {self.patience}")


@dataclass(frozen=True)
class DeepSpeedConfig:
    """``[deepspeed]``: the ZeRO settings the DeepSpeed JSON is generated from."""

    zero_stage: int = 3
    """ZeRO stage: 3 partitions parameters, gradients and optimizer state; 2 keeps parameters whole."""
    param_persistence_threshold: int | None = None
    """``stage3_param_persistence_threshold``: parameters smaller than this stay unpartitioned; None: DeepSpeed's "auto" (0 for tiny models, or nothing is partitioned)."""
    overlap_comm: bool = True
    """Overlap gradient reduction with the backward pass."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (slower, saves GPU memory)."""
    offload_param: bool = False
    """Keep partitioned parameters in CPU memory (ZeRO-3 only)."""
    optimizer: str = "auto"
    """``auto``: DeepSpeed's fused AdamW on GPUs, torch AdamW on CPU (no compile); ``deepspeed`` or ``torch``."""

    def __post_init__(self) -> None:
        _check(
            self.zero_stage in (2, 3),
            "deepspeed.zero_stage",
            f"must be 2 or 3, got {self.zero_stage}",
        )
        if self.param_persistence_threshold is not None:
            _check(
                self.param_persistence_threshold >= 0,
                "deepspeed.param_persistence_threshold",
                f"must be >= 0, got {self.param_persistence_threshold}",
            )
        _check(
            self.optimizer in ("auto", "deepspeed", "torch"),
            "deepspeed.optimizer",
            f"must be auto, deepspeed or torch, got {self.optimizer!r}",
        )


@dataclass(frozen=True)
class SpotConfig:
    """``[spot]``: watching for the two-minute spot interruption notice."""

    enabled: bool = True
    """Poll the instance metadata service (and treat SIGTERM) as an interruption notice."""
    endpoint: str | None = None
    """Metadata service base URL; None: the watcher's default (its env override, else EC2's)."""
    poll_interval: float = 5.0
    """Seconds between polls."""

    def __post_init__(self) -> None:
        _check(
            self.poll_interval > 0, "spot.poll_interval", f"must be > 0, got {self.poll_interval}"
        )


@dataclass(frozen=True)
class TrainerConfig:
    """A whole recipe; ``source`` is the file it came from, ``raw`` its parsed TOML."""

    run: RunConfig = field(default_factory=RunConfig)
    """``[run]`` section."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """``[model]`` section."""
    data: DataConfig = field(default_factory=lambda: DataConfig(generated_corpus=True))
    """``[data]`` section."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """``[training]`` section."""
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    """``[convergence]`` section."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """``[deepspeed]`` section."""
    spot: SpotConfig = field(default_factory=SpotConfig)
    """``[spot]`` section."""
    source: str = ""
    """Path of the TOML file (for messages)."""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The parsed TOML, recorded in checkpoints and the training summary."""


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> TrainerConfig:
    """Build a :class:`TrainerConfig` from parsed TOML; errors name the key and ``source``."""
    return build(
        TrainerConfig,
        raw,
        source=source,
        error=TrainerError,
        skip=frozenset({"source", "raw"}),
        extra={"source": source, "raw": raw},
    )


def load_config(path: Path | str) -> TrainerConfig:
    """Read and validate a recipe TOML file."""
    return config_from_dict(read_toml(path, TrainerError), source=str(Path(path)))
