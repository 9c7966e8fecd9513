"""Dedup stage: `quality` documents -> `dedup` documents, exact and MinHash near duplicates removed.

Global across all shards of the input version, in five steps (flows/dedup.py runs them); every work file is
under the version's `_work/minhash/`, read and written through fsspec (`Work`: in place on a local root, a
private local directory plus upload/download on an object store), so every task may run on any machine:
  1. `dedup_signature_shard` (map over shards): per shard, the exact key (`tasks.dedup.exact`), the keep-rule
     key (`keys-NNNNN.parquet`), MinHash signatures cut into bands: per band b a file
     `bands/b-BBB/part-NNNNN.npy` of (64-bit band key, 32-bit second key, row) per document, and, with
     `verify_jaccard`, the sorted shingle-hash set of each document (`shingles-NNNNN.u32` + offsets).
  2. `dedup_exact` (one task): ranks all documents by the keep rule, groups exact duplicates by sorting
     digests; writes the ranks, the exact kept copies and the LSH input (exact survivors with shingles).
  3. `dedup_band` (map over bands): one band's keys of every shard, survivors only, sorted; bucket pairs
     (`tasks.dedup.minhash.keyed_band_pairs`) to `pairs/b-BBB.npy`. Memory ~40 bytes per document,
     whatever the number of bands; a band's output depends only on that band.
  4. `dedup_cluster` (one task, the union step): the union of the bands' pairs, optional true-Jaccard
     verification of the candidate pairs and of the pairs inside small candidate components (pread of
     only those documents' shingle sets), union-find over the pairs' documents, one kept document per
     cluster; writes per-shard decisions and `_work/clusters.parquet` (every cluster member).
     Memory: the pairs plus ~80 bytes per document (rank, exact and kept arrays, ids).
  5. `dedup_shard` (map over shards): copies each input shard (`process`), sending the decided documents
     to `rejected/`.
Decisions are those of the former single-process cluster step, bit for bit (tests/tasks/test_dedup_scale.py).
Keep rule (`keep`): `earliest` crawl_date (ISO-8601 text; documents without a date lose) or
`highest_quality` (`quality_score` column from the quality stage); ties by id. Drop reasons:
`exact_duplicate` (detail `kept_id`: the exact copy kept; if that copy is itself a near duplicate, its
own rejected record names the survivor) and `near_duplicate` (`cluster_id`, `kept_id`). No meta columns
are added. The report and the dry-run plan: `tasks.dedup.report`. References: Broder 1997 (MinHash),
FineWeb (5-grams, 14 x 8).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, Field, model_validator

from storage import paths
from storage.documents import (
    Document,
    Rejects,
    ShardResult,
    count_rows,
    iter_batches,
    read_schema,
    run_document_shard,
)
from storage.params import StageParams
from storage.stats import StageStats
from tasks.dedup.exact import exact_digests, exact_kept
from tasks.dedup.minhash import (
    XXHASH_MISSING,
    HashFunction,
    MinHasher,
    band_check,
    band_keys,
    choose_kept,
    connected_components,
    expand_pairs,
    jaccard_sorted,
    keyed_band_pairs,
    unique_pairs,
    unique_sets,
)

log = logging.getLogger(__name__)

STAGE = "dedup"
STAGE_VERSION = 1
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
QUALITY_COLUMN = "quality_score"
WORK = "_work/minhash"
CLUSTERS = "_work/clusters.parquet"


class DedupParams(StageParams):
    keep: Literal["earliest", "highest_quality"] = Field(
        "earliest",
        description="Which copy of a duplicate group survives: the earliest crawl_date, or the "
        "highest quality_score (needs the quality stage's column); ties by id.",
    )
    exact: bool = Field(True, description="Remove exact duplicates (same normalised text) across all shards.")
    near: bool = Field(True, description="Remove near duplicates with MinHash + LSH across all shards.")
    shingle_size: int = Field(5, ge=1, le=32, description="Words per shingle (FineWeb: 5).")
    bands: int = Field(14, ge=1, le=256, description="LSH bands (FineWeb: 14).")
    rows: int = Field(
        8, ge=1, le=64, description="MinHash rows per band (FineWeb: 8); bands x rows permutations in all."
    )
    seed: int = Field(1, ge=0, le=2**32 - 1, description="Seed of the MinHash permutations.")
    hash_function: HashFunction = Field(
        "xxhash",
        description="32-bit shingle hash. xxhash (xxh32 of the shingle's UTF-8 bytes): signatures equal "
        "datasketch's MinHash(hashfunc=xxhash.xxh32_intdigest) bit for bit; the signature "
        "step is 1.5x faster than sha1 (bench/dedup.py). sha1 (first 4 bytes of SHA-1, "
        "datasketch's default hashfunc): signatures equal datasketch's default MinHash bit "
        "for bit. Both are the same MinHash over the same shingles; only the shingle hash "
        "differs, so recall and precision match (bench/dedup.py measures both).",
    )
    verify_jaccard: bool = Field(
        True,
        description="Check each LSH candidate pair's true shingle Jaccard before joining it (cuts false positives).",
    )
    jaccard_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Minimum true Jaccard of a verified pair, "
        "measured exactly on the two documents' shingle-hash sets (the shingles the "
        "signatures are built from).",
    )
    all_pairs_max: int = Field(
        16,
        ge=2,
        le=256,
        description="With verification, candidate components (documents "
        "joined by LSH candidate pairs) up to this size have all their pairs checked, so "
        "copies that share no band are still found through a third copy; larger ones "
        "check only their candidate pairs.",
    )
    keep_work: bool = Field(
        False,
        description="Keep signatures and shingle sets under _work/ after commit "
        "(debugging); does not change the output or the version.",
    )

    @model_validator(mode="after")
    def _check(self) -> DedupParams:
        if not (self.exact or self.near):
            raise ValueError("dedup: exact and near are both off; turn one on or skip the dedup stage")
        return self

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def version_params(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"keep_work"})


BANDS = "bands"  # under WORK: bands/b-BBB/part-NNNNN.npy, one per band and shard
PAIRS = "pairs"  # under WORK: pairs/b-BBB.npy, one per band
# one row of a band file: the band's 64-bit key, a second 32-bit key, the document's row in its shard
BAND_ROW = np.dtype([("key", "<u8"), ("check", "<u4"), ("row", "<u4")])


def band_name(b: int) -> str:
    return f"b-{b:03d}"


def band_file(b: int, index: int) -> str:
    return f"{BANDS}/{band_name(b)}/{paths.shard_name(index, 'part', 'npy')}"


def pairs_file(b: int) -> str:
    return f"{PAIRS}/{band_name(b)}.npy"


class Work:
    """The version's `_work/minhash/` as one task sees it. On a local root the directory itself (memory maps and
    pread in place); on an object store a private local directory: `out(name)` files are uploaded by `publish()`,
    `get(name)` downloads the one file a task needs, and the directory is removed on exit. So any task can run on
    any machine that reaches the root."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.remote = paths.is_remote(out_dir)
        if self.remote:
            base = os.path.join(paths.cache_dir(), "work")
            os.makedirs(base, exist_ok=True)
            self.dir = tempfile.mkdtemp(prefix="dedup-", dir=base)
        else:
            self.dir = paths.local_path(paths.join(out_dir, WORK))
        self._written: list[str] = []

    def __enter__(self) -> Work:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.remote:
            paths.remove_local(self.dir)

    def out(self, name: str) -> str:
        """A local path to write `name` to (published by `publish`)."""
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._written.append(name)
        return path

    def publish(self) -> None:
        if self.remote and self._written:
            paths.upload_dir(self.dir, paths.join(self.out_dir, WORK), self._written)
        self._written = []

    def get(self, name: str) -> str:
        """A local path with the content of `name` (downloaded once on an object store)."""
        path = os.path.join(self.dir, name)
        if self.remote and not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fs, remote = paths.filesystem(paths.join(self.out_dir, WORK, name))
            fs.get_file(remote, path)
        return path

    def drop(self, name: str) -> None:
        """Forget a downloaded file (object store only: bounds the local disk of a band task)."""
        if self.remote:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.dir, name))


