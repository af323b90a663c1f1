"""The QLoRA fine-tune: verified 4-bit NF4 base + LoRA, trained on records decrypted in memory.

Order of a run (each step can refuse with a one-line :class:`LocalError`; everything a person
can get wrong is checked before anything heavy runs):

1. config and paths; ``max_seq_len`` against the model's position limit; the key file;
   ``--airgapped`` sets the HF offline switches *before* transformers, peft or bitsandbytes are
   imported and runs the rest in a fresh network namespace where the OS allows
   (``local.netns``), inside the in-process network guard either way;
2. preflight: device, free memory, estimated peak at 4-bit (from ``config.json``, no weights);
3. one authenticated validation pass over the dataset (bad records named by line and record
   number); the model folder re-verified against its manifest (unless ``verify=False``); the
   files the export will copy from the base scanned for paths, hostnames, file names and the key
   ID (``local.scan``);
4. the encrypted dataset is decrypted chunk by chunk straight into the tokenizer
   (``local.records``: loss masks, chat template, truncation); only token ids stay, in memory;
5. base loaded in 4-bit NF4 (double quantization) by bitsandbytes, ``prepare_model_for_kbit_training``
   (non-reentrant gradient checkpointing), LoRA on the attention q/v projections;
6. training (``local.training``): packing, periodic eval, early stop, encrypted checkpoints;
7. privacy audit (``local.audit``); export (``local.export``), checked, manifest, one rename —
   or, when the scan or ``--max-exposure`` refuses, the adapter is kept encrypted
   (``local.held``) and the error says how to review and export it.

Nothing plaintext touches the disk, and log lines only ever carry counts and losses.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import platform
import random
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.config import FinetuneConfig
from local.errors import LocalError
from local.model import load_qlora_model, resolve_compute_dtype
from local.records import EncodeStats, Example

log = logging.getLogger(__name__)

_HEAVY = ("transformers", "peft", "bitsandbytes")


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
        return line


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


# ---------------------------------------------------------------------------------------------
# Data: records → token ids + labels, in memory


def tokenize_records(
    records: Iterable[dict], tokenizer: Any, cfg: FinetuneConfig, on_record: Any = None
) -> tuple[list[Example], EncodeStats]:
    """Encode every record per ``cfg`` (masks, template, truncation); see ``local.records``."""
    from local.records import chat_template_for, encode_all

    return encode_all(
        records,
        tokenizer,
        max_len=cfg.max_seq_len,
        truncation=cfg.truncation,
        train_on_prompt=cfg.train_on_prompt,
        chat_template=chat_template_for(tokenizer),
        on_record=on_record,
    )


def split_eval(examples: list, fraction: float, max_eval: int, seed: int) -> tuple[list, list]:
    """Hold out a seeded random slice for evaluation (pure)."""
    if len(examples) < 2:
        raise LocalError(
            f"the dataset has {len(examples)} usable record(s); need at least 2 (one is held out to measure the loss)"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, round(len(examples) * fraction)), len(examples) - 1)
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    evals = [examples[i] for i in sorted(held)]
    return train, evals


def train_model(
    model: Any, train: list[Example], evals: list[Example], cfg: FinetuneConfig, **kw: Any
) -> Any:
    """The training loop (``local.training.train``); a seam tests watch."""
    from local.training import train as loop

    return loop(model, train, evals, cfg, **kw)


# ---------------------------------------------------------------------------------------------
# The run


def _forbidden(data: Path, key_file: Path, key: bytes, model_dir: Path, out: Path) -> list[Any]:
    """Paths, key ID (exact), hostnames and data/key file names (whole names only)."""
    from local.crypto import key_id
    from local.scan import EXACT, WORD, Forbidden

    home = os.path.expanduser("~")
    items = [
        Forbidden("data file path", str(data.resolve()), EXACT),
        Forbidden("key file path", str(key_file.resolve()), EXACT),
        Forbidden("model folder path", str(model_dir.resolve()), EXACT),
        Forbidden("export folder path", str(out.resolve()), EXACT),
        Forbidden("work area path", str(out.resolve().parent / f".{out.name}"), EXACT),
        Forbidden("home folder path", home if home not in ("/", "") else "", EXACT),
        Forbidden("key ID", key_id(key).hex(), EXACT),
        Forbidden("data file name", data.name, WORD),
        Forbidden("key file name", key_file.name, WORD),
    ]
    for p, label in ((data, "data file path"), (key_file, "key file path")):
        if p.is_absolute() or "/" in str(p):
            items.append(Forbidden(label, str(p), EXACT))
    for host in {socket.gethostname(), platform.node()}:
        if len(host) >= 4:
            items.append(Forbidden("hostname", host, WORD))
    return items


def _base_label(model_dir: Path, verified: bool) -> str:
    """Neutral base reference for exported configs: the verified manifest's hash, else ``base``."""
    from artifacts.manifest import MANIFEST_NAME

    manifest = model_dir / MANIFEST_NAME
    if verified and manifest.is_file():
        return "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    return "base"


