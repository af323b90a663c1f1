"""Progress bars for transfers a person waits for (tqdm on stderr, silent when not a TTY in CI)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def byte_progress(total: int, desc: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield a thread-safe ``advance(nbytes)`` callback backed by a tqdm bar.

    Thread-safe because boto3 reports progress from its worker threads.
    """
    if not enabled:
        yield lambda n: None
        return
    from tqdm.auto import tqdm

    lock = threading.Lock()
    # disable=None: no bar when stderr is not a terminal (CI logs, pipes) — nothing to watch there.
    bar = tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        disable=None,
    )

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    try:
        yield advance
    finally:
        bar.close()
