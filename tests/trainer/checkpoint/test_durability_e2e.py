"""End to end on 2 CPU ranks (DeepSpeed launcher, ZeRO-3, tiny recipe), store = moto's S3 server.

One run, three launches, judged by what is committed in the store and by ``STATUS.json``:

1. ``kill -9`` of the launcher's process group once a checkpoint is committed;
2. relaunch → resumes at the last committed global step (not 0); a fake metadata server then
   announces a spot interruption → a checkpoint is committed, ``STATUS.json`` says interrupted,
   the launcher exits 75;
3. the latest checkpoint is corrupted in the store; relaunch → a warning, falls back to the
   previous committed one, resumes there and finishes (``final/`` committed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from fake_imds import FakeIMDS

from artifacts.run import Run, step_folder
from artifacts.store import open_store
from trainer.checkpoint.resume import committed_steps

pytestmark = pytest.mark.slow

TOTAL_STEPS = 44  # 4 epochs x 11 steps: an epoch is whole global batches of 32 (trainer.data.batching)
SAVE_STEPS = 4


def recipe(tmp_path: Path) -> Path:
    """The shipped tiny recipe with frequent saves and a 4-epoch limit (it finishes, fast)."""
    text = Path("configs/pretrain-tiny.toml").read_text()
    text = re.sub(r"(?m)^save_steps = .*$", f"save_steps = {SAVE_STEPS}", text)
    text = re.sub(r"(?m)^num_train_epochs = .*$", "num_train_epochs = 4", text)
    text = re.sub(r"(?m)^keep_last = .*$", "keep_last = 3", text)
    text += "\n[spot]\npoll_interval = 0.3\n"
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


class Launch:
    """One DeepSpeed-launcher run of ``python -m trainer``, in its own process group."""

    def __init__(self, config: Path, run: str, log: Path, env: dict[str, str]) -> None:
        from artifacts.ports import free_port
        from trainer.launch.single_node import launcher_command, launcher_env

        self.log = log
        self.out = open(log, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            launcher_command(config, run, 2, free_port()),
            env=launcher_env({**os.environ, **env}),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.out.close()

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait(30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(pred, launch: Launch, timeout: float, what: str) -> None:
    """Poll the store (no event crosses the process boundary) while the run is alive."""
    deadline = time.monotonic() + timeout
    while not pred():
        if not launch.running():
            pytest.fail(f"run ended before {what}:\n{launch.text()[-4000:]}")
        if time.monotonic() > deadline:
            launch.kill9()
            pytest.fail(f"timed out waiting for {what}:\n{launch.text()[-4000:]}")
        time.sleep(0.1)


def status(run: str) -> dict:
    return json.loads(open_store(run).get_bytes("STATUS.json"))


def resumed_step(log_text: str) -> int | None:
    m = re.search(r"resume: from \S+ \(global step (\d+)\)", log_text)
    return int(m.group(1)) if m else None


def test_kill9_spot_notice_and_corruption_on_s3(tmp_path, moto_server, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    run = f"s3://{bucket}/runs/e2e"
    config = recipe(tmp_path)
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "TWOSTAGE_SCRATCH": str(tmp_path / "scratch"),
        "TWOSTAGE_IMDS_ENDPOINT": "off",
    }

    # 1. hard kill once a checkpoint is committed
    first = Launch(config, run, tmp_path / "launch1.log", env)
    wait_until(lambda: len(committed_steps(Run(run))) >= 1, first, 300, "a committed checkpoint")
    first.kill9()
    before = committed_steps(Run(run))
    assert before and before[-1] < TOTAL_STEPS
    last = before[-1]
    # The killed run may have saved past its last commit (uploads lag saves under load). Plant
    # two such saves: the Trainer's rotation keeps the highest-numbered folders, so left in place
    # they would make it delete the resumed run's first save before that save is committed.
    (output,) = (tmp_path / "scratch").rglob("output")
    for stale in (TOTAL_STEPS + 2, TOTAL_STEPS + 4):
        (output / f"checkpoint-{stale}").mkdir(parents=True, exist_ok=True)

    # 2. relaunch resumes at the last committed step; a spot notice stops it with exit 75
    with FakeIMDS() as imds:
        second = Launch(
            config, run, tmp_path / "launch2.log", {**env, "TWOSTAGE_IMDS_ENDPOINT": imds.endpoint}
        )
        wait_until(
            lambda: committed_steps(Run(run))[-1] > last, second, 300, "a commit after the resume"
        )
        imds.announce()
        code = second.wait(180)
        assert imds.rejected == 0 and len(imds.requests) > 0  # it really polled, with a token
    log2 = second.text()
    assert resumed_step(log2) == last, log2[-4000:]
    assert re.search(rf"dropped .*checkpoint-{TOTAL_STEPS + 2}, checkpoint-{TOTAL_STEPS + 4} ", log2)
    st = status(run)
    assert st["state"] == "interrupted", st
    interrupted_at = st["global_step"]
    assert interrupted_at in committed_steps(Run(run)), (interrupted_at, committed_steps(Run(run)))
    assert code == 75, log2[-4000:]
    assert "notice -> checkpoint" in log2

    # 3. corrupt the newest checkpoint; the relaunch falls back to the previous one and finishes
    steps = committed_steps(Run(run))
    newest, previous = steps[-1], steps[-2]
    store = open_store(run).child(f"checkpoints/{step_folder(newest)}")
    victim = next(o.key for o in store.list() if "optim_states" in o.key)
    store.put_bytes(victim, os.urandom(next(o.size for o in store.list() if o.key == victim)))
    # A replacement node (fresh local disk): a survivor would reuse its own verified copy of the
    # step and rightly never read the corrupted object (tests/trainer/checkpoint/test_fetch.py).
    fresh = {**env, "TWOSTAGE_SCRATCH": str(tmp_path / "scratch-replacement")}
    third = Launch(config, run, tmp_path / "launch3.log", fresh)
    third.wait(400)
    log3 = third.text()
    assert re.search(rf"checkpoint \S*{step_folder(newest)} failed verification", log3), log3[
        -4000:
    ]
    assert resumed_step(log3) == previous
    st = status(run)
    assert st["state"] in ("finished", "converged"), st
    assert st["global_step"] == TOTAL_STEPS
    assert open_store(run).exists("final/MANIFEST.json")
