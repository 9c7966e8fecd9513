"""The benchmark n-gram index of the decontaminate stage: build, save, load, look up.

Every benchmark item is split into words (`tasks.text.words`, the same normalisation as dedup) and
each of its word n-grams hashed (`tasks.text.ngram_hashes`, 64 bits). The index is a sorted uint64
array of the distinct n-gram hashes plus parallel arrays: the first owner (benchmark number, item
number; owners are ordered by benchmark then item) and how many items contain the n-gram. N-grams in
more than `max_items_per_ngram` items are left out (boilerplate such as "which of the following is
the best ..." means nothing about contamination). A document is looked up with one `np.searchsorted`
over its hashed n-grams.

Hash collisions: a document n-gram matches an unrelated index n-gram with probability about 2^-63
(~1e-19) per pair, i.e. about 3e-13 false matches per 1,000-word document against a 3M-entry index.

On disk (`save_index`): `hashes.npy`, `bench.npy` (uint16), `item.npy` (uint32), `owners.npy`
(uint32), `items.json` (benchmark names, item ids, 100-character previews) and `index.json` (the
summary), written into a temporary directory with `index.json` last, then renamed into place: a
directory without `index.json` is not an index.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage import paths
from tasks.benchmarks import BenchmarkItem
from tasks.text import ngram_hashes, words

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
ARRAYS = ("hashes", "bench", "item", "owners")
PREVIEW_CHARS = 100


@dataclass(frozen=True)
class IndexSource:
    """One benchmark to index: its name, a description for messages, and its items (read lazily)."""

    name: str
    where: str
    items: Callable[[], Iterator[BenchmarkItem]]


@dataclass
class NgramIndex:
    hashes: np.ndarray
    bench: np.ndarray
    item: np.ndarray
    owners: np.ndarray
    benchmarks: list[str]
    item_ids: list[list[str]]
    previews: list[list[str]]
    _bits: np.ndarray = field(init=False, repr=False)
    _shift: np.uint64 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Prefilter bitmap over the top k bits of the hashes, k so that ~1/16 of the bits are set: one
        # cache-friendly probe per n-gram rejects ~94% of misses before the binary search (which costs
        # ~20 cache misses each in a multi-MB array; bench/decontaminate.py measured 6x on the lookup).
        k = int(min(32, max(12, np.ceil(np.log2(max(1, len(self.hashes)) * 16)))))
        self._shift = np.uint64(64 - k)
        mask = np.zeros(1 << k, dtype=bool)
        mask[(self.hashes >> self._shift).astype(np.int64)] = True
        self._bits = np.packbits(mask, bitorder="little")

    def lookup(self, h: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `h` whose hash is in the index, their index rows); `valid` masks positions out."""
        if len(h) == 0 or len(self.hashes) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        top = (h >> self._shift).astype(np.int64)
        maybe = (self._bits[top >> 3] >> (top & 7).astype(np.uint8)) & 1
        cand = np.flatnonzero(maybe.astype(bool) if valid is None else maybe.astype(bool) & valid)
        pos = np.searchsorted(self.hashes, h[cand])
        pos[pos == len(self.hashes)] = 0
        hit = self.hashes[pos] == h[cand]
        return cand[hit], pos[hit]

    def owner(self, row: int) -> tuple[str, str]:
        """(benchmark name, item id) of an index row's first owner."""
        b = int(self.bench[row])
        return self.benchmarks[b], self.item_ids[b][int(self.item[row])]


def _item_hashes(source: IndexSource, n: int) -> tuple[list[np.ndarray], list[str], list[str], int]:
    arrays, ids, previews, short = [], [], [], 0
    for item in source.items():
        ids.append(item.id)
        previews.append(" ".join(item.text.split())[:PREVIEW_CHARS])
        h = ngram_hashes(words(item.text), n)
        if len(h) == 0:
            short += 1
        arrays.append(np.unique(h))
    return arrays, ids, previews, short


