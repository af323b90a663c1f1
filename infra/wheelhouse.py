"""The nodes' hash-locked wheelhouse: what every machine of the cluster installs, byte for byte.

Nodes never ask a package index. ``infra/requirements-node.in`` lists the node's direct
dependencies (the project's ranges, minus torch, which the DLAMI provides with its CUDA build,
and minus the stage-2-only packages); ``invoke lock-node`` resolves it with uv for the DLAMI's
platform (linux x86_64, CPython >= 3.11) into ``infra/requirements-node.lock`` with every file's
SHA-256; ``invoke wheelhouse`` downloads exactly those files (hash-checked), builds the packages
that publish only an sdist into pure-Python wheels (:data:`BUILD_FROM_SDIST`), and writes
``requirements.txt`` naming each wheel with *its* SHA-256. ``pulumi up`` packs that folder into a
reproducible tar, uploads it beside the source bundle and pins the tar's SHA-256 in user data;
the node installs with ``pip install --no-index --require-hashes --no-deps``. So a replacement
node on day 3 gets the same bytes as its peers, and no release published after the lock runs as
root next to the corpus.

Why uv for the lock: it resolves for a platform other than the one it runs on
(``--python-platform``), which pip-tools cannot; pip itself downloads (``--platform``) and builds.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from artifacts.node import NODE_LOCK, NODE_REQUIREMENTS, normalise
from infra.errors import InfraError

LOCK_INPUT = NODE_REQUIREMENTS
LOCK_FILE = NODE_LOCK
#: The file in a built wheelhouse that names every wheel with its hash.
REQUIREMENTS = "requirements.txt"
WHEELHOUSE_KEY = "bootstrap/wheelhouse.tar"
#: The DLAMI's interpreter (PyTorch DLAMI on Ubuntu 24.04: CPython 3.12, x86_64): the wheels'.
NODE_PYTHON_VERSION = "3.12"
#: The lock is resolved for the project's floor (``requires-python >= 3.11``), so the same pinned
#: versions have wheels for the nodes' 3.12 and install on a 3.11 dev machine or CI too (where
#: the offline install is tested). numpy 2.5, for one, dropped 3.11.
LOCK_PYTHON_VERSION = "3.11"
NODE_PLATFORM = "x86_64-manylinux_2_28"
_PIP_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: Packages that publish only an sdist: downloaded by hash, built here into a wheel.
#: deepspeed builds as pure Python (``DS_BUILD_OPS`` unset: its ops compile JIT on the node).
BUILD_FROM_SDIST = ("deepspeed",)
#: uv override that drops torch and its CUDA dependencies from the lock: the DLAMI has them.
TORCH_FROM_THE_AMI = "torch ; sys_platform == 'never'\n"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_EPOCH = 315532800  # 1980-01-01, as in the source bundle


def lock_command(out: Path = LOCK_FILE, overrides: Path | None = None) -> list[str]:
    """The ``uv pip compile`` argv that refreshes the lock (``overrides`` drops torch)."""
    argv = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "compile",
        str(LOCK_INPUT),
        "--generate-hashes",
        "--python-platform",
        NODE_PLATFORM,
        "--python-version",
        LOCK_PYTHON_VERSION,
        "--no-header",
        "--quiet",
        "-o",
        str(out),
    ]
    if overrides is not None:
        argv += ["--override", str(overrides)]
    return argv


def refresh_lock(out: Path = LOCK_FILE) -> Path:
    """Resolve ``requirements-node.in`` into ``out`` with hashes (needs ``uv`` and the index)."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp) / "overrides.txt"
        overrides.write_text(TORCH_FROM_THE_AMI)
        _run(lock_command(out, overrides), "uv pip compile (is uv installed? pip install uv)")
    return out


def lock_blocks(text: str) -> dict[str, str]:
    """``{name: requirement block}`` of a ``--generate-hashes`` lock (name lower-cased)."""
    blocks: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current.append(line)
        if not line.rstrip().endswith("\\"):
            block = "\n".join(current) + "\n"
            match = _PIN.match(current[0].strip())
            if not match or "--hash=sha256:" not in block:
                raise InfraError(
                    f"{LOCK_FILE.name}: not a pinned, hashed requirement: {current[0]}"
                )
            blocks[normalise(match.group(1))] = block
            current = []
    return blocks


