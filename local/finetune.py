"""The QLoRA fine-tune: verified 4-bit NF4 base + LoRA, trained on records decrypted in memory.

Order of a run (each step can refuse with a one-line :class:`LocalError`):

1. config and paths checked; ``--airgapped`` sets the HF offline switches *before* transformers,
   peft or bitsandbytes are imported, then everything below runs inside the network guard;
2. the model folder is re-verified against its manifest (unless ``verify=False``);
3. preflight: device, free memory, estimated peak at 4-bit — refuse with advice if it cannot fit;
4. the encrypted dataset is decrypted chunk by chunk straight into the tokenizer: only token ids
   are kept, in memory; a slice is held out to measure the loss before and after;
5. base loaded in 4-bit NF4 (double quantization) by bitsandbytes, ``prepare_model_for_kbit_training``
   (non-reentrant gradient checkpointing), LoRA on the attention q/v projections, HF ``Trainer``
   with ``save_strategy="no"`` and ``report_to="none"`` in a throw-away scratch folder;
6. export (``local.export``): adapter + tokenizer (+ merged model), checked, manifest, one rename.

Nothing plaintext touches the disk: there is no dataset cache, no checkpoint, and log lines only
ever carry counts and losses.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import os
import platform
import random
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.config import FinetuneConfig
from local.errors import LocalError

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "### Prompt:\n{prompt}\n\n### Response:\n{response}"
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

    def summary(self) -> str:
        return (
            f"fine-tuned {self.steps} steps on {self.device} in {self.seconds:.1f}s: eval loss "
            f"{self.loss_before:.4f} -> {self.loss_after:.4f}; exported {self.export_files} files "
            f"({self.export_bytes / 1e6:.2f} MB) to {self.export_path}"
        )


# ---------------------------------------------------------------------------------------------
# Data: records → token ids, in memory (pure apart from the tokenizer call)


def record_text(record: dict[str, str]) -> str:
    """One training string per record: ``text`` as is, or prompt and response joined."""
    if "text" in record:
        return record["text"]
    return PROMPT_TEMPLATE.format(prompt=record["prompt"], response=record["response"])


def tokenize_records(
    records: Iterable[dict[str, str]], tokenizer: Any, max_len: int
) -> list[list[int]]:
    """Token ids per record, truncated to ``max_len`` and ended with EOS; strings are dropped."""
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    if eos is None:
        raise LocalError(
            "the model's tokenizer has no EOS token; add one to its tokenizer_config.json"
        )
    out = []
    for record in tqdm(records, desc="decrypt + tokenize", unit="rec", leave=False):
        ids = tokenizer(record_text(record), add_special_tokens=True)["input_ids"][: max_len - 1]
        out.append([*ids, eos])
    return out


def split_eval(
    examples: list[list[int]], fraction: float, max_eval: int, seed: int
) -> tuple[list, list]:
    """Hold out a seeded random slice for evaluation (pure)."""
    if len(examples) < 2:
        raise LocalError(
            f"the dataset has {len(examples)} record(s); need at least 2 (one is held out to measure the loss)"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, round(len(examples) * fraction)), len(examples) - 1)
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    evals = [examples[i] for i in sorted(held)]
    return train, evals


class _Examples:
    """A map-style dataset over in-memory token ids (no ``datasets``: nothing cached to disk)."""

    def __init__(self, examples: list[list[int]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.examples[i]}


def make_collator(pad_id: int) -> Any:
    """Right-pad a batch; padding gets attention 0 and label -100 (ignored by the loss)."""
    import torch

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


# ---------------------------------------------------------------------------------------------
# Model


def resolve_compute_dtype(requested: str, device: str) -> str:
    """``auto`` → bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on the CPU."""
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def load_qlora_model(
    model_dir: Path, cfg: FinetuneConfig, device: str, compute_dtype: str, targets: list[str]
) -> Any:
    """The base in 4-bit NF4 + double quantization, prepared for k-bit training, with LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, compute_dtype)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quant,
        dtype=dtype,
        device_map={"": 0 if device == "cuda" else "cpu"},
        local_files_only=True,
    )
    _keep_cpu_weights_trainable(model)
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        bias=cfg.lora_bias,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _keep_cpu_weights_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    Why: bitsandbytes 0.50 on a CPU with AVX512-BF16 rewrites a ``Linear4bit`` weight in place
    into a packed layout the first time the module runs in eval mode without grad (i.e. our
    "loss before" evaluation). The packed path has no autograd kernel, so every later training
    step silently gets zero LoRA gradients (measured here: grad_norm 0, loss flat). Training
    must see the same weights it was loaded with, so the repacking is turned off.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _training_args(
    cfg: FinetuneConfig, scratch: Path, device: str, compute_dtype: str, max_steps: int
) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(scratch),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        max_steps=max_steps,
        optim=cfg.optim,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=device == "cpu",
        bf16=compute_dtype == "bfloat16",
        fp16=compute_dtype == "float16",
        dataloader_num_workers=0,  # workers would fork copies of the plaintext-derived ids
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
        disable_tqdm=False,
        push_to_hub=False,
    )


