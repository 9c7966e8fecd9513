"""Dedup stage: `quality` documents -> `dedup` documents, exact and MinHash near duplicates removed.

Global across all shards of the input version, in three steps (flows/dedup.py runs them):
  1. `dedup_signature_shard` (map): per shard, the exact key (`tasks.dedup.exact`), the keep-rule key,
     MinHash signatures (`tasks.dedup.minhash`, written as a (num_perm, docs) uint32 `.npy`) and, with
     `verify_jaccard`, the sorted shingle-hash set of each document, under `_work/minhash/`.
  2. `dedup_cluster` (one task): ranks all documents by the keep rule, groups exact duplicates by
     sorting digests, then LSH over the exact survivors band by band (sort, never a dict), optional
     true-Jaccard verification of the candidate pairs and of the pairs inside small candidate
     components (pread of only those documents' shingle sets), union-find clusters, one kept document
     per cluster; writes per-shard decisions and `_work/clusters.parquet` (every cluster member).
     Memory: about 80 bytes per document (rank, digests, one band's keys and rows, ids as Arrow).
  3. `dedup_shard` (map): copies each input shard (`process`), sending the decided documents to `rejected/`.
Keep rule (`keep`): `earliest` crawl_date (ISO-8601 text; documents without a date lose) or
`highest_quality` (`quality_score` column from the quality stage); ties by id. Drop reasons:
`exact_duplicate` (detail `kept_id`: the exact copy kept; if that copy is itself a near duplicate, its
own rejected record names the survivor) and `near_duplicate` (`cluster_id`, `kept_id`). No meta columns
are added. The report and the dry-run plan: `tasks.dedup.report`. References: Broder 1997 (MinHash),
FineWeb (5-grams, 14 x 8).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
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
    band_pairs,
    choose_kept,
    connected_components,
    expand_pairs,
    jaccard_sorted,
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


def work_dir(out_dir: str) -> str:
    """Where the signatures and shingle sets of the version at `out_dir` are written: `<out_dir>/_work/minhash` on a
    local root; on an object store a local directory (they are memory-mapped and read with pread, and removed
    before the commit anyway; `finish_work` uploads them with `keep_work`). Shard tasks must run on this machine."""
    return paths.local_work_dir(out_dir, "dedup-minhash") if paths.is_remote(out_dir) else paths.join(out_dir, WORK)


def work_path(out_dir: str, kind: str, index: int, ext: str) -> str:
    return paths.join(work_dir(out_dir), paths.shard_name(index, kind, ext))


def finish_work(out_dir: str, keep: bool) -> None:
    """Remove the work files (signatures, shingle sets, decisions), or with `keep` leave them in the version under
    `_work/minhash/` (uploaded there from the local work directory on an object store)."""
    local = work_dir(out_dir)
    if paths.is_remote(out_dir):
        try:
            if keep:
                paths.upload_dir(local, paths.join(out_dir, WORK))
        finally:
            paths.remove_local(local)
    elif not keep:
        paths.remove_local(local)


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
    """Exact keys, keep keys, signatures and shingle sets of one input shard, under `_work/minhash/`."""
    os.makedirs(work_dir(out_dir), exist_ok=True)
    hasher = MinHasher(params.num_perm, params.seed, params.shingle_size, params.hash_function)
    # written in place, batch by batch: memory stays one batch of signatures, not the shard's
    sig = np.lib.format.open_memmap(
        work_path(out_dir, "sig", index, "npy"),
        mode="w+",
        dtype=np.uint32,
        shape=(params.num_perm if params.near else 0, count_rows(src)),
    )
    keys: list[pa.RecordBatch] = []
    offsets = [0]
    done = 0
    sets = open(work_path(out_dir, "shingles", index, "u32"), "wb") if params.near and params.verify_jaccard else None
    try:
        for batch in iter_batches(src, columns=["id", "url", "text", key_column(params)], batch_size=1024):
            texts = [t or "" for t in batch.column("text").to_pylist()]
            digests = exact_digests(texts)
            hashes = [hasher.hashes(t) for t in texts] if params.near else [np.empty(0, np.uint32)] * len(texts)
            if params.near:
                sig[:, done : done + len(texts)] = hasher.signatures(hashes)
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
    assert done == sig.shape[1], f"{src}: read {done} rows, the Parquet footer says {sig.shape[1]}"
    sig.flush()
    del sig
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
    pq.write_table(table, work_path(out_dir, "keys", index, "parquet"))
    if sets is not None:
        np.save(work_path(out_dir, "offsets", index, "npy"), np.asarray(offsets, dtype=np.int64))
    n = table.num_rows
    return SignatureResult(index=index, stats=StageStats(docs_in=n, docs_out=n), docs=n)


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


_CORPUS_COLUMNS = ["id", "key", "exact0", "exact1", "shingles"]  # not url: read per row when reported


class _Corpus:
    """Global document index <-> (shard, row), with lazily memory-mapped per-shard work files."""

    def __init__(self, out_dir: str, n_shards: int, params: DedupParams):
        self.out_dir, self.params = out_dir, params
        tables = [
            pq.read_table(work_path(out_dir, "keys", i, "parquet"), columns=_CORPUS_COLUMNS) for i in range(n_shards)
        ]
        self.counts = np.array([t.num_rows for t in tables], dtype=np.int64)
        self.start = np.concatenate(([0], np.cumsum(self.counts)))
        self.keys = pa.concat_tables(tables).combine_chunks() if tables else None
        self._shingles: dict[int, tuple[int, np.ndarray]] = {}

    def locate(self, i: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.start, i, side="right") - 1)
        return s, int(i - self.start[s])

    def band(self, b: int, eligible: np.ndarray) -> np.ndarray:
        r = self.params.rows
        parts = []
        for s in range(len(self.counts)):
            sig = np.load(work_path(self.out_dir, "sig", s, "npy"), mmap_mode="r")
            parts.append(np.asarray(sig[b * r : (b + 1) * r][:, eligible[self.start[s] : self.start[s + 1]]]))
        return np.concatenate(parts, axis=1)

    def shingles(self, i: int) -> np.ndarray:
        """Document i's shingle set, read with pread: only candidate documents are read, and nothing stays
        mapped (a memory map would keep every touched page resident: ~2 KB per document at 100k docs)."""
        s, row = self.locate(i)
        if s not in self._shingles:
            fd = os.open(work_path(self.out_dir, "shingles", s, "u32"), os.O_RDONLY)
            self._shingles[s] = (fd, np.load(work_path(self.out_dir, "offsets", s, "npy")))
        fd, off = self._shingles[s]
        lo, hi = int(off[row]), int(off[row + 1])
        return np.frombuffer(os.pread(fd, 4 * (hi - lo), 4 * lo), dtype="<u4")

    def close(self) -> None:
        for fd, _ in self._shingles.values():
            os.close(fd)
        self._shingles.clear()


def _candidate_pairs(corpus: _Corpus, eligible: np.ndarray, params: DedupParams) -> np.ndarray:
    ids = np.flatnonzero(eligible)
    found: list[np.ndarray] = []
    for b in range(params.bands):
        found.append(band_pairs(corpus.band(b, eligible), ids))
        if sum(len(p) for p in found) > 4 * max(len(ids), 1):  # keep the pair list near its unique size
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


@task
def dedup_cluster(out_dir: str, n_shards: int, params: DedupParams) -> ClusterSummary:
    """Global exact groups and near-duplicate clusters; writes `_work/minhash/decisions-NNNNN.parquet`."""
    corpus = _Corpus(out_dir, n_shards, params)
    n = int(corpus.start[-1])
    if corpus.keys is None or n == 0:  # nothing reached dedup: every (empty) shard gets an empty decision list
        empty = pa.table(
            {
                "row": pa.array([], pa.int64()),
                "id": pa.array([], pa.string()),
                "reason": pa.array([], pa.string()),
                "detail": pa.array([], pa.string()),
            }
        )
        for s in range(n_shards):
            pq.write_table(empty, work_path(out_dir, "decisions", s, "parquet"))
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
    rank = keep_rank(corpus.keys, params.keep)
    everyone = np.arange(n, dtype=np.int64)
    ekept = everyone.copy()
    if params.exact:
        digests = np.stack([corpus.keys.column("exact0").to_numpy(), corpus.keys.column("exact1").to_numpy()], axis=1)
        ekept = exact_kept(digests, rank)
    nkept, cluster = everyone.copy(), np.full(n, -1, dtype=np.int64)
    n_candidates = n_checked = n_verified = n_clusters = 0
    if params.near:
        eligible = (ekept == everyone) & (corpus.keys.column("shingles").to_numpy() > 0)
        pairs = _candidate_pairs(corpus, eligible, params)
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
    top = np.argsort(-sizes, kind="stable")[:10]
    largest = [_cluster_row(corpus, int(k), final, ekept, cluster) for k in top if sizes[k] > 1]
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
    assert corpus.keys is not None
    ids = corpus.keys.column("id")
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
    for s in range(len(corpus.counts)):
        lo, hi = np.searchsorted(dropped, [corpus.start[s], corpus.start[s + 1]])
        part = table.slice(int(lo), int(hi - lo))
        part = part.append_column("row", pc.subtract(part.column("global"), pa.scalar(int(corpus.start[s]))))
        pq.write_table(part, work_path(corpus.out_dir, "decisions", s, "parquet"))
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
    fs, target = paths.filesystem(paths.join(corpus.out_dir, CLUSTERS))
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(target, "wb") as f:
        pq.write_table(clusters, f)


def _cluster_row(
    corpus: _Corpus, kept: int, final: np.ndarray, ekept: np.ndarray, cluster: np.ndarray
) -> dict[str, Any]:
    """One of the largest clusters, for the report: size, how many exact copies, kept id, its URL."""
    members = np.flatnonzero(final == kept)
    s, row = corpus.locate(kept)
    assert corpus.keys is not None
    url = pq.read_table(work_path(corpus.out_dir, "keys", s, "parquet"), columns=["url"]).column(0)[row].as_py()
    return {
        "kept_id": corpus.keys.column("id")[kept].as_py(),
        "size": len(members),
        "exact": int(np.count_nonzero(ekept[members] != members)),
        "near_cluster_id": int(cluster[kept]),
        "sample_url": url or "",
    }


# ---------------------------------------------------------------- the filter map


Decisions = dict[int, tuple[str, str, dict[str, Any]]]  # row -> (doc id, reason, detail)


def load_decisions(out_dir: str, index: int) -> Decisions:
    """row -> (doc id, reason, detail) for the documents of shard `index` that the global step dropped."""
    t = pq.read_table(work_path(out_dir, "decisions", index, "parquet"), columns=["row", "id", "reason", "detail"])
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
