"""Dedup stage: `quality` documents -> `dedup` documents, exact and MinHash near duplicates removed.

Global across all shards of the input version, in five steps (flows/dedup.py runs them); every work file is
under the version's `_work/minhash/`, read and written through fsspec (`Work`: in place on a local root, a
private local directory plus upload/download/range reads on an object store), so every task may run on any
machine. The corpus is cut into `partitions` (about `partition_docs` documents each) by hash, so no task
holds more than one partition, whatever the corpus size:
  1. `dedup_signature_shard` (map over shards): per shard, the keep-rule key (`keys-NNNNN.parquet`), the
     exact key (`tasks.dedup.exact`) with id and keep key (`exact/part-NNNNN.parquet`, one row group per
     partition of the digest), MinHash signatures cut into bands: per band b a file
     `bands/b-BBB/part-NNNNN.bin` of (64-bit band key, 32-bit second key, row) per document with shingles,
     grouped by partition of the band key (offsets in `parts-NNNNN.npy`), and, with `verify_jaccard`, the
     sorted shingle-hash set of each document (`shingles-NNNNN.u32` + offsets).
  2. `dedup_exact` (map over partitions): the documents of one digest partition, grouped by digest; the best
     of each group by the keep rule (key, then id) is kept; writes the groups' members (`exact-out/`).
  3. `dedup_band` (map over bands x partitions): one band's keys of one key partition of every shard (range
     reads), exact survivors only (`write_exact_dropped`, run once after the exact map, writes a bitmap of one
     bit per document), sorted; bucket pairs
     (`tasks.dedup.minhash.keyed_band_pairs`) to `pairs/b-BBB-p-PPPP.npy`. Equal keys share a partition, so
     a band's pairs are the union of its partitions'.
  4. `dedup_cluster` (one task, the union step): the union of the pairs, optional true-Jaccard verification
     of the candidate pairs and of the pairs inside small candidate components (pread of only those
     documents' shingle sets), union-find over the pairs' documents only, one kept document per cluster;
     then shard by shard merges them with the exact groups into per-shard decisions and
     `_work/clusters.parquet` (every cluster member). Memory: the pairs and their documents, one shard's
     exact-group members; nothing per document of the corpus.
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
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
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
from tasks.lazy_task import task

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
    partition_docs: int = Field(
        1_000_000,
        ge=1,
        description="Documents per exact and per band task: the corpus is cut into ceil(docs / partition_docs) "
        "hash partitions, so the memory of one task stays bounded (about 80 bytes per document of its "
        "partition) as the corpus grows; more partitions, more and smaller tasks. Does not change the "
        "output or the version.",
    )
    partitions: int = Field(
        0,
        ge=0,
        le=65536,
        description="Number of hash partitions; 0 (the default) derives it from partition_docs and the input's "
        "document count. Does not change the output or the version.",
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
        return self.model_dump(mode="json", exclude={"keep_work", "partition_docs", "partitions"})


BANDS = "bands"  # under WORK: bands/b-BBB/part-NNNNN.bin, one per band and shard, rows grouped by partition
EXACT = "exact"  # under WORK: exact/part-NNNNN.parquet, one per shard, one row group per non-empty partition
EXACT_OUT = "exact-out"  # under WORK: exact-out/p-PPPP.parquet (group members), groups-PPPP.parquet, per partition
PAIRS = "pairs"  # under WORK: pairs/b-BBB-p-PPPP.npy, one per band and partition
# one row of a band file: the band's 64-bit key, a second 32-bit key, the document's row in its shard
BAND_ROW = np.dtype([("key", "<u8"), ("check", "<u4"), ("row", "<u4")])
MEMBERS_SCHEMA = pa.schema([("global", pa.int64()), ("id", pa.string()), ("rep", pa.int64()), ("rep_id", pa.string())])
GROUPS_SCHEMA = pa.schema([("rep", pa.int64()), ("size", pa.int64()), ("rep_id", pa.string())])
CLUSTERS_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("kept_id", pa.string()), ("near_cluster_id", pa.int64()), ("kind", pa.string())]
)


def band_name(b: int) -> str:
    return f"b-{b:03d}"


def band_file(b: int, index: int) -> str:
    return f"{BANDS}/{band_name(b)}/{paths.shard_name(index, 'part', 'bin')}"


def exact_file(index: int) -> str:
    return f"{EXACT}/{paths.shard_name(index)}"


def parts_file(index: int) -> str:
    """Per shard: int64 (bands + 1, partitions + 1), row b the row offsets of each partition in band b's file,
    the last row those of the exact file."""
    return paths.shard_name(index, "parts", "npy")


def partition_name(p: int) -> str:
    return f"p-{p:04d}"


def band_task_name(b: int, p: int) -> str:
    return f"{band_name(b)}-{partition_name(p)}"


def pairs_file(b: int, p: int = 0) -> str:
    return f"{PAIRS}/{band_task_name(b, p)}.npy"


def members_file(p: int) -> str:
    return f"{EXACT_OUT}/{partition_name(p)}.parquet"


def groups_file(p: int) -> str:
    return f"{EXACT_OUT}/groups-{p:04d}.parquet"


def resolve_partitions(params: DedupParams, n_docs: int) -> DedupParams:
    """`params` with `partitions` set: as given, else ceil(n_docs / partition_docs) (at least 1). Every task of a
    run must see the same value; it changes how the work is split, never the decisions."""
    if params.partitions:
        return params
    return params.model_copy(update={"partitions": max(1, -(-n_docs // params.partition_docs))})


def _partition_of(values: np.ndarray, k: int) -> np.ndarray:
    return (values % np.uint64(k)).astype(np.int64) if k > 1 else np.zeros(len(values), dtype=np.int64)


def _offsets(part: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(np.bincount(part, minlength=k)))).astype(np.int64)


class Work:
    """The version's `_work/minhash/` as one task sees it. On a local root the directory itself (memory maps and
    pread in place); on an object store a private local directory: `out(name)` files are uploaded by `publish()`,
    `get(name)` downloads the one file a task needs, `read_range` and `parquet` read parts of a file with range
    requests, and the directory is removed on exit. So any task can run on any machine that reaches the root."""

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

    def scratch(self, name: str) -> str:
        """A local path for a temporary file of this task (never published; the caller removes it)."""
        path = os.path.join(self.dir, "tmp", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def publish(self) -> None:
        if self.remote and self._written:
            paths.upload_dir(self.dir, paths.join(self.out_dir, WORK), self._written)
        self._written = []

    def _remote(self, name: str) -> tuple[Any, str]:
        return paths.filesystem(paths.join(self.out_dir, WORK, name))

    def get(self, name: str) -> str:
        """A local path with the content of `name` (downloaded once on an object store)."""
        path = os.path.join(self.dir, name)
        if self.remote and not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fs, remote = self._remote(name)
            fs.get_file(remote, path)
        return path

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of `name` (pread locally, a range request on an object store)."""
        if end <= start:
            return b""
        if not self.remote:
            with open(os.path.join(self.dir, name), "rb") as f:
                return os.pread(f.fileno(), end - start, start)
        fs, remote = self._remote(name)
        return bytes(fs.cat_file(remote, start=start, end=end))

    def parquet(self, name: str) -> pq.ParquetFile:
        """`name` opened for reading row groups or columns (range requests on an object store)."""
        if not self.remote:
            return pq.ParquetFile(os.path.join(self.dir, name))
        fs, remote = self._remote(name)
        return pq.ParquetFile(fs.open(remote, "rb"))

    def drop(self, name: str) -> None:
        """Forget a downloaded file (object store only: bounds the local disk of a task)."""
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


