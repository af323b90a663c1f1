"""Preflight: the memory estimate, the architecture mapping, and refusing runs that cannot fit."""

from __future__ import annotations

import dataclasses

import pytest
from qlora_helpers import build_tiny_llama, encrypted_dataset

from local.config import FinetuneConfig
from local.errors import LocalError
from local.preflight import estimate_peak, quant_bytes, run_preflight
from local.shape import ModelShape

LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("preflight") / "model")


def test_4bit_weights_cost_about_a_quarter_of_16bit():
    n = 4096 * 4096
    ratio = quant_bytes(n, double_quant=True) / (2 * n)
    assert 0.25 < ratio < 0.26  # 4 bits + ~0.13 bit of constants
    assert quant_bytes(n, double_quant=False) > quant_bytes(n, double_quant=True)


def test_estimate_breaks_down_and_checkpointing_saves_activations():
    shape = ModelShape(
        quantized_params=6_500_000_000,
        other_params=262_000_000,
        lora_params=4_200_000,
        largest_linear=45_000_000,
        layers=32,
        hidden=4096,
        intermediate=11008,
        heads=32,
        vocab=32000,
    )
    cfg = FinetuneConfig()
    est = estimate_peak(shape, cfg, device="cuda", compute_dtype="bfloat16")
    # a 7B-class model at 4-bit must fit the brief's reference GPU (24 GB) with room to spare
    assert 4e9 < est.total < 20e9
    assert est.parts["base 4-bit"] < 0.3 * 2 * shape.quantized_params
    no_ckpt = estimate_peak(
        shape,
        dataclasses.replace(cfg, gradient_checkpointing=False),
        device="cuda",
        compute_dtype="bfloat16",
    )
    assert no_ckpt.parts["activations"] > 5 * est.parts["activations"]


def test_fits_reports_device_and_targets(tiny_dir):
    report = run_preflight(
        tiny_dir, FinetuneConfig(), device="cpu", compute_dtype="float32", free_bytes=2**30
    )
    assert report.fits and report.device == "cpu" and report.target_modules == ["q_proj", "v_proj"]
    assert "estimated peak" in report.summary()


def test_refuses_with_advice_when_the_estimate_exceeds_memory(tiny_dir):
    with pytest.raises(LocalError) as info:
        run_preflight(
            tiny_dir, FinetuneConfig(), device="cpu", compute_dtype="float32", free_bytes=1_000_000
        )
    msg = str(info.value)
    assert "not enough memory" in msg and "batch_size" in msg and "max_seq_len" in msg


def test_memory_limit_in_the_config_caps_the_budget(tiny_dir):
    cfg = FinetuneConfig(memory_limit_mb=1)
    with pytest.raises(LocalError, match="not enough memory"):
        run_preflight(tiny_dir, cfg, device="cpu", compute_dtype="float32", free_bytes=2**34)


def test_finetune_refuses_before_decrypting_or_loading(tmp_path, tiny_dir, monkeypatch):
    from local import finetune, tokens

    cipher, key = encrypted_dataset(tmp_path, n=4)

    def must_not_run(*_a, **_k):
        raise AssertionError("data was decrypted although the run cannot fit")

    monkeypatch.setattr(tokens, "tokenize_records", must_not_run)
    out = tmp_path / "out"
    with pytest.raises(LocalError, match="not enough memory"):
        finetune.run_finetune(
            tiny_dir, cipher, key, out, verify=False, free_bytes=1_000_000,
            config=FinetuneConfig(max_seq_len=128),
        )  # fmt: skip
    assert not out.exists()


def test_a_7b_llama_fits_the_reference_24gb_gpu_but_not_6gb(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig().save_pretrained(str(tmp_path))  # the 7B shape; meta device, no weights
    report = run_preflight(
        tmp_path, FinetuneConfig(), device="cuda", compute_dtype="bfloat16", free_bytes=24 * 2**30
    )
    assert report.fits and "CUDA context" in report.estimate.parts
    assert 3e9 < report.estimate.parts["base 4-bit"] < 3.6e9  # 6.5e9 linear params at ~0.52 byte
    with pytest.raises(LocalError, match="lower batch_size"):
        run_preflight(
            tmp_path,
            FinetuneConfig(),
            device="cuda",
            compute_dtype="bfloat16",
            free_bytes=6 * 2**30,
        )
