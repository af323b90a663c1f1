"""Encrypted, resumable fine-tune checkpoints: never plaintext on disk.

A checkpoint is ``torch.save`` of a plain dict (LoRA weights, optimizer, scheduler, grad scaler,
RNG states, data position, loss history, early-stop state) serialized **in memory** and written
in the twostage stream format with the *dataset* key (``local.crypto_files.encrypt_file``: temporary
sibling, one rename) to the run's work area beside ``--out``
(``.<out>.work/step-00000100.ckpt.enc``). Only the newest is kept. Loading authenticates the
whole file first, then ``torch.load(weights_only=True)``. A fingerprint of the config, the
dataset file's header and the base model refuses resuming with other inputs. All checkpoints
are deleted after a successful export.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from local.errors import LocalError
from local.held import work_area

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})\.ckpt\.enc$")


def fingerprint(cfg: Any, data: Path, model_label: str) -> str:
    """What a resumed run must share with the interrupted one (config, dataset file, base)."""
    from local.crypto import HEADER_SIZE

    with Path(data).open("rb") as f:
        header = f.read(HEADER_SIZE)  # salt + key id: unique per encrypted file
    doc = {k: v for k, v in asdict(cfg).items() if k != "max_steps"}
    blob = json.dumps(doc, sort_keys=True, default=list).encode() + header + model_label.encode()
    return hashlib.sha256(blob).hexdigest()


class Checkpointer:
    """Saves/loads encrypted checkpoints for one run (identified by ``--out``)."""

    def __init__(self, out: Path, key: bytes, fingerprint: str) -> None:
        self.dir = work_area(out)
        self.key = key
        self.fingerprint = fingerprint

    def existing(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if _NAME.match(p.name))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        import torch

        from local.crypto_files import encrypt_file

        buf = io.BytesIO()
        torch.save({**state, "fingerprint": self.fingerprint, "step": step}, buf)
        buf.seek(0)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        dest = self.dir / f"step-{step:08d}.ckpt.enc"
        encrypt_file(buf, dest, self.key)
        for old in self.existing():
            if old != dest:
                old.unlink()
        log.info("checkpoint at step %d written encrypted to %s", step, dest)
        return dest

    def load_latest(self, device: str) -> dict[str, Any]:
        import torch

        from local.crypto import decrypt_stream

        found = self.existing()
        if not found:
            raise LocalError(
                f"--resume: no checkpoint in {self.dir}; run without --resume to start afresh"
            )
        path = found[-1]
        blob = b"".join(decrypt_stream(path, self.key))
        state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            raise LocalError(
                f"--resume: {path} was written with another config, dataset or base model; "
                f"resume with the same inputs, or delete {self.dir} to start afresh"
            )
        log.info("resuming from %s (step %d)", path, state["step"])
        return state

    def refuse_stale(self) -> None:
        """Without ``--resume``, an interrupted run's checkpoints are never silently overwritten."""
        found = self.existing()
        if found:
            raise LocalError(
                f"{found[-1]} is a checkpoint of an interrupted run for this --out; pass --resume "
                f"to continue it, or delete {self.dir} to start afresh"
            )

    def clear(self) -> None:
        """After a successful export: the checkpoints go, and the work area if nothing is left."""
        for p in self.existing():
            p.unlink()
        if self.dir.is_dir() and not any(self.dir.iterdir()):
            # In the sandbox the work area is a mount point (EBUSY): its parent removes it.
            with contextlib.suppress(OSError):
                self.dir.rmdir()


def drop_checkpoints(out: Path) -> None:
    """Delete every checkpoint of the run exporting to ``out`` (a run that tried to reach the
    network is not one to resume)."""
    Checkpointer(out, b"", "").clear()