def _key_type(params: DedupParams) -> pa.DataType:
    return pa.float64() if params.keep == "highest_quality" else pa.string()


@task
def dedup_signature_shard(src: str, out_dir: str, index: int, params: DedupParams) -> SignatureResult:
    """Keep keys, exact keys and one band file per LSH band of one input shard, each grouped by partition, and
    the shingle sets, under `_work/minhash/`; the signatures themselves are never stored whole."""
    with Work(out_dir) as work:
        n = _signature_files(work, src, index, params)
        work.publish()
    return SignatureResult(index=index, stats=StageStats(docs_in=n, docs_out=n), docs=n)


def _signature_files(work: Work, src: str, index: int, params: DedupParams) -> int:
    k = params.partitions
    if k < 1:
        raise ValueError("dedup: partitions unresolved; call resolve_partitions(params, n_docs) first")
    hasher = MinHasher(params.num_perm, params.seed, params.shingle_size, params.hash_function)
    total = count_rows(src)
    # band rows in document order, written batch by batch to scratch memory maps (memory: one batch of
    # signatures), regrouped by partition at the end one band at a time
    scratch = [
        np.lib.format.open_memmap(
            work.scratch(f"{band_name(b)}-{index}.npy"), mode="w+", dtype=BAND_ROW, shape=(total,)
        )
        for b in range(params.bands if params.near else 0)
    ]
    has_shingles = np.zeros(total, dtype=bool)
    keys: list[pa.RecordBatch] = []
    exact: list[pa.RecordBatch] = []
    offsets = [0]
    done = 0
    verify = params.near and params.verify_jaccard
    sets = open(work.out(paths.shard_name(index, "shingles", "u32")), "wb") if verify else None
    try:
        for batch in iter_batches(src, columns=["id", "url", "text", key_column(params)], batch_size=1024):
            texts = [t or "" for t in batch.column("text").to_pylist()]
            digests = exact_digests(texts)
            hashes = [hasher.hashes(t) for t in texts] if params.near else [np.empty(0, np.uint32)] * len(texts)
            rows = np.arange(done, done + len(texts), dtype=np.uint32)
            if params.near:
                sig = hasher.signatures(hashes)
                for b, out in enumerate(scratch):
                    band = sig[b * params.rows : (b + 1) * params.rows]
                    part = out[done : done + len(texts)]
                    part["key"], part["check"], part["row"] = band_keys(band), band_check(band), rows
            has_shingles[done : done + len(texts)] = [len(h) > 0 for h in hashes]
            done += len(texts)
            if sets is not None:
                flat, lens = unique_sets(hashes)
                sets.write(flat.astype("<u4").tobytes())
                offsets.extend((offsets[-1] + np.cumsum(lens)).tolist())
            key = _key_values(batch, params)
            ids = batch.column("id").cast(pa.string())
            keys.append(pa.record_batch([ids, batch.column("url"), key], names=["id", "url", "key"]))
            exact.append(
                pa.record_batch(
                    [pa.array(rows), pa.array(digests[:, 0]), pa.array(digests[:, 1]), ids, key],
                    names=["row", "exact0", "exact1", "id", "key"],
                )
            )
    finally:
        if sets is not None:
            sets.close()
    assert done == total, f"{src}: read {done} rows, the Parquet footer says {total}"
    parts = np.zeros((len(scratch) + 1, k + 1), dtype=np.int64)
    for b, band_rows in enumerate(scratch):
        band_rows.flush()
        # documents without shingles (empty or shorter than a shingle) never enter LSH: all their signatures
        # are equal, so they would share every bucket
        rows_b = np.asarray(band_rows[has_shingles])
        part = _partition_of(rows_b["key"], k)
        parts[b] = _offsets(part, k)
        with open(work.out(band_file(b, index)), "wb") as f:
            f.write(rows_b[np.argsort(part, kind="stable")].tobytes())
    for b in range(len(scratch)):
        os.remove(work.scratch(f"{band_name(b)}-{index}.npy"))
    del scratch
    schema = pa.schema(
        [
            ("row", pa.uint32()),
            ("exact0", pa.uint64()),
            ("exact1", pa.uint64()),
            ("id", pa.string()),
            ("key", _key_type(params)),
        ]
    )
    table = pa.Table.from_batches(exact, schema=schema)
    part = _partition_of(table.column("exact0").to_numpy(), k)
    parts[-1] = _offsets(part, k)
    table = table.take(pa.array(np.argsort(part, kind="stable")))
    with pq.ParquetWriter(work.out(exact_file(index)), schema) as w:
        for p in range(k):  # one row group per non-empty partition
            lo, hi = int(parts[-1][p]), int(parts[-1][p + 1])
            if hi > lo:
                w.write_table(table.slice(lo, hi - lo), row_group_size=hi - lo)
    np.save(work.out(parts_file(index)), parts)
    key_schema = pa.schema([("id", pa.string()), ("url", pa.string()), ("key", _key_type(params))])
    pq.write_table(pa.Table.from_batches(keys, schema=key_schema), work.out(paths.shard_name(index, "keys", "parquet")))
    if sets is not None:
        np.save(work.out(paths.shard_name(index, "offsets", "npy")), np.asarray(offsets, dtype=np.int64))
    return int(total)


