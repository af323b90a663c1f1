"""The source bundle: this checkout's commit, zipped reproducibly, for nodes without ``repoUrl``.

``pulumi up`` uploads it to ``s3://<bucket>/bootstrap/twostage-src.zip`` and the node user data
unpacks it into ``/opt/twostage``. Only files git tracks go in (a stray ``.env``, a key or data
in the folder never does), and a tree with uncommitted changes to them is refused unless the
stack says ``allowDirty`` — recorded in the bundle's ``BUNDLE.json`` (commit, dirty) so what a
node runs is always a reviewed commit or visibly not. The zip is byte-identical for identical
sources (fixed timestamps, sorted entries), so an unchanged checkout never shows up as a diff.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import zipfile
from pathlib import Path

from infra.errors import InfraError

BUNDLE_KEY = "bootstrap/twostage-src.zip"
#: What a node needs to ``pip install -e`` and run ``invoke``: every package ``pyproject.toml``
#: installs (``demo`` included: ``tasks.py`` imports its task module), the configs and the project
#: metadata. The license is stated in ``pyproject.toml`` (there is no separate LICENSE file).
INCLUDE_DIRS = ("artifacts", "trainer", "local", "infra", "demo", "configs")
INCLUDE_FILES = ("pyproject.toml", "README.md")
#: Written into the bundle: the commit it was built from and whether the tree was dirty.
INFO_NAME = "BUNDLE.json"
_SKIP_PARTS = {"__pycache__", ".venv", ".git", ".pytest_cache", ".ruff_cache", "build", "dist"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def repo_root() -> Path:
    """The checkout this program runs from (``infra/`` lives directly under it)."""
    return Path(__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise InfraError(
            f"{root}: not a git checkout ({getattr(err, 'stderr', '') or err}); the bundle is a "
            "commit, so clone the project with git"
        ) from None
    return proc.stdout


def source_state(root: Path) -> tuple[str, list[str]]:
    """``(HEAD commit, tracked files with uncommitted changes)`` of the checkout at ``root``."""
    commit = _git(root, "rev-parse", "HEAD").strip()
    changed = [
        line[3:]
        for line in _git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    return commit, sorted(changed)


def bundle_files(root: Path) -> list[str]:
    """Relative POSIX paths that go into the bundle (tracked by git only), sorted."""
    tracked = set(_git(root, "ls-files", "-z").split("\0")) - {""}
    found: set[str] = set()
    for name in INCLUDE_FILES:
        if (root / name).is_file():
            found.add(name)
    for top in root.glob("*.py"):  # tasks.py and other front-door modules
        found.add(top.name)
    for name in INCLUDE_DIRS:
        base = root / name
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            rel = path.relative_to(root)
            if not path.is_file() or _SKIP_PARTS.intersection(rel.parts):
                continue
            if path.name.endswith(_SKIP_SUFFIXES) or any(
                part.endswith(".egg-info") for part in rel.parts
            ):
                continue
            found.add(rel.as_posix())
    return sorted(found & tracked)


def build_bundle(
    root: Path, out: Path | None = None, *, allow_dirty: bool = False
) -> tuple[Path, str]:
    """Write the zip (default: a temp file named by its hash); return ``(path, sha256)``.

    Refuses uncommitted changes to tracked files unless ``allow_dirty`` (then recorded).
    """
    if not (Path(root) / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{root} has no pyproject.toml; is this the twostage checkout?")
    commit, changed = source_state(root)
    if changed and not allow_dirty:
        shown = ", ".join(changed[:3]) + (" …" if len(changed) > 3 else "")
        raise InfraError(
            f"twostage:allowDirty: {len(changed)} uncommitted change(s) ({shown}); nodes run a "
            "commit: commit them, or `pulumi config set twostage:allowDirty true` (recorded in "
            f"the bundle's {INFO_NAME})"
        )
    files = bundle_files(root)
    record = json.dumps({"commit": commit, "dirty": bool(changed), "changed": changed}, indent=1)
    tmp = Path(tempfile.mkstemp(prefix="twostage-src-", suffix=".zip")[1])
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            info = zipfile.ZipInfo(rel, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, (root / rel).read_bytes())
        meta = zipfile.ZipInfo(INFO_NAME, date_time=_EPOCH)
        meta.external_attr = 0o644 << 16
        zf.writestr(meta, record + "\n")
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    target = out or tmp.with_name(f"twostage-src-{digest[:16]}.zip")
    tmp.replace(target)
    return target, digest
