"""End of a run: ``STATUS.json`` in the run prefix and the published ``final/`` model.

``STATUS.json`` (written by global rank 0 at start, after every evaluation and at the end) is what
launchers and people read: ``{"state": "running"|"interrupted"|"converged"|"finished"|"failed",
"global_step", "epoch", "best_val_loss", "converged", "val_loss_history", "started_at",
"updated_at", "node_count"}``. ``final/`` is a normal HF folder (safetensors, config, tokenizer)
plus ``training_summary.json`` and ``loss_history.json``, committed with a manifest (signed when
the recipe names a key).
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATUS_NAME = "STATUS.json"
FINAL_PREFIX = "final"
STATES = ("running", "interrupted", "converged", "finished", "failed")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def read_status(run_uri: str) -> dict[str, Any] | None:
    """The run's ``STATUS.json``, or None when there is none (or it is unreadable)."""
    from artifacts.errors import ArtifactError
    from artifacts.store import open_store

    try:
        return json.loads(open_store(run_uri).get_bytes(STATUS_NAME))
    except (ArtifactError, ValueError):
        return None


class StatusWriter:
    """Writes ``STATUS.json``; a no-op on every rank but global rank 0."""

    def __init__(self, run_uri: str, *, enabled: bool, node_count: int) -> None:
        self.run_uri = run_uri
        self.enabled = enabled
        self.node_count = node_count
        self.started_at = _now()
        if enabled:
            previous = read_status(run_uri)
            # A resumed run keeps the time the run first started.
            if (
                previous
                and previous.get("started_at")
                and previous.get("state") in ("running", "interrupted", "failed")
            ):
                self.started_at = previous["started_at"]

    def write(
        self,
        state: str,
        *,
        global_step: int = 0,
        epoch: float | None = None,
        best_val_loss: float | None = None,
        converged: bool = False,
        val_loss_history: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Replace ``STATUS.json`` with the given fields (plus times and node count)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        doc = {
            "state": state,
            "global_step": int(global_step),
            "epoch": None if epoch is None else float(epoch),
            "best_val_loss": _finite(best_val_loss),
            "converged": bool(converged),
            "val_loss_history": list(val_loss_history or []),
            "started_at": self.started_at,
            "updated_at": _now(),
            "node_count": self.node_count,
            **extra,
        }
        if self.enabled:
            from artifacts.store import open_store

            open_store(self.run_uri).put_bytes(
                STATUS_NAME, (json.dumps(doc, indent=2) + "\n").encode()
            )
        return doc


def loss_history(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Machine-readable losses from the HF ``TrainerState.log_history`` (for plots)."""
    train = [
        {
            "step": e.get("step"),
            "epoch": e.get("epoch"),
            "loss": e["loss"],
            "learning_rate": e.get("learning_rate"),
        }
        for e in log_history
        if "loss" in e
    ]
    val = [
        {"step": e.get("step"), "epoch": e.get("epoch"), "val_loss": e["eval_loss"]}
        for e in log_history
        if "eval_loss" in e
    ]
    return {"train": train, "val": val}


def publish_final(
    trainer: Any,
    tokenizer: Any,
    *,
    run_uri: str,
    out_dir: Path,
    summary: dict[str, Any],
    signing_key: Path | None,
    is_main: bool,
) -> str | None:
    """Every rank: gather the 16-bit weights and save; rank 0: write summary, publish ``final/``.

    Returns the published URI on rank 0 (None elsewhere). A ``final/`` committed by an earlier
    attempt of the same run is replaced (its manifest goes first, so no reader sees a mix).
    """
    import shutil

    if is_main and out_dir.exists():
        shutil.rmtree(out_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(out_dir))  # collective under ZeRO-3: gathers 16-bit weights
    if not is_main:
        return None
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "loss_history.json").write_text(
        json.dumps(summary.get("loss_history", {}), indent=2) + "\n"
    )
    # Trainer.save_model also writes training_args.bin (a pickle): not part of a model release.
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    from artifacts.publish import publish_dir
    from artifacts.store import open_store

    dest = open_store(run_uri).child_uri(FINAL_PREFIX)
    started = time.monotonic()
    metadata = {
        k: summary[k]
        for k in ("global_step", "epoch", "best_val_loss", "converged", "state")
        if k in summary
    }
    metadata["config"] = summary.get("config", {})
    publish_dir(out_dir, dest, metadata=metadata, signing_key=signing_key, overwrite=True)
    log.info("published the final model to %s in %.1fs", dest, time.monotonic() - started)
    return dest
