"""The QLoRA fine-tune: verified 4-bit NF4 base + LoRA, trained on records decrypted in memory.

Order of a run (each step can refuse with a one-line :class:`LocalError`; everything a person
can get wrong is checked before anything heavy runs):

1. config and paths; the key file, then the dataset's key id and framing (no decryption: a
   wrong key or a truncated copy is refused before anything else starts); the isolation —
   ``--airgapped`` runs the rest in the bubblewrap sandbox (``local.sandbox``, ``local.netns``,
   ``local.isolated``) and refuses when it cannot be built, unless ``--airgap-guard-only``
   accepts the in-process guard alone; without ``--airgapped`` the log says the network is
   reachable; the HF offline switches go up *before* transformers, peft or bitsandbytes are
   imported; ``max_seq_len`` against the model's position limit; stale staging folders of a
   killed run swept (``local.staging``); the run is then one frozen :class:`local.job.Job`;
2. preflight: device, free memory, estimated peak at 4-bit (from ``config.json``, no weights);
3. one authenticated validation pass over the dataset (bad records named by line and record
   number); the model folder re-verified against its manifest (unless ``verify=False``); the
   files the export will copy from the base scanned for paths, hostnames, file names and the key
   ID (``local.checks``, ``local.exposure``);
4. the encrypted dataset is decrypted chunk by chunk straight into the tokenizer
   (``local.tokens``, ``local.records``: loss masks, chat template, truncation); only token ids
   stay, in memory;
5. base loaded in 4-bit NF4 (double quantization) by bitsandbytes, ``prepare_model_for_kbit_training``
   (non-reentrant gradient checkpointing), LoRA on the attention q/v projections;
6. training (``local.training``): packing, periodic eval, early stop, encrypted checkpoints;
7. privacy audit (``local.audit``); export (``local.release``, ``local.export``), checked,
   manifest, one rename — or, when the scan or ``--max-exposure`` refuses, the adapter is kept
   encrypted (``local.held``) and the error says how to review and export it.

Nothing plaintext touches the disk, and log lines only ever carry counts and losses.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from local.checks import Checked
from local.config import FinetuneConfig
from local.errors import LocalError
from local.job import FinetuneResult, Job
from local.model import load_qlora_model
from local.records import Example
from local.tokens import Examples

log = logging.getLogger(__name__)

_HEAVY = ("transformers", "peft", "bitsandbytes")


def train_model(
    model: Any, train: list[Example], evals: list[Example], cfg: FinetuneConfig, **kw: Any
) -> Any:
    """The training loop (``local.training.train``); a seam tests watch."""
    from local.training import train as loop

    return loop(model, train, evals, cfg, **kw)


# ---------------------------------------------------------------------------------------------
# Step 1: the arguments, the key, the isolation


def run_finetune(
    model_dir: Path,
    data: Path,
    key_file: Path,
    out: Path,
    *,
    config: FinetuneConfig | None = None,
    airgapped: bool = False,
    airgap_guard_only: bool = False,
    verify: bool = True,
    merge: bool = False,
    max_steps: int | None = None,
    public_key: Path | None = None,
    free_bytes: int | None = None,
    resume: bool = False,
    max_exposure: float | None = None,
    isolate: bool = True,
) -> FinetuneResult:
    """Fine-tune ``model_dir`` on the encrypted ``data`` and export to ``out``; see module doc.

    ``isolate=False`` keeps an air-gapped run in this process (the in-process guard only).
    """
    started = time.monotonic()
    cfg = config or FinetuneConfig()
    model_dir, data, key_file, out = Path(model_dir), Path(data), Path(key_file), Path(out)
    steps = max_steps if max_steps is not None else cfg.max_steps
    _check_args(
        model_dir, data, out, cfg, airgapped=airgapped, verify=verify, steps=steps,
        public_key=public_key, max_exposure=max_exposure,
    )  # fmt: skip
    # The key first (a KMS unwrap needs the network), then what needs no decryption: the wrong
    # key or a truncated file is refused before anything else starts.
    from local.crypto_files import check_framing
    from local.keys import load_key

    key = load_key(key_file)
    check_framing(data, key)
    from local import netns, sandbox

    isolation = netns.choose(airgapped=airgapped, guard_only=airgap_guard_only, allowed=isolate)
    if airgapped:
        from local.airgap import enable_offline_env

        early = [m for m in _HEAVY if m in sys.modules]
        enable_offline_env()
        if early:
            log.debug(
                "already imported before the offline switches: %s (the guard still applies)", early
            )
    if isolation != sandbox.SANDBOX:
        # Imports transformers: after the offline switches, and for a sandboxed run only in the
        # child (no third-party ML code runs in this process, which holds the key and the network).
        from local.preflight import check_positions

        check_positions(model_dir, cfg)
    from local.isolated import swap_logged
    from local.staging import sweep_stale

    sweep_stale(out)
    job = Job(
        model_dir=model_dir, data=data, key_file=key_file, out=out, cfg=cfg, airgapped=airgapped,
        verify=verify, merge=merge, steps=steps, public_key=public_key, free_bytes=free_bytes,
        resume=resume, max_exposure=max_exposure, started=started, isolation=isolation,
        swap=swap_logged(airgapped), key=key,
    )  # fmt: skip
    if isolation == sandbox.SANDBOX:
        from local.isolated import run_sandboxed

        return run_sandboxed(job)
    with guard(airgapped, out):
        return run_job(job)


def _check_args(
    model_dir: Path,
    data: Path,
    out: Path,
    cfg: FinetuneConfig,
    *,
    airgapped: bool,
    verify: bool,
    steps: int,
    public_key: Path | None,
    max_exposure: float | None,
) -> None:
    """The flags and paths a person can get wrong, each refused with a one-line error."""
    if not model_dir.is_dir():
        raise LocalError(f"--model {model_dir}: not a folder (download one with `invoke download`)")
    if not data.is_file():
        raise LocalError(f"--data {data}: no such file")
    if out.exists():
        raise LocalError(
            f"--out {out} already exists; choose a new folder (an export is never overwritten)"
        )
    if not out.parent.is_dir():
        raise LocalError(f"--out {out}: its parent folder {out.parent} does not exist")
    if max_exposure is not None and not 0.0 <= max_exposure <= 1.0:
        raise LocalError(f"--max-exposure must be a fraction in [0, 1], got {max_exposure}")
    if max_exposure is not None and cfg.audit_records == 0:
        raise LocalError("--max-exposure needs the privacy audit; set audit_records > 0")
    if steps < 1:
        raise LocalError(f"--max-steps must be >= 1, got {steps}")
    if public_key is not None and not verify:
        raise LocalError("--public-key needs verification; drop --no-verify or the key")


@contextlib.contextmanager
def guard(airgapped: bool, out: Path | None = None) -> Iterator[None]:
    """The in-process guard; a blocked attempt aborts the run and drops its checkpoints (a run
    that tried to reach the network is not one to resume)."""
    from local.checkpoint import drop_checkpoints
    from local.offline import guarded

    with guarded(
        airgapped,
        aborted="the run was aborted and nothing was exported",
        on_violation=None if out is None else lambda: drop_checkpoints(out),
    ):
        yield


def run_job_request(request: dict[str, Any]) -> dict[str, Any]:
    """The sandboxed child's side: :meth:`Job.to_dict` in, :meth:`FinetuneResult.to_dict` out."""
    from local.preflight import check_positions

    job = Job.from_dict(request)
    with guard(True, job.out):
        check_positions(job.model_dir, job.cfg)
        return run_job(job).to_dict()


