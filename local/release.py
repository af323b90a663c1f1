"""Step 7 of a fine-tune: the export's metadata, then the staged adapter exported (checked,
manifest, one rename, ``local.export``) — or, when the scan or ``--max-exposure`` refuses, kept
encrypted (``local.held``) with an error that says how to review and export it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from local.errors import LocalError
from local.job import Job


def export_metadata(
    job: Job,
    stats: Any,
    audit: dict | None,
    *,
    base_label: str,
    packed: bool,
    target_modules: list[str],
    compute_dtype: str,
) -> dict[str, Any]:
    """The ``MANIFEST.json`` metadata of the export (and of a held one)."""
    cfg = job.cfg
    metadata: dict[str, Any] = {
        "kind": "qlora-adapter",
        "base_model": base_label,
        "steps": stats.steps,
        "eval_loss_before": round(stats.loss_before, 6),
        "eval_loss_after": round(stats.loss_after, 6),
        "train_loss_history": [[step, round(loss, 6)] for step, loss in stats.history],
        "eval_loss_history": [[step, round(loss, 6)] for step, loss in stats.evals],
        "early_stopped": stats.early_stopped,
        "merged": job.merge,
        "isolation": job.isolation,
        "swap": job.swap,
        "data": {
            "train_on_prompt": cfg.train_on_prompt,
            "packing": packed,
            "truncation": cfg.truncation,
            "max_seq_len": cfg.max_seq_len,
        },
        "lora": {
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "targets": target_modules,
        },
        "quantization": {
            "type": cfg.quant_type,
            "double_quant": cfg.double_quant,
            "compute_dtype": compute_dtype,
        },
    }
    if audit is not None:
        metadata["privacy_audit"] = audit
    return metadata


def export_or_hold(
    job: Job,
    staging: Path,
    *,
    base_label: str,
    forbidden: list[Any],
    metadata: dict[str, Any],
    audit: dict | None,
) -> Any:
    """Export the staged adapter to ``job.out`` (``local.export.ExportInfo``), or hold it and
    raise the refusal as a :class:`LocalError`."""
    from local import export, held
    from local.scan import Finding

    try:
        exposure = audit["train_exposure"] if audit else None
        limit = job.max_exposure
        if limit is not None and exposure is not None and exposure > limit:
            label = f"privacy audit: train exposure {exposure} > --max-exposure {limit}"
            raise export.ExportRefused(
                f"export refused: {label}; nothing was exported", [Finding("(weights)", label)]
            )
        export.check_export(staging, forbidden)
        if job.merge:
            export.merge_adapter(job.model_dir, staging, base_label)
        return export.finalize(
            staging, job.out, forbidden=forbidden, metadata=metadata, publish=job.staging is None
        )
    except export.ExportRefused as err:
        path = held.hold(staging, job.out, job.key, err.findings, metadata)
        raise LocalError(held.refusal_message(str(err), path, job.key_file, job.out)) from None


def refuse_after_violation(out: Path) -> None:
    """A blocked network attempt that a library swallowed still aborts the export."""
    from local.airgap import violations
    from local.checkpoint import drop_checkpoints

    if violations():
        drop_checkpoints(out)
        raise LocalError(f"{violations()[0]}; the run was aborted and nothing was exported")
