"""Infra tasks: the nodes' lock file and their hash-locked wheelhouse (run once, before `pulumi up`)."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from artifacts.cli_support import user_errors

DEFAULT_WHEELHOUSE = "build/wheelhouse"


@task
@user_errors
def lock_node(c):
    """Re-resolve infra/requirements-node.in into the hash-locked infra/requirements-node.lock.

    Resolved with uv for the DLAMI's platform (linux x86_64; CPython >= 3.11, so the pinned
    versions have wheels for the DLAMI's 3.12), torch left out (the DLAMI's CUDA build is used).
    Commit the lock; then rebuild the wheelhouse.
    """
    from infra.wheelhouse import refresh_lock

    print(f"locked: {refresh_lock()}")


@task(
    help={
        "out": f"Empty folder for the wheels and their requirements.txt (default {DEFAULT_WHEELHOUSE})",
        "python_version": "Target CPython X.Y of the wheels (default: the DLAMI's, 3.12)",
    }
)
@user_errors
def wheelhouse(c, out=DEFAULT_WHEELHOUSE, python_version=None):
    """Build the nodes' wheelhouse from infra/requirements-node.lock (every file hash-checked).

    `pulumi up` packs it, uploads it to s3://<bucket>/bootstrap/wheelhouse.tar and pins its
    SHA-256 in the machines' user data; they install it with --no-index --require-hashes.

    :param out: empty folder for the wheels and requirements.txt (the stack key twostage:wheelhouse
        points at it when it is not build/wheelhouse).
    :param python_version: CPython X.Y the wheels are for (the DLAMI's 3.12 unless testing).
    """
    from infra.wheelhouse import NODE_PYTHON_VERSION, build_wheelhouse

    folder = build_wheelhouse(Path(out), python_version=python_version or NODE_PYTHON_VERSION)
    wheels = sorted(folder.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"wheelhouse: {folder} ({len(wheels)} wheels, {size / 1e6:.0f} MB)")


TASKS = [lock_node, wheelhouse]
