"""The fine-tune recipe: brief defaults, checked-in TOMLs, and errors that name the key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from local.config import FinetuneConfig, load_config
from local.errors import LocalError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_design_brief_and_match_the_checked_in_recipe():
    cfg = load_config(CONFIGS / "finetune-qlora.toml")
    assert cfg == FinetuneConfig()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_bias) == (8, 32, 0.05, "none")
    assert cfg.target_modules == ("q_proj", "v_proj")
    assert (cfg.quant_type, cfg.double_quant) == ("nf4", True)
    assert (cfg.batch_size, cfg.grad_accum, cfg.learning_rate, cfg.max_steps) == (4, 2, 2e-5, 1000)
    assert (cfg.optim, cfg.report_to) == ("adamw_torch_fused", "none")


def test_tiny_recipe_is_a_short_cpu_run():
    cfg = load_config(CONFIGS / "finetune-tiny.toml")
    assert cfg.device == "cpu" and cfg.max_steps <= 20 and cfg.max_seq_len <= 64
    assert cfg.quant_type == "nf4" and cfg.double_quant


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "ft.toml"
    path.write_text("lora_r = 8\nlora_rank = 16\n")
    with pytest.raises(LocalError) as info:
        load_config(path)
    assert "lora_rank" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("lora_dropout = 1.5", "lora_dropout"),
        ("quant_type = 'int8'", "quant_type"),
        ("report_to = 'wandb'", "report_to"),
        ("batch_size = 0", "batch_size"),
        ("batch_size = '4'", "batch_size"),
        ("double_quant = 1", "double_quant"),
        ("target_modules = 'q_proj'", "target_modules"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path, line, key):
    path = tmp_path / "ft.toml"
    path.write_text(line + "\n")
    with pytest.raises(LocalError) as info:
        load_config(path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_cli_override_applies_and_is_validated():
    assert load_config(None, max_steps=7).max_steps == 7
    assert load_config(None, max_steps=None).max_steps == 1000
    with pytest.raises(LocalError, match="max_steps"):
        load_config(None, max_steps=0)


def test_missing_or_broken_file_is_one_clear_error(tmp_path):
    with pytest.raises(LocalError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lora_r = = 3\n")
    with pytest.raises(LocalError, match="not valid TOML"):
        load_config(bad)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        FinetuneConfig().lora_r = 4  # type: ignore[misc]