def finish_work(out_dir: str, keep: bool) -> None:
    """Remove the version's `_work/minhash/` (band files, shingle sets, pairs, decisions), or with `keep` leave it."""
    if keep:
        return
    if paths.is_remote(out_dir):
        fs, target = paths.filesystem(paths.join(out_dir, WORK))
        if fs.exists(target):
            fs.rm(target, recursive=True)
    else:
        paths.remove_local(paths.local_path(paths.join(out_dir, WORK)))


def key_column(params: DedupParams) -> str:
    return QUALITY_COLUMN if params.keep == "highest_quality" else "crawl_date"


def check_inputs(sources: list[str], params: DedupParams) -> None:
    """Fail before any shard runs when the keep rule's column or the shingle hash's package is missing."""
    if params.near and params.hash_function == "xxhash" and importlib.util.find_spec("xxhash") is None:
        raise ImportError(XXHASH_MISSING)
    for src in sources:
        names = read_schema(src).names
        if key_column(params) not in names:
            raise ValueError(
                f"dedup: keep='{params.keep}' needs a '{key_column(params)}' column, but {src} has "
                f"{names}; run the quality stage first or set dedup.keep='earliest'"
            )


class SignatureResult(BaseModel):
    """Counts of one signature shard (duck-types `ShardResult` for `map_shards`)."""

    index: int
    stats: StageStats
    docs: int


