"""``[data.clean]``: per-document cleaning before deduplication and tokenization, with a reason per drop.

Always on (cheap, changes no meaning): Unicode NFC (the same text typed two ways becomes one byte
string, so exact dedup and the tokenizer see one form) and control characters stripped (C0/C1
except tab and newline; they carry no text and waste tokens). Then drops, each counted under its
reason (``empty``, ``too_short``, ``too_long``, ``repetition``, ``symbol_ratio``).

The Gopher filters (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from
Training Gopher", appendix A.1.1) are off by default: they were tuned on web crawl and would drop
code, tables, poetry and the tiny recipe's grammar sentences. Published thresholds, used as they are:

- repetition: drop when duplicate lines are > 30 % of lines or > 20 % of characters; when the most
  frequent word 2/3/4-gram covers > 20/18/16 % of characters; when duplicated 5…10-grams cover
  > 15/14/13/12/11/10 % of characters.
- symbol ratio: drop when ``#`` plus ``...``/``…`` per word exceed 0.1, when > 90 % of lines start
  with a bullet, when > 30 % of lines end with an ellipsis, or when < 80 % of words hold a letter.

Pure functions: the scan and the tokenizer workers call :func:`clean` on every document, and
both get the same answer, so cleaning is never stored between the two passes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from artifacts.config import check as _check

#: Why a document was dropped, in the order the checks run (the report's keys).
REASONS = ("empty", "too_short", "too_long", "repetition", "symbol_ratio")

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n
_CONTROL_BYTES = bytes([*range(0, 9), *range(11, 32), 127])
_WORD = re.compile(r"\w+")
TOP_NGRAM_MAX = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM_MAX = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
_BULLETS = ("•", "-", "*", "·", "‣", "◦", "–")


@dataclass(frozen=True)
class CleanConfig:
    """``[data.clean]``: what is dropped before dedup and tokenization (counted per reason in the report)."""

    min_chars: int = field(default=1, metadata={"min": 1})
    """Documents shorter than this (characters, after cleaning) are dropped as ``too_short``; 1 keeps
    every non-empty one (raise it, e.g. to 200, for web text)."""
    max_chars: int = field(default=1_000_000, metadata={"min": 1})
    """Documents longer than this are dropped as ``too_long`` (a minified page or a dump, not prose)."""
    gopher_repetition: bool = False
    """Gopher's repetition filter (duplicate lines and n-grams; thresholds in ``trainer/data/clean.py``)."""
    gopher_symbol_ratio: bool = False
    """Gopher's symbol filters (``#``/ellipsis per word, bullet and ellipsis lines, words without letters)."""
    max_symbol_word_ratio: float = field(default=0.1, metadata={"min": 0.0})
    """Symbol-to-word threshold of ``gopher_symbol_ratio`` (Gopher: 0.1)."""
    max_duplicate_line_fraction: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0})
    """Duplicate-line fraction threshold of ``gopher_repetition`` (Gopher: 0.3)."""

    def __post_init__(self) -> None:
        _check(
            self.max_chars >= self.min_chars,
            "data.clean.max_chars",
            f"must be >= data.clean.min_chars ({self.min_chars}), got {self.max_chars}",
        )


def normalize(text: str) -> str:
    """NFC, control characters out, surrounding whitespace off (ASCII text skips NFC: it is already NFC)."""
    if text.isascii():  # O(1) in CPython; most web and book text
        raw = text.encode()
        if len(raw.translate(None, _CONTROL_BYTES)) != len(raw):  # ~5x faster than a regex search
            text = _CONTROL.sub("", text)
        return text.strip()
    text = unicodedata.normalize("NFC", text)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    return text.strip()


