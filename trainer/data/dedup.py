"""Deduplication, the pure parts: document keys, the per-partition join, clusters and the keep rule.

``data.dedup`` (``exact`` by default, ``minhash``, ``off``):

- ``exact``: one key per document, BLAKE2b-128 of its cleaned text with whitespace runs collapsed
  (so re-wrapped copies match; case and punctuation still count).
- ``minhash``: FineWeb's near-duplicate setting (datatrove's defaults): word 5-grams of the text
  lower-cased with punctuation removed, a MinHash of 14 × 8 = 112 permutations from ``datasketch``
  (its seeded permutations, applied to many documents per call by :class:`MinHasher`), cut into
  14 bands of 8; two documents whose signatures agree on a
  whole band are candidates (Jaccard 0.8 is caught with probability 1 - (1 - 0.8^8)^14 ≈ 0.92,
  0.9 with ≈ 0.999, 0.5 with ≈ 0.05). A band's key is a 64-bit mix of its 8 values.

A document's id is ``source index << 40 | byte offset`` (its place in the corpus order, the same on
every node and for any worker count). Keys are split into partitions by their value, each
partition joined on its own (one partition's keys in memory at a time, the nodes taking
partitions ``p % node_count == node_rank``): equal keys give edges to the lowest id. The edges of
every partition make a graph whose connected components (``scipy.sparse.csgraph``) are the
duplicate clusters; each cluster keeps its lowest id and drops the rest, so the result depends
only on the corpus and the settings.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

MODES = ("exact", "minhash", "off")
NGRAM = 5
BANDS = 14
ROWS = 8
OFFSET_BITS = 40
_NONWORD = re.compile(r"[^\w\s]+")


def doc_id(source_index: int, offset: int) -> int:
    """The corpus-order id of the document at ``offset`` of source ``source_index``."""
    if offset >= 1 << OFFSET_BITS:
        raise ValueError(f"offset {offset} beyond 1 TiB in one source: split the file")
    return source_index << OFFSET_BITS | offset


def split_id(ident: int) -> tuple[int, int]:
    """(source index, byte offset) of a document id."""
    return ident >> OFFSET_BITS, ident & ((1 << OFFSET_BITS) - 1)


def settings(mode: str) -> dict[str, Any]:
    """What the fingerprint records of the dedup method (changing any of it rebuilds)."""
    if mode == "minhash":
        return {"mode": mode, "ngram": NGRAM, "bands": BANDS, "rows": ROWS, "lib": "datasketch/affine32"}
    return {"mode": mode, "key": "blake2b-128/ws" if mode == "exact" else None}


def exact_key(text: str | bytes) -> bytes:
    """16 bytes identifying the text up to whitespace runs (``bytes``: one line of ASCII text without
    control characters, as :func:`~trainer.data.clean.clean_ascii_lines` keeps it: the same key)."""
    if isinstance(text, bytes):
        if b"  " in text or b"\t" in text:
            text = b" ".join(text.split())
        return hashlib.blake2b(text, digest_size=16).digest()
    if not text.isascii() or "  " in text or "\n" in text or "\t" in text:  # whitespace to collapse
        text = " ".join(text.split())
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class MinHasher:
    """MinHash signatures under one seed, many documents per numpy call.

    The permutations are datasketch's (``MinHash(num_perm=112, seed=seed).permutations``, scheme
    ``affine32``: the input hash pre-mixed by the MurmurHash3 finalizer, then ``a·h + b mod 2^32``)
    and a signature equals ``MinHash.update_batch`` of the same shingle hashes (tested); what we
    add is applying them to a batch of documents at once (``np.minimum.reduceat``), because
    datasketch's per-document objects and per-shingle Python hash calls cost more than the
    tokenizer itself. A shingle's hash: CRC-32 of each word, the 5 of a window combined by a
    polynomial in uint64 and folded to 32 bits (deterministic, unlike Python's ``hash``).
    """

    ROW_LIMIT = 1 << 15  # shingles per numpy call: 32 k × 112 × 4 B = 14 MB

    def __init__(self, permutations: tuple[Any, Any]) -> None:
        """``permutations``: :func:`permutations` of the seed (made once in the parent: importing
        datasketch costs ~0.7 s, which every spawned worker would pay again)."""
        import numpy as np

        a, b = permutations
        self._a, self._b = np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)
        self._mix = np.array(
            [0x9E3779B97F4A7C15 * (2 * i + 1) % (1 << 64) for i in range(ROWS)], dtype=np.uint64
        )

    def shingle_hashes(self, texts: list[str] | list[bytes]) -> tuple[Any, Any]:
        """(32-bit hashes of every document's word 5-grams, concatenated; shingles per document).

        Words: the text lower-cased, punctuation removed (ASCII text through a byte table, the
        rest through a regex), each hashed with CRC-32; a document of fewer than 5 words is
        padded with zeros to one 5-gram. The 5 words of a window are combined by a polynomial in
        uint64 over the whole batch at once, windows across documents skipped.
        """
        import itertools

        import numpy as np

        lists = [_word_crcs(t) for t in texts]
        lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        hw = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.uint64, count=int(lens.sum()))
        width = len(hw) - NGRAM + 1
        acc = hw[:width].copy()
        for k in range(1, NGRAM):
            acc *= np.uint64(0x100000001B3)
            acc += hw[k : k + width]
        counts = lens - (NGRAM - 1)
        firsts = np.cumsum(lens) - lens  # each document's first window
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        win = acc[np.repeat(firsts, counts) + offsets]
        return ((win >> np.uint64(32)) ^ win).astype(np.uint32), counts

    def signatures(self, hashes: Any, counts: Any) -> Any:
        """(documents, 112) uint32 signatures of :meth:`shingle_hashes`' output."""
        import numpy as np

        out = np.empty((len(counts), BANDS * ROWS), dtype=np.uint32)
        ends = np.cumsum(counts)
        starts = ends - counts
        i = 0
        while i < len(counts):
            # as many whole documents as fit ROW_LIMIT shingles (at least one)
            j = max(i + 1, int(np.searchsorted(ends, starts[i] + self.ROW_LIMIT, side="right")))
            lo, hi = int(starts[i]), int(ends[j - 1])
            if j - i > 1:
                perm = self._permute(hashes[lo:hi])
                out[i:j] = np.minimum.reduceat(perm, starts[i:j] - lo, axis=1).T
            else:  # one document bigger than ROW_LIMIT: min over chunks
                out[i] = np.min(
                    [self._permute(hashes[c : min(c + self.ROW_LIMIT, hi)]).min(axis=1)
                     for c in range(lo, hi, self.ROW_LIMIT)], axis=0,
                )  # fmt: skip
            i = j
        return out

    def _permute(self, h: Any) -> Any:
        """(112, n): every permutation of every hash (datasketch's affine32 pre-mix, then a·h + b)."""
        import numpy as np

        h = h ^ (h >> np.uint32(16))  # MurmurHash3's fmix32
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        h = h ^ (h >> np.uint32(16))
        out = np.multiply.outer(self._a, h)
        out += self._b[:, None]
        return out

    def band_keys(self, signatures: Any) -> Any:
        """(documents, 14) uint64: each band's 8 values mixed into one key."""
        import numpy as np

        rows = signatures.astype(np.uint64).reshape(len(signatures), BANDS, ROWS)
        key = (rows * self._mix).sum(axis=2, dtype=np.uint64)
        return key ^ (key >> np.uint64(31))  # fold the high bits into the low ones partitions use


def _ascii_table() -> bytes:
    keep = {*b"abcdefghijklmnopqrstuvwxyz0123456789_", *b" \t\n\r\x0b\x0c"}
    return bytes(c if c in keep or c >= 128 else 32 for c in range(256))


_ASCII_PUNCT_TO_SPACE = _ascii_table()


def _word_crcs(text: str | bytes) -> list[int]:
    """CRC-32 of each word of the lower-cased text without punctuation, padded to NGRAM words
    (``bytes``: ASCII text, as :func:`~trainer.data.clean.clean_ascii_lines` keeps it)."""
    import zlib

    if isinstance(text, bytes):
        words = text.lower().translate(_ASCII_PUNCT_TO_SPACE).split()
    elif text.isascii():
        words = text.encode().lower().translate(_ASCII_PUNCT_TO_SPACE).split()
    else:
        words = [w.encode() for w in _NONWORD.sub(" ", text.lower()).split()]
    crcs = list(map(zlib.crc32, words))
    return crcs + [0] * (NGRAM - len(crcs)) if len(crcs) < NGRAM else crcs


def permutations(seed: int) -> tuple[Any, Any]:
    """datasketch's 112 affine32 permutations (a, b) of ``seed``.

    ``MinHash(num_perm=112, seed=seed).permutations`` draws them from ``RandomState(seed)`` (a
    random odd ``a`` below 2^32, then ``b``); the same draws here, because importing datasketch
    (it pulls scipy) costs ~0.5 s of the parent's serial time. A test holds the two equal.
    """
    import numpy as np

    gen = np.random.RandomState(seed)
    n = BANDS * ROWS
    a = gen.randint(0, 1 << 31, n, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, n, dtype=np.uint32)
    return a, b


def key_width(mode: str) -> tuple[int, int]:
    """(bands, uint64 words per band key) of a mode."""
    return (BANDS, 1) if mode == "minhash" else (1, 2)


def partition_of(keys: Any, partitions: int) -> Any:
    """Partition of each band key (rows of uint64 words): its first word modulo ``partitions``."""
    return keys[..., 0] % partitions


def join_partition(ids: Any, keys: Any) -> Any:
    """Edges (id, lowest id sharing its key) of one band's rows in one partition; shape (E, 2)."""
    import numpy as np

    if len(ids) < 2:
        return np.empty((0, 2), dtype=np.uint64)
    view = np.ascontiguousarray(keys).view(f"V{keys.shape[1] * 8}").ravel()
    _, group = np.unique(view, return_inverse=True)
    order = np.lexsort((ids, group))
    g, sid = group[order], ids[order]
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    head = sid[np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))]
    dup = ~first
    return np.stack([sid[dup], head[dup]], axis=1).astype(np.uint64)


