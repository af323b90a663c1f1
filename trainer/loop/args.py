"""HF ``TrainingArguments`` from the recipe (the DeepSpeed JSON is :mod:`trainer.loop.dsconfig`,
the CPU adaptations :mod:`trainer.loop.cpu_compat`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from trainer.config import TrainerConfig
from trainer.loop.reporting import report_to_argument


def training_arguments(
    cfg: TrainerConfig,
    *,
    output_dir: Path,
    ds_config: dict[str, Any],
    precision: str,
    extra: dict[str, Any],
    plan: Any = None,
) -> Any:
    """HF ``TrainingArguments`` from the recipe (transformers 5.x names).

    ``plan`` (a :class:`trainer.data.batching.BatchPlan`) overrides the recipe's per-device batch and
    accumulation, so a resume on another world size keeps the checkpoint's global batch.
    """
    from transformers import TrainingArguments

    t = cfg.training
    per_device = plan.per_device if plan is not None else t.per_device_train_batch_size
    grad_accum = plan.grad_accum if plan is not None else t.gradient_accumulation_steps
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy="epoch",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to=report_to_argument(cfg.eval.report_to),
        seed=cfg.run.seed,
        data_seed=cfg.run.seed,
        deepspeed=ds_config,
        gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=t.dataloader_num_workers,
        disable_tqdm=not sys.stderr.isatty() or os.environ.get("TWOSTAGE_PROGRESS") == "0",
        save_only_model=False,
        ddp_timeout=1800,
        **extra,
    )