def _base_public_files(model_dir: Path, base_label: str, merge: bool) -> dict[str, bytes]:
    """What the export will copy from the base (scrubbed), known before training."""
    from local import export

    files = export.tokenizer_files(model_dir, base_label)
    if merge:
        for name in ("config.json", "generation_config.json"):
            src = model_dir / name
            if src.is_file():
                import json

                doc = export.scrub_json(json.loads(src.read_text(encoding="utf-8")), base_label)
                files[f"merged/{name}"] = json.dumps(doc).encode()
    return files


def _preflight_export(files: dict[str, bytes], forbidden: list[Any]) -> None:
    from local.scan import preflight_scan

    found = preflight_scan(files, forbidden)
    if found:
        f = found[0]
        raise LocalError(
            f"preflight: the base model's {f.file} (copied into every export) contains the "
            f"{f.label}; nothing was trained. Remove it from the base's files (then re-publish "
            "and download it) or rename the file/host"
        )


@contextlib.contextmanager
def _guard(airgapped: bool, out: Path | None = None) -> Iterator[None]:
    """The in-process guard; a blocked attempt aborts the run and drops its checkpoints (a run
    that tried to reach the network is not one to resume)."""
    if not airgapped:
        yield
        return
    from local.airgap import AirgapViolation
    from local.airgap import airgapped as guard

    try:
        with guard():
            yield
    except AirgapViolation as err:
        if out is not None:
            _drop_checkpoints(out)
        raise LocalError(f"{err}; the run was aborted and nothing was exported") from None


def _drop_checkpoints(out: Path) -> None:
    from local.checkpoint import Checkpointer

    Checkpointer(out, b"", "").clear()