def clusters(edges: Any) -> tuple[Any, Any]:
    """(member ids, cluster label) of every document in a duplicate cluster, sorted by label then id.

    Labels are the cluster's lowest id (its kept document), so they do not depend on edge order.
    Edges that are already stars (every member in one edge, no head a member: what ``exact``'s
    one key per document gives, and ``minhash``'s pairs found in several bands) are their own
    clusters; the rest go through scipy's connected components (imported only then: ~0.3 s).
    """
    import numpy as np

    if len(edges) == 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64)
    edges = np.unique(edges, axis=0)  # a pair found in several bands is one edge
    members, heads = edges[:, 0], edges[:, 1]
    stars = (heads < members).all() and not np.isin(heads, members).any()
    if stars and len(np.unique(members)) == len(members):
        nodes = np.concatenate([members, np.unique(heads)])  # join_partition: head < member
        label = np.concatenate([heads, np.unique(heads)])
        order = np.lexsort((nodes, label))
        return nodes[order].astype(np.uint64), label[order].astype(np.uint64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(edges.ravel(), return_inverse=True)
    inv = inv.reshape(-1, 2)
    graph = coo_matrix(
        (np.ones(len(inv), dtype=np.int8), (inv[:, 0], inv[:, 1])), shape=(len(nodes), len(nodes))
    )
    _, comp = connected_components(graph, directed=False)
    lowest = np.full(comp.max() + 1, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(lowest, comp, nodes)  # nodes are sorted: any order of edges gives this
    label = lowest[comp]
    order = np.lexsort((nodes, label))
    return nodes[order], label[order]


def dropped(members: Any, labels: Any) -> Any:
    """Ids to drop: every cluster member but the kept one (its label)."""
    return members[members != labels]
