"""Logging set-up shared by every entry point (one call per process)."""

from __future__ import annotations

import logging
import os
import sys


def init_logging(level: int | str | None = None, *, rank: int | None = None) -> None:
    """Configure the root logger once; ranks other than 0 log warnings only.

    Why: multi-rank training would otherwise print every line N times.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    if level is None:
        level = os.environ.get("TWOSTAGE_LOG_LEVEL", "INFO")
    if rank != 0:
        level = logging.WARNING
    root = logging.getLogger()
    if getattr(root, "_twostage_configured", False):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank{rank}] " if rank else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root.handlers[:] = [handler]
    root.setLevel(level)
    root._twostage_configured = True  # type: ignore[attr-defined]
    # boto's INFO lines ("Found credentials in environment variables") on every store call are noise.
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(
            max(logging.WARNING, logging.getLevelName(level) if isinstance(level, str) else level)
        )
