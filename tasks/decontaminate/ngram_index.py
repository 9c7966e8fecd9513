"""The benchmark n-gram index of the decontaminate stage: build, save, load, look up.

Every text of a benchmark item (`BenchmarkItem.texts()`: e.g. question + correct answer, the question
alone) is split into words (`tasks.text.words`, the same normalisation as dedup). A text of at least
`n` words (the benchmark's n) contributes each of its word n-grams; a shorter one of at least
`min_words` words contributes itself whole (one window of its own length, so it matches only where all
its words appear contiguously); a shorter one nothing (an item with no text left is counted as
`items_too_short`). A window is hashed as `tasks.text.ngram_hashes` does (64 bits; the hash depends on the
window length). The index is a sorted uint64 array of the distinct window hashes, their window length
(uint8), and every item holding each window as a CSR list (`offsets` into `owner_bench` / `owner_item`,
ordered by benchmark then item), so a match names every item it belongs to, not just the first.
Windows in more than `max_items_per_ngram` items are left out (boilerplate such as "which of the
following is the best ..." means nothing about contamination). A document is looked up once per
distinct window length with one `np.searchsorted` each.

Hash collisions: a document window matches an unrelated index window with probability about 2^-63
(~1e-19) per pair, i.e. about 2e-12 false matches per 1,000-word document against a 3M-entry index
looked up at 6 window lengths.

On disk (`save_index`): `hashes.npy`, `length.npy` (uint8), `offsets.npy` (int64), `owner_bench.npy`
(uint16), `owner_item.npy` (uint32) and `items.json` (benchmark names, item ids, 100-character
previews), written in place into the `decontaminate_index` artifact directory that
`tasks.decontaminate.ensure_index` opens with storage.artifacts.ArtifactWriter; its `manifest.json`
(the summary in `extras`), written last, makes it an index: a directory without one is not.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage import paths
from storage.manifest import MANIFEST, ShardInfo
from tasks.decontaminate.benchmarks import BenchmarkItem
from tasks.text import rolling_ngram_hashes, window_hashes, word_hashes, words

log = logging.getLogger(__name__)

ITEMS_FILE = "items.json"
ARRAYS = ("hashes", "length", "offsets", "owner_bench", "owner_item")
PREVIEW_CHARS = 100


@dataclass(frozen=True)
class IndexSource:
    """One benchmark to index: its name, a description for messages, its items (read lazily) and matching."""

    name: str
    where: str
    items: Callable[[], Iterator[BenchmarkItem]]
    n: int = 13
    min_words: int = 8


@dataclass
class NgramIndex:
    hashes: np.ndarray
    length: np.ndarray
    offsets: np.ndarray
    owner_bench: np.ndarray
    owner_item: np.ndarray
    benchmarks: list[str]
    item_ids: list[list[str]]
    previews: list[list[str]]
    lengths: list[int] = field(init=False)
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
        self.lengths = [int(x) for x in np.unique(self.length)]

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

    def owners(self, row: int) -> list[tuple[int, int]]:
        """(benchmark number, item number) of every item holding an index row's window."""
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        return list(zip(self.owner_bench[a:b].tolist(), self.owner_item[a:b].tolist()))

    def name(self, bench: int, item: int) -> tuple[str, str]:
        """(benchmark name, item id)."""
        return self.benchmarks[bench], self.item_ids[bench][item]


