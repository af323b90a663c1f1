"""End to end on CPU: 2 ranks, ZeRO-3, the shipped tiny recipe, through ``launch_local``.

One run (about a minute on 2 idle cores) is judged the way a user would: it stops by the
convergence criterion (not the epoch limit), ``final/`` verifies and loads with stock
``AutoModelForCausalLM.from_pretrained``, checkpoints are committed, and ZeRO-3 really split the
parameters and optimizer state between the two ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifacts.run import ExitCode, Run, step_folder
from trainer.launch.single_node import launcher_command, launcher_env

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "configs" / "pretrain-tiny.toml"


# -- launcher decisions (fast; the verdict itself is tested in tests/artifacts/test_run.py) ----


def test_launcher_command_uses_the_deepspeed_launcher_with_the_given_port() -> None:
    cmd = launcher_command(TINY, "runs/x", 2, 31234)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert (
        cmd[cmd.index("--num_gpus") + 1] == "2" and cmd[cmd.index("--master_port") + 1] == "31234"
    )
    assert cmd[cmd.index("--module") + 1] == "trainer" and cmd[-2:] == ["--run", "runs/x"]


def test_launcher_env_pins_one_thread_per_rank_unless_set() -> None:
    assert launcher_env({})["OMP_NUM_THREADS"] == "1"
    assert launcher_env({"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"


@pytest.mark.parametrize(
    ("env", "world", "rank", "expected"),
    [
        (
            {"CROSS_RANK": "1", "CROSS_SIZE": "2", "LOCAL_SIZE": "8"},
            16,
            9,
            (1, 2),
        ),  # deepspeed launcher
        ({"GROUP_RANK": "3", "LOCAL_WORLD_SIZE": "8"}, 32, 25, (3, 4)),  # torchrun, 4 nodes
        ({"LOCAL_SIZE": "8"}, 16, 12, (1, 2)),  # only the per-node size: node-major ranks
        ({}, 2, 1, (0, 1)),  # one node, no hints
    ],
)
def test_node_layout_from_the_launcher_environment(
    env: dict, world: int, rank: int, expected: tuple
) -> None:
    # Wrong here = every node believes it is the head and commits checkpoints missing shards.
    from trainer.env import node_layout

    assert node_layout(env, world=world, rank=rank) == expected


# -- the real run (slow) ----------------------------------------------------------------------


def rank_partition_sizes(ckpt: Path) -> list[int]:
    """fp32 master-weight elements each rank holds, from its ZeRO optimizer-state file."""
    import torch

    sizes = []
    for f in sorted(ckpt.glob("global_step*/*zero_pp_rank_*_optim_states.pt")):
        state = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        assert state["zero_stage"] == 3
        sizes.append(sum(t.numel() for t in state["fp32_flat_groups"]))
    return sizes


@pytest.mark.slow
def test_tiny_recipe_converges_publishes_and_partitions(tmp_path: Path, monkeypatch) -> None:
    import tomllib

    from artifacts.verify import verify_dir
    from trainer.checkpoint.resume import committed_steps
    from trainer.launch.single_node import launch_local

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TWOSTAGE_SCRATCH", str(tmp_path / "scratch"))
    run = str(tmp_path / "run")
    assert launch_local(TINY, run, nproc=2) == ExitCode.OK

    # Converged by the criterion, well before the epoch limit.
    status = json.loads((tmp_path / "run" / "STATUS.json").read_text())
    limit = tomllib.loads(TINY.read_text())["training"]["num_train_epochs"]
    assert status["state"] == "converged" and status["converged"] is True
    assert status["epoch"] < limit
    history = [h["val_loss"] for h in status["val_loss_history"]]
    assert history[-1] < 0.6 * history[0]  # it learned the grammar
    assert [h["stalled"] for h in status["val_loss_history"][-5:]] == [True] * 5
    assert status["node_count"] == 1 and status["started_at"] <= status["updated_at"]
    # A sample generation from the recipe's [eval] sample_prompts, at the last evaluation.
    sample = status["latest_sample"]
    assert sample["prompt"] == "The red fox" and sample["text"].strip()
    assert sample["step"] == status["val_loss_history"][-1]["step"]

    # TensorBoard event files, committed by rank 0 under <run>/logs/tensorboard/.
    from test_metrics import tags

    seen = tags(tmp_path / "run" / Run.TENSORBOARD)
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss"} <= seen
    assert {"perf/tokens_per_s", "run/world_size", "eval/sample_s"} <= seen
    assert any(t.startswith("samples") for t in seen)  # the text summary

    # final/: verified, loads with stock transformers, carries the loss history.
    final = tmp_path / "run" / "final"
    verify_dir(final)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(final), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(final), local_files_only=True)
    ids = tok("The red fox", return_tensors="pt").input_ids
    text = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0])
    assert text.startswith("The red fox") and len(text) > len("The red fox") + 10
    assert (final / "model.safetensors").exists() and not (final / "training_args.bin").exists()
    summary = json.loads((final / "training_summary.json").read_text())
    assert summary["converged"] and summary["global_step"] == status["global_step"]
    assert summary["loss_history"]["train"] and summary["loss_history"]["val"]

    # Checkpoints committed; the last one is the converged state, with the criterion inside.
    steps = committed_steps(Run(run))
    assert steps and steps[-1] == status["global_step"]

    last = tmp_path / "run" / "checkpoints" / step_folder(steps[-1])
    conv = json.loads((last / "convergence.json").read_text())
    assert conv["criterion"]["converged"] is True and conv["criterion"]["stalls"] == 5

    # ZeRO-3 really partitioned: two ranks each hold half of every parameter's fp32 master copy.
    n_params = sum(p.numel() for p in model.parameters())
    sizes = rank_partition_sizes(last)
    assert len(sizes) == 2
    assert sum(sizes) >= n_params and max(sizes) <= n_params // 2 + 64

    # Converged but the publish was lost (say, the node died right after the commit): the
    # relaunch resumes the converged state and publishes without training any further.
    import shutil

    shutil.rmtree(final)
    (tmp_path / "run" / "STATUS.json").unlink()
    assert launch_local(TINY, run, nproc=2) == ExitCode.OK
    again = json.loads((tmp_path / "run" / "STATUS.json").read_text())
    assert again["state"] == "converged" and again["global_step"] == status["global_step"]
    assert committed_steps(Run(run)) == steps  # no new checkpoint: nothing was trained
    verify_dir(final)