def write_starts(out_dir: str, docs_per_shard: list[int]) -> None:
    """`starts.npy`: the global index of each shard's first document (n_shards + 1), from the map's counts."""
    with Work(out_dir) as work:
        np.save(work.out("starts.npy"), np.concatenate(([0], np.cumsum(docs_per_shard))).astype(np.int64))
        work.publish()


def _read_rows(pf: pq.ParquetFile, lo: int, hi: int) -> pa.Table:
    """Rows [lo, hi) of a Parquet file, reading only the row groups they lie in."""
    parts, first = [], 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if first < hi and first + n > lo:
            t = pf.read_row_group(i)
            parts.append(t.slice(max(lo - first, 0), min(hi, first + n) - max(lo, first)))
        first += n
    return pa.concat_tables(parts) if parts else pf.schema_arrow.empty_table()


def _read_global_range(pf: pq.ParquetFile, lo: int, hi: int) -> pa.Table:
    """Rows of a file sorted by `global` with lo <= global < hi (row-group statistics skip the others)."""
    col = pf.schema_arrow.get_field_index("global")
    parts = []
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(col).statistics
        if st is not None and st.has_min_max and (st.max < lo or st.min >= hi):
            continue
        t = pf.read_row_group(i)
        g = t.column("global").to_numpy()
        mask = (g >= lo) & (g < hi)
        if mask.any():
            parts.append(t.filter(pa.array(mask)))
    return pa.concat_tables(parts) if parts else pf.schema_arrow.empty_table()


