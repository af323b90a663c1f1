"""``[model]``, ``[training]``, ``[deepspeed]`` and ``[eval]`` of the recipe: what the training loop
builds and how."""

from __future__ import annotations

from dataclasses import dataclass

from artifacts.config import check as _check
from trainer.loop.reporting import unknown_names

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FAMILIES = ("gpt2", "llama")


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
class EvalConfig:
    """``[eval]``: what rank 0 records at each evaluation besides the loss (``trainer.loop.metrics``)."""

    sample_prompts: tuple[str, ...] = ()
    """Fixed prompts generated from (greedy) at every evaluation: the log, TensorBoard (text) and
    ``STATUS.json``'s ``latest_sample``. Empty: no samples."""
    sample_max_new_tokens: int = 32
    """Tokens generated per sample prompt."""
    tensorboard: bool = True
    """Write TensorBoard event files (rank 0) and commit them to ``<run>/logs/tensorboard/``."""
    tensorboard_sync_s: float = 60.0
    """Seconds between background commits of the event files (and once at the end)."""
    report_to: tuple[str, ...] = ()
    """HF Trainer integrations to also report to (``TrainingArguments.report_to``, names as
    ``transformers.integrations`` spells them: ``tensorboard``, ``trackio``, ``wandb``, ...).
    Empty: none. Ones that send data off the machine (``trainer.loop.reporting``) are refused by
    ``invoke pretrain`` on a stack without ``twostage:allowInternetEgress``."""

    def __post_init__(self) -> None:
        problem = unknown_names(self.report_to)
        _check(problem is None, "eval.report_to", str(problem))
        _check(
            self.sample_max_new_tokens >= 1,
            "eval.sample_max_new_tokens",
            f"must be >= 1, got {self.sample_max_new_tokens}",
        )
        _check(
            all(p.strip() for p in self.sample_prompts),
            "eval.sample_prompts",
            "must not contain empty prompts",
        )
        _check(
            self.tensorboard_sync_s > 0,
            "eval.tensorboard_sync_s",
            f"must be > 0, got {self.tensorboard_sync_s}",
        )