# ---------------------------------------------------------------------------------------------
# Steps 2-7, inside the guard (in this process or the namespace child)


def run_job(job: Job) -> FinetuneResult:
    """Checks, data, model, training, audit, export; see the module doc."""
    import torch

    from local import export
    from local.checks import check_before_training
    from local.release import export_metadata, export_or_hold, refuse_after_violation
    from local.tokens import load_examples

    checked = check_before_training(job)
    torch.manual_seed(job.cfg.seed)
    data = load_examples(job, checked.public, checked.forbidden)
    model, packed = _load_model(
        job, checked.device, checked.compute_dtype, checked.target_modules, len(data.tokenizer)
    )
    stats = train_model(
        model, data.train, data.evals, job.cfg, device=checked.device,
        compute_dtype=checked.compute_dtype, steps=job.steps, pad_id=data.pad_id, packed=packed,
        checkpointer=checked.checkpointer, resume=checked.resume_state,
    )  # fmt: skip
    audit = _privacy_audit(model, data, job.cfg, checked, stats.loss_after)
    metadata = export_metadata(
        job, stats, audit, base_label=checked.base_label, packed=packed,
        target_modules=checked.target_modules, compute_dtype=checked.compute_dtype,
    )  # fmt: skip
    with export.staging_dir(job.out, given=job.staging) as staging:
        export.save_adapter(model, staging, checked.base_label)
        del model  # the only reference: its memory goes before the tokenizer copy and the merge
        gc.collect()
        if checked.device == "cuda":
            torch.cuda.empty_cache()
        export.copy_tokenizer(job.model_dir, staging, checked.base_label)
        _write_chat_template(staging, data)
        if job.airgapped:
            refuse_after_violation(job.out)
        info = export_or_hold(
            job, staging, base_label=checked.base_label, forbidden=data.forbidden,
            metadata=metadata, audit=audit,
        )  # fmt: skip
    checked.checkpointer.clear()
    return FinetuneResult(
        steps=stats.steps,
        loss_before=stats.loss_before,
        loss_after=stats.loss_after,
        export_path=info.path,
        export_bytes=info.bytes,
        export_files=info.files,
        train_records=len(data.train),
        eval_records=len(data.evals),
        device=checked.device,
        merged=job.merge,
        seconds=time.monotonic() - job.started,
        over_long=data.stats.over_long,
        dropped=data.stats.dropped,
        packed=packed,
        early_stopped=stats.early_stopped,
        resumed_from=stats.resumed_from,
        isolation=job.isolation,
        privacy_audit=audit,
    )