def _key_values(batch: pa.RecordBatch, params: DedupParams) -> pa.Array:
    col = batch.column(key_column(params))
    if params.keep == "earliest":  # an empty date must lose, not win: make it null (sorted last)
        return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
    return col.cast(pa.float64())


@task
def dedup_signature_shard(src: str, out_dir: str, index: int, params: DedupParams) -> SignatureResult:
    """Exact keys, keep keys, one band file per LSH band and the shingle sets of one input shard, under
    `_work/minhash/`; the signatures themselves are never stored whole."""
    with Work(out_dir) as work:
        n = _signature_files(work, src, index, params)
        work.publish()
    return SignatureResult(index=index, stats=StageStats(docs_in=n, docs_out=n), docs=n)


def _signature_files(work: Work, src: str, index: int, params: DedupParams) -> int:
    hasher = MinHasher(params.num_perm, params.seed, params.shingle_size, params.hash_function)
    total = count_rows(src)
    # written in place, batch by batch: memory stays one batch of signatures, not the shard's
    bands = [
        np.lib.format.open_memmap(work.out(band_file(b, index)), mode="w+", dtype=BAND_ROW, shape=(total,))
        for b in range(params.bands if params.near else 0)
    ]
    keys: list[pa.RecordBatch] = []
    offsets = [0]
    done = 0
    verify = params.near and params.verify_jaccard
    sets = open(work.out(paths.shard_name(index, "shingles", "u32")), "wb") if verify else None
    try:
        for batch in iter_batches(src, columns=["id", "url", "text", key_column(params)], batch_size=1024):
            texts = [t or "" for t in batch.column("text").to_pylist()]
            digests = exact_digests(texts)
            hashes = [hasher.hashes(t) for t in texts] if params.near else [np.empty(0, np.uint32)] * len(texts)
            if params.near:
                sig = hasher.signatures(hashes)
                rows = np.arange(done, done + len(texts), dtype=np.uint32)
                for b, out in enumerate(bands):
                    band = sig[b * params.rows : (b + 1) * params.rows]
                    part = out[done : done + len(texts)]
                    part["key"], part["check"], part["row"] = band_keys(band), band_check(band), rows
            done += len(texts)
            if sets is not None:
                flat, lens = unique_sets(hashes)
                sets.write(flat.astype("<u4").tobytes())
                offsets.extend((offsets[-1] + np.cumsum(lens)).tolist())
            keys.append(
                pa.record_batch(
                    [
                        batch.column("id"),
                        batch.column("url"),
                        _key_values(batch, params),
                        pa.array(digests[:, 0]),
                        pa.array(digests[:, 1]),
                        pa.array([len(h) for h in hashes], pa.int32()),
                    ],
                    names=["id", "url", "key", "exact0", "exact1", "shingles"],
                )
            )
    finally:
        if sets is not None:
            sets.close()
    assert done == total, f"{src}: read {done} rows, the Parquet footer says {total}"
    for out in bands:
        out.flush()
    del bands
    key_type = pa.float64() if params.keep == "highest_quality" else pa.string()
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("url", pa.string()),
            ("key", key_type),
            ("exact0", pa.uint64()),
            ("exact1", pa.uint64()),
            ("shingles", pa.int32()),
        ]
    )
    table = pa.Table.from_batches(keys, schema=schema)
    pq.write_table(table, work.out(paths.shard_name(index, "keys", "parquet")))
    if sets is not None:
        np.save(work.out(paths.shard_name(index, "offsets", "npy")), np.asarray(offsets, dtype=np.int64))
    return int(table.num_rows)