def _item_hashes(source: IndexSource) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str], int, int]:
    """A benchmark's windows (hashes, lengths, item numbers; an item's duplicates included), item ids,
    previews, items too short and items matched only whole.

    Vectorised over the whole benchmark (an item's texts repeat its question, so per-text numpy calls
    cost more than the hashing): the words of every indexed text are hashed as one array, the n-gram
    hashes rolled over it once and the windows inside one text kept; a short text's whole-window hash
    is the same sum over its own words (`rolling_ngram_hashes` with n = its length).
    """
    n, lo = source.n, source.min_words
    ids: list[str] = []
    previews: list[str] = []
    parts: list[np.ndarray] = []
    # texts share lines (the question, the answers) and words() never crosses "\n": hash each line once
    line_hashes: dict[str, np.ndarray] = {}
    starts, sizes, lens, owner = [], [], [], []
    short = whole = at = 0
    for j, item in enumerate(source.items()):
        ids.append(item.id)
        previews.append(" ".join(item.text.split())[:PREVIEW_CHARS])
        longest = 0
        for text in item.texts():
            hashed = []
            for line in text.split("\n"):
                if line not in line_hashes:
                    toks = words(line)
                    line_hashes[line] = word_hashes(toks, len(toks))
                hashed.append(line_hashes[line])
            count = sum(map(len, hashed))
            size = n if count >= n else count if count >= lo else 0
            if size:
                starts.append(at)
                sizes.append(size)
                lens.append(count)
                owner.append(j)
                parts += hashed
                at += count
                longest = max(longest, size)
        short += longest == 0
        whole += 0 < longest < n
    wh = np.concatenate(parts) if parts else np.empty(0, np.uint64)
    start_a, size_a, length_a, item_a = (np.asarray(x, dtype=np.int64) for x in (starts, sizes, lens, owner))
    full = size_a == n
    counts = length_a[full] - n + 1
    first = np.cumsum(counts) - counts
    pos = np.arange(int(counts.sum())) - np.repeat(first, counts) + np.repeat(start_a[full], counts)
    hs = [rolling_ngram_hashes(wh, n)[pos]]
    ls = [np.full(len(pos), n, np.uint8)]
    its = [np.repeat(item_a[full], counts)]
    for k in np.unique(size_a[~full]).tolist():
        sel = size_a == k
        hs.append(window_hashes(wh, start_a[sel], k))
        ls.append(np.full(int(sel.sum()), k, np.uint8))
        its.append(item_a[sel])
    item_all = np.concatenate(its)
    order = np.argsort(item_all, kind="stable")  # item order, so build_index needs one stable sort by hash
    return (
        np.concatenate(hs)[order],
        np.concatenate(ls)[order],
        item_all[order].astype(np.uint32),
        ids,
        previews,
        short,
        whole,
    )


def build_index(sources: list[IndexSource], max_items_per_ngram: int) -> tuple[NgramIndex, dict[str, Any]]:
    """Index every source; a source with no item left in the index is a ValueError naming it."""
    t0 = time.perf_counter()
    assert len(sources) < 2**16, f"{len(sources)} benchmarks; at most 65535 fit the uint16 owner column"
    hs, ls, bs, its, per_bench = [], [], [], [], []
    item_ids: list[list[str]] = []
    previews: list[list[str]] = []
    for b, src in enumerate(sources):
        assert src.min_words <= src.n, f"benchmark {src.name}: min_words {src.min_words} > n {src.n}"
        h, length, item, ids, prev, short, whole = _item_hashes(src)
        item_ids.append(ids)
        previews.append(prev)
        per_bench.append(
            {
                "name": src.name,
                "source": src.where,
                "n": src.n,
                "min_words": src.min_words,
                "items": len(ids),
                "items_too_short": short,
                "items_whole": whole,
            }
        )
        hs.append(h)
        ls.append(length)
        bs.append(np.full(len(h), b, dtype=np.uint16))
        its.append(item)
    h = np.concatenate(hs) if hs else np.empty(0, np.uint64)
    length = np.concatenate(ls) if ls else np.empty(0, np.uint8)
    bench = np.concatenate(bs) if bs else np.empty(0, np.uint16)
    item = np.concatenate(its) if its else np.empty(0, np.uint32)
    order = np.argsort(h, kind="stable")  # entries come in (benchmark, item) order: now by hash, then those
    h, length, bench, item = h[order], length[order], bench[order], item[order]
    first_of_item = np.ones(len(h), dtype=bool)  # an item holding a window twice (in two texts) owns it once
    first_of_item[1:] = (h[1:] != h[:-1]) | (bench[1:] != bench[:-1]) | (item[1:] != item[:-1])
    h, length, bench, item = h[first_of_item], length[first_of_item], bench[first_of_item], item[first_of_item]
    change = np.ones(len(h), dtype=bool)  # h is sorted: np.unique would sort it again
    change[1:] = h[1:] != h[:-1]
    first = np.flatnonzero(change)
    counts = np.diff(np.append(first, len(h)))
    uniq, inverse = h[first], np.repeat(np.arange(len(first)), counts)
    keep = counts <= max_items_per_ngram
    kept_rows = keep[inverse]
    offsets = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    index = NgramIndex(
        uniq[keep],
        length[first[keep]],
        offsets,
        bench[kept_rows],
        item[kept_rows],
        [s.name for s in sources],
        item_ids,
        previews,
    )
    kept_items = np.unique((bench[kept_rows].astype(np.uint64) << np.uint64(32)) | item[kept_rows])
    indexed_per_bench = np.bincount((kept_items >> np.uint64(32)).astype(np.int64), minlength=len(sources))
    ngrams_per_bench = np.bincount(index.owner_bench.astype(np.int64), minlength=len(sources))
    for b, row in enumerate(per_bench):
        row["items_indexed"] = int(indexed_per_bench[b])
        row["ngrams"] = int(ngrams_per_bench[b])
        if row["items_indexed"] == 0:
            _no_usable_items(row, max_items_per_ngram)
    summary = {
        "ngrams": len(index.hashes),
        "lengths": index.lengths,
        "max_items_per_ngram": max_items_per_ngram,
        "ngrams_too_common": int((~keep).sum()),
        "bytes": int(sum(getattr(index, a).nbytes for a in ARRAYS)),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "benchmarks": per_bench,
    }
    return index, summary


