"""A model's shape from config.json (``local.shape``): counted on the meta device, targets mapped."""

from __future__ import annotations

import pytest
from qlora_helpers import build_tiny_llama

from local.config import FinetuneConfig
from local.errors import LocalError
from local.shape import load_meta_model, model_shape, resolve_target_modules

LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("shape") / "model")


def test_target_modules_are_mapped_per_architecture():
    assert resolve_target_modules("llama", ("q_proj", "v_proj"), LLAMA_LINEARS) == [
        "q_proj",
        "v_proj",
    ]
    assert resolve_target_modules("gpt2", ("q_proj", "v_proj"), {"c_attn", "c_proj", "c_fc"}) == [
        "c_attn"
    ]
    with pytest.raises(LocalError, match="wq"):
        resolve_target_modules("llama", ("wq",), LLAMA_LINEARS)


def test_shape_is_counted_on_the_meta_device(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    hf_cfg, meta = load_meta_model(tiny_dir)
    shape = model_shape(hf_cfg, meta, FinetuneConfig(), ["q_proj", "v_proj"])
    real = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    linears = sum(
        m.weight.numel()
        for n, m in real.named_modules()
        if isinstance(m, torch.nn.Linear) and n != "lm_head"
    )
    assert shape.quantized_params == linears
    assert shape.quantized_params + shape.other_params == sum(p.numel() for p in real.parameters())
    assert shape.lora_params == 2 * 2 * 8 * (64 + 64)  # 2 layers × (q, v) × r × (in + out)
