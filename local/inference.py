"""A base model with or without its adapter, loaded to run (``generate``, ``evaluate``).

With an adapter the base is loaded in 4-bit as the fine-tune loaded it (quantization settings
from the adapter export's manifest, else the recipe's defaults) and the adapter is put on top:
the adapter runs on the very weights it was trained against. Without one, the model folder
(a base, or a merged export under ``OUT/merged/``) is loaded in full precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.errors import LocalError


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    device: str
    compute_dtype: str
    chat_template: str | None
    """The tokenizer's chat template, or the one the adapter export carries."""


def check_paths(model_dir: Path, adapter: Path | None) -> None:
    """One-line errors for a wrong ``--model`` / ``--adapter`` before anything is loaded."""
    if not (model_dir / "config.json").is_file():
        raise LocalError(f"--model {model_dir}: no config.json (a model folder from `invoke download`?)")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise LocalError(f"--adapter {adapter}: no adapter_config.json (an `invoke finetune` export?)")


def quantization(adapter: Path) -> dict[str, Any]:
    """The adapter's 4-bit settings from its export manifest (defaults: the recipe's)."""
    from local.config import FinetuneConfig

    cfg = FinetuneConfig()
    q = {"type": cfg.quant_type, "double_quant": cfg.double_quant, "compute_dtype": "auto"}
    manifest = adapter / "MANIFEST.json"
    if manifest.is_file():
        q.update(json.loads(manifest.read_text(encoding="utf-8")).get("metadata", {}).get("quantization", {}))
    return q


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(model_dir: Path, adapter: Path | None) -> tuple[Any, str | None]:
    """The tokenizer (the adapter's copy where it has one) and the chat template to use."""
    from transformers import AutoTokenizer

    src = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else model_dir
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    template = tok.chat_template
    if not template and adapter is not None and (adapter / "chat_template.jinja").is_file():
        template = (adapter / "chat_template.jinja").read_text(encoding="utf-8")
    return tok, template


def load(model_dir: Path, adapter: Path | None, *, base_only: bool = False) -> Loaded:
    """Model + tokenizer; ``base_only`` loads the base as the adapter would run on it (4-bit)."""
    from local.model import load_4bit_base, load_full_precision, resolve_compute_dtype

    dev = device()
    tok, template = load_tokenizer(model_dir, adapter)
    if adapter is None:
        model = load_full_precision(model_dir)
        if dev == "cuda":
            model = model.to("cuda")
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        return Loaded(model, tok, dev, dtype, template)
    q = quantization(adapter)
    dtype = resolve_compute_dtype(q.get("compute_dtype", "auto"), dev)
    model = load_4bit_base(model_dir, dev, dtype, q["type"], q["double_quant"])
    if not base_only:
        model = with_adapter(model, adapter)
    return Loaded(model.eval(), tok, dev, dtype, template)


def with_adapter(base: Any, adapter: Path) -> Any:
    """The adapter on top of a loaded base (inference only)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter), is_trainable=False).eval()
