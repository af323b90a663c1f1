"""Resumable fine-tunes: encrypted checkpoints, `--resume` continues exactly, cleaned on export."""

from __future__ import annotations

import dataclasses

import pytest
import qlora_helpers as h

from artifacts.verify import verify_dir
from local import finetune, held
from local.checkpoint import Checkpointer
from local.config import load_config
from local.crypto import MAGIC
from local.errors import LocalError


class Interrupted(BaseException):
    """Stands in for a kill right after a checkpoint was committed."""


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly_and_cleans_up(tmp_path, monkeypatch):
    model = h.verified_model(tmp_path)
    cipher, key = h.encrypted_dataset(tmp_path, name="data.enc")
    cfg = dataclasses.replace(
        load_config(h.TINY_CONFIG), max_steps=8, checkpoint_steps=4, eval_steps=4, audit_records=2
    )
    reference = finetune.run_finetune(model, cipher, key, tmp_path / "ref", config=cfg)
    ref_meta = verify_dir(reference.export_path).metadata

    out = tmp_path / "out"
    real_save = Checkpointer.save

    def save_then_die(self, step, state):
        path = real_save(self, step, state)
        raise Interrupted(path)

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Interrupted) as info:
        finetune.run_finetune(model, cipher, key, out, config=cfg)
    monkeypatch.setattr(Checkpointer, "save", real_save)
    ckpt = info.value.args[0]
    assert ckpt.parent == held.work_area(out) and ckpt.name == "step-00000004.ckpt.enc"
    blob = ckpt.read_bytes()
    assert blob.startswith(MAGIC) and h.CANARY.encode() not in blob and b"lora_A" not in blob
    assert not out.exists()

    with pytest.raises(LocalError, match="pass --resume to continue it"):
        finetune.run_finetune(model, cipher, key, out, config=cfg)
    other = dataclasses.replace(cfg, learning_rate=1e-3)
    with pytest.raises(LocalError, match="another config, dataset or base model"):
        finetune.run_finetune(model, cipher, key, out, config=other, resume=True)

    resumed = finetune.run_finetune(model, cipher, key, out, config=cfg, resume=True)
    assert resumed.resumed_from == 4 and resumed.steps == 8
    meta = verify_dir(out).metadata
    assert meta["train_loss_history"] == ref_meta["train_loss_history"]
    assert meta["eval_loss_history"] == ref_meta["eval_loss_history"]
    assert meta["eval_loss_after"] == ref_meta["eval_loss_after"]
    assert (out / "adapter_model.safetensors").read_bytes() == (
        reference.export_path / "adapter_model.safetensors"
    ).read_bytes()
    assert not held.work_area(out).exists()  # checkpoints deleted after the export


def test_resume_without_a_checkpoint_says_so(tmp_path):
    ck = Checkpointer(tmp_path / "out", bytes(32), "f")
    with pytest.raises(LocalError, match="no checkpoint in .*run without --resume"):
        ck.load_latest("cpu")
