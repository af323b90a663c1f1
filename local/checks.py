"""Steps 2–3 of a fine-tune: everything checked before anything heavy is loaded.

Device and memory preflight (``local.preflight``), one authenticated pass over the dataset (bad
records named by line and record number), the model folder re-verified against its manifest
(unless ``--no-verify``), the files every export copies from the base scanned for what must not
leave (``local.exposure``), and the run's checkpoints (resume, or refuse stale ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from local.errors import LocalError
from local.job import Job

log = logging.getLogger("local.finetune")


@dataclass
class Checked:
    """What the checks found, for the steps after them."""

    device: str
    compute_dtype: str
    target_modules: list[str]
    base_label: str
    public: dict[str, bytes]
    """The files every export copies from the base (scrubbed)."""
    forbidden: list[Any]
    """``local.scan.Forbidden`` items the export is scanned for."""
    checkpointer: Any
    resume_state: Any
    """The latest checkpoint's state with ``--resume``, else ``None``."""


def check_before_training(job: Job) -> Checked:
    """Run the checks in order; the first that fails raises a one-line :class:`LocalError`."""
    from local import exposure, held
    from local.checkpoint import Checkpointer, fingerprint
    from local.dataset import inspect
    from local.model import resolve_compute_dtype
    from local.preflight import resolve_device, run_preflight

    cfg = job.cfg
    device = resolve_device(cfg.device)
    compute_dtype = resolve_compute_dtype(cfg.compute_dtype, device)
    # Memory first: shapes from config.json on the meta device, no weights read.
    report = run_preflight(
        job.model_dir, cfg, device=device, compute_dtype=compute_dtype, free_bytes=job.free_bytes
    )
    # One authenticated pass over the data first: a bad record or a tampered file is reported
    # (line and record number) before the model is hashed, loaded or trained.
    info = inspect(job.data, job.key)
    log.info("dataset: %d records (%s) authenticated and valid", info.records, info.kind)
    _verify_model(job)
    label = exposure.base_label(job.model_dir, job.verify)

    forbidden = exposure.forbidden_items(job.data, job.key_file, job.key, job.model_dir, job.out)
    public = exposure.base_public_files(job.model_dir, label, job.merge)
    exposure.preflight_export(public, forbidden)
    checkpointer = Checkpointer(job.out, job.key, fingerprint(cfg, job.data, label))
    state = checkpointer.load_latest(device) if job.resume else None
    if not job.resume:
        checkpointer.refuse_stale()
    if held.held_path(job.out).exists():
        raise LocalError(
            f"{held.held_path(job.out)} holds a refused export of an earlier run for this --out; "
            "export or delete it first (`invoke export-held --help`)"
        )
    return Checked(
        device=device,
        compute_dtype=compute_dtype,
        target_modules=report.target_modules,
        base_label=label,
        public=public,
        forbidden=forbidden,
        checkpointer=checkpointer,
        resume_state=state,
    )


def _verify_model(job: Job) -> None:
    if job.verify:
        from artifacts.verify import verify_dir

        manifest = verify_dir(job.model_dir, public_key=job.public_key)
        log.info("verified %d files of %s against its manifest", len(manifest.files), job.model_dir)
    else:
        log.warning("--no-verify: loading %s without checking it against a manifest", job.model_dir)
