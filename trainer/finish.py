"""End of a run: the run's status (``STATUS.json``) and the published ``final/`` model.

The status schema, its states and where it lives belong to the run protocol
(:mod:`artifacts.run`); this module only writes it from rank 0. ``final/`` is a normal HF folder
(safetensors, config, tokenizer) plus ``training_summary.json`` and ``loss_history.json``,
committed with a manifest (signed when the recipe names a key).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artifacts.run import Run, RunState, Status, now_iso

log = logging.getLogger(__name__)


class StatusWriter:
    """Writes the run's status; a no-op on every rank but global rank 0."""

    def __init__(self, run: Run, *, enabled: bool, node_count: int) -> None:
        self.run = run
        self.enabled = enabled
        self.node_count = node_count
        self.started_at = now_iso()
        #: Functions whose fields are added to every write (e.g. the checkpoint report).
        self.providers: list[Callable[[], dict[str, Any]]] = []
        #: The status an earlier launch left (None on other ranks): carried-over fields come from it.
        self.previous: Status | None = None
        #: ``{"step", "from_world_size", "world_size", "note"}`` when this launch resumed.
        self.resumed: dict[str, Any] | None = None
        if enabled:
            previous = self.previous = run.read_status()
            # A resumed run keeps the time the run first started.
            if (
                previous is not None
                and previous.started_at
                and previous.state
                in (RunState.RUNNING, RunState.INTERRUPTED, RunState.FAILED, RunState.PREPARING)
            ):
                self.started_at = previous.started_at

    def write(
        self,
        state: str | RunState,
        *,
        global_step: int = 0,
        epoch: float | None = None,
        best_val_loss: float | None = None,
        converged: bool = False,
        val_loss_history: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> Status:
        """Replace the run's status with the given fields (plus times and node count)."""
        for provide in self.providers:
            extra = {**provide(), **extra}
        known = {
            k: extra.pop(k)
            for k in ("final", "reason", "converged_at_step", "world_size")
            if k in extra
        }
        if self.resumed:
            extra = {"resumed": self.resumed, **extra}
        status = Status(
            state=RunState(state),
            global_step=int(global_step),
            epoch=None if epoch is None else float(epoch),
            best_val_loss=best_val_loss,
            converged=bool(converged),
            val_loss_history=tuple(val_loss_history or ()),
            started_at=self.started_at,
            updated_at=now_iso(),
            node_count=self.node_count,
            extra=extra,
            **known,
        )
        if self.enabled:
            self.run.write_status(status)
        return status


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
    run: Run,
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

    dest = run.final_uri
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
