"""The fine-tune recipe: one frozen dataclass, loaded from a checked-in TOML file.

Defaults are the design brief's values (``configs/finetune-qlora.toml`` spells them out), so a
run without ``--config`` is the production recipe. Unknown keys are errors that name the key and
the file: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.config import build, read_toml
from local.errors import LocalError

_COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides how a QLoRA fine-tune runs (no paths: those are CLI flags)."""

    lora_r: int = 8
    """LoRA rank: size of the low-rank update added to each target projection."""
    lora_alpha: int = 32
    """LoRA scaling numerator; the update is scaled by ``lora_alpha / lora_r``."""
    lora_dropout: float = 0.05
    """Dropout applied to the LoRA branch input during training."""
    lora_bias: str = "none"
    """Which biases train: ``none``, ``all`` or ``lora_only`` (peft's ``bias``)."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Attention projections that get adapters; mapped per architecture (GPT-2: ``c_attn``)."""

    quant_type: str = "nf4"
    """bitsandbytes 4-bit data type for the frozen base: ``nf4`` or ``fp4``."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bits per weight)."""
    compute_dtype: str = "auto"
    """Dtype for matmuls and LoRA weights: ``auto`` = bf16 on a GPU that supports it, fp16 on an
    older GPU without bf16, fp32 on the CPU; or ``float32``, ``bfloat16``, ``float16``."""
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU), ``cuda`` or ``cpu``."""

    batch_size: int = 4
    """Sequences per device per micro-step."""
    grad_accum: int = 2
    """Micro-steps accumulated per optimizer step."""
    learning_rate: float = 2e-5
    """Peak learning rate (linear decay to zero over ``max_steps``)."""
    warmup_steps: int = 0
    """Linear warm-up steps before the peak learning rate."""
    max_steps: int = 1000
    """Optimizer steps to run (``--max-steps`` overrides)."""
    optim: str = "adamw_torch_fused"
    """HF Trainer optimizer name."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (non-reentrant); trades time for memory."""
    report_to: str = "none"
    """Experiment trackers; only ``none`` is accepted: nothing but the export leaves the box."""
    logging_steps: int = 10
    """Log the training loss every this many optimizer steps."""
    seed: int = 0
    """Seed for the train/eval split, LoRA init and dropout."""

    max_seq_len: int = 512
    """Token budget per record; must not exceed the model's position limit (checked first)."""
    truncation: str = "left"
    """Over-long records: ``left`` keeps the last ``max_seq_len`` tokens (the response survives),
    ``drop`` skips the record. Either way they are counted and reported."""
    train_on_prompt: bool = False
    """Also put the loss on prompt tokens and non-assistant turns (default: response only)."""
    packing: bool = False
    """Pack records greedily into sequences of up to ``max_seq_len`` tokens (``batch_size`` then
    counts packed sequences) and flatten each micro-batch into one row with per-record position
    ids, no padding, where the model supports it (checked on the loaded model; else padded)."""
    eval_steps: int = 100
    """Evaluate on the held-out slice every this many optimizer steps; 0 = only before/after."""
    early_stop_patience: int = 0
    """Stop after this many consecutive stalled evaluations (stage 1's criterion); 0 = off."""
    min_rel_improvement: float = 0.005
    """An evaluation stalls when it beats the best eval loss by less than this fraction."""
    checkpoint_steps: int = 100
    """Write an encrypted checkpoint every this many optimizer steps (``--resume``); 0 = never."""
    audit_records: int = 32
    """Training and held-out records each the privacy audit probes; 0 = no audit."""
    audit_prefix_tokens: int = 8
    """Supervised tokens of a record given to the model before its greedy continuation."""
    audit_verbatim_tokens: int = 8
    """K: a continuation that reproduces the record's next K tokens exactly counts as exposed."""
    eval_fraction: float = 0.05
    """Share of records held out (in memory) to measure loss before and after."""
    eval_max_records: int = 256
    """Upper bound on held-out records, so evaluation stays cheap on big datasets."""

    memory_limit_mb: int = 0
    """Cap for the preflight check in MiB; 0 means the free memory of the device."""

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("lora_r", self.lora_r >= 1, "must be >= 1"),
            ("lora_alpha", self.lora_alpha >= 1, "must be >= 1"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "must be in [0, 1)"),
            (
                "lora_bias",
                self.lora_bias in ("none", "all", "lora_only"),
                "must be none|all|lora_only",
            ),
            ("target_modules", len(self.target_modules) > 0, "must name at least one module"),
            ("quant_type", self.quant_type in ("nf4", "fp4"), "must be nf4 or fp4"),
            (
                "compute_dtype",
                self.compute_dtype in _COMPUTE_DTYPES,
                f"must be one of {_COMPUTE_DTYPES}",
            ),
            ("device", self.device in _DEVICES, f"must be one of {_DEVICES}"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("learning_rate", self.learning_rate > 0, "must be > 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("max_steps", self.max_steps >= 1, "must be >= 1"),
            (
                "report_to",
                self.report_to == "none",
                "must be 'none' (nothing but the export leaves the box)",
            ),
            ("logging_steps", self.logging_steps >= 1, "must be >= 1"),
            ("max_seq_len", self.max_seq_len >= 8, "must be >= 8"),
            ("eval_fraction", 0.0 < self.eval_fraction < 1.0, "must be in (0, 1)"),
            ("eval_max_records", self.eval_max_records >= 1, "must be >= 1"),
            ("memory_limit_mb", self.memory_limit_mb >= 0, "must be >= 0"),
            ("truncation", self.truncation in ("left", "drop"), "must be left or drop"),
            ("eval_steps", self.eval_steps >= 0, "must be >= 0"),
            ("early_stop_patience", self.early_stop_patience >= 0, "must be >= 0"),
            (
                "early_stop_patience",
                self.early_stop_patience == 0 or self.eval_steps > 0,
                "needs eval_steps > 0 (early stopping counts evaluations)",
            ),
            ("min_rel_improvement", 0.0 <= self.min_rel_improvement < 1.0, "must be in [0, 1)"),
            ("checkpoint_steps", self.checkpoint_steps >= 0, "must be >= 0"),
            ("audit_records", self.audit_records >= 0, "must be >= 0"),
            ("audit_prefix_tokens", self.audit_prefix_tokens >= 1, "must be >= 1"),
            ("audit_verbatim_tokens", self.audit_verbatim_tokens >= 1, "must be >= 1"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise LocalError(f"config key {key}={getattr(self, key)!r} {why}")

    @property
    def effective_batch(self) -> int:
        """Sequences per optimizer step on one device."""
        return self.batch_size * self.grad_accum


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> FinetuneConfig:
    """Build a config from plain data, rejecting unknown keys and wrong types by name."""
    try:
        return build(FinetuneConfig, data, source=source, error=LocalError)
    except LocalError as err:
        if str(err).startswith(f"{source}: "):
            raise
        raise LocalError(f"{source}: {err}") from None  # a __post_init__ rule


def load_config(path: Path | None = None, **overrides: Any) -> FinetuneConfig:
    """Load ``path`` (TOML; ``None`` = the built-in defaults) and apply non-None CLI overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data = read_toml(path, LocalError)
    cfg = config_from_dict(data, source)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        try:
            cfg = dataclasses.replace(cfg, **changes)
        except LocalError as err:
            raise LocalError(f"command-line override: {err}") from None
    return cfg


__all__ = ["FinetuneConfig", "config_from_dict", "load_config"]
