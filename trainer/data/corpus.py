"""A deterministic, learnable text corpus for the tiny recipe (no download, a few hundred kB).

Sentences come from a small probabilistic grammar (subjects, verbs, objects, places, times and a
few agreement rules), so a tiny model's validation loss falls quickly and then plateaus at the
grammar's entropy: exactly what the convergence criterion needs to see. Same seed, same bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

_ADJECTIVES = [
    "red",
    "quick",
    "lazy",
    "small",
    "old",
    "bright",
    "quiet",
    "brave",
    "clever",
    "green",
]
_SUBJECTS = ["fox", "dog", "cat", "bird", "farmer", "child", "teacher", "robot", "sailor", "baker"]
_VERBS = [
    ("sees", "saw"),
    ("follows", "followed"),
    ("helps", "helped"),
    ("finds", "found"),
    ("paints", "painted"),
    ("carries", "carried"),
    ("watches", "watched"),
    ("greets", "greeted"),
]
_OBJECTS = ["apple", "river", "house", "letter", "garden", "boat", "lamp", "tree", "song", "bridge"]
_PLACES = ["near the hill", "in the town", "by the sea", "under the bridge", "at the market"]
_TIMES = ["every morning", "at night", "on sunday", "after lunch", "in winter"]


def _noun_phrase(rng: random.Random, nouns: list[str]) -> str:
    noun = rng.choice(nouns)
    if rng.random() < 0.5:
        noun = f"{rng.choice(_ADJECTIVES)} {noun}"
    article = "an" if noun[0] in "aeiou" else "a"
    return f"{'the' if rng.random() < 0.6 else article} {noun}"


def sentence(rng: random.Random) -> str:
    """One sentence of the grammar (present or past tense, optional place and time)."""
    present, past = rng.choice(_VERBS)
    past_tense = rng.random() < 0.4
    words = [
        _noun_phrase(rng, _SUBJECTS),
        past if past_tense else present,
        _noun_phrase(rng, _OBJECTS),
    ]
    if rng.random() < 0.5:
        words.append(rng.choice(_PLACES))
    if past_tense and rng.random() < 0.5:
        words.append("yesterday")
    elif rng.random() < 0.3:
        words.append(rng.choice(_TIMES))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def generate_corpus(num_bytes: int = 400_000, seed: int = 1234) -> str:
    """Paragraphs of grammar sentences, about ``num_bytes`` long, identical for the same seed."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    size = 0
    while size < num_bytes:
        paragraph = " ".join(sentence(rng) for _ in range(rng.randint(3, 8)))
        paragraphs.append(paragraph)
        size += len(paragraph) + 1
    return "\n".join(paragraphs) + "\n"


def write_corpus(path: Path, num_bytes: int = 400_000, seed: int = 1234) -> Path:
    """Write :func:`generate_corpus` to ``path`` (UTF-8) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generate_corpus(num_bytes, seed), encoding="utf-8")
    return path


def planted_corpus(
    docs: int, exact: float = 0.2, near: float = 0.1, sentences: int = 24, seed: int = 7
) -> list[tuple[str, int, str]]:
    """A corpus with known duplicates, for the dedup tests and benchmark: ``(kind, origin, text)``.

    ``docs`` distinct documents (``kind`` ``distinct``, ``origin`` their own index) of
    ``sentences`` grammar sentences each, then ``exact × docs`` exact copies (every third with its
    whitespace re-wrapped) and ``near × docs`` near copies (one word replaced: word 5-gram Jaccard
    ≈ 0.95 at 24 sentences), each naming the distinct document it copies; shuffled with ``seed``.
    """
    rng = random.Random(seed)
    base = [" ".join(sentence(rng) for _ in range(sentences)) for _ in range(docs)]
    out = [("distinct", i, text) for i, text in enumerate(base)]
    for k in range(int(exact * docs)):
        i = rng.randrange(docs)
        text = base[i].replace(". ", ".  ") if k % 3 == 0 else base[i]
        out.append(("exact", i, text))
    for _ in range(int(near * docs)):
        i = rng.randrange(docs)
        words = base[i].split(" ")
        j = rng.randrange(len(words))
        words[j] = "zebra" if words[j] != "zebra" else "yak"
        out.append(("near", i, " ".join(words)))
    rng.shuffle(out)
    return out
