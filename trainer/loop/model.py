"""The causal LM: GPT-2 or Llama built from the recipe's sizes, or an HF folder (local or stored)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig
from trainer.errors import TrainerError

log = logging.getLogger(__name__)


def build_model_config(
    cfg: ModelConfig, *, vocab_size: int, block_size: int, eos_token_id: int
) -> Any:
    """An HF ``PretrainedConfig`` for the family and sizes in ``cfg``."""
    if cfg.family == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=block_size,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=cfg.tie_word_embeddings,
        )
    from transformers import LlamaConfig

    intermediate = cfg.intermediate_size or 64 * ((8 * cfg.hidden_size // 3 + 63) // 64)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=block_size,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def local_model_folder(spec: str, workdir: Path) -> Path:
    """``spec`` as a local folder; a store URI is downloaded (verified when it has a manifest)."""
    if "://" not in spec:
        path = Path(spec)
        if not (path / "config.json").exists():
            raise TrainerError(
                f"model.init_from: {spec} has no config.json (not an HF model folder)"
            )
        return path
    from artifacts.manifest import MANIFEST_NAME
    from artifacts.store import open_store

    dest = workdir / "init-model"
    store = open_store(spec)
    if store.exists(MANIFEST_NAME):
        from artifacts.download import download_verified

        download_verified(spec, dest, force=True)
    else:
        for obj in store.list():
            store.download_file(obj.key, dest / obj.key)
    if not (dest / "config.json").exists():
        raise TrainerError(f"model.init_from: {spec} has no config.json (not an HF model folder)")
    return dest


def build_model(
    cfg: ModelConfig, *, vocab_size: int, block_size: int, eos_token_id: int, workdir: Path
) -> Any:
    """A fresh model from sizes, or ``from_pretrained`` of ``init_from`` (never a hub id)."""
    from transformers import AutoModelForCausalLM

    if cfg.init_from:
        folder = local_model_folder(cfg.init_from, workdir)
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        if model.get_input_embeddings().weight.shape[0] < vocab_size:
            model.resize_token_embeddings(vocab_size)
    else:
        config = build_model_config(
            cfg, vocab_size=vocab_size, block_size=block_size, eos_token_id=eos_token_id
        )
        model = AutoModelForCausalLM.from_config(config)
    # Under ZeRO-3 parameters are partitioned at construction: ds_numel is the full size.
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    log.info("model: %s, %.2fM parameters", type(model).__name__, n_params / 1e6)
    return model
