"""Interim checkpoints hold no gathered model, yet a resume from one is exact (2 CPU ranks, ZeRO-3).

Two runs of the same recipe (gradient accumulation 4, so a notice most likely lands between two
micro-batches of a step; either boundary must resume exactly), local-folder store:

* A: uninterrupted to the epoch limit (the reference);
* B: a fake metadata server announces a spot interruption once B has committed a checkpoint →
  exit 75; the relaunch resumes from the newest committed (shards-only) checkpoint and finishes.

Judged by: no committed checkpoint lists a consolidated weight file, every one lists each rank's
ZeRO shards; B's training and validation losses equal A's step for step; ``final/`` still has
the consolidated model; ``export-checkpoint`` of the last step gives A's final weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fake_imds import FakeIMDS
from test_durability_e2e import Launch, wait_until

from artifacts.manifest import MANIFEST_NAME, Manifest
from artifacts.run import ExitCode, Run, RunState
from trainer.checkpoint.resume import committed_steps
from trainer.loop.hf import is_consolidated_weight

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def recipe(tmp_path: Path) -> Path:
    text = (ROOT / "configs" / "pretrain-tiny.toml").read_text()
    for key, value in {
        "save_steps": 2,
        "num_train_epochs": 4,
        "gradient_accumulation_steps": 4,  # 3 of every 4 boundaries are between micro-batches
        "logging_steps": 1,
        "keep_last": 3,
    }.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    path = tmp_path / "recipe.toml"
    path.write_text(text + "\n[spot]\npoll_interval = 0.2\n")
    return path


def losses(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    doc = json.loads((run / Run.FINAL / "loss_history.json").read_text())
    return (
        [(e["step"], e["loss"]) for e in doc["train"]],
        [(e["step"], e["val_loss"]) for e in doc["val"]],
    )


def manifest(run: Path, step: int) -> Manifest:
    r = Run(str(run))
    return Manifest.from_json(r.store.child(r.checkpoint(step)).get_bytes(MANIFEST_NAME))


def test_interim_checkpoints_hold_no_model_and_resume_exactly(tmp_path):
    config = recipe(tmp_path)
    env = {"TWOSTAGE_SCRATCH": str(tmp_path / "scratch"), "TWOSTAGE_IMDS_ENDPOINT": "off"}
    run_a, run_b = tmp_path / "a", tmp_path / "b"

    a = Launch(config, str(run_a), tmp_path / "a.log", env)
    assert a.wait(400) == 0, a.text()[-4000:]

    with FakeIMDS() as imds:
        b1 = Launch(
            config,
            str(run_b),
            tmp_path / "b1.log",
            {**env, "TWOSTAGE_IMDS_ENDPOINT": imds.endpoint},
        )
        wait_until(lambda: len(committed_steps(Run(str(run_b)))) >= 1, b1, 300, "a first commit")
        imds.announce()
        assert b1.wait(180) == ExitCode.INTERRUPTED, b1.text()[-4000:]
    log_b1 = b1.text()
    assert "saving the last completed step" in log_b1, log_b1[-4000:]
    print([line for line in log_b1.splitlines() if "interrupted " in line][:1])  # which boundary
    status = Run(str(run_b)).read_status()
    assert status.state is RunState.INTERRUPTED
    interrupted_at = status.global_step
    assert interrupted_at in committed_steps(Run(str(run_b)))
    # STATUS: bytes per rank, save/upload times of the checkpoints, the interruption's numbers
    (record,) = status.extra["interruptions"]
    assert record["saved"] and record["notice_to_commit_s"] > 0 and record["deadline"]
    assert record["decision"]["upload"] is True
    recent = status.extra["checkpoints"]["recent"]
    assert recent and set(recent[-1]["bytes_per_rank"]) == {"rank-0", "rank-1", "shared"}
    assert recent[-1]["save_s"] > 0 and recent[-1]["upload_s"] > 0

    b2 = Launch(config, str(run_b), tmp_path / "b2.log", env)
    assert b2.wait(400) == 0, b2.text()[-4000:]
    assert f"(global step {interrupted_at})" in b2.text()  # resumed from the interrupted save

    summary = json.loads((run_b / Run.FINAL / "training_summary.json").read_text())
    assert [i["step"] for i in summary["interruptions"]] == [interrupted_at]  # carried over

    # Interim checkpoints: ZeRO shards of both ranks + trainer state, no consolidated model.
    for run in (run_a, run_b):
        for step in committed_steps(Run(str(run))):
            paths = [f.path for f in manifest(run, step).files]
            assert not [p for p in paths if is_consolidated_weight(p)], (step, paths)
            for rank in (0, 1):
                assert f"global_step{step}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in paths
            assert "config.json" in paths and "trainer_state.json" in paths
        assert (run / Run.FINAL / "model.safetensors").is_file()  # final/ keeps the whole model

    # Exact resume: the same losses, step for step, as the uninterrupted run.
    train_a, val_a = losses(run_a)
    train_b, val_b = losses(run_b)
    assert [s for s, _ in train_b] == [s for s, _ in train_a]
    assert [v for _, v in train_b] == pytest.approx([v for _, v in train_a], rel=1e-6, abs=1e-7)
    assert [s for s, _ in val_b] == [s for s, _ in val_a]
    assert [v for _, v in val_b] == pytest.approx([v for _, v in val_a], rel=1e-6)

    # On request, the shards of the last step consolidate into A's final weights.
    import torch
    from safetensors.torch import load_file

    from trainer.checkpoint.export import export_checkpoint

    step, out = export_checkpoint(str(run_a), tmp_path / "export")
    assert step == committed_steps(Run(str(run_a)))[-1]
    exported = load_file(str(out / "model.safetensors"))
    final = load_file(str(run_a / Run.FINAL / "model.safetensors"))
    for name, tensor in final.items():
        assert torch.equal(exported[name].to(tensor.dtype), tensor), name
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
