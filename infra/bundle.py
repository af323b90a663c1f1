"""The source bundle: this checkout, zipped reproducibly, for nodes when no ``repoUrl`` is set.

``pulumi up`` uploads it to ``s3://<bucket>/bootstrap/twostage-src.zip`` and the node user data
unpacks it into ``/opt/twostage``. The zip is byte-identical for identical sources (fixed
timestamps, sorted entries), so an unchanged checkout never shows up as a diff.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from pathlib import Path

BUNDLE_KEY = "bootstrap/twostage-src.zip"
#: What a node needs to ``pip install -e`` and run ``invoke``: every package ``pyproject.toml``
#: installs (``demo`` included: ``tasks.py`` imports its task module), the configs and the project
#: metadata. The license is stated in ``pyproject.toml`` (there is no separate LICENSE file).
INCLUDE_DIRS = ("artifacts", "trainer", "local", "infra", "demo", "configs")
INCLUDE_FILES = ("pyproject.toml", "README.md")
_SKIP_PARTS = {"__pycache__", ".venv", ".git", ".pytest_cache", ".ruff_cache", "build", "dist"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def repo_root() -> Path:
    """The checkout this program runs from (``infra/`` lives directly under it)."""
    return Path(__file__).resolve().parent.parent


def bundle_files(root: Path) -> list[str]:
    """Relative POSIX paths that go into the bundle, sorted."""
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
    return sorted(found)


def build_bundle(root: Path, out: Path | None = None) -> tuple[Path, str]:
    """Write the zip (default: a temp file named by its hash); return ``(path, sha256)``."""
    files = bundle_files(root)
    if "pyproject.toml" not in files:
        raise FileNotFoundError(f"{root} has no pyproject.toml; is this the twostage checkout?")
    tmp = Path(tempfile.mkstemp(prefix="twostage-src-", suffix=".zip")[1])
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            info = zipfile.ZipInfo(rel, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, (root / rel).read_bytes())
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    target = out or tmp.with_name(f"twostage-src-{digest[:16]}.zip")
    tmp.replace(target)
    return target, digest
