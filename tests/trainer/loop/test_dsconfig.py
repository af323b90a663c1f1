"""The generated DeepSpeed JSON: ZeRO-3 that really partitions, 16-bit save, no CPU optimizer block."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import config_from_dict, load_config
from trainer.loop.dsconfig import (
    build_ds_config,
    resolve_precision,
    use_deepspeed_optimizer,
    write_ds_config,
)

ROOT = Path(__file__).resolve().parents[3]


def cfg(**deepspeed):
    return config_from_dict({"data": {"generated_corpus": True}, "deepspeed": deepspeed})


def test_tiny_recipe_partitions_every_parameter_and_gathers_16bit_on_save() -> None:
    ds = build_ds_config(load_config(ROOT / "configs/pretrain-tiny.toml").deepspeed, accelerator=False)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_param_persistence_threshold"] == 0
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_cpu_config_has_no_optimizer_block_so_no_fused_adam_compile() -> None:
    assert "optimizer" not in build_ds_config(cfg().deepspeed, accelerator=False)


def test_gpu_config_uses_deepspeed_adamw_with_auto_hyperparameters() -> None:
    ds = build_ds_config(cfg().deepspeed, accelerator=True)
    assert ds["optimizer"]["type"] == "AdamW"
    assert set(ds["optimizer"]["params"].values()) == {"auto"}


@pytest.mark.parametrize(
    ("choice", "accel", "expected"),
    [
        ("auto", True, True),
        ("auto", False, False),
        ("torch", True, False),
        ("deepspeed", False, True),
    ],
)
def test_optimizer_choice(choice: str, accel: bool, expected: bool) -> None:
    assert use_deepspeed_optimizer(cfg(optimizer=choice).deepspeed, accelerator=accel) is expected


def test_batch_and_precision_values_are_auto_so_trainer_args_decide() -> None:
    ds = build_ds_config(cfg().deepspeed, accelerator=True)
    for key in (
        "train_micro_batch_size_per_gpu",
        "train_batch_size",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert ds[key] == "auto"
    assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"


def test_default_persistence_threshold_is_deepspeed_auto() -> None:
    assert (
        build_ds_config(cfg().deepspeed, accelerator=True)["zero_optimization"][
            "stage3_param_persistence_threshold"
        ]
        == "auto"
    )


def test_zero2_has_no_stage3_keys_and_offload_is_generated() -> None:
    z2 = build_ds_config(cfg(zero_stage=2, offload_optimizer=True).deepspeed, accelerator=True)[
        "zero_optimization"
    ]
    assert z2["stage"] == 2 and not any(k.startswith("stage3") for k in z2)
    assert z2["offload_optimizer"]["device"] == "cpu"
    z3 = build_ds_config(cfg(offload_param=True).deepspeed, accelerator=False)["zero_optimization"]
    assert z3["offload_param"] == {"device": "cpu", "pin_memory": False}


@pytest.mark.parametrize(
    ("requested", "accel", "bf16", "expected"),
    [
        ("auto", True, True, "bf16"),  # A100
        ("auto", True, False, "fp16"),  # V100 / T4
        ("auto", False, False, "fp32"),  # CPU without bf16
        ("auto", False, True, "bf16"),
        ("bf16", True, False, "fp16"),
        ("fp32", True, True, "fp32"),
    ],
)
def test_precision_from_hardware(requested: str, accel: bool, bf16: bool, expected: str) -> None:
    assert resolve_precision(requested, accelerator=accel, bf16_supported=bf16) == expected


def test_written_json_round_trips(tmp_path: Path) -> None:
    import json

    ds = build_ds_config(cfg().deepspeed, accelerator=False)
    assert json.loads(write_ds_config(ds, tmp_path / "x" / "ds.json").read_text()) == ds
