"""Invoke tasks of the stage-1 trainer that need no cluster: ``export-checkpoint``."""

from __future__ import annotations

from invoke import task

from artifacts.cli_support import user_errors
from trainer.errors import TrainerError


@task(
    help={
        "run": "run prefix: s3://bucket/runs/NAME, file:///abs/path or a local folder",
        "step": "global step of the committed checkpoint to export (default: the newest)",
        "out": "folder for the HF model (new or empty; default export-step-N/)",
        "public_key": "Ed25519 public key: also check the checkpoint's manifest signature",
        "force": "replace a non-empty OUT (only after the export succeeded)",
    }
)
@user_errors
def export_checkpoint(c, run, step=None, out=None, public_key=None, force=False):
    """Consolidated fp32 weights of a committed checkpoint (DeepSpeed zero_to_fp32) as an HF folder.

    Periodic and interruption checkpoints hold only ZeRO shards + trainer state (no gathered
    model); this downloads checkpoint --step verified, merges every rank's shards with
    `python -m deepspeed.utils.zero_to_fp32` and adds config + tokenizer, so the folder loads
    with `from_pretrained`.
    """
    from pathlib import Path

    from artifacts.logs import init_logging
    from trainer.export import export_checkpoint as export

    init_logging()
    try:
        wanted = None if step is None else int(step)
    except ValueError:
        raise TrainerError(f"--step {step}: give a global step number") from None
    if wanted is not None and wanted < 0:
        raise TrainerError(f"--step {step}: must be >= 0")
    dest = Path(out) if out else Path(f"export-step-{wanted if wanted is not None else 'latest'}")
    chosen, path = export(
        run, dest, step=wanted, public_key=Path(public_key) if public_key else None, force=force
    )
    print(f"step {chosen}: consolidated model in {path}")


TASKS = [export_checkpoint]
