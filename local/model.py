"""The model side of a QLoRA run: compute dtype, the 4-bit NF4 base with LoRA, a bitsandbytes guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from local.config import FinetuneConfig


def resolve_compute_dtype(requested: str, device: str) -> str:
    """``auto`` → bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on the CPU."""
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def load_qlora_model(
    model_dir: Path, cfg: FinetuneConfig, device: str, compute_dtype: str, targets: list[str]
) -> Any:
    """The base in 4-bit NF4 + double quantization, prepared for k-bit training, with LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, compute_dtype)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quant,
        dtype=dtype,
        device_map={"": 0 if device == "cuda" else "cpu"},
        local_files_only=True,
    )
    _keep_cpu_weights_trainable(model)
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        bias=cfg.lora_bias,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _keep_cpu_weights_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    Why: bitsandbytes 0.50 on a CPU with AVX512-BF16 rewrites a ``Linear4bit`` weight in place
    into a packed layout the first time the module runs in eval mode without grad (i.e. our
    "loss before" evaluation). The packed path has no autograd kernel, so every later training
    step silently gets zero LoRA gradients (measured here: grad_norm 0, loss flat). Training
    must see the same weights it was loaded with, so the repacking is turned off.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
