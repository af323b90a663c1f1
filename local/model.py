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


def load_4bit_base(
    model_dir: Path, device: str, compute_dtype: str, quant_type: str, double_quant: bool
) -> Any:
    """The base quantized by bitsandbytes as a fine-tune loads it (``generate`` and ``evaluate``
    use it too, so an adapter runs on the very weights it was trained against)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, compute_dtype)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=dtype,
    )
    return AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quant,
        dtype=dtype,
        device_map={"": 0 if device == "cuda" else "cpu"},
        local_files_only=True,
    )


def load_qlora_model(
    model_dir: Path, cfg: FinetuneConfig, device: str, compute_dtype: str, targets: list[str]
) -> Any:
    """The base in 4-bit NF4 + double quantization, prepared for k-bit training, with LoRA."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_4bit_base(model_dir, device, compute_dtype, cfg.quant_type, cfg.double_quant)
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


def load_full_precision(model_dir: Path, adapter: Path | None = None) -> Any:
    """The base in its own 16-bit dtype (bf16/fp16) or fp32 on the CPU, with ``adapter`` merged.

    Why not the 4-bit training copy: merging into dequantized NF4 weights would bake the
    quantization error into the published model. On the CPU so GPU memory is not needed.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    saved = getattr(hf_cfg, "dtype", None) or getattr(hf_cfg, "torch_dtype", None)
    dtype = saved if saved in (torch.bfloat16, torch.float16) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, device_map={"": "cpu"}, local_files_only=True
    )
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.eval()


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
