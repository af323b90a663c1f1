"""Boot install step: the hash-locked wheelhouse (no index) vs resolving from the index, same machine.

Both into a fresh venv on top of a "DLAMI layer" (this venv's torch and its dependencies, linked
in through a .pth file, as the DLAMI's venv sees its torch with --system-site-packages), so
neither downloads torch:

- before (issue #22): ``pip install -e REPO`` resolving the project's ranges against the index,
  cold (``--no-cache-dir``), as every node did at every boot;
- after: ``pip install --no-index --find-links WH --require-hashes --no-deps -r requirements.txt``
  and ``pip install --no-index --no-deps --no-build-isolation -e REPO``, from a wheelhouse built
  from ``infra/requirements-node.lock`` for this machine's Python (the nodes' is built for 3.12).

    PYTHONPATH=. python benchmarks/bench_wheelhouse_install.py [--out benchmarks/out/wheelhouse]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What the DLAMI brings with its torch (torch's own requirements).
DLAMI_LAYER = ("torch", "filelock", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2",
               "MarkupSafe", "fsspec")  # fmt: skip


def dlami_layer(folder: Path) -> Path:
    """A folder of links to torch and its dependencies (package dirs and dist-info)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DLAMI_LAYER:
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            target = folder / top
            if not target.exists() and (base / top).exists():
                target.symlink_to(base / top)
    return folder


def fresh_venv(path: Path, layer: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    (Path(next(path.glob("lib/python*/site-packages"))) / "dlami.pth").write_text(f"{layer}\n")
    return str(path / "bin" / "python")


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    from infra.wheelhouse import REQUIREMENTS, build_wheelhouse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "wheelhouse")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    layer = dlami_layer(args.out / "dlami-layer")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"

    t0 = time.perf_counter()
    wheels = build_wheelhouse(args.out / "wheelhouse", python_version=here)
    build_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))

    py = fresh_venv(args.out / "venv-wheelhouse", layer)
    offline = [py, "-m", "pip", "install", "--quiet", "--no-input", "--no-index"]
    after = timed(
        [*offline, "--find-links", str(wheels), "--require-hashes", "--no-deps",
         "-r", str(wheels / REQUIREMENTS)], args.out,
    )  # fmt: skip
    after += timed([*offline, "--no-deps", "--no-build-isolation", "-e", str(ROOT)], args.out)

    py = fresh_venv(args.out / "venv-index", layer)
    before = timed(
        [py, "-m", "pip", "install", "--quiet", "--no-input", "--no-cache-dir", "-e", str(ROOT)],
        args.out,
    )
    result = {
        "python": here,
        "wheelhouse_wheels": len(list(wheels.glob("*.whl"))),
        "wheelhouse_mb": round(size / 1e6, 1),
        "wheelhouse_build_s": round(build_s, 1),
        "install_index_s": round(before, 1),
        "install_wheelhouse_s": round(after, 1),
        "ratio": round(before / after, 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
