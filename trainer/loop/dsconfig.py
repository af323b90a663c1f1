"""The DeepSpeed JSON, generated from the recipe (pure: hardware facts come in as arguments).

Batch sizes, gradient clipping, precision flags and optimizer hyper-parameters are ``"auto"``, so
the HF integration fills them from ``TrainingArguments`` and the two can never disagree. Facts:

* ``stage3_gather_16bit_weights_on_model_save`` stays on so that ``final/`` is a normal HF folder
  (16-bit weights gathered by ``Trainer.save_model``). Periodic and interruption checkpoints do
  not gather (``trainer.loop.hf``): they are the ZeRO shards + trainer state, and
  ``invoke export-checkpoint`` consolidates one on request with
  ``python -m deepspeed.utils.zero_to_fp32 CKPT OUT`` (GPT-2's tied embeddings included,
  DeepSpeed 0.19.8), which reproduces ``final/``'s weights exactly.
* ``stage3_param_persistence_threshold``: parameters smaller than it are not partitioned. On a
  tiny model DeepSpeed's default keeps *everything* whole, so the tiny recipe sets 0.
* No ``optimizer`` block on CPU: with one DeepSpeed JIT-compiles fused Adam (~35 s); without one
  the HF Trainer builds torch AdamW, which ZeRO wraps all the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.loop.config import DeepSpeedConfig


def resolve_precision(requested: str, *, accelerator: bool, bf16_supported: bool) -> str:
    """``bf16``/``fp16``/``fp32`` for this hardware; ``auto`` = bf16 where supported, else fp16 on
    accelerators, fp32 on CPU. An explicit ``bf16`` without support falls back to fp16 on GPUs."""
    if requested == "auto":
        if bf16_supported:
            return "bf16"
        return "fp16" if accelerator else "fp32"
    if requested == "bf16" and not bf16_supported:
        return "fp16" if accelerator else "fp32"
    return requested


def use_deepspeed_optimizer(ds: DeepSpeedConfig, *, accelerator: bool) -> bool:
    """Whether the JSON carries an ``optimizer`` block (DeepSpeed's fused AdamW)."""
    if ds.optimizer == "auto":
        return accelerator
    return ds.optimizer == "deepspeed"


def build_ds_config(ds: DeepSpeedConfig, *, accelerator: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for ``TrainingArguments(deepspeed=...)`` (``[deepspeed]``)."""
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if ds.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": (
                    "auto"
                    if ds.param_persistence_threshold is None
                    else ds.param_persistence_threshold
                ),
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                "stage3_gather_16bit_weights_on_model_save": True,
                "sub_group_size": 1_000_000_000,
            }
        )
        if ds.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": accelerator}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": accelerator}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": zero,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
    if use_deepspeed_optimizer(ds, accelerator=accelerator):
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def write_ds_config(config: dict[str, Any], path: Path) -> Path:
    """Record the generated JSON next to the run's checkpoints (for people, not for DeepSpeed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
