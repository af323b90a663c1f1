"""Builders shared by the QLoRA tests: a tiny Llama, a local tokenizer, an encrypted dataset.

No hub: the tokenizer is a byte-level BPE trained here, the model comes from ``LlamaConfig``,
and the folder goes through ``publish_dir`` + ``download_verified`` like a real base model.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

# Built at run time so the literal never appears in a source file a disk scan could find.
CANARY = "-".join(["ZEBRA", "CANARY", "7f3a91"])
WORDS = "the cat sat on mat dog ran to park bird flew over tree fish swam in pond sun rose above hill".split()
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "finetune-tiny.toml"


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(n)]


def build_tiny_llama(dest: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random tiny Llama + locally trained tokenizer into ``dest`` (no manifest)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus(),
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(str(dest))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(dest))
    return dest


def build_tiny_gpt2(dest: Path, *, seed: int = 0) -> Path:
    """Same tokenizer, GPT-2 architecture: fused ``c_attn`` (a ``Conv1D``) instead of q/k/v."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    build_tiny_llama(dest)
    tok = AutoTokenizer.from_pretrained(str(dest))
    for f in dest.glob("*.safetensors"):
        f.unlink()
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(str(dest))
    return dest


def verified_model(tmp: Path, signing_key: Path | None = None) -> Path:
    """A tiny model as `invoke download` leaves it: files + MANIFEST.json (+ .sig), verified."""
    from artifacts.download import download_verified
    from artifacts.publish import publish_dir

    src = build_tiny_llama(tmp / "build")
    store = tmp / "store" / "tiny"
    publish_dir(src, store.as_uri(), metadata={"kind": "test-base"}, signing_key=signing_key)
    model = tmp / "model"
    download_verified(store.as_uri(), model)
    return model


def records(n: int = 48, seed: int = 1) -> list[dict[str, str]]:
    """Prompt/response pairs with a learnable pattern; every one carries the canary."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        out.append({"prompt": f"{CANARY} {a} {b}", "response": f"{b} {a} {a} {b} the end {i % 3}"})
    return out


def encrypted_dataset(
    tmp: Path, n: int = 48, name: str = "secret-patients.jsonl.enc"
) -> tuple[Path, Path]:
    """``(cipher, key_file)``: records encrypted in memory; no plaintext file is ever written."""
    from local.crypto import encrypt_bytes
    from local.keys import generate_key_file, load_key

    keys = tmp / "keys"
    keys.mkdir(exist_ok=True)
    key_file = generate_key_file(keys / "team-dataset.key")
    plain = "".join(json.dumps(r) + "\n" for r in records(n)).encode()
    cipher = tmp / name
    cipher.write_bytes(encrypt_bytes(plain, load_key(key_file), chunk_size=256))
    return cipher, key_file


def files_containing(
    roots: list[Path], needle: bytes, since: float, limit: int = 200 * 1024 * 1024
) -> list[str]:
    """Files under ``roots`` modified after ``since`` whose bytes contain ``needle``."""
    hits = []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                    if st.st_mtime < since or st.st_size > limit or not p.is_file():
                        continue
                    if needle in p.read_bytes():
                        hits.append(str(p))
                except OSError:
                    continue  # vanished or unreadable (another process's temp file)
    return hits


def now() -> float:
    return time.time() - 1.0