# ---------------------------------------------------------------- the global step


class ExactResult(BaseModel):
    """One exact partition (duck-types `ShardResult` for `map_shards`)."""

    index: int
    docs: int
    duplicates: int


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


@task
def dedup_exact(name: str, out_dir: str, index: int, params: DedupParams) -> ExactResult:
    """Exact partition `index`: the documents whose digest falls in it, from every shard's exact file; groups
    equal digests, keeps the best of each by the keep rule (key, then id: the order of a global rank restricted
    to the partition). Writes the members of groups of two or more (`exact-out/p-PPPP.parquet`: global index,
    id, kept copy's index and id; sorted by index) and the groups (`groups-PPPP.parquet`: kept copy, size;
    largest first). Memory: the partition's documents (~80 bytes each), bounded by `partition_docs`."""
    with Work(out_dir) as work:
        start = np.load(work.get("starts.npy"))
        tables = []
        for s in range(len(start) - 1):
            lo, hi = (int(x) for x in np.load(work.get(parts_file(s)))[-1][index : index + 2])
            if hi > lo:
                t = _read_rows(work.parquet(exact_file(s)), lo, hi)
                glob = t.column("row").to_numpy().astype(np.int64) + int(start[s])
                tables.append(t.drop_columns(["row"]).append_column("global", pa.array(glob, pa.int64())))
        docs = sum(t.num_rows for t in tables)
        members, groups = MEMBERS_SCHEMA.empty_table(), GROUPS_SCHEMA.empty_table()
        if params.exact and docs > 1:
            t = pa.concat_tables(tables)
            del tables
            ids, glob = t.column("id"), t.column("global").to_numpy()
            digests = np.stack([t.column("exact0").to_numpy(), t.column("exact1").to_numpy()], axis=1)
            kept = exact_kept(digests, keep_rank(t.select(["id", "key"]), params.keep))
            del digests, t
            counts = np.bincount(kept, minlength=docs)
            inside = np.flatnonzero(counts[kept] > 1)  # already in global order: shards in order, rows ascending
            members = pa.table(
                [pa.array(glob[inside]), ids.take(inside), pa.array(glob[kept[inside]]), ids.take(kept[inside])],
                schema=MEMBERS_SCHEMA,
            )
            reps = np.flatnonzero(counts > 1)
            order = reps[np.lexsort((glob[reps], -counts[reps]))]
            groups = pa.table(
                [pa.array(glob[order]), pa.array(counts[order].astype(np.int64)), ids.take(order)], schema=GROUPS_SCHEMA
            )
        pq.write_table(members, work.out(members_file(index)), row_group_size=65536)
        pq.write_table(groups, work.out(groups_file(index)), row_group_size=65536)
        work.publish()
    return ExactResult(index=index, docs=docs, duplicates=members.num_rows - groups.num_rows)