def build_index(sources: list[IndexSource], n: int, max_items_per_ngram: int) -> tuple[NgramIndex, dict[str, Any]]:
    """Index every source; a source with no item left in the index is a ValueError naming it."""
    t0 = time.perf_counter()
    assert len(sources) < 2**16, f"{len(sources)} benchmarks; at most 65535 fit the uint16 owner column"
    hs, bs, its, per_bench = [], [], [], []
    item_ids: list[list[str]] = []
    previews: list[list[str]] = []
    for b, src in enumerate(sources):
        arrays, ids, prev, short = _item_hashes(src, n)
        item_ids.append(ids)
        previews.append(prev)
        per_bench.append({"name": src.name, "source": src.where, "items": len(ids), "items_too_short": short})
        for j, a in enumerate(arrays):
            hs.append(a)
            bs.append(np.full(len(a), b, dtype=np.uint16))
            its.append(np.full(len(a), j, dtype=np.uint32))
    h = np.concatenate(hs) if hs else np.empty(0, np.uint64)
    bench = np.concatenate(bs) if bs else np.empty(0, np.uint16)
    item = np.concatenate(its) if its else np.empty(0, np.uint32)
    order = np.lexsort((item, bench, h))
    h, bench, item = h[order], bench[order], item[order]
    uniq, first, inverse, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    keep = counts <= max_items_per_ngram
    index = NgramIndex(uniq[keep], bench[first[keep]], item[first[keep]], counts[keep].astype(np.uint32),
                       [s.name for s in sources], item_ids, previews)
    kept_rows = keep[inverse]
    kept_items = np.unique((bench[kept_rows].astype(np.uint64) << np.uint64(32)) | item[kept_rows])
    indexed_per_bench = np.bincount((kept_items >> np.uint64(32)).astype(np.int64), minlength=len(sources))
    ngrams_per_bench = np.bincount(index.bench.astype(np.int64), minlength=len(sources))
    for b, row in enumerate(per_bench):
        row["items_indexed"] = int(indexed_per_bench[b])
        row["ngrams"] = int(ngrams_per_bench[b])
        if row["items_indexed"] == 0:
            _no_usable_items(row, n, max_items_per_ngram)
    summary = {"n": n, "max_items_per_ngram": max_items_per_ngram, "ngrams": len(index.hashes),
               "ngrams_too_common": int((~keep).sum()), "bytes": int(sum(getattr(index, a).nbytes for a in ARRAYS)),
               "build_seconds": round(time.perf_counter() - t0, 3), "benchmarks": per_bench}
    return index, summary


def _no_usable_items(row: dict[str, Any], n: int, max_items: int) -> None:
    if row["items"] == 0:
        why = "it has no items (empty file or split)"
    else:
        common = row["items"] - row["items_too_short"]
        why = (f"of its {row['items']} items {row['items_too_short']} have fewer than n={n} words and {common} only "
               f"have n-grams shared by more than max_items_per_ngram={max_items} items")
    raise ValueError(f"benchmark '{row['name']}' ({row['source']}) would decontaminate nothing: {why}. Check its "
                     f"`fields` (they may name short fields such as an answer letter), lower `n`, or remove it")


def save_index(index: NgramIndex, summary: dict[str, Any], directory: str) -> None:
    """Write the index atomically to `directory` (a concurrent identical build may win; same content)."""
    fs, final = paths.filesystem(directory)
    tmp = final.rstrip("/").rsplit("/", 1)
    tmp_dir = f"{tmp[0]}/.tmp-{tmp[1]}-{uuid.uuid4().hex[:8]}"
    fs.makedirs(tmp_dir, exist_ok=True)
    try:
        for name in ARRAYS:
            with fs.open(f"{tmp_dir}/{name}.npy", "wb") as f:
                np.save(f, getattr(index, name))
        with fs.open(f"{tmp_dir}/items.json", "w") as f:
            json.dump({"benchmarks": index.benchmarks, "item_ids": index.item_ids, "previews": index.previews}, f)
        with fs.open(f"{tmp_dir}/{INDEX_FILE}", "w") as f:
            json.dump(summary, f, indent=2)
        if fs.exists(f"{final}/{INDEX_FILE}"):
            log.warning("index %s was completed by another run; discarding this copy", directory)
            fs.rm(tmp_dir, recursive=True)
        else:
            fs.mv(tmp_dir, final, recursive=True)
    except BaseException:
        if fs.exists(tmp_dir):
            fs.rm(tmp_dir, recursive=True)
        raise


def read_summary(directory: str) -> dict[str, Any] | None:
    """The summary of a complete index, or None when `directory` holds none."""
    fs, p = paths.filesystem(directory)
    if not fs.exists(f"{p}/{INDEX_FILE}"):
        return None
    with fs.open(f"{p}/{INDEX_FILE}", "r") as f:
        return dict(json.load(f))


@functools.lru_cache(maxsize=2)
def load_index(directory: str) -> NgramIndex:
    """Load a complete index (cached per process: every shard task of a run reuses it)."""
    fs, p = paths.filesystem(directory)
    assert fs.exists(f"{p}/{INDEX_FILE}"), f"{directory} is not a complete n-gram index (no {INDEX_FILE})"
    arrays = {}
    for name in ARRAYS:
        with fs.open(f"{p}/{name}.npy", "rb") as f:
            arrays[name] = np.load(f)
    items = read_items(directory)
    return NgramIndex(**arrays, benchmarks=items["benchmarks"], item_ids=items["item_ids"], previews=items["previews"])


def read_items(directory: str) -> dict[str, Any]:
    """`items.json` of an index: benchmark names, item ids and previews (for reports)."""
    fs, p = paths.filesystem(directory)
    with fs.open(f"{p}/items.json", "r") as f:
        return dict(json.load(f))