# ---------------------------------------------------------------- the global step


class ClusterSummary(BaseModel):
    """What the global step found; goes into the manifest extras (the report reads it from there)."""

    docs: int
    exact_duplicates: int
    near_duplicates: int
    candidate_pairs: int = Field(description="Pairs sharing at least one LSH band.")
    checked_pairs: int = Field(
        description="Pairs whose true Jaccard was computed (candidates + within small "
        "candidate components); 0 without verification."
    )
    verified_pairs: int = Field(description="Pairs joined by union-find (all candidates without verification).")
    near_clusters: int
    cluster_sizes: dict[str, int] = Field(description="Duplicate clusters (exact + near members) by size bin.")
    largest_clusters: list[dict[str, Any]]


def keep_rank(keys: pa.Table, keep: str) -> np.ndarray:
    """rank[i] = position of document i in keep order (0 = kept first): key, then id; nulls last."""
    order = "descending" if keep == "highest_quality" else "ascending"
    try:  # per-key null placement (pyarrow >= 20); the table-wide option is deprecated since 25
        idx = pc.sort_indices(keys, sort_keys=[("key", order, "at_end"), ("id", "ascending", "at_end")])
    except (TypeError, ValueError):
        idx = pc.sort_indices(keys, sort_keys=[("key", order), ("id", "ascending")], null_placement="at_end")
    rank = np.empty(keys.num_rows, dtype=np.int64)
    rank[idx.to_numpy()] = np.arange(keys.num_rows, dtype=np.int64)
    return rank


def _read_keys(work: Work, n_shards: int, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """The shards' key tables concatenated (global document order) and the shard starts (n_shards + 1)."""
    tables = [pq.read_table(work.get(paths.shard_name(i, "keys", "parquet")), columns=columns) for i in range(n_shards)]
    counts = np.array([t.num_rows for t in tables], dtype=np.int64)
    start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    # chunked (one chunk per shard), not combined: combining would copy every column once more
    table = pa.concat_tables(tables) if tables else pa.table({c: pa.array([]) for c in columns})
    return table, start


@task
def dedup_exact(out_dir: str, n_shards: int, params: DedupParams) -> int:
    """Keep ranks and exact groups of all documents (16 bytes of digest + the keep key per document); writes
    `exact.npy` (rank, exact kept copy) and `eligible.npy` (the exact survivors with shingles: the LSH input)."""
    with Work(out_dir) as work:
        keys, start = _read_keys(work, n_shards, ["id", "key"])
        n = keys.num_rows
        rank = keep_rank(keys, params.keep) if n else np.empty(0, dtype=np.int64)
        del keys  # the ids and keep keys are not needed past the rank: the digests are read after them
        digests = np.empty((n, 2), dtype=np.uint64)
        has_shingles = np.empty(n, dtype=bool)
        for s in range(n_shards):
            cols = pq.read_table(
                work.get(paths.shard_name(s, "keys", "parquet")), columns=["exact0", "exact1", "shingles"]
            )
            lo, hi = int(start[s]), int(start[s + 1])
            digests[lo:hi, 0] = cols.column("exact0").to_numpy()
            digests[lo:hi, 1] = cols.column("exact1").to_numpy()
            has_shingles[lo:hi] = cols.column("shingles").to_numpy() > 0
            del cols
        everyone = np.arange(n, dtype=np.int64)
        ekept = exact_kept(digests, rank) if params.exact and n else everyone.copy()
        del digests
        eligible = (ekept == everyone) & has_shingles
        np.save(work.out("exact.npy"), np.stack([rank, ekept]).reshape(2, n))
        np.save(work.out("eligible.npy"), eligible.astype(bool))
        np.save(work.out("starts.npy"), start)
        work.publish()
    return int(n)


class BandResult(BaseModel):
    """One LSH band (duck-types `ShardResult` for `map_shards`)."""

    index: int
    docs: int
    pairs: int


@task
def dedup_band(name: str, out_dir: str, index: int, params: DedupParams) -> BandResult:
    """LSH band `index`: reads that band's (key, row) file of every shard, keeps the exact survivors, sorts
    and writes the band's candidate pairs (i < j, unique) to `pairs/b-BBB.npy`. Memory: about 40 bytes per
    document (keys, ids, the sort order), whatever the number of bands."""
    with Work(out_dir) as work:
        start = np.load(work.get("starts.npy"))
        eligible = np.load(work.get("eligible.npy"))
        keys, checks, ids = [], [], []
        for s in range(len(start) - 1):
            name_s = band_file(index, s)
            rows = np.load(work.get(name_s), mmap_mode="r")
            gid = rows["row"].astype(np.int64) + start[s]
            keep = eligible[gid]
            keys.append(np.asarray(rows["key"][keep]))
            checks.append(np.asarray(rows["check"][keep]))
            ids.append(gid[keep])
            del rows
            work.drop(name_s)
        ids_all = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
        pairs = keyed_band_pairs(
            np.concatenate(keys) if keys else np.empty(0, np.uint64),
            np.concatenate(checks) if checks else np.empty(0, np.uint32),
            ids_all,
        )
        pairs = unique_pairs([pairs])
        np.save(work.out(pairs_file(index)), pairs)
        work.publish()
    return BandResult(index=index, docs=len(ids_all), pairs=len(pairs))


class _Corpus:
    """Global document index <-> (shard, row), ids, and pread access to the per-shard shingle sets."""

    def __init__(self, work: Work, n_shards: int):
        self.work = work
        table, self.start = _read_keys(work, n_shards, ["id"])
        self.ids = table.column("id")
        self._shingles: dict[int, tuple[int, np.ndarray]] = {}

    def locate(self, i: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.start, i, side="right") - 1)
        return s, int(i - self.start[s])

    def shingles(self, i: int) -> np.ndarray:
        """Document i's shingle set, read with pread: only candidate documents are read, and nothing stays
        mapped (a memory map would keep every touched page resident: ~2 KB per document at 100k docs).
        On an object store the shingle file of a shard is downloaded when one of its documents is first read."""
        s, row = self.locate(i)
        if s not in self._shingles:
            fd = os.open(self.work.get(paths.shard_name(s, "shingles", "u32")), os.O_RDONLY)
            self._shingles[s] = (fd, np.load(self.work.get(paths.shard_name(s, "offsets", "npy"))))
        fd, off = self._shingles[s]
        lo, hi = int(off[row]), int(off[row + 1])
        return np.frombuffer(os.pread(fd, 4 * (hi - lo), 4 * lo), dtype="<u4")

    def close(self) -> None:
        for fd, _ in self._shingles.values():
            os.close(fd)
        self._shingles.clear()