class BandResult(BaseModel):
    """One LSH band partition (duck-types `ShardResult` for `map_shards`)."""

    index: int
    docs: int
    pairs: int


EXACT_DROPPED = "exact-dropped.npy"  # under WORK: one bit per document, set for the exact step's dropped copies


def write_exact_dropped(out_dir: str, params: DedupParams) -> None:
    """After the exact tasks, once: `exact-dropped.npy`, a bitmap (n bits) of the documents they dropped, which
    every band task loads whole instead of re-reading every partition's member files."""
    with Work(out_dir) as work:
        n = int(np.load(work.get("starts.npy"))[-1])
        bits = np.zeros((n + 7) // 8, dtype=np.uint8)
        for p in range(params.partitions):
            t = work.parquet(members_file(p)).read(columns=["global", "rep"])
            g, rep = t.column("global").to_numpy(), t.column("rep").to_numpy()
            g = g[rep != g]
            np.bitwise_or.at(bits, g >> 3, (np.uint8(1) << (g & 7).astype(np.uint8)))
        np.save(work.out(EXACT_DROPPED), bits)
        work.publish()


def _is_set(bits: np.ndarray, i: np.ndarray) -> np.ndarray:
    out: np.ndarray = ((bits[i >> 3] >> (i & 7).astype(np.uint8)) & 1).astype(bool)
    return out


@task
def dedup_band(name: str, out_dir: str, index: int, params: DedupParams) -> BandResult:
    """LSH band b, key partition q (index = b * partitions + q): that slice of every shard's band-b file, exact
    survivors only, sorted; writes the candidate pairs (i < j, unique) to `pairs/b-BBB-p-PPPP.npy`. Equal keys
    share a partition, so the pairs of a band are the union of its partitions'. Memory: about 40 bytes per
    document of the slice plus one bit per document of the corpus."""
    b, q = divmod(index, params.partitions)
    with Work(out_dir) as work:
        start = np.load(work.get("starts.npy"))
        dropped = np.load(work.get(EXACT_DROPPED)) if params.exact else None
        keys, checks, ids = [], [], []
        for s in range(len(start) - 1):
            lo, hi = (int(x) for x in np.load(work.get(parts_file(s)))[b][q : q + 2])
            rows = np.frombuffer(
                work.read_range(band_file(b, s), lo * BAND_ROW.itemsize, hi * BAND_ROW.itemsize), BAND_ROW
            )
            gid = rows["row"].astype(np.int64) + int(start[s])
            keep = ~_is_set(dropped, gid) if dropped is not None else np.ones(len(gid), dtype=bool)
            keys.append(rows["key"][keep])
            checks.append(rows["check"][keep])
            ids.append(gid[keep])
            del rows
        ids_all = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
        pairs = keyed_band_pairs(
            np.concatenate(keys) if keys else np.empty(0, np.uint64),
            np.concatenate(checks) if checks else np.empty(0, np.uint32),
            ids_all,
        )
        pairs = unique_pairs([pairs])
        np.save(work.out(pairs_file(b, q)), pairs)
        work.publish()
    return BandResult(index=index, docs=len(ids_all), pairs=len(pairs))


class _Corpus:
    """Global document index <-> (shard, row), and pread access to the per-shard shingle sets and keys."""

    def __init__(self, work: Work, start: np.ndarray):
        self.work = work
        self.start = start
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

    def keys(self, docs: np.ndarray, columns: list[str]) -> pa.Table:
        """`columns` of the keys files for the (ascending) global indices `docs`, one shard at a time."""
        parts = []
        bounds = np.searchsorted(docs, self.start)
        for s in range(len(self.start) - 1):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if hi > lo:
                t = pq.read_table(self.work.get(paths.shard_name(s, "keys", "parquet")), columns=columns)
                parts.append(t.take(pa.array(docs[lo:hi] - self.start[s])))
        if not parts:
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        return pa.concat_tables(parts)

    def close(self) -> None:
        for fd, _ in self._shingles.values():
            os.close(fd)
        self._shingles.clear()


def _candidate_pairs(work: Work, params: DedupParams) -> np.ndarray:
    """The union of the band tasks' pairs (compacted as it grows: memory ~ the unique pairs)."""
    found: list[np.ndarray] = []
    compacted = held = 0
    for b in range(params.bands):
        for q in range(params.partitions):
            found.append(np.load(work.get(pairs_file(b, q))))
            work.drop(pairs_file(b, q))
            held += len(found[-1])
            if held > 2 * compacted + (1 << 20):
                found = [unique_pairs(found)]
                compacted = held = len(found[0])
    return unique_pairs(found)


def _verify(corpus: _Corpus, pairs: np.ndarray, threshold: float) -> np.ndarray:
    order = np.argsort(pairs[:, 0], kind="stable")  # walk the shards in order (page-cache friendly)
    ok = np.zeros(len(pairs), dtype=bool)
    for k in order:
        u, v = int(pairs[k, 0]), int(pairs[k, 1])
        ok[k] = jaccard_sorted(corpus.shingles(u), corpus.shingles(v)) >= threshold
    return pairs[ok]


SIZE_BINS = [(2, 2), (3, 3), (4, 4), (5, 9), (10, 99), (100, None)]


def _size_bins(sizes: np.ndarray) -> dict[str, int]:
    out = {}
    for lo, hi in SIZE_BINS:
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi else f"{lo}+")
        out[label] = int(np.count_nonzero((sizes >= lo) & (sizes <= (hi or np.iinfo(np.int64).max))))
    return out


