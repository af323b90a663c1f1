"""``invoke tensorboard --run URI``: fetch a run's event files, then TensorBoard on 127.0.0.1.

The event files rank 0 commits to ``<run>/logs/tensorboard/`` are fetched into a local cache
(``~/.cache/twostage/tensorboard/<run hash>/`` by default) incrementally: a file whose size
and tag did not change is not fetched again, so re-running during a days-long run moves only
what grew. TensorBoard itself is an extra (``pip install 'twostage[tensorboard]'``: a server with
grpcio and werkzeug the nodes do not need); without it the command to run is printed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

from artifacts.run import Run

log = logging.getLogger(__name__)

_STATE = ".fetched.json"


def cache_dir(run_uri: str) -> Path:
    digest = hashlib.sha256(run_uri.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "twostage" / "tensorboard" / digest


def fetch_events(run_uri: str, dest: Path) -> tuple[int, int]:
    """Fetch new or grown event files of ``run_uri`` into ``dest``: ``(fetched, total)``."""
    run = Run(run_uri)
    prefix = Run.TENSORBOARD + "/"
    listing = run.store.list(prefix)
    dest.mkdir(parents=True, exist_ok=True)
    state_path = dest / _STATE
    seen = json.loads(state_path.read_text()) if state_path.is_file() else {}
    fetched = 0
    for obj in listing:
        rel = obj.key[len(prefix) :]
        mark = f"{obj.size}:{obj.etag}"
        target = dest / rel
        if seen.get(rel) == mark and target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        run.store.download_file(obj.key, target)
        seen[rel] = mark
        fetched += 1
    state_path.write_text(json.dumps(seen, indent=1))
    return fetched, len(listing)


def command(logdir: Path, port: int) -> list[str]:
    """The TensorBoard command line (loopback only)."""
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None
