"""Exact duplicates: a 128-bit digest of the normalised text, grouped globally by sorting.

The key is `tasks.text.text_digest` (= `text_hash`: blake2b-128 of `normalise(text)`: NFKC, lowercase, whitespace runs
collapsed), so pages that differ only in case, spacing or Unicode compatibility forms are one document.
Per shard the digests are stored as two uint64 columns; the global step sorts all of them once
(`numpy.lexsort` on digest, then keep rank) and every group keeps its best-ranked member. Memory is
16 bytes + the rank (8 bytes) per document, no Python objects per document.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tasks.text import text_digest


def exact_digests(texts: Iterable[str]) -> np.ndarray:
    """(N, 2) uint64: the 128-bit exact-duplicate key of each text (as two little-endian words)."""
    raw = b"".join(map(text_digest, texts))
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(-1, 2)


def exact_kept(digests: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each document, the index of the copy its exact-duplicate group keeps (itself if kept).

    `rank` orders documents by the keep rule (smaller is kept); ties are impossible because the rank is
    a permutation. Groups are found by one lexsort of (digest, rank).
    """
    n = len(digests)
    kept = np.arange(n, dtype=np.int64)
    if n < 2:
        return kept
    order = np.lexsort((rank, digests[:, 1], digests[:, 0]))
    d = digests[order]
    new_group = np.concatenate(([True], np.any(d[1:] != d[:-1], axis=1)))
    group = np.cumsum(new_group) - 1
    first = order[new_group]
    kept[order] = first[group]
    return kept


def group_sizes(kept: np.ndarray) -> np.ndarray:
    """Size of every group with more than one member (kept[i] == i marks a group's kept copy)."""
    counts = np.bincount(kept, minlength=len(kept))
    return counts[counts > 1]
