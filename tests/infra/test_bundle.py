"""Source bundle uploaded for the nodes: right files, nothing else, byte-reproducible."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from infra.bundle import build_bundle, bundle_files, repo_root


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
    (root / "tasks.py").write_text("ns = 1\n")
    assert build_bundle(root, tmp_path / "c.zip")[1] != digest1


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
