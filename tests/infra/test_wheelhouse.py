"""The nodes' hash-locked wheelhouse: the committed lock, packing, and an offline install."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from infra.errors import InfraError
from infra.wheelhouse import (
    BUILD_FROM_SDIST,
    LOCK_FILE,
    NODE_PLATFORM,
    REQUIREMENTS,
    build_wheelhouse,
    lock_blocks,
    lock_command,
    pack_wheelhouse,
    write_requirements,
)

ROOT = Path(__file__).resolve().parents[2]


def _wheel(folder: Path, name: str, version: str = "1.0", body: str = "") -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}/__init__.py", body)
    return path


def test_the_committed_lock_pins_every_package_by_hash_and_leaves_torch_to_the_ami():
    blocks = lock_blocks(LOCK_FILE.read_text())
    for name, block in blocks.items():
        assert "==" in block.splitlines()[0] and "--hash=sha256:" in block, name
    # The DLAMI provides torch (CUDA build) and its CUDA libraries: never in the node's lock.
    assert "torch" not in blocks and not [n for n in blocks if n.startswith(("nvidia", "triton"))]
    # What the nodes run, and the build backend for the offline editable install.
    for needed in ("transformers", "deepspeed", "accelerate", "boto3", "setuptools", "wheel"):
        assert needed in blocks, needed
    # Stage-2-only packages stay off the nodes.
    assert not {"peft", "bitsandbytes", "matplotlib"} & set(blocks)
    assert set(BUILD_FROM_SDIST) <= set(blocks)


def test_a_lock_entry_without_a_hash_is_refused():
    with pytest.raises(InfraError, match="not a pinned, hashed requirement: boto3>=1"):
        lock_blocks("boto3>=1\n")


def test_the_lock_is_resolved_for_the_nodes_platform_with_hashes():
    argv = lock_command(Path("/tmp/x.lock"))
    assert argv[argv.index("--python-platform") + 1] == NODE_PLATFORM
    assert "--generate-hashes" in argv


def test_requirements_name_each_wheel_with_its_own_hash(tmp_path):
    wheel = _wheel(tmp_path, "tiny", body="x = 1\n")
    text = write_requirements(tmp_path).read_text()
    assert text == f"tiny==1.0 --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"


def test_packing_is_reproducible_and_holds_the_wheels_and_their_hashes(tmp_path):
    _wheel(tmp_path, "tiny")
    _wheel(tmp_path, "other", "2.0")
    write_requirements(tmp_path)
    first, digest = pack_wheelhouse(tmp_path)
    body = first.read_bytes()
    assert hashlib.sha256(body).hexdigest() == digest
    assert pack_wheelhouse(tmp_path)[1] == digest
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.getnames() == [
            REQUIREMENTS,
            "other-2.0-py3-none-any.whl",
            "tiny-1.0-py3-none-any.whl",
        ]


def test_a_wheel_that_no_longer_matches_its_hash_is_refused(tmp_path):
    _wheel(tmp_path, "tiny")
    write_requirements(tmp_path)
    _wheel(tmp_path, "tiny", body="swapped = True\n")
    with pytest.raises(InfraError, match="tiny-1.0-py3-none-any.whl does not match"):
        pack_wheelhouse(tmp_path)


def test_an_unbuilt_wheelhouse_names_the_task(tmp_path):
    with pytest.raises(InfraError, match="invoke wheelhouse"):
        pack_wheelhouse(tmp_path)


def test_building_into_a_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(InfraError, match="not empty"):
        build_wheelhouse(tmp_path)


@pytest.mark.slow
def test_a_wheelhouse_built_from_the_lock_installs_offline_and_the_project_imports(tmp_path):
    """The node's install, here: wheels from the lock (this Python's builds of the same
    versions, hash-checked against the lock), then a fresh venv with ``--no-index`` only."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = build_wheelhouse(tmp_path / "wheelhouse", python_version=here)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    offline = [py, "-m", "pip", "install", "--quiet", "--no-input", "--no-index"]
    subprocess.run(
        [*offline, "--find-links", str(wheels), "--require-hashes", "--no-deps",
         "-r", str(wheels / REQUIREMENTS)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [*offline, "--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True, cwd=tmp_path
    )
    probe = (
        "import artifacts.run, trainer.launch.node_agent, trainer.launch.controller, "
        "transformers, tokenizers, safetensors, boto3, cryptography, zstandard, invoke, tensorboardX, "
        "datasketch; "
        "import importlib.metadata as m; print(m.version('twostage'), m.version('transformers'))"
    )
    out = subprocess.run(
        [py, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    locked = lock_blocks(LOCK_FILE.read_text())["transformers"].split()[0].split("==")[1]
    assert out.stdout.split() == ["0.1.0", locked]
