"""Source bundle uploaded for the nodes: a commit's tracked files, nothing else, byte-reproducible."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from infra.bundle import build_bundle, bundle_files, repo_root
from infra.errors import InfraError


def _git(root: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
    }
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env=env
    ).stdout


def _commit_all(root: Path) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "snapshot")
    return _git(root, "rev-parse", "HEAD").strip()


def _fake_checkout(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'twostage'\n")
    (root / "README.md").write_text("# twostage\n")
    (root / "tasks.py").write_text("ns = None\n")
    for pkg in ("artifacts", "trainer", "infra"):
        (root / pkg).mkdir()
        (root / pkg / "__init__.py").write_text("")
    (root / "trainer" / "__pycache__").mkdir()
    (root / "trainer" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "big.so").write_bytes(b"\0" * 10)
    (root / "runs").mkdir()
    (root / "runs" / "ckpt.bin").write_bytes(b"\0")
    (root / "configs").mkdir()
    (root / "configs" / "pretrain-p4d.toml").write_text("[train]\n")
    (root / ".gitignore").write_text(".venv/\n__pycache__/\nruns/\n")
    _git(root, "init", "-q")
    _commit_all(root)
    return root


def test_bundle_holds_the_project_and_skips_caches_venvs_and_outputs(tmp_path):
    root = _fake_checkout(tmp_path)
    files = bundle_files(root)
    assert files == sorted(files)
    assert {"pyproject.toml", "README.md", "tasks.py", "trainer/__init__.py"} <= set(files)
    assert "configs/pretrain-p4d.toml" in files
    assert not [f for f in files if "__pycache__" in f or f.startswith((".venv", "runs"))]


def test_bundle_is_reproducible_and_unzips_to_the_sources(tmp_path):
    root = _fake_checkout(tmp_path / "src")
    first, digest1 = build_bundle(root, tmp_path / "a.zip")
    second, digest2 = build_bundle(root, tmp_path / "b.zip")
    assert digest1 == digest2
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        assert zf.read("tasks.py") == b"ns = None\n"
        info = json.loads(zf.read("BUNDLE.json"))
    assert info["commit"] == _git(root, "rev-parse", "HEAD").strip() and info["dirty"] is False
    (root / "tasks.py").write_text("ns = 1\n")
    _commit_all(root)
    assert build_bundle(root, tmp_path / "c.zip")[1] != digest1


def test_untracked_files_never_go_in(tmp_path):
    root = _fake_checkout(tmp_path / "src")
    (root / "trainer" / ".env").write_text("AWS_SECRET_ACCESS_KEY=x\n")
    (root / "infra" / "signing.key").write_text("PRIVATE\n")
    files = bundle_files(root)
    assert "trainer/.env" not in files and "infra/signing.key" not in files
    path, _ = build_bundle(root, tmp_path / "a.zip")
    with zipfile.ZipFile(path) as zf:
        assert not [n for n in zf.namelist() if n.endswith((".env", ".key"))]


def test_a_dirty_tree_is_refused_unless_allowed_and_then_recorded(tmp_path):
    root = _fake_checkout(tmp_path / "src")
    (root / "tasks.py").write_text("ns = 'edited'\n")
    with pytest.raises(InfraError, match="twostage:allowDirty: 1 uncommitted change.*tasks.py"):
        build_bundle(root, tmp_path / "a.zip")
    path, _ = build_bundle(root, tmp_path / "a.zip", allow_dirty=True)
    with zipfile.ZipFile(path) as zf:
        info = json.loads(zf.read("BUNDLE.json"))
        assert zf.read("tasks.py") == b"ns = 'edited'\n"
    assert info["dirty"] is True and info["changed"] == ["tasks.py"]


def test_a_folder_outside_git_is_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    with pytest.raises(InfraError, match="not a git checkout"):
        build_bundle(tmp_path)


def test_bundle_refuses_a_folder_that_is_not_the_project(tmp_path):
    with pytest.raises(FileNotFoundError, match="pyproject.toml"):
        build_bundle(tmp_path)


def test_this_checkout_bundles_its_packages():
    files = bundle_files(repo_root())
    assert "pyproject.toml" in files and "infra/__main__.py" in files


def test_the_real_bundle_has_every_installed_package_and_only_existing_files():
    import tomllib

    from infra.bundle import INCLUDE_FILES

    root = repo_root()
    files = set(bundle_files(root))
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for pattern in packages:  # e.g. "demo*": tasks.py imports demo's task module
        assert f"{pattern.rstrip('*')}/__init__.py" in files, pattern
    assert all((root / name).is_file() for name in INCLUDE_FILES)