_EMPTY_DECISIONS = pa.schema(
    [("row", pa.int64()), ("id", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


@task
def dedup_cluster(out_dir: str, n_shards: int, params: DedupParams) -> ClusterSummary:
    """The union step, after the exact and band tasks: the union of the bands' candidate pairs, optional
    Jaccard verification, union-find over the pairs' documents only, one kept copy per cluster (the best by
    the keep rule); then, shard by shard, merges those with the exact groups into
    `_work/minhash/decisions-NNNNN.parquet` and `_work/clusters.parquet`. Memory: the pairs and their
    documents, plus one shard's exact-group members; nothing per document of the corpus."""
    with Work(out_dir) as work:
        summary = _cluster(work, n_shards, params)
        work.publish()
    return summary


class _Near(NamedTuple):
    """The near-duplicate clusters over the pairs' documents (`nodes`, ascending global indices)."""

    nodes: np.ndarray
    kept: np.ndarray  # per node: the global index its cluster keeps
    kept_id: list[str]  # per node: that document's id
    ids: list[str]  # per node: its own id
    cluster: np.ndarray  # per node: the cluster id (clusters numbered by their smallest member)

    def find(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of `docs` among the nodes, and whether each is a node."""
        if len(self.nodes) == 0:
            return np.zeros(len(docs), dtype=np.int64), np.zeros(len(docs), dtype=bool)
        pos = np.minimum(np.searchsorted(self.nodes, docs), len(self.nodes) - 1)
        return pos, self.nodes[pos] == docs


def _near_clusters(corpus: _Corpus, pairs: np.ndarray, params: DedupParams) -> _Near:
    nodes = np.unique(pairs)
    labels = connected_components(len(nodes), np.searchsorted(nodes, pairs))
    keys = corpus.keys(nodes, ["id", "key"])
    kept_pos = choose_kept(labels, keep_rank(keys, params.keep)) if len(nodes) else np.empty(0, np.int64)
    ids = keys.column("id").to_pylist()
    _, cluster = np.unique(labels, return_inverse=True)
    return _Near(nodes, nodes[kept_pos], [ids[i] for i in kept_pos.tolist()], ids, cluster.astype(np.int64))


def _cluster(work: Work, n_shards: int, params: DedupParams) -> ClusterSummary:
    start = np.load(work.get("starts.npy"))
    n = int(start[-1])
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
    corpus = _Corpus(work, start)
    pairs = np.empty((0, 2), dtype=np.int64)
    n_candidates = n_checked = 0
    if params.near:
        pairs = _candidate_pairs(work, params)
        n_candidates = len(pairs)
        if params.verify_jaccard and len(pairs):
            pairs = expand_pairs(pairs, params.all_pairs_max)
            n_checked = len(pairs)
            try:
                pairs = _verify(corpus, pairs, params.jaccard_threshold)
            finally:
                corpus.close()
    near = _near_clusters(corpus, pairs, params)
    n_clusters = int(near.cluster.max()) + 1 if len(near.nodes) else 0

    # exact groups: the size of those whose kept copy is a node; the others are final clusters of their own
    group_size = np.ones(len(near.nodes), dtype=np.int64)
    n_exact = 0
    bins = dict.fromkeys(_size_bins(np.empty(0)), 0)
    candidates: list[tuple[int, int, str, int, int]] = []  # (size, kept index, kept id, exact copies, cluster)
    for p in range(params.partitions):
        g = work.parquet(groups_file(p)).read()
        rep, size = g.column("rep").to_numpy(), g.column("size").to_numpy()
        n_exact += int((size - 1).sum())
        pos, is_node = near.find(rep)
        group_size[pos[is_node]] = size[is_node]
        alone = np.flatnonzero(~is_node)
        for label, count in _size_bins(size[alone]).items():
            bins[label] += count
        first = alone[:10]  # the file is sorted largest first, ties by index
        rep_ids = g.column("rep_id").take(pa.array(first)).to_pylist()
        candidates += [(int(size[i]), int(rep[i]), r, int(size[i]) - 1, -1) for i, r in zip(first, rep_ids)]
    if n_clusters:
        c_size = np.bincount(near.cluster, weights=group_size, minlength=n_clusters).astype(np.int64)
        c_nodes = np.bincount(near.cluster, minlength=n_clusters)
        c_kept = np.empty(n_clusters, dtype=np.int64)
        c_kept[near.cluster] = near.kept
        c_kept_id = [""] * n_clusters
        for c, k_id in zip(near.cluster.tolist(), near.kept_id):
            c_kept_id[c] = k_id
        for label, count in _size_bins(c_size).items():
            bins[label] += count
        top = np.lexsort((c_kept, -c_size))[:10]
        candidates += [
            (int(c_size[c]), int(c_kept[c]), c_kept_id[c], int(c_size[c] - c_nodes[c]), int(c)) for c in top.tolist()
        ]
    candidates.sort(key=lambda c: (-c[0], c[1]))
    n_near = int(np.count_nonzero(near.kept != near.nodes))
    log.info(
        "dedup: %d docs, %d exact duplicates, %d candidate pairs, %d verified, %d near clusters",
        n,
        n_exact,
        n_candidates,
        len(pairs),
        n_clusters,
    )
    _write_decisions(work, corpus, near, params)
    return ClusterSummary(
        docs=n,
        exact_duplicates=n_exact,
        near_duplicates=n_near,
        candidate_pairs=n_candidates,
        checked_pairs=n_checked,
        verified_pairs=len(pairs),
        near_clusters=n_clusters,
        cluster_sizes=bins,
        largest_clusters=[_cluster_row(corpus, *c) for c in candidates[:10]],
    )


def _write_decisions(work: Work, corpus: _Corpus, near: _Near, params: DedupParams) -> None:
    """Shard by shard: the dropped rows with reason and detail (`decisions-NNNNN.parquet`), and every member of
    every duplicate cluster (`_work/clusters.parquet`, in global order)."""
    members_files = [work.parquet(members_file(p)) for p in range(params.partitions)]
    fs, target = paths.filesystem(paths.join(work.out_dir, CLUSTERS))
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(target, "wb") as f, pq.ParquetWriter(f, CLUSTERS_SCHEMA) as clusters:
        for s in range(len(corpus.start) - 1):
            lo, hi = int(corpus.start[s]), int(corpus.start[s + 1])
            exact = pa.concat_tables([_read_global_range(m, lo, hi) for m in members_files])
            exact = exact.take(pc.sort_indices(exact, sort_keys=[("global", "ascending")]))
            eg, erep = exact.column("global").to_numpy(), exact.column("rep").to_numpy()
            e_ids, e_rep_ids = exact.column("id").to_pylist(), exact.column("rep_id").to_pylist()
            a, b = (int(x) for x in np.searchsorted(near.nodes, [lo, hi]))
            # decisions: exact copies name their exact kept copy; near duplicates their cluster and kept copy
            rows: list[tuple[int, str, str, str]] = []
            for i in np.flatnonzero(erep != eg).tolist():
                rows.append((int(eg[i]), e_ids[i], EXACT_DUPLICATE, json.dumps({"kept_id": e_rep_ids[i]})))
            for i in range(a, b):
                if near.kept[i] != near.nodes[i]:
                    detail = {"cluster_id": int(near.cluster[i]), "kept_id": near.kept_id[i]}
                    rows.append((int(near.nodes[i]), near.ids[i], NEAR_DUPLICATE, json.dumps(detail, sort_keys=True)))
            rows.sort()
            pq.write_table(
                pa.table(
                    {
                        "global": pa.array([r[0] for r in rows], pa.int64()),
                        "id": pa.array([r[1] for r in rows], pa.string()),
                        "reason": pa.array([r[2] for r in rows], pa.string()),
                        "detail": pa.array([r[3] for r in rows], pa.string()),
                        "row": pa.array([r[0] - lo for r in rows], pa.int64()),
                    }
                ),
                work.out(paths.shard_name(s, "decisions", "parquet")),
            )
            # cluster members: the exact groups' members and the near clusters' documents of this shard
            member = {int(g): (int(r), e_ids[i], e_rep_ids[i]) for i, (g, r) in enumerate(zip(eg, erep))}
            for i in range(a, b):
                member.setdefault(int(near.nodes[i]), (int(near.nodes[i]), near.ids[i], near.ids[i]))
            if not member:
                continue
            docs = np.array(sorted(member), dtype=np.int64)
            rep = np.array([member[d][0] for d in docs.tolist()], dtype=np.int64)
            pos, is_node = near.find(rep)
            has_nodes = len(near.nodes) > 0
            final = np.where(is_node, near.kept[pos], rep) if has_nodes else rep
            near_cluster = np.where(is_node, near.cluster[pos], -1) if has_nodes else np.full(len(rep), -1)
            kept_id = [near.kept_id[p] if isn else member[d][2] for d, p, isn in zip(docs.tolist(), pos, is_node)]
            kind = np.where(final == docs, "kept", np.where(rep != docs, EXACT_DUPLICATE, NEAR_DUPLICATE))
            clusters.write_table(
                pa.table(
                    [
                        pa.array([member[d][1] for d in docs.tolist()], pa.string()),
                        pa.array(kept_id, pa.string()),
                        pa.array(near_cluster, pa.int64()),
                        pa.array(kind.tolist(), pa.string()),
                    ],
                    schema=CLUSTERS_SCHEMA,
                )
            )


def _cluster_row(corpus: _Corpus, size: int, kept: int, kept_id: str, exact: int, cluster: int) -> dict[str, Any]:
    """One of the largest clusters, for the report: size, how many exact copies, kept id, its URL."""
    s, row = corpus.locate(kept)
    keys = corpus.work.get(paths.shard_name(s, "keys", "parquet"))
    url = pq.read_table(keys, columns=["url"]).column(0)[row].as_py()
    return {"kept_id": kept_id, "size": size, "exact": exact, "near_cluster_id": cluster, "sample_url": url or ""}


def exact_names(params: DedupParams) -> list[str]:
    """The exact tasks (one per partition; `params` resolved)."""
    return [partition_name(p) for p in range(params.partitions)]


def band_names(params: DedupParams) -> list[str]:
    """The band tasks (one per band and partition, index b * partitions + p; `params` resolved)."""
    return [band_task_name(b, p) for b in range(params.bands) for p in range(params.partitions)]


def run_steps(sources: list[str], out_dir: str, params: DedupParams, mapped: Any = None) -> ClusterSummary:
    """The global steps without Prefect (bench, tests): signature map, exact tasks, band tasks, union step.
    `mapped(fn, names)` runs fn(name, out_dir, i, params) over the names (default: in this process).
    `params.partitions` unset: resolved from the sources' row count."""
    params = resolve_partitions(params, sum(count_rows(s) for s in sources))

    def run_all(fn: Any, names: list[str]) -> list[Any]:
        if mapped is not None:
            return list(mapped(fn, names, params))
        return [fn(name, out_dir, i, params) for i, name in enumerate(names)]

    results = run_all(dedup_signature_shard.fn, sources)
    write_starts(out_dir, [r.docs for r in results])
    run_all(dedup_exact.fn, exact_names(params))
    if params.near:
        if params.exact:
            write_exact_dropped(out_dir, params)
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
