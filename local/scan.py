"""What must not leave the box, and a precise search for it in an export folder.

Three kinds of needles, each matched the way that finds it without tripping on ordinary files:

* ``exact`` — absolute paths (data, key, model, export, staging, home) and the data key's ID:
  case-sensitive substring anywhere, vocabulary files included;
* ``word`` — hostnames and the data/key file names: case-insensitive and only as a *whole* name
  (not inside ``__metadata__`` or ``trainable_token_indices``), outside vocabulary files, whose
  tokens are public base-model content;
* ``content`` — private content: word n-grams sampled from the decrypted records (never short
  common words: :data:`NGRAM_WORDS` consecutive words, at least :data:`NGRAM_MIN_CHARS`
  characters), minus any n-gram the base model's own files already contain; looked for as raw
  and as JSON-escaped text outside vocabulary files.

Searched: whole text/JSON files, safetensors headers (tensor names, ``__metadata__``) and GGUF
metadata (names, chat template; its vocabulary like a vocabulary file). The
names, paths and hostnames are known before training, so :func:`preflight_scan` checks the
files the export will copy from the base before any heavy work; only private content can be found
after training.
"""

from __future__ import annotations

import json
import random
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EXACT, WORD, CONTENT = "exact", "word", "content"
#: Vocabulary files: public base-model content whose tokens may spell ordinary words.
VOCAB_FILES = frozenset({"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model"})
NGRAM_WORDS = 8
NGRAM_MIN_CHARS = 32
NGRAM_SAMPLE_RECORDS = 512
NGRAMS_PER_FIELD = 2
_NAME_CHARS = rb"A-Za-z0-9_.\-"


@dataclass(frozen=True)
class Forbidden:
    """A string that must not appear in the export; ``kind`` says how it is matched (above)."""

    label: str
    value: str
    kind: str = EXACT


@dataclass(frozen=True)
class Finding:
    """One hit: which file holds which kind of forbidden string (never the string itself)."""

    file: str
    label: str


def searchable_bytes(path: Path) -> bytes:
    """What a reader could find strings in: whole text files, the header of safetensors files."""
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(min(n, 100 * 1024 * 1024))
    return path.read_bytes()


#: GGUF metadata holding the (public) vocabulary: matched like a vocabulary file.
GGUF_VOCAB_KEYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})


def searchable_parts(path: Path) -> list[tuple[str, bytes]]:
    """``(name for matching, bytes)`` a reader could find strings in.

    A GGUF file is searched in its metadata, where text lives (names, chat template, the
    vocabulary), never its tensor data: the vocabulary as a vocabulary file, every other string
    as ordinary text. Other files: :func:`searchable_bytes`.
    """
    if path.suffix != ".gguf":
        return [(path.name, searchable_bytes(path))]
    from gguf import GGUFReader

    vocab, text = [], []
    for key, field in GGUFReader(str(path), "r").fields.items():
        value = field.contents()
        strings = value if isinstance(value, list) else [value]
        chunk = [key] + [v for v in strings if isinstance(v, str)]
        (vocab if key in GGUF_VOCAB_KEYS else text).extend(chunk)
    return [("tokenizer.json", "\n".join(vocab).encode()), (path.name, "\n".join(text).encode())]


def _word_pattern(value: str) -> re.Pattern[bytes]:
    needle = re.escape(value.encode("utf-8"))
    return re.compile(
        rb"(?<![" + _NAME_CHARS + rb"])" + needle + rb"(?![" + _NAME_CHARS + rb"])", re.I
    )


def _forms(value: str) -> set[bytes]:
    """The raw UTF-8 form and the JSON-escaped forms a serializer may have written."""
    return {
        value.encode("utf-8"),
        json.dumps(value)[1:-1].encode("ascii"),
        json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8"),
    }


def scan_bytes(name: str, data: bytes, forbidden: Iterable[Forbidden]) -> str | None:
    """The label of the first forbidden string in ``data`` (file basename ``name``), else None."""
    vocab = name in VOCAB_FILES
    for f in forbidden:
        if not f.value:
            continue
        if f.kind == EXACT:
            if f.value.encode("utf-8") in data:
                return f.label
        elif vocab:
            continue
        elif f.kind == WORD:
            if _word_pattern(f.value).search(data):
                return f.label
        elif any(form in data for form in _forms(f.value)):
            return f.label
    return None


def scan_folder(root: Path, forbidden: Iterable[Forbidden]) -> list[Finding]:
    """Every file under ``root`` that holds a forbidden string, with the first label found."""
    forbidden = list(forbidden)
    found = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        for name, data in searchable_parts(path):
            label = scan_bytes(name, data, forbidden)
            if label:
                found.append(Finding(path.relative_to(root).as_posix(), label))
                break
    return found


class NgramSampler:
    """Word n-grams of private content, sampled while records stream past (seeded).

    Reservoir-samples :data:`NGRAM_SAMPLE_RECORDS` records, then takes up to
    :data:`NGRAMS_PER_FIELD` windows of :data:`NGRAM_WORDS` words per field; windows shorter
    than :data:`NGRAM_MIN_CHARS` characters are dropped (they could be ordinary phrases). The
    n-grams stay in memory only, like the token ids.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.reservoir: list[list[str]] = []
        self.seen = 0

    def add(self, fields: list[str]) -> None:
        self.seen += 1
        if len(self.reservoir) < NGRAM_SAMPLE_RECORDS:
            self.reservoir.append(fields)
        else:
            j = self.rng.randint(0, self.seen - 1)
            if j < NGRAM_SAMPLE_RECORDS:
                self.reservoir[j] = fields

    def ngrams(self) -> set[str]:
        out: set[str] = set()
        for fields in self.reservoir:
            for text in fields:
                words = text.split()
                if len(words) < NGRAM_WORDS:
                    continue
                starts = range(len(words) - NGRAM_WORDS + 1)
                for start in self.rng.sample(starts, min(NGRAMS_PER_FIELD, len(starts))):
                    gram = " ".join(words[start : start + NGRAM_WORDS])
                    if len(gram) >= NGRAM_MIN_CHARS:
                        out.add(gram)
        return out


def drop_public(ngrams: set[str], public: Iterable[bytes]) -> set[str]:
    """Remove n-grams the base model's own (public) files already contain, e.g. a system prompt
    from its chat template that the records repeat."""
    blobs = [b for b in public]
    return {g for g in ngrams if not any(form in blob for blob in blobs for form in _forms(g))}


def preflight_scan(files: dict[str, bytes], forbidden: Iterable[Forbidden]) -> list[Finding]:
    """Check what the export will copy from the base (``{rel: bytes}``) before any training."""
    forbidden = [f for f in forbidden if f.kind != CONTENT]
    out = []
    for rel, data in sorted(files.items()):
        label = scan_bytes(rel.rsplit("/", 1)[-1], data, forbidden)
        if label:
            out.append(Finding(rel, label))
    return out
