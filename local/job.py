"""A fine-tune's inputs and outputs as typed values: :class:`Job` (what to run, checked and with
the key loaded) and :class:`FinetuneResult` (what the run did).

Both cross the pipe to the sandboxed child (``local.netns``) as JSON (the key travels apart, as raw
bytes ahead of the JSON, and lives in a ``bytearray`` the child wipes); a job is read back
through the project's typed config loader (``artifacts.config.build``), so a field that does not
fit its type is an error that names it, never a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.config import build
from local.config import FinetuneConfig
from local.errors import LocalError


@dataclass(frozen=True)
class Job:
    """One fine-tune, after the argument checks of ``local.finetune.run_finetune``."""

    model_dir: Path
    """The verified base model folder."""
    data: Path
    """The encrypted dataset."""
    key_file: Path
    """Where the key came from (named in messages and the export scan, never read again)."""
    out: Path
    """The export folder to create."""
    cfg: FinetuneConfig
    """The recipe."""
    airgapped: bool
    """Offline switches, the in-process guard and the sandbox (``local.sandbox``)."""
    verify: bool
    """Re-verify the model folder against its manifest."""
    merge: bool
    """Also export a merged model."""
    steps: int
    """Optimizer steps to run (``--max-steps`` or the recipe's ``max_steps``)."""
    public_key: Path | None
    """Ed25519 public key the manifest's signature must match."""
    free_bytes: int | None
    """Free device memory to assume (tests); ``None`` asks the device."""
    resume: bool
    """Continue from the latest encrypted checkpoint."""
    max_exposure: float | None
    """Refuse the export when the privacy audit's train exposure is above this fraction."""
    started: float
    """``time.monotonic()`` when the run was asked for (the summary's seconds)."""
    isolation: str = "none"
    """Which air gap the run got (a ``local.sandbox`` label: ``sandbox``, ``guard-only``, …)."""
    swap: str = "unknown"
    """``local.sandbox.swap_state()``: could plaintext in memory be swapped to disk?"""
    staging: Path | None = None
    """The export's staging folder when the parent made it (sandboxed runs: the child can write
    nothing else, so the parent publishes it with the final rename)."""
    key: bytes | bytearray = field(default=b"", repr=False)
    """The dataset key (loaded by the parent: a KMS unwrap needs the network)."""

    def to_dict(self, *, with_key: bool = True) -> dict[str, Any]:
        """Plain JSON data; the key as hex unless ``with_key=False`` (then it travels apart, see
        ``local.netns``)."""
        doc = _plain(dataclasses.asdict(dataclasses.replace(self, key=b"")))
        if with_key:
            doc["key"] = bytes(self.key).hex()
        else:
            doc.pop("key")
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Job:
        """The job back from :meth:`to_dict`; a bad field is a :class:`LocalError` naming it.
        A ``secret`` (the child's ``bytearray``) is used as the key as it is, not copied."""
        doc = dict(doc)
        secret = doc.pop("secret", None)
        key = secret if secret is not None else bytes.fromhex(doc.pop("key", ""))
        doc.pop("key", None)
        return build(
            cls, doc, source="<job>", error=LocalError, skip=frozenset({"key"}), extra={"key": key}
        )


@dataclass(frozen=True)
class FinetuneResult:
    """What a run did; the demo prints :meth:`summary`."""

    steps: int
    loss_before: float
    loss_after: float
    export_path: Path
    export_bytes: int
    export_files: int
    train_records: int
    eval_records: int
    device: str
    merged: bool
    seconds: float
    over_long: int = 0
    dropped: int = 0
    packed: bool = False
    early_stopped: bool = False
    resumed_from: int = 0
    isolation: str = "none"
    privacy_audit: dict | None = None

    def summary(self) -> str:
        line = (
            f"fine-tuned {self.steps} steps on {self.device} in {self.seconds:.1f}s: eval loss "
            f"{self.loss_before:.4f} -> {self.loss_after:.4f}; exported {self.export_files} files "
            f"({self.export_bytes / 1e6:.2f} MB) to {self.export_path}"
        )
        if self.privacy_audit:
            a = self.privacy_audit
            line += (
                f"; privacy audit: {_pct(a['train_exposure'])} of training vs "
                f"{_pct(a['heldout_exposure'])} of held-out records reproduced "
                f"{a['verbatim_tokens']} tokens verbatim, loss gap {a['loss_gap']}"
            )
        if self.over_long:
            line += f"; {self.over_long} over-long record(s) ({self.dropped} dropped)"
        return line + f"; air gap: {self.isolation}" + (
            f"\nnext: invoke evaluate --model MODEL --adapter {self.export_path} --data HELDOUT.enc "
            "--key-file KEY (base vs adapter); invoke generate / export-gguf use it too"
        )

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FinetuneResult:
        return cls(**{**doc, "export_path": Path(doc["export_path"])})


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _plain(value: Any) -> Any:
    """Paths as strings, tuples as lists: what ``json`` writes."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


__all__ = ["FinetuneResult", "Job"]
