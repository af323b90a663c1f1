"""A causal LM's shape from its ``config.json``: built on the ``meta`` device (no weights read),
its linear layers named and counted, the config's LoRA targets mapped onto this architecture,
and its position limit. What ``local.preflight`` estimates memory from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.config import FinetuneConfig
from local.errors import LocalError


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a causal LM (pure data)."""

    quantized_params: int
    """Parameters of the linear layers bitsandbytes quantizes (every Linear but ``lm_head``)."""
    other_params: int
    """Embeddings, ``lm_head``, norms, biases: kept in higher precision."""
    lora_params: int
    """Trainable LoRA parameters for the resolved target modules at the config's rank."""
    largest_linear: int
    """Parameter count of the biggest quantized layer (dequantized on the fly)."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int


#: Architectures whose q/k/v projections are one fused layer: LoRA goes on that layer.
FUSED_ATTENTION = {
    "gpt2": "c_attn",
    "gpt_bigcode": "c_attn",
    "gpt_neox": "query_key_value",
    "falcon": "query_key_value",
    "bloom": "query_key_value",
    "mpt": "Wqkv",
    "phi3": "qkv_proj",
}
_SPLIT_QKV = {"q_proj", "k_proj", "v_proj"}


def resolve_target_modules(
    model_type: str, requested: tuple[str, ...], linear_names: set[str]
) -> list[str]:
    """Map the config's target names onto this architecture's linear layers (pure).

    ``q_proj``/``v_proj`` become the fused projection on GPT-2 style models (``c_attn``).
    """
    if set(requested) <= linear_names:
        return list(requested)
    fused = FUSED_ATTENTION.get(model_type)
    if fused and fused in linear_names and set(requested) <= _SPLIT_QKV | {fused}:
        return [fused]
    missing = sorted(set(requested) - linear_names)
    raise LocalError(
        f"config key target_modules names {', '.join(missing)}, which this {model_type or 'model'} "
        f"does not have; its linear layers are: {', '.join(sorted(linear_names))}"
    )


def load_meta_model(model_dir: Path) -> tuple[Any, Any]:
    """``(hf_config, model on the meta device)`` from ``config.json``: shapes only, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        raise LocalError(f"{model_dir}: not a Hugging Face model folder ({err})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    return hf_cfg, model


def linear_names(model: Any) -> set[str]:
    """Leaf names of the model's linear layers (``q_proj``, ``c_attn``, ...), ``lm_head`` excluded."""
    out_emb = model.get_output_embeddings()
    return {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m) and m is not out_emb
    }


def model_shape(
    hf_cfg: Any, model: Any, cfg: FinetuneConfig, target_modules: list[str]
) -> ModelShape:
    """Count quantized, kept and LoRA parameters of a (meta) model."""
    quantized = other = lora = largest = 0
    counted: set[int] = set()
    out_emb = model.get_output_embeddings()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for p in own)
        n = sum(p.numel() for p in own)
        is_linear = _is_linear(module)
        if is_linear and module is not out_emb:
            quantized += n
            largest = max(largest, module.weight.numel())
        else:
            other += n
        if is_linear and name.rsplit(".", 1)[-1] in target_modules:
            fan_in, fan_out = _fans(module)
            lora += cfg.lora_r * (fan_in + fan_out)
    text_cfg: Any = hf_cfg.get_text_config() if hasattr(hf_cfg, "get_text_config") else hf_cfg
    hidden = _attr(text_cfg, "hidden_size", "n_embd", "d_model")
    return ModelShape(
        quantized_params=quantized,
        other_params=other,
        lora_params=lora,
        largest_linear=largest,
        layers=_attr(text_cfg, "num_hidden_layers", "n_layer"),
        hidden=hidden,
        intermediate=_attr(text_cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        heads=_attr(text_cfg, "num_attention_heads", "n_head"),
        vocab=_attr(text_cfg, "vocab_size"),
    )


def _is_linear(module: Any) -> bool:
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    return type(module).__name__ == "Conv1D"  # GPT-2's transposed linear, quantized the same way


def _fans(module: Any) -> tuple[int, int]:
    w = module.weight
    if type(module).__name__ == "Conv1D":
        return int(w.shape[0]), int(w.shape[1])
    return int(w.shape[1]), int(w.shape[0])


def _attr(cfg: Any, *names: str, default: int | None = None) -> int:
    for name in names:
        value = getattr(cfg, name, None)
        if value:
            return int(value)
    if default is None:
        raise LocalError(f"model config lacks {names[0]}; cannot estimate memory")
    return default


_POSITION_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
)


def position_limit(hf_cfg: Any) -> tuple[str, int] | None:
    """``(config key, value)`` of the model's position limit, or None when it has none."""
    text_cfg: Any = hf_cfg.get_text_config() if hasattr(hf_cfg, "get_text_config") else hf_cfg
    for name in _POSITION_KEYS:
        value = getattr(text_cfg, name, None)
        if isinstance(value, int) and value > 0:
            return name, value
    return None
