"""Stage-1 metrics: event files committed in the background, the sample line, MFU, fetching."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from artifacts.run import Run
from trainer.launch import tensorboard as tb
from trainer.launch.lifecycle import sample_line


def read_events(path: Path) -> list:
    """The ``Event`` protos of one TFRecord event file (length, crc, data, crc per record)."""
    from tensorboardX.proto.event_pb2 import Event

    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4
    return out


def tags(folder: Path) -> set[str]:
    found = set()
    for f in folder.rglob("events.out.tfevents.*"):
        for e in read_events(f):
            found |= {v.tag for v in e.summary.value}
    return found


def test_event_files_are_committed_in_the_background_and_at_close(tmp_path):
    from tensorboardX import SummaryWriter

    from trainer.loop.metrics import EventSync

    run = Run(str(tmp_path / "run"))
    local = tmp_path / "tb"
    writer = SummaryWriter(logdir=str(local), flush_secs=1)
    sync = EventSync(local, run.store, interval=0.2)
    writer.add_scalar("train/loss", 2.5, 1)
    writer.flush()
    assert sync.sync() == 1 and sync.sync() == 0  # nothing grew: nothing uploaded again
    writer.add_scalar("train/loss", 2.0, 2)
    writer.close()
    sync.close()
    committed = tmp_path / "run" / Run.TENSORBOARD
    assert tags(committed) == {"train/loss"}
    [f] = list(committed.rglob("events.out.tfevents.*"))
    assert [v.simple_value for e in read_events(f) for v in e.summary.value] == [2.5, 2.0]


def test_fetch_is_incremental(tmp_path):
    store = Run(str(tmp_path / "run")).store
    store.put_bytes(f"{Run.TENSORBOARD}/a/events.out.tfevents.1", b"x" * 10)
    dest = tmp_path / "cache"
    assert tb.fetch_events(str(tmp_path / "run"), dest) == (1, 1)
    assert tb.fetch_events(str(tmp_path / "run"), dest) == (0, 1)
    store.put_bytes(f"{Run.TENSORBOARD}/a/events.out.tfevents.1", b"x" * 20)
    assert tb.fetch_events(str(tmp_path / "run"), dest) == (1, 1)
    assert (dest / "a" / "events.out.tfevents.1").stat().st_size == 20
    assert tb.command(dest, 6006)[-4:] == ["--host", "127.0.0.1", "--port", "6006"]


def test_mfu_and_peaks():
    from trainer.loop.metrics import mfu, peak_flops

    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12 and peak_flops("cpu") is None
    # 1B params at 10k tokens/s on one A100: 6e13 / 3.12e14
    assert mfu(10**9, 1e4, 1, 312e12) == pytest.approx(0.1923, rel=1e-3)
    assert mfu(10**9, 1e4, 1, None) is None


def test_status_shows_the_newest_sample_on_one_line():
    line = sample_line({"step": 40, "prompt": "The red fox", "text": "jumps\nover " + "x" * 300})
    assert line.startswith("sample at step 40: 'The red fox' -> 'jumps over x")
    assert "\n" not in line and len(line) < 220


def test_tensorboard_task_without_event_files_is_one_line(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(root), "tensorboard",
         "--run", str(tmp_path / "run"), "--logdir", str(tmp_path / "tb")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no event files under logs/tensorboard/" in done.stderr and "Traceback" not in done.stderr


def test_tensorboard_task_fetches_and_prints_the_loopback_command(tmp_path):
    import subprocess
    import sys

    Run(str(tmp_path / "run")).store.put_bytes(f"{Run.TENSORBOARD}/events.out.tfevents.1", b"x")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(root), "tensorboard",
         "--run", str(tmp_path / "run"), "--logdir", str(tmp_path / "tb"), "--fetch-only"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"fetched 1 of 1 event file(s) into {tmp_path / 'tb'}" in done.stdout
    assert "--host 127.0.0.1 --port 6006" in done.stdout
    assert (tmp_path / "tb" / "events.out.tfevents.1").read_bytes() == b"x"
