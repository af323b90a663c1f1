"""Elastic, reproducible stage 1 on CPU gloo ranks (DeepSpeed launcher, ZeRO-3, tiny recipe).

Judged as a user would: two fresh runs with one seed log bit-identical losses; a run resumed on
another number of ranks (2 → 1, 1 → 2, 2 → 1 → 2) continues where it stopped — its first logged
loss after each resume is within 1 % of an uninterrupted run at the same global batch and step,
at the same learning rate — and ``STATUS.json`` says "resumed at step S from a checkpoint of
world size A on world size B". A changed world size is loaded by the resharding load
(:mod:`trainer.checkpoint.reshard`): no universal form is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from artifacts.run import ExitCode, Run
from trainer.checkpoint.elastic import universal_uri
from trainer.launch.single_node import launch_local

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
SAVE = 10  # a checkpoint every 10 steps; each leg of a chain trains 10 steps


def recipe(tmp_path: Path, max_steps: int) -> Path:
    """The tiny recipe: per-device batch 16, no accumulation, loss logged every step."""
    text = (ROOT / "configs" / "pretrain-tiny.toml").read_text()
    text = re.sub(r"(?m)^save_steps = .*$", f"save_steps = {SAVE}", text)
    text = re.sub(r"(?m)^logging_steps = .*$", "logging_steps = 1", text)
    text = re.sub(r"(?m)^keep_last = .*$", "keep_last = 3", text)
    text = text.replace("[training]\n", f"[training]\nmax_steps = {max_steps}\n")
    path = tmp_path / f"recipe-{max_steps}.toml"
    path.write_text(text)
    return path


def losses(run: Path) -> dict[int, tuple[float, float]]:
    """step -> (training loss, learning rate) of the published run."""
    doc = json.loads((run / "final" / "loss_history.json").read_text())
    return {e["step"]: (e["loss"], e["learning_rate"]) for e in doc["train"]}


def chain(tmp_path: Path, name: str, worlds: list[int]) -> Path:
    """One run trained 10 steps per launch, on ``worlds[i]`` ranks for launch i."""
    run = tmp_path / name
    for i, nproc in enumerate(worlds):
        assert launch_local(recipe(tmp_path, SAVE * (i + 1)), str(run), nproc=nproc) == ExitCode.OK
        status = json.loads((run / "STATUS.json").read_text())
        assert status["global_step"] == SAVE * (i + 1)
        if i:
            note = (
                f"resumed at step {SAVE * i} from a checkpoint of world size {worlds[i - 1]} "
                f"on world size {nproc}"
            )
            assert status["resumed"]["note"] == note
    return run


def assert_continuous(resumed: Path, reference: Path, steps: list[int]) -> None:
    got, want = losses(resumed), losses(reference)
    for step in steps:
        loss, lr = got[step]
        ref_loss, ref_lr = want[step]
        assert abs(loss - ref_loss) <= 0.01 * ref_loss, (step, loss, ref_loss)
        assert lr == pytest.approx(ref_lr), (step, lr, ref_lr)


@pytest.fixture(autouse=True)
def _scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TWOSTAGE_SCRATCH", str(tmp_path / "scratch"))


def test_two_to_one_to_two_continues_and_one_seed_gives_identical_losses(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert launch_local(recipe(tmp_path, 3 * SAVE), str(reference), nproc=2) == ExitCode.OK
    run = chain(tmp_path, "elastic", [2, 1, 2])

    # Reproducible: the first launch (a fresh run, same seed, same data) logged the very same
    # losses as the reference, bit for bit.
    ref = losses(reference)
    first = {s: v for s, v in losses(run).items() if s <= SAVE}
    assert first == {s: ref[s] for s in range(1, SAVE + 1)}

    # Each resume continues the uninterrupted run at global batch 32 (2 x 16, then 1 x 16 x 2).
    assert_continuous(run, reference, [SAVE + 1, 2 * SAVE + 1])
    # Resharded, not converted: no universal form was written; the last resume (1 -> 2) read
    # old rank 0's file on every rank (each its half of it).
    assert not Path(universal_uri(Run(str(run)), SAVE)).exists()
    assert not Path(universal_uri(Run(str(run)), 2 * SAVE)).exists()
    fetched = json.loads((run / "STATUS.json").read_text())["resumed"]["fetch"]
    assert fetched["reshard"]["old_world"] == 1 and fetched["reshard"]["old_ranks"] == [0]
    manifest = json.loads((run / "checkpoints" / "step-0000000020" / "MANIFEST.json").read_text())
    assert manifest["metadata"]["world_size"] == 1
    assert manifest["metadata"]["gradient_accumulation_steps"] == 2
    assert manifest["metadata"]["global_batch"] == 32


def test_one_to_two_halves_the_per_device_batch_and_continues(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert launch_local(recipe(tmp_path, 2 * SAVE), str(reference), nproc=1) == ExitCode.OK
    run = chain(tmp_path, "elastic", [1, 2])
    assert_continuous(run, reference, [SAVE + 1])
    manifest = json.loads((run / "checkpoints" / "step-0000000020" / "MANIFEST.json").read_text())
    meta = manifest["metadata"]
    assert (meta["world_size"], meta["per_device_train_batch_size"], meta["global_batch"]) == (
        2,
        8,
        16,
    )