@dataclass(frozen=True)
class TrainStats:
    loss_before: float
    loss_after: float
    steps: int
    history: list[list[float]]
    """``[[step, training loss], ...]`` every ``logging_steps``."""


def train_model(
    model: Any,
    train: list[list[int]],
    evals: list[list[int]],
    cfg: FinetuneConfig,
    *,
    device: str,
    compute_dtype: str,
    steps: int,
    pad_id: int,
) -> TrainStats:
    """HF Trainer over in-memory examples; eval loss on the held-out slice before and after.

    The Trainer's output folder is a throw-away temp dir: with ``save_strategy="no"`` it stays
    empty (no checkpoint, optimizer or RNG state); it is deleted either way.
    """
    from transformers import Trainer

    with tempfile.TemporaryDirectory(prefix="twostage-trainer-") as scratch:
        trainer = Trainer(
            model=model,
            args=_training_args(cfg, Path(scratch), device, compute_dtype, steps),
            train_dataset=_Examples(train),
            eval_dataset=_Examples(evals),
            data_collator=make_collator(pad_id),
        )
        loss_before = float(trainer.evaluate()["eval_loss"])
        log.info("eval loss before: %.4f", loss_before)
        trainer.train()
        loss_after = float(trainer.evaluate()["eval_loss"])
        done = int(trainer.state.global_step)
        history = [
            [int(e["step"]), float(e["loss"])] for e in trainer.state.log_history if "loss" in e
        ]
        log.info("eval loss after %d steps: %.4f", done, loss_after)
        leftovers = [p for p in Path(scratch).rglob("*") if p.is_file()]
        if leftovers:  # save_strategy="no" means none; say so if a library wrote anyway
            log.warning("trainer scratch held %d file(s); removed unexported", len(leftovers))
    if not (math.isfinite(loss_before) and math.isfinite(loss_after)):
        raise LocalError(
            f"training diverged (eval loss {loss_before} -> {loss_after}); lower learning_rate"
        )
    return TrainStats(loss_before, loss_after, done, history)


# ---------------------------------------------------------------------------------------------
# The run


def _forbidden(
    data: Path, key_file: Path, key: bytes, model_dir: Path, out: Path, staging: Path
) -> list[Any]:
    from local.crypto import key_id
    from local.export import Forbidden

    items = [
        Forbidden("data file path", str(data.resolve())),
        Forbidden("data file path", str(data)),
        Forbidden("key file path", str(key_file.resolve())),
        Forbidden("key file path", str(key_file)),
        Forbidden("model folder path", str(model_dir.resolve())),
        Forbidden("export folder path", str(out.resolve())),
        Forbidden("staging folder path", str(staging)),
        Forbidden(
            "home folder path", os.path.expanduser("~") if os.path.expanduser("~") != "/" else ""
        ),
        Forbidden("key ID", key_id(key).hex()),
        Forbidden("data file name", data.name, name=True),
        Forbidden("key file name", key_file.name, name=True),
    ]
    for host in {socket.gethostname(), platform.node()}:
        if len(host) >= 4:
            items.append(Forbidden("hostname", host, name=True))
    for stem in (data.name.split(".")[0], key_file.name.split(".")[0]):
        if len(stem) >= 4:
            items.append(Forbidden("data/key file name", stem, name=True))
    return items


def _base_label(model_dir: Path, verified: bool) -> str:
    """Neutral base reference for exported configs: the verified manifest's hash, else ``base``."""
    from artifacts.manifest import MANIFEST_NAME

    manifest = model_dir / MANIFEST_NAME
    if verified and manifest.is_file():
        return "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    return "base"