def clean(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    """(cleaned text, None) for a kept document, or (text, reason) for a dropped one."""
    text = normalize(text)
    if not text:
        return text, "empty"
    if len(text) < cfg.min_chars:
        return text, "too_short"
    if len(text) > cfg.max_chars:
        return text, "too_long"
    if cfg.gopher_repetition and repetitive(text, cfg.max_duplicate_line_fraction):
        return text, "repetition"
    if cfg.gopher_symbol_ratio and symbol_heavy(text, cfg.max_symbol_word_ratio):
        return text, "symbol_ratio"
    return text, None


def clean_ascii_lines(chunk: bytes, cfg: CleanConfig) -> tuple[list[int], list[int], list[bytes]] | None:
    """:func:`clean` of every line of ``chunk`` (whole lines of a plain-text source) at once.

    (offsets in the chunk, sizes with the newline, cleaned bytes) of the kept lines; None when the
    chunk is not ASCII without control characters, where the per-document path must run (NFC,
    control characters, UTF-8 and NUL errors). For such a chunk the answer is :func:`clean`'s: the
    text is already NFC and has nothing to strip but spaces and tabs, and characters are bytes,
    so only the Gopher filters need a ``str``. One Python call per chunk instead of a generator,
    a decode and a :func:`clean` call per line (~10 µs a line in the dedup scan before).
    """
    if not chunk.isascii() or len(chunk.translate(None, _CONTROL_BYTES)) != len(chunk):
        return None
    lines = chunk.split(b"\n")
    ended = not lines[-1]
    if ended:
        lines.pop()
    lo, hi = cfg.min_chars, cfg.max_chars
    gopher = cfg.gopher_repetition or cfg.gopher_symbol_ratio
    offsets: list[int] = []
    sizes: list[int] = []
    texts: list[bytes] = []
    off = 0
    for raw in lines:
        n = len(raw) + 1
        text = raw.strip()
        if text and lo <= len(text) <= hi and not (gopher and clean(text.decode(), cfg)[1]):
            offsets.append(off)
            sizes.append(n)
            texts.append(text)
        off += n
    if not ended and offsets and offsets[-1] + sizes[-1] > len(chunk):
        sizes[-1] -= 1  # the file's last line, without a newline
    return offsets, sizes, texts


def repetitive(text: str, max_dup_lines: float = 0.3) -> bool:
    """Gopher's repetition removal (thresholds in the module doc)."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) > 1:
        seen: set[str] = set()
        dup_lines = dup_chars = 0
        for ln in lines:
            if ln in seen:
                dup_lines += 1
                dup_chars += len(ln)
            seen.add(ln)
        if dup_lines / len(lines) > max_dup_lines or dup_chars / len(text) > 0.2:
            return True
    words = _WORD.findall(text.lower())
    total = sum(map(len, words))
    if not total:
        return False
    for n, limit in TOP_NGRAM_MAX.items():
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if grams:
            gram, count = grams.most_common(1)[0]
            if count > 1 and count * sum(map(len, gram)) / total > limit:
                return True
    for n, limit in DUP_NGRAM_MAX.items():
        if len(words) < n:
            break
        seen_grams: set[tuple[str, ...]] = set()
        covered = [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i : i + n])
            if gram in seen_grams:
                covered[i : i + n] = [True] * n
            seen_grams.add(gram)
        if sum(len(w) for w, c in zip(words, covered, strict=True) if c) / total > limit:
            return True
    return False


def symbol_heavy(text: str, max_ratio: float = 0.1) -> bool:
    """Gopher's symbol and line-shape rules (thresholds in the module doc)."""
    words = text.split()
    if not words:
        return True
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / len(words) > max_ratio:
        return True
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if lines:
        if sum(ln.startswith(_BULLETS) for ln in lines) / len(lines) > 0.9:
            return True
        if sum(ln.endswith(("...", "…")) for ln in lines) / len(lines) > 0.3:
            return True
    alpha = sum(any(ch.isalpha() for ch in w) for w in words)
    return alpha / len(words) < 0.8


def empty_counts() -> dict[str, list[int]]:
    """Per reason: [documents, bytes] (what the markers and the report carry)."""
    return {r: [0, 0] for r in REASONS}
