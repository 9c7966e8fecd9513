"""Line-level dedup for the clean stage (ccNet / Llama 3 style): global line counts, frequent lines removed.

A line's key is the 64-bit xxh3 hash of its normalised form: whitespace collapsed, case folded, every digit
read as 0 (ccNet's normalisation, so "Page 3 of 12" and "Page 4 of 12" are one line); blank lines have no
key and are never removed. Counts are occurrences over the whole input (a line repeated inside one page
counts each time), bounded in memory by partitioning on the hash:
  1. count map, per input shard: the unique keys of the shard with their counts, split by `key % partitions`
     into `_work/clean/lines/p-PPP/part-NNNNN.npy` (structured rows: key, count).
  2. one task per partition: sums its keys over every shard (memory: that partition's unique keys),
     writes the keys seen more than `max_line_repeats` times to `frequent-PPP.npy` and returns its
     `TOP_LINES` most frequent (key, count) pairs; the global top lines are the best of those.
  3. the filter map loads every partition's frequent keys (only the repeated lines: small) and removes them.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

from storage import paths
from tasks.clean.urls import load_array, save_array

KEY_COUNT = np.dtype([("key", "<u8"), ("count", "<i8")])
TOP_LINES = 20
_DIGITS = str.maketrans("123456789", "000000000")
_SPACE = re.compile(r"\s+")


def line_key(line: str) -> int | None:
    """The hash of a line's normalised form, None for a blank line."""
    norm = _SPACE.sub(" ", line).strip().casefold().translate(_DIGITS)
    if not norm:
        return None
    return int(xxhash.xxh3_64_intdigest(norm.encode("utf-8", "surrogatepass")))


def partition_dir(work: str, p: int) -> str:
    return paths.join(work, "lines", f"p-{p:03d}")


def counts_file(work: str, p: int, index: int) -> str:
    return paths.join(partition_dir(work, p), paths.shard_name(index, "part", "npy"))


def frequent_file(work: str, p: int) -> str:
    return paths.join(work, "lines", f"frequent-{p:03d}.npy")


def write_counts(work: str, index: int, keys: list[int], partitions: int) -> int:
    """Write one shard's (key, count) rows per partition; returns its number of unique keys."""
    arr = np.asarray(keys, dtype=np.uint64)
    uniq, counts = np.unique(arr, return_counts=True)
    part = (uniq % np.uint64(partitions)).astype(np.int64)
    for p in range(partitions):
        sel = part == p
        rows = np.empty(int(sel.sum()), dtype=KEY_COUNT)
        rows["key"], rows["count"] = uniq[sel], counts[sel]
        save_array(counts_file(work, p, index), rows)
    return len(uniq)


def sum_partition(work: str, p: int, n_shards: int, max_repeats: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Sum partition p over the shards; write its frequent keys. Returns (unique lines, frequent lines, top)."""
    parts = [np.asarray(load_array(counts_file(work, p, i))) for i in range(n_shards)]
    rows = np.concatenate(parts) if parts else np.empty(0, KEY_COUNT)
    keys, inverse = np.unique(rows["key"], return_inverse=True)
    totals = np.bincount(inverse, weights=rows["count"], minlength=len(keys)).astype(np.int64)
    frequent = totals > max_repeats
    save_array(frequent_file(work, p), keys[frequent])
    order = np.argsort(-totals[frequent], kind="stable")[:TOP_LINES]
    top = [(int(k), int(c)) for k, c in zip(keys[frequent][order], totals[frequent][order])]
    return len(keys), int(frequent.sum()), top


def load_frequent(work: str, partitions: int) -> np.ndarray:
    """Every partition's frequent keys, sorted (the lines the filter map removes; 8 bytes each)."""
    parts = [np.asarray(load_array(frequent_file(work, p))) for p in range(partitions)]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.uint64)


def frequent_mask(frequent: np.ndarray, keys: list[int]) -> np.ndarray:
    """Which of `keys` are frequent (one vectorised lookup per document)."""
    if not len(frequent) or not keys:
        return np.zeros(len(keys), dtype=bool)
    arr = np.asarray(keys, dtype=np.uint64)
    idx = np.minimum(np.searchsorted(frequent, arr), len(frequent) - 1)
    return np.asarray(frequent[idx] == arr)