def _no_usable_items(row: dict[str, Any], max_items: int) -> None:
    if row["items"] == 0:
        why = "it has no items (empty file or split)"
    else:
        common = row["items"] - row["items_too_short"]
        why = (
            f"of its {row['items']} items {row['items_too_short']} have fewer than min_words={row['min_words']} "
            f"words and {common} only have n-grams shared by more than max_items_per_ngram={max_items} items"
        )
    raise ValueError(
        f"benchmark '{row['name']}' ({row['source']}) would decontaminate nothing: {why}. Check its "
        f"`fields` or `format` (fields may name short fields such as an answer letter), lower "
        f"`min_words`, or remove it"
    )


def save_index(index: NgramIndex, directory: str) -> list[ShardInfo]:
    """Write the index files into `directory` (an artifact being written; its manifest comes after);
    returns them as the manifest's shards (rows: entries, or items for `items.json`)."""
    fs, p = paths.filesystem(directory)
    fs.makedirs(p, exist_ok=True)
    files = []
    for name in ARRAYS:
        array = getattr(index, name)
        with fs.open(f"{p}/{name}.npy", "wb") as f:
            np.save(f, array)
        files.append(ShardInfo(name=f"{name}.npy", rows=len(array), bytes=int(fs.size(f"{p}/{name}.npy"))))
    with fs.open(f"{p}/{ITEMS_FILE}", "w") as f:
        json.dump({"benchmarks": index.benchmarks, "item_ids": index.item_ids, "previews": index.previews}, f)
    items = sum(len(ids) for ids in index.item_ids)
    files.append(ShardInfo(name=ITEMS_FILE, rows=items, bytes=int(fs.size(f"{p}/{ITEMS_FILE}"))))
    return files


@functools.lru_cache(maxsize=2)
def load_index(directory: str) -> NgramIndex:
    """Load a complete index (cached per process: every shard task of a run reuses it)."""
    fs, p = paths.filesystem(directory)
    assert fs.exists(f"{p}/{MANIFEST}"), f"{directory} is not a complete n-gram index (no {MANIFEST})"
    arrays = {}
    for name in ARRAYS:
        with fs.open(f"{p}/{name}.npy", "rb") as f:
            arrays[name] = np.load(f)
    items = read_items(directory)
    return NgramIndex(**arrays, benchmarks=items["benchmarks"], item_ids=items["item_ids"], previews=items["previews"])


def read_items(directory: str) -> dict[str, Any]:
    """`items.json` of an index: benchmark names, item ids and previews (for reports)."""
    fs, p = paths.filesystem(directory)
    with fs.open(f"{p}/{ITEMS_FILE}", "r") as f:
        return dict(json.load(f))