def _candidate_pairs(work: Work, n: int, params: DedupParams) -> np.ndarray:
    """The union of the band tasks' pairs (compacted as it grows: memory ~ the unique pairs)."""
    found: list[np.ndarray] = []
    for b in range(params.bands):
        found.append(np.load(work.get(pairs_file(b))))
        work.drop(pairs_file(b))
        if sum(len(p) for p in found) > 4 * max(n, 1):
            found = [unique_pairs(found)]
    return unique_pairs(found)


def _verify(corpus: _Corpus, pairs: np.ndarray, threshold: float) -> np.ndarray:
    order = np.argsort(pairs[:, 0], kind="stable")  # walk the shards in order (page-cache friendly)
    ok = np.zeros(len(pairs), dtype=bool)
    for k in order:
        u, v = int(pairs[k, 0]), int(pairs[k, 1])
        ok[k] = jaccard_sorted(corpus.shingles(u), corpus.shingles(v)) >= threshold
    return pairs[ok]


def _size_bins(sizes: np.ndarray) -> dict[str, int]:
    bins = [(2, 2), (3, 3), (4, 4), (5, 9), (10, 99), (100, None)]
    out = {}
    for lo, hi in bins:
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi else f"{lo}+")
        out[label] = int(np.count_nonzero((sizes >= lo) & (sizes <= (hi or np.iinfo(np.int64).max))))
    return out


_EMPTY_DECISIONS = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


@task
def dedup_cluster(out_dir: str, n_shards: int, params: DedupParams) -> ClusterSummary:
    """The union step, after `dedup_exact` and the band tasks: the union of the bands' candidate pairs,
    optional Jaccard verification, union-find over the pairs' documents only, one kept copy per cluster;
    writes `_work/minhash/decisions-NNNNN.parquet` and `_work/clusters.parquet`. Memory: the pairs, the
    rank and exact arrays (16 bytes per document) and the ids."""
    with Work(out_dir) as work:
        summary = _cluster(work, n_shards, params)
        work.publish()
    return summary


