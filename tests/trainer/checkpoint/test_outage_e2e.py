"""A 60 s store outage mid-run is weather: 2 CPU ranks train through it and converge.

The store is moto's S3 server behind a fault-injecting proxy on 127.0.0.1 (20 % of connections
answered 503, 5 % reset, as measured before). Right after the first checkpoint is committed the
proxy cuts every connection for 60 s — far longer than boto3's own retries last (10 attempts,
about 13 s), which used to end the run with exit 2. Now the checkpoint commit keeps retrying
while training goes on, the status is written in the background, and when the store is back
the run commits, converges and publishes; every committed folder verifies.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fault_proxy import FaultProxy

from artifacts.download import download_verified
from artifacts.manifest import MANIFEST_NAME, committed_folders
from artifacts.run import ExitCode, Run
from artifacts.store import open_store
from trainer.launch.single_node import launch_local

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
OUTAGE_SECONDS = 60.0
OLD_RETRY_BUDGET_SECONDS = 13.0


def recipe(tmp_path: Path) -> Path:
    text = (ROOT / "configs" / "pretrain-tiny.toml").read_text()
    text = re.sub(r"(?m)^save_steps = .*$", "save_steps = 20", text)
    text = re.sub(r"(?m)^keep_last = .*$", "keep_last = 3", text)
    text = text.replace("[run]\n", "[run]\nstore_outage_minutes = 3\n")
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_a_60s_store_outage_is_survived_and_the_run_converges(
    tmp_path: Path, moto_server, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    import boto3

    direct = moto_server  # the shared server (tests/conftest.py)
    parsed = urlsplit(direct)
    host, port = parsed.hostname, int(parsed.port)
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=direct).create_bucket(Bucket=bucket)
    run = Run(f"s3://{bucket}/runs/outage")
    proxy = FaultProxy((host, port), error_rate=0.2, reset_rate=0.05).start()

    # The trainer talks to the store through the proxy; the test looks at it directly.
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TWOSTAGE_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("TWOSTAGE_PROGRESS", "0")

    def committed() -> list[str]:
        monkeypatch.setenv("AWS_ENDPOINT_URL", direct)  # this thread's reads bypass the proxy
        return committed_folders(open_store(run.checkpoints_uri).list(), "")

    outage_done = threading.Event()

    def weather() -> None:
        s3 = boto3.client("s3", endpoint_url=direct)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # poll the real store for the first commit
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/outage/{Run.CHECKPOINTS}/")
            if any(o["Key"].endswith("/" + MANIFEST_NAME) for o in listing.get("Contents", [])):
                break
            time.sleep(0.2)
        proxy.outage()
        time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for an event
        proxy.restore()
        outage_done.set()

    storm = threading.Thread(target=weather, daemon=True)
    storm.start()
    try:
        code = launch_local(recipe(tmp_path), run.uri, nproc=2)
    finally:
        storm.join(timeout=OUTAGE_SECONDS + 30)
        proxy.stop()
    out = capfd.readouterr()
    log = out.out + out.err
    assert outage_done.is_set() and proxy.outage_seconds >= OUTAGE_SECONDS
    assert proxy.refused > 0
    assert code == ExitCode.OK, log[-3000:]

    monkeypatch.setenv("AWS_ENDPOINT_URL", direct)
    status = run.read_status()
    assert status is not None and status.state == "converged"

    # A commit failed during the outage and kept retrying past the old budget, then landed.
    backs = [
        float(m) for m in re.findall(r"checkpoint \d+: the store is back after ([\d.]+) s", log)
    ]
    assert backs and max(backs) > OLD_RETRY_BUDGET_SECONDS, log[-3000:]
    assert "retrying for up to 180 s" in log

    # Every committed folder verifies, byte for byte, and so does final/.
    folders = committed()
    assert folders
    for folder in folders:
        download_verified(
            open_store(run.checkpoints_uri).child_uri(folder), tmp_path / "check" / folder
        )
    download_verified(run.final_uri, tmp_path / "check" / "final")
