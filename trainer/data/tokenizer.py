"""The stage-1 tokenizer: trained on a bounded sample of the corpus, or an existing fast tokenizer.

A byte-level BPE (``tokenizers``) trained on at most ``data.tokenizer_sample_bytes`` of text, the
sources in a seeded order, each from its start; or ``data.tokenizer``, a local folder or a store
URI (downloaded verified when it has a manifest). Its identity goes into the data fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from trainer.config import DataConfig
from trainer.data.reading import iter_docs
from trainer.data.sources import Source
from trainer.errors import TrainerError

EOS_TOKEN = "<|endoftext|>"


def load_tokenizer(folder: str | Path) -> Any:
    """An HF tokenizer from a local folder (no hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise TrainerError(f"cannot load tokenizer from {folder}: {err}") from None


def local_folder(spec: str, workdir: Path, name: str) -> Path:
    """A local folder for ``spec``: itself, or a verified/plain download of a store URI."""
    if "://" not in spec:
        path = Path(spec)
        if not path.is_dir():
            raise TrainerError(f"data.tokenizer {spec}: no such folder")
        return path
    from artifacts.manifest import MANIFEST_NAME
    from artifacts.store import open_store

    dest = workdir / name
    store = open_store(spec)
    if store.exists(MANIFEST_NAME):
        from artifacts.download import download_verified

        download_verified(spec, dest, force=True)
    else:
        objects = store.list()
        if not objects:
            raise TrainerError(f"data.tokenizer {spec}: nothing there")
        for obj in objects:
            store.download_file(obj.key, dest / obj.key)
    return dest


def _sample(sources: list[Source], budget: int, seed: int, scratch: Path) -> Any:
    """Texts for tokenizer training: sources in a seeded order, each from its start, ``budget`` bytes."""
    import random

    from trainer.data.reading import BadInput, Doc, fetch_local

    order = list(sources)
    random.Random(seed).shuffle(order)
    used = 0
    for src in order:
        path = fetch_local(src, scratch / "prepare" / "sources")  # the workers look there too
        try:
            for item in iter_docs(path, src):
                if isinstance(item, Doc):
                    yield item.text
                    used += item.nbytes
                    if used >= budget:
                        return
        except BadInput as err:
            raise TrainerError(str(err)) from None


def build_tokenizer(
    data: DataConfig, seed: int, sources: list[Source], out: Path, scratch: Path
) -> None:
    """Train a byte-level BPE on a bounded sample (or copy ``data.tokenizer``) into ``out``."""
    if out.exists():
        shutil.rmtree(out)
    if data.tokenizer:
        src = local_folder(data.tokenizer, scratch, "tokenizer-src")
        out.mkdir(parents=True)
        for f in sorted(src.iterdir()):  # copied as they are: no transformers import here
            if f.is_file() and f.name != "MANIFEST.json" and not f.name.endswith(".sig"):
                shutil.copy2(f, out / f.name)
        return
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _sample(sources, data.tokenizer_sample_bytes, seed, scratch),
        vocab_size=data.vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tok.save_pretrained(out)


def tokenizer_facts(folder: Path) -> tuple[int, int]:
    """(EOS id, vocabulary size incl. added tokens) from a fast tokenizer folder, without transformers."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos_name: Any = EOS_TOKEN
    config = folder / "tokenizer_config.json"
    if config.is_file():
        eos_name = json.loads(config.read_text()).get("eos_token") or EOS_TOKEN
    if isinstance(eos_name, dict):
        eos_name = eos_name.get("content", EOS_TOKEN)
    eos = tok.token_to_id(str(eos_name))
    if eos is None:
        raise TrainerError(
            f"tokenizer {folder}: no eos token ({eos_name!r}); set eos_token in tokenizer_config.json"
        )
    return eos, tok.get_vocab_size(with_added_tokens=True)


def tokenizer_identity(data: DataConfig, scratch: Path) -> str:
    """Content identity of an existing tokenizer (its ``tokenizer.json``), or how one is trained."""
    if not data.tokenizer:
        return "bpe-trained"
    folder = local_folder(data.tokenizer, scratch, "tokenizer-src")
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TrainerError(
            f"data.tokenizer {data.tokenizer}: no tokenizer.json (a fast tokenizer is needed)"
        )
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
