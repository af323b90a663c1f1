"""A fine-tuned tiny Llama shared by the tests that use an adapter (generate, evaluate, GGUF)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import pytest
import qlora_helpers as h


class Finetuned(NamedTuple):
    model: Path
    adapter: Path
    data: Path
    key_file: Path
    config: Path


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory) -> Finetuned:
    """Base + adapter trained 12 steps on the canary records (in this process, no air gap)."""
    from local.config import load_config
    from local.finetune import run_finetune

    tmp = tmp_path_factory.mktemp("finetuned")
    model = h.verified_model(tmp)
    cipher, key = h.encrypted_dataset(tmp)
    cfg = dataclasses.replace(load_config(h.TINY_CONFIG), audit_records=0, checkpoint_steps=0)
    result = run_finetune(model, cipher, key, tmp / "adapter", config=cfg)
    assert result.loss_after < result.loss_before
    return Finetuned(model, result.export_path, cipher, key, h.TINY_CONFIG)