@contextlib.contextmanager
def _guard(airgapped: bool) -> Iterator[None]:
    if not airgapped:
        yield
        return
    from local.airgap import AirgapViolation
    from local.airgap import airgapped as guard

    try:
        with guard():
            yield
    except AirgapViolation as err:
        raise LocalError(f"{err}; the run was aborted and nothing was exported") from None


def run_finetune(
    model_dir: Path,
    data: Path,
    key_file: Path,
    out: Path,
    *,
    config: FinetuneConfig | None = None,
    airgapped: bool = False,
    verify: bool = True,
    merge: bool = False,
    max_steps: int | None = None,
    public_key: Path | None = None,
    free_bytes: int | None = None,
) -> FinetuneResult:
    """Fine-tune ``model_dir`` on the encrypted ``data`` and export to ``out``; see module doc."""
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
    if airgapped:
        from local.airgap import enable_offline_env

        early = [m for m in _HEAVY if m in sys.modules]
        enable_offline_env()
        if early:
            log.debug(
                "already imported before the offline switches: %s (the guard still applies)", early
            )
    # KMS-wrapped keys need the network to unwrap: before the guard goes up.
    from local.keys import load_key

    key = load_key(key_file)
    with _guard(airgapped):
        return _run(
            model_dir,
            data,
            key_file,
            key,
            out,
            cfg,
            airgapped,
            verify,
            merge,
            max_steps,
            public_key,
            free_bytes,
            started,
        )


def _run(
    model_dir: Path,
    data: Path,
    key_file: Path,
    key: bytes,
    out: Path,
    cfg: FinetuneConfig,
    airgapped: bool,
    verify: bool,
    merge: bool,
    max_steps: int | None,
    public_key: Path | None,
    free_bytes: int | None,
    started: float,
) -> FinetuneResult:
    from local import export
    from local.dataset import iter_records
    from local.preflight import resolve_device, run_preflight

    steps = max_steps if max_steps is not None else cfg.max_steps
    if steps < 1:
        raise LocalError(f"--max-steps must be >= 1, got {steps}")
    if public_key is not None and not verify:
        raise LocalError("--public-key needs verification; drop --no-verify or the key")
    if verify:
        from artifacts.verify import verify_dir

        manifest = verify_dir(model_dir, public_key=public_key)
        log.info("verified %d files of %s against its manifest", len(manifest.files), model_dir)
    else:
        log.warning("--no-verify: loading %s without checking it against a manifest", model_dir)
    base_label = _base_label(model_dir, verify)

    device = resolve_device(cfg.device)
    compute_dtype = resolve_compute_dtype(cfg.compute_dtype, device)
    report = run_preflight(
        model_dir, cfg, device=device, compute_dtype=compute_dtype, free_bytes=free_bytes
    )

    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    examples = tokenize_records(iter_records(data, key), tokenizer, cfg.max_seq_len)
    train, evals = split_eval(examples, cfg.eval_fraction, cfg.eval_max_records, cfg.seed)
    del examples
    log.info(
        "dataset: %d records for training, %d held out (decrypted in memory only)",
        len(train),
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

    stats = train_model(
        model,
        train,
        evals,
        cfg,
        device=device,
        compute_dtype=compute_dtype,
        steps=steps,
        pad_id=pad_id,
    )

    with export.staging_dir(out) as staging:
        export.save_adapter(model, staging, base_label)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        export.copy_tokenizer(model_dir, staging, base_label)
        if merge:
            export.merge_adapter(model_dir, staging, base_label)
        if airgapped:
            from local.airgap import violations

            if violations():
                raise LocalError(
                    f"{violations()[0]}; the run was aborted and nothing was exported"
                )
        metadata = {
            "kind": "qlora-adapter",
            "base_model": base_label,
            "steps": stats.steps,
            "eval_loss_before": round(stats.loss_before, 6),
            "eval_loss_after": round(stats.loss_after, 6),
            "train_loss_history": [[step, round(loss, 6)] for step, loss in stats.history],
            "merged": merge,
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
        info = export.finalize(
            staging,
            out,
            forbidden=_forbidden(data, key_file, key, model_dir, out, staging),
            metadata=metadata,
        )
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
    )