def run_finetune(
    model_dir: Path,
    data: Path,
    key_file: Path,
    out: Path,
    *,
    config: FinetuneConfig | None = None,
    airgapped: bool = False,
    airgap_strict: bool = False,
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
    if airgap_strict and not airgapped:
        raise LocalError("--airgap-strict needs --airgapped")
    steps = max_steps if max_steps is not None else cfg.max_steps
    if steps < 1:
        raise LocalError(f"--max-steps must be >= 1, got {steps}")
    if public_key is not None and not verify:
        raise LocalError("--public-key needs verification; drop --no-verify or the key")
    if airgapped:
        from local.airgap import enable_offline_env

        early = [m for m in _HEAVY if m in sys.modules]
        enable_offline_env()
        if early:
            log.debug(
                "already imported before the offline switches: %s (the guard still applies)", early
            )
    from local.preflight import check_positions

    check_positions(model_dir, cfg)
    # KMS-wrapped keys need the network to unwrap: before the guard goes up.
    from local.keys import load_key

    key = load_key(key_file)
    args = dict(
        model_dir=model_dir,
        data=data,
        key_file=key_file,
        key=key,
        out=out,
        cfg=cfg,
        airgapped=airgapped,
        verify=verify,
        merge=merge,
        steps=steps,
        public_key=public_key,
        free_bytes=free_bytes,
        resume=resume,
        max_exposure=max_exposure,
        started=started,
    )
    isolation = "none"
    if airgapped:
        from local import netns

        isolation = netns.choose(strict=airgap_strict, allowed=isolate)
        if isolation == netns.NAMESPACE:
            return netns.run_in_namespace(args)
    with _guard(airgapped, out):
        return _run(**args, isolation=isolation)


def _run(
    *,
    model_dir: Path,
    data: Path,
    key_file: Path,
    key: bytes,
    out: Path,
    cfg: FinetuneConfig,
    airgapped: bool,
    verify: bool,
    merge: bool,
    steps: int,
    public_key: Path | None,
    free_bytes: int | None,
    resume: bool,
    max_exposure: float | None,
    started: float,
    isolation: str,
) -> FinetuneResult:
    from local import export, held
    from local.checkpoint import Checkpointer, fingerprint
    from local.dataset import inspect, iter_records
    from local.preflight import resolve_device, run_preflight
    from local.records import DEFAULT_CHAT_TEMPLATE, record_fields
    from local.scan import CONTENT, Finding, Forbidden, NgramSampler, drop_public

    device = resolve_device(cfg.device)
    compute_dtype = resolve_compute_dtype(cfg.compute_dtype, device)
    # Memory first: shapes from config.json on the meta device, no weights read.
    report = run_preflight(
        model_dir, cfg, device=device, compute_dtype=compute_dtype, free_bytes=free_bytes
    )
    # One authenticated pass over the data first: a bad record or a tampered file is reported
    # (line and record number) before the model is hashed, loaded or trained.
    info = inspect(data, key)
    log.info("dataset: %d records (%s) authenticated and valid", info.records, info.kind)
    if verify:
        from artifacts.verify import verify_dir

        manifest = verify_dir(model_dir, public_key=public_key)
        log.info("verified %d files of %s against its manifest", len(manifest.files), model_dir)
    else:
        log.warning("--no-verify: loading %s without checking it against a manifest", model_dir)
    base_label = _base_label(model_dir, verify)

    forbidden = _forbidden(data, key_file, key, model_dir, out)
    public = _base_public_files(model_dir, base_label, merge)
    _preflight_export(public, forbidden)
    checkpointer = Checkpointer(out, key, fingerprint(cfg, data, base_label))
    state = checkpointer.load_latest(device) if resume else None
    if not resume:
        checkpointer.refuse_stale()
    if held.held_path(out).exists():
        raise LocalError(
            f"{held.held_path(out)} holds a refused export of an earlier run for this --out; "
            "export or delete it first (`invoke export-held --help`)"
        )

    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    sampler = NgramSampler(cfg.seed)
    examples, enc = tokenize_records(
        iter_records(data, key), tokenizer, cfg, on_record=lambda r: sampler.add(record_fields(r))
    )
    private = drop_public(sampler.ngrams(), public.values())
    forbidden += [
        Forbidden("private content (an n-gram of the dataset)", g, CONTENT) for g in private
    ]
    if enc.over_long:
        log.warning(
            "%d of %d records were longer than max_seq_len=%d tokens: %s",
            enc.over_long,
            enc.records,
            cfg.max_seq_len,
            "dropped" if cfg.truncation == "drop" else "cut on the left (their ends kept)",
        )
    train, evals = split_eval(examples, cfg.eval_fraction, cfg.eval_max_records, cfg.seed)
    del examples
    log.info(
        "dataset: %d records (%s) for training, %d held out (decrypted in memory only)",
        len(train),
        ", ".join(f"{k} {v}" for k, v in sorted(enc.kinds.items())),
        len(evals),
    )
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )

    model = load_qlora_model(model_dir, cfg, device, compute_dtype, report.target_modules)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "4-bit %s base with LoRA on %s: %d trainable parameters",
        cfg.quant_type,
        report.target_modules,
        trainable,
    )
    packed = False
    if cfg.packing:
        from local.batching import packing_works

        packed = packing_works(model, device, len(tokenizer))
        if not packed:
            log.warning(
                "packing = true, but this model does not keep packed records apart; padded batches"
            )
    log.info("batches: %s", "packed (per-record position ids, no padding)" if packed else "padded")

    stats = train_model(
        model,
        train,
        evals,
        cfg,
        device=device,
        compute_dtype=compute_dtype,
        steps=steps,
        pad_id=pad_id,
        packed=packed,
        checkpointer=checkpointer,
        resume=state,
    )
    audit = None
    if cfg.audit_records:
        from local.audit import run_audit

        audit = run_audit(
            model,
            train,
            evals,
            cfg,
            device=device,
            compute_dtype=compute_dtype,
            pad_id=pad_id,
            heldout_loss=stats.loss_after,
        )

    with export.staging_dir(out) as staging:
        export.save_adapter(model, staging, base_label)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        export.copy_tokenizer(model_dir, staging, base_label)
        if enc.kinds.get("chat") and not getattr(tokenizer, "chat_template", None):
            (staging / "chat_template.jinja").write_text(DEFAULT_CHAT_TEMPLATE, encoding="utf-8")
        if airgapped:
            from local.airgap import violations

            if violations():
                _drop_checkpoints(out)
                raise LocalError(f"{violations()[0]}; the run was aborted and nothing was exported")
        metadata = {
            "kind": "qlora-adapter",
            "base_model": base_label,
            "steps": stats.steps,
            "eval_loss_before": round(stats.loss_before, 6),
            "eval_loss_after": round(stats.loss_after, 6),
            "train_loss_history": [[step, round(loss, 6)] for step, loss in stats.history],
            "eval_loss_history": [[step, round(loss, 6)] for step, loss in stats.evals],
            "early_stopped": stats.early_stopped,
            "merged": merge,
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
                "targets": report.target_modules,
            },
            "quantization": {
                "type": cfg.quant_type,
                "double_quant": cfg.double_quant,
                "compute_dtype": compute_dtype,
            },
        }
        if audit is not None:
            metadata["privacy_audit"] = audit
        try:
            exposure = audit["train_exposure"] if audit else None
            if max_exposure is not None and exposure is not None and exposure > max_exposure:
                label = f"privacy audit: train exposure {exposure} > --max-exposure {max_exposure}"
                raise export.ExportRefused(
                    f"export refused: {label}; nothing was exported", [Finding("(weights)", label)]
                )
            export.check_export(staging, forbidden)
            if merge:
                export.merge_adapter(model_dir, staging, base_label)
            info = export.finalize(staging, out, forbidden=forbidden, metadata=metadata)
        except export.ExportRefused as err:
            path = held.hold(staging, out, key, err.findings, metadata)
            raise LocalError(held.refusal_message(str(err), path, key_file, out)) from None
    checkpointer.clear()
    return FinetuneResult(
        steps=stats.steps,
        loss_before=stats.loss_before,
        loss_after=stats.loss_after,
        export_path=info.path,
        export_bytes=info.bytes,
        export_files=info.files,
        train_records=len(train),
        eval_records=len(evals),
        device=device,
        merged=merge,
        seconds=time.monotonic() - started,
        over_long=enc.over_long,
        dropped=enc.dropped,
        packed=packed,
        early_stopped=stats.early_stopped,
        resumed_from=stats.resumed_from,
        isolation=isolation,
        privacy_audit=audit,
    )