def _cluster(work: Work, n_shards: int, params: DedupParams) -> ClusterSummary:
    rank, ekept = np.load(work.get("exact.npy"))
    n = len(rank)
    if n == 0:  # nothing reached dedup: every (empty) shard gets an empty decision list
        for s in range(n_shards):
            pq.write_table(_EMPTY_DECISIONS.empty_table(), work.out(paths.shard_name(s, "decisions", "parquet")))
        return ClusterSummary(
            docs=0,
            exact_duplicates=0,
            near_duplicates=0,
            candidate_pairs=0,
            checked_pairs=0,
            verified_pairs=0,
            near_clusters=0,
            cluster_sizes={},
            largest_clusters=[],
        )
    corpus = _Corpus(work, n_shards)
    everyone = np.arange(n, dtype=np.int64)
    nkept, cluster = everyone.copy(), np.full(n, -1, dtype=np.int64)
    n_candidates = n_checked = n_verified = n_clusters = 0
    if params.near:
        pairs = _candidate_pairs(work, n, params)
        n_candidates = len(pairs)
        if params.verify_jaccard and len(pairs):
            pairs = expand_pairs(pairs, params.all_pairs_max)
            n_checked = len(pairs)
            try:
                pairs = _verify(corpus, pairs, params.jaccard_threshold)
            finally:
                corpus.close()
        n_verified = len(pairs)
        nodes = np.unique(pairs)
        labels = connected_components(len(nodes), np.searchsorted(nodes, pairs))
        nkept[nodes] = nodes[choose_kept(labels, rank[nodes])]
        _, cluster[nodes] = np.unique(labels, return_inverse=True)
        n_clusters = len(np.unique(labels))
    log.info(
        "dedup: %d docs, %d exact duplicates, %d candidate pairs, %d verified, %d near clusters",
        n,
        int(np.count_nonzero(ekept != everyone)),
        n_candidates,
        n_verified,
        n_clusters,
    )
    _write_decisions(corpus, ekept, nkept, cluster)
    final = nkept[ekept]
    sizes = np.bincount(final, minlength=n)
    big = np.flatnonzero(sizes > 1)  # the ten largest clusters, ties by kept index (no sort of all n)
    top = big[np.argsort(-sizes[big], kind="stable")[:10]]
    largest = [_cluster_row(corpus, int(k), final, ekept, cluster) for k in top]
    return ClusterSummary(
        docs=n,
        exact_duplicates=int(np.count_nonzero(ekept != everyone)),
        near_duplicates=int(np.count_nonzero(nkept != everyone)),
        candidate_pairs=n_candidates,
        checked_pairs=n_checked,
        verified_pairs=n_verified,
        near_clusters=n_clusters,
        cluster_sizes=_size_bins(sizes[sizes > 1]),
        largest_clusters=largest,
    )


def _write_decisions(corpus: _Corpus, ekept: np.ndarray, nkept: np.ndarray, cluster: np.ndarray) -> None:
    """Per shard: the dropped rows with reason and detail; plus `_work/clusters.parquet` (all members)."""
    ids = corpus.ids
    everyone = np.arange(len(ekept))
    exact = ekept != everyone
    dropped = np.flatnonzero(exact | (nkept != everyone))
    is_exact = exact[dropped]
    kept_ids = ids.take(pa.array(np.where(is_exact, ekept[dropped], nkept[dropped]))).to_pylist()
    details = [
        json.dumps({"kept_id": k} if e else {"cluster_id": c, "kept_id": k}, sort_keys=True)
        for k, e, c in zip(kept_ids, is_exact.tolist(), cluster[dropped].tolist())
    ]
    table = pa.table(
        {
            "global": pa.array(dropped, pa.int64()),
            "id": ids.take(pa.array(dropped, pa.int64())),
            "reason": pa.array(np.where(is_exact, EXACT_DUPLICATE, NEAR_DUPLICATE).tolist(), pa.string()),
            "detail": pa.array(details, pa.string()),
        }
    )
    for s in range(len(corpus.start) - 1):
        lo, hi = np.searchsorted(dropped, [corpus.start[s], corpus.start[s + 1]])
        part = table.slice(int(lo), int(hi - lo))
        part = part.append_column("row", pc.subtract(part.column("global"), pa.scalar(int(corpus.start[s]))))
        pq.write_table(part, corpus.work.out(paths.shard_name(s, "decisions", "parquet")))
    final = nkept[ekept]
    members = np.flatnonzero(np.bincount(final, minlength=len(final))[final] > 1)
    kind = np.where(final[members] == members, "kept", np.where(exact[members], EXACT_DUPLICATE, NEAR_DUPLICATE))
    clusters = pa.table(
        {
            "doc_id": ids.take(pa.array(members, pa.int64())),
            "kept_id": ids.take(pa.array(final[members], pa.int64())),
            "near_cluster_id": pa.array(cluster[ekept[members]], pa.int64()),
            "kind": pa.array(kind.tolist(), pa.string()),
        }
    )
    fs, target = paths.filesystem(paths.join(corpus.work.out_dir, CLUSTERS))
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(target, "wb") as f:
        pq.write_table(clusters, f)


