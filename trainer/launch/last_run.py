"""Which run a laptop-side task means: ``--run NAME`` (or an s3:// URI) under the stack's run
prefix, else the last run submitted from this directory (``.twostage/last-run``, JSON).

Why a file: ``invoke status``/``logs``/``stop`` right after ``invoke pretrain`` should need no
``--run``; with ``--run`` they work from any machine that has the stack outputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from trainer.launch import LaunchError
from trainer.launch.outputs import StackOutputs

__all__ = ["STATE_FILE", "LastRun", "load_last_run", "pick_run", "resolve_run_uri", "save_last_run"]

STATE_FILE = Path(".twostage/last-run")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_run_uri(outputs: StackOutputs, run: str | None, *, now: datetime | None = None) -> str:
    """``--run NAME`` → ``<run_prefix>/<NAME>``; an s3:// URI must lie under the run prefix."""
    prefix = outputs.run_prefix.rstrip("/")
    if run and "://" in run:
        uri = run.rstrip("/")
        if not uri.startswith(prefix + "/"):
            # Nodes may write only under runs/ (their IAM policy): elsewhere they could not commit.
            raise LaunchError(f"--run {run}: a cluster run lives under {prefix}/ (or give a NAME)")
        return uri
    if not run:
        run = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    if not _NAME.match(run):
        raise LaunchError(f"--run {run!r}: use letters, digits, '.', '_' or '-' (or an s3:// URI)")
    return f"{prefix}/{run}"


@dataclass
class LastRun:
    """What ``.twostage/last-run`` remembers about the last submitted run."""

    run_uri: str
    stack: str | None = None
    outputs_file: str | None = None
    submitted_at: str = ""
    request_id: str = ""


def save_last_run(state: LastRun, path: Path = STATE_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_last_run(path: Path = STATE_FILE) -> LastRun | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LastRun(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise LaunchError(f"{path} is not a twostage run state file ({err}): delete it") from None


def pick_run(outputs: StackOutputs, run: str | None, path: Path = STATE_FILE) -> str:
    """The run a lifecycle task acts on: ``--run``, else the last submitted one."""
    if run:
        return resolve_run_uri(outputs, run)
    last = load_last_run(path)
    if last is None:
        raise LaunchError(f"no --run given and no {path}: pass --run NAME")
    return last.run_uri
