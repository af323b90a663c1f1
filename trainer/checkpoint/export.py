"""Consolidated weights from a committed checkpoint, on request (``invoke export-checkpoint``).

Interim checkpoints hold no gathered model (``trainer.loop.hf``): writing 14 GB from one rank
at every save of a 7B run, and inside a spot notice, buys nothing a resume needs. When someone
does want the weights of step N (to evaluate it, to fine-tune from it), this turns the ZeRO
shards into one HF folder: the checkpoint is downloaded and verified against its manifest,
DeepSpeed's ``zero_to_fp32`` merges the fp32 master partitions of every rank, and the model
config and tokenizer are copied beside the weights, so ``from_pretrained`` loads the folder.

``zero_to_fp32`` runs as ``python -m deepspeed.utils.zero_to_fp32`` in a child process: running
that file by path fails (``deepspeed/utils/torch.py`` shadows torch), and the child keeps
DeepSpeed's import out of the caller.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

log = logging.getLogger(__name__)

#: Files of a checkpoint folder that describe the model and go with the exported weights.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def pick_step(steps: list[int], step: int | None, run_uri: str) -> int:
    """The committed step to export: ``step`` if committed, the newest when None."""
    if not steps:
        raise TrainerError(f"{run_uri}: no committed checkpoint to export")
    if step is None:
        return steps[-1]
    if step not in steps:
        shown = ", ".join(str(s) for s in steps[-8:])
        raise TrainerError(
            f"step {step} has no committed checkpoint in {run_uri} (committed: {shown}); "
            "pass one of those to --step"
        )
    return step


def consolidate(checkpoint: Path, out: Path, *, timeout: float | None = None) -> None:
    """``zero_to_fp32`` of a local checkpoint folder, saved into ``out`` as an HF model folder.

    ``zero_to_fp32`` writes one fp32 ``pytorch_model.bin`` (its ``--safe_serialization`` refuses
    models with tied embeddings, e.g. GPT-2); the state dict is then loaded into the model built
    from the checkpoint's ``config.json`` and written with ``save_pretrained`` (safetensors, tied
    weights handled), with the tokenizer files beside it.
    """
    raw = out.parent / f"{out.name}.fp32"
    raw.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "deepspeed.utils.zero_to_fp32", str(checkpoint), str(raw)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise TrainerError(
            f"zero_to_fp32 failed on {checkpoint} (exit {proc.returncode}): {' | '.join(tail)}"
        )
    weights = sorted(raw.glob("pytorch_model*.bin"))
    if not weights:
        raise TrainerError(f"zero_to_fp32 wrote no weights for {checkpoint} into {raw}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(checkpoint), local_files_only=True)
    model = AutoModelForCausalLM.from_config(config)
    state: dict[str, Any] = {}
    for path in weights:
        state.update(torch.load(path, map_location="cpu", weights_only=True))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]:
        raise TrainerError(
            f"{checkpoint}: the consolidated weights do not fit its config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.save_pretrained(str(out))
    shutil.rmtree(raw, ignore_errors=True)
    for name in MODEL_FILES:
        if (checkpoint / name).is_file() and not (out / name).exists():
            shutil.copy2(checkpoint / name, out / name)


def export_checkpoint(
    run_uri: str,
    out: Path,
    *,
    step: int | None = None,
    public_key: Path | None = None,
    force: bool = False,
) -> tuple[int, Path]:
    """Download checkpoint ``step`` of ``run_uri`` verified, consolidate it into ``out``.

    ``out`` appears by one rename only once the weights are written; it must be new or empty
    unless ``force``. Returns ``(step, out)``.
    """
    from artifacts.download import download_verified
    from artifacts.run import Run
    from trainer.checkpoint.resume import committed_steps

    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TrainerError(f"{out}: exists and is not empty; pass --force to replace it")
    run = Run(run_uri)
    chosen = pick_step(committed_steps(run), step, run_uri)
    src = run.child_uri(run.checkpoint(chosen))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        ckpt = Path(tmp) / f"checkpoint-{chosen}"
        download_verified(src, ckpt, public_key=public_key)
        staged = Path(tmp) / "export"
        consolidate(ckpt, staged)
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    log.info("exported step %d of %s to %s", chosen, run_uri, out)
    return chosen, out