def _load_model(
    job: Job, device: str, compute_dtype: str, target_modules: list[str], vocab: int
) -> tuple[Any, bool]:
    """Step 5: the 4-bit base with LoRA, and whether its batches can be packed."""
    cfg = job.cfg
    model = load_qlora_model(job.model_dir, cfg, device, compute_dtype, target_modules)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "4-bit %s base with LoRA on %s: %d trainable parameters",
        cfg.quant_type,
        target_modules,
        trainable,
    )
    packed = False
    if cfg.packing:
        from local.batching import packing_works

        packed = packing_works(model, device, vocab)
        if not packed:
            log.warning(
                "packing = true, but this model does not keep packed records apart; padded batches"
            )
    log.info("batches: %s", "packed (per-record position ids, no padding)" if packed else "padded")
    return model, packed


def _privacy_audit(
    model: Any, data: Examples, cfg: FinetuneConfig, checked: Checked, heldout_loss: float
) -> dict | None:
    """Step 7a (``local.audit``): how much of the training data the adapter reproduces."""
    if not cfg.audit_records:
        return None
    from local.audit import run_audit

    return run_audit(
        model,
        data.train,
        data.evals,
        cfg,
        device=checked.device,
        compute_dtype=checked.compute_dtype,
        pad_id=data.pad_id,
        heldout_loss=heldout_loss,
    )


def _write_chat_template(staging: Path, data: Examples) -> None:
    """Chat records trained on the default template: it goes with the adapter."""
    from local.records import DEFAULT_CHAT_TEMPLATE

    if data.stats.kinds.get("chat") and not getattr(data.tokenizer, "chat_template", None):
        (staging / "chat_template.jinja").write_text(DEFAULT_CHAT_TEMPLATE, encoding="utf-8")