def _cluster_row(
    corpus: _Corpus, kept: int, final: np.ndarray, ekept: np.ndarray, cluster: np.ndarray
) -> dict[str, Any]:
    """One of the largest clusters, for the report: size, how many exact copies, kept id, its URL."""
    members = np.flatnonzero(final == kept)
    s, row = corpus.locate(kept)
    keys = corpus.work.get(paths.shard_name(s, "keys", "parquet"))
    url = pq.read_table(keys, columns=["url"]).column(0)[row].as_py()
    return {
        "kept_id": corpus.ids[kept].as_py(),
        "size": len(members),
        "exact": int(np.count_nonzero(ekept[members] != members)),
        "near_cluster_id": int(cluster[kept]),
        "sample_url": url or "",
    }


def band_names(params: DedupParams) -> list[str]:
    return [band_name(b) for b in range(params.bands)]


def run_steps(sources: list[str], out_dir: str, params: DedupParams, mapped: Any = None) -> ClusterSummary:
    """The global steps without Prefect (bench, tests): signature map, exact step, band tasks, union step.
    `mapped(fn, names)` runs fn(name, out_dir, i, params) over the names (default: in this process)."""

    def run_all(fn: Any, names: list[str]) -> list[Any]:
        if mapped is not None:
            return list(mapped(fn, names))
        return [fn(name, out_dir, i, params) for i, name in enumerate(names)]

    run_all(dedup_signature_shard.fn, sources)
    dedup_exact.fn(out_dir, len(sources), params)
    if params.near:
        run_all(dedup_band.fn, band_names(params))
    return dedup_cluster.fn(out_dir, len(sources), params)


# ---------------------------------------------------------------- the filter map


Decisions = dict[int, tuple[str, str, dict[str, Any]]]  # row -> (doc id, reason, detail)


def load_decisions(out_dir: str, index: int) -> Decisions:
    """row -> (doc id, reason, detail) for the documents of shard `index` that the global step dropped."""
    with Work(out_dir) as work:
        name = work.get(paths.shard_name(index, "decisions", "parquet"))
        t = pq.read_table(name, columns=["row", "id", "reason", "detail"])
    return {
        r: (i, reason, json.loads(d))
        for r, i, reason, d in zip(*(t.column(c).to_pylist() for c in ("row", "id", "reason", "detail")))
    }


def process(
    docs: Iterable[Document], params: DedupParams, stats: StageStats, rejects: Rejects, decisions: Decisions
) -> Iterator[Document]:
    """Keep the documents of one shard the global step did not drop; send the others to `rejects`."""
    for row, doc in enumerate(docs):
        decision = decisions.get(row)
        if decision is None:
            yield doc
            continue
        assert decision[0] == doc.id, f"row {row}: decision for {decision[0]} but document is {doc.id}"
        rejects.add(doc, decision[1], decision[2])


@task
def dedup_shard(src: str, out_dir: str, index: int, params: DedupParams) -> ShardResult:
    """Copy one input shard, sending the documents the global step dropped to `rejected/`."""
    decisions = load_decisions(out_dir, index)
    return run_document_shard(
        src, out_dir, index, lambda docs, stats, rejects: process(docs, params, stats, rejects, decisions)
    )