def build_wheelhouse(
    out: Path,
    lock: Path = LOCK_FILE,
    *,
    python: str = sys.executable,
    python_version: str = NODE_PYTHON_VERSION,
) -> Path:
    """Download every locked file (hash-checked), build sdist-only ones, write requirements.txt.

    ``out`` must be empty or absent. Wheels are fetched for the node's platform, not this one's.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InfraError(f"{out} is not empty; remove it or choose another --out")
    blocks = lock_blocks(_read(lock))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        binaries = Path(tmp) / "binaries.txt"
        binaries.write_text("".join(b for n, b in blocks.items() if n not in BUILD_FROM_SDIST))
        platforms = [arg for p in _PIP_PLATFORMS for arg in ("--platform", p)]
        _run(
            [python, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
             "--only-binary=:all:", *platforms, "--python-version", python_version,
             "--implementation", "cp", "-d", str(out), "-r", str(binaries)],
            "pip download of the locked wheels",
        )  # fmt: skip
        for name in BUILD_FROM_SDIST:
            if name not in blocks:
                continue
            one = Path(tmp) / f"{name}.txt"
            one.write_text(blocks[name])
            sdists = Path(tmp) / "sdist"
            _run(
                [python, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                 "--no-binary=:all:", "-d", str(sdists), "-r", str(one)],
                f"pip download of the {name} sdist",
            )  # fmt: skip
            (sdist,) = sdists.glob(f"{name}-*")
            _run(
                [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                 "-w", str(out), str(sdist)],
                f"building {name} into a wheel",
            )  # fmt: skip
    write_requirements(out)
    return out


def write_requirements(folder: Path) -> Path:
    """``folder/requirements.txt``: every wheel as ``name==version --hash=sha256:…``."""
    lines = []
    for wheel in sorted(Path(folder).glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{normalise(name)}=={version} --hash=sha256:{digest}\n")
    if not lines:
        raise InfraError(f"{folder}: no wheels")
    path = Path(folder) / REQUIREMENTS
    path.write_text("".join(lines))
    return path


def pack_wheelhouse(folder: Path) -> tuple[Path, str]:
    """A reproducible tar of the wheelhouse (``requirements.txt`` + wheels) and its SHA-256.

    Refuses a folder that was not built (no requirements.txt), or whose wheels no longer match
    the hashes in it, so ``pulumi up`` never pins something the node would refuse.
    """
    folder = Path(folder)
    req = folder / REQUIREMENTS
    if not req.is_file():
        raise InfraError(
            f"twostage:wheelhouse: {folder} has no {REQUIREMENTS}; build it once with "
            f"`invoke wheelhouse --out {folder}`"
        )
    listed = {}
    for line in req.read_text().splitlines():
        spec, _, digest = line.partition(" --hash=sha256:")
        listed[spec.strip()] = digest.strip()
    wheels = sorted(folder.glob("*.whl"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [req, *wheels]:
            data = path.read_bytes()
            if path.suffix == ".whl":
                name, version = path.name.split("-")[:2]
                if listed.get(f"{normalise(name)}=={version}") != hashlib.sha256(data).hexdigest():
                    raise InfraError(
                        f"twostage:wheelhouse: {path.name} does not match {REQUIREMENTS}; rebuild "
                        "with `invoke wheelhouse`"
                    )
            info = tarfile.TarInfo(path.name)
            info.size, info.mtime, info.mode = len(data), _EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    target = Path(tempfile.gettempdir()) / f"twostage-wheelhouse-{digest[:16]}.tar"
    target.write_bytes(body)
    return target, digest


def _read(path: Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise InfraError(f"cannot read the lock {path}: {err.strerror or err}") from None


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InfraError(f"{what} failed: {' | '.join(tail)}")
