"""The dedup stage's partitioned global step (signature map -> exact step -> band tasks -> union step):
pinned decisions on a small corpus, band tasks independent of each other, and the union step equal to the
single-process clustering it replaced (written out here as the reference)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.dedup import _vocabulary, synthetic_plan, synthetic_text
from storage.documents import Document, DocumentWriter
from tasks.dedup import (
    DedupParams,
    band_file,
    keep_rank,
    load_decisions,
    pairs_file,
    run_steps,
)
from tasks.dedup import minhash as dm
from tasks.dedup.exact import exact_digests, exact_kept


def _corpus(tmp_path, n, seed, shards=3):
    """Synthetic documents (random words, planted edited and exact copies), written as `shards` shards."""
    base = synthetic_plan(n, seed, near_rate=0.15, exact_rate=0.05)
    vocab = _vocabulary(300, seed)  # a small vocabulary: unrelated documents share some shingles too
    docs = [
        Document(
            id=f"d{i:04d}",
            text=synthetic_text(i, base, vocab, seed, exact_rate=0.05),
            url=f"https://x.example/{i}",
            crawl_date=f"2024-01-{1 + i % 28:02d}T00:00:00Z" if i % 11 else "",
        )
        for i in range(n)
    ]
    sources = []
    for s in range(shards):
        path = str(tmp_path / f"in-{s}.parquet")
        with DocumentWriter(path) as w:
            for d in docs[s::shards]:
                w.write(d)
        sources.append(path)
    return sources, [d for s in range(shards) for d in docs[s::shards]]


def _decisions(out, n_shards):
    return {did: (r, d) for s in range(n_shards) for did, r, d in load_decisions(out, s).values()}


# kept/rejected ids of this corpus, produced by the committed single-process step before the band split
PINNED_DECISIONS = {
    "d0004": ("exact_duplicate", "d0085"),
    "d0012": ("exact_duplicate", "d0112"),
    "d0013": ("near_duplicate", "d0117"),
    "d0017": ("exact_duplicate", "d0093"),
    "d0018": ("near_duplicate", "d0045"),
    "d0023": ("exact_duplicate", "d0063"),
    "d0026": ("near_duplicate", "d0062"),
    "d0033": ("exact_duplicate", "d0116"),
    "d0052": ("exact_duplicate", "d0035"),
    "d0067": ("near_duplicate", "d0029"),
    "d0073": ("exact_duplicate", "d0035"),
    "d0079": ("exact_duplicate", "d0117"),
    "d0081": ("exact_duplicate", "d0104"),
    "d0083": ("exact_duplicate", "d0071"),
    "d0089": ("near_duplicate", "d0032"),
    "d0105": ("exact_duplicate", "d0006"),
    "d0109": ("exact_duplicate", "d0067"),
    "d0111": ("exact_duplicate", "d0057"),
}
PINNED_COUNTS = (13, 5, 9)  # exact duplicates, near duplicates, candidate pairs


def test_pinned_decisions_on_a_small_corpus(tmp_path):
    sources, _ = _corpus(tmp_path, 120, seed=3)
    out = str(tmp_path / "out")
    summary = run_steps(sources, out, DedupParams())
    got = {i: (r, d["kept_id"]) for i, (r, d) in _decisions(out, len(sources)).items()}
    assert got == PINNED_DECISIONS
    assert (summary.exact_duplicates, summary.near_duplicates, summary.candidate_pairs) == PINNED_COUNTS


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_band_task_depends_only_on_its_band(tmp_path, partitions):
    sources, docs = _corpus(tmp_path, 200, seed=4)
    params = DedupParams(bands=6, rows=3, verify_jaccard=False, exact=False, partitions=partitions)
    out = tmp_path / "out"
    run_steps(sources, str(out), params)
    work = out / "_work" / "minhash"
    want = dm.unique_pairs([np.load(work / pairs_file(2, q)) for q in range(partitions)])
    assert len(want) > 0
    # the same pairs as the rows-based band sort on band 2 of the documents' signatures (exact off: all of them)
    hasher = dm.MinHasher(params.num_perm, params.seed, params.shingle_size, params.hash_function)
    sig = hasher.signatures([hasher.hashes(d.text) for d in docs])
    ids = np.arange(len(docs))
    ref = dm.unique_pairs([dm.band_pairs(sig[2 * 3 : 3 * 3][:, ids], ids)])
    assert np.array_equal(want, ref)
    # destroy every other band's files (and the band's own pairs), run band 2's tasks alone: the same bytes
    from tasks.dedup import dedup_band

    for b in range(params.bands):
        if b != 2:
            for s in range(len(sources)):
                (work / band_file(b, s)).write_bytes(b"garbage")
    for q in range(partitions):
        before = np.load(work / pairs_file(2, q))
        (work / pairs_file(2, q)).unlink()
        res = dedup_band.fn(f"b-002-p-{q:04d}", str(out), 2 * partitions + q, params)
        assert res.pairs == len(before) and np.array_equal(np.load(work / pairs_file(2, q)), before)


def _reference(docs, params):
    """The single-process clustering the band tasks replaced (HEAD before the split), on texts in memory:
    decisions as {id: (reason, kept_id)}."""
    n = len(docs)
    keys = pa.table(
        {"id": [d.id for d in docs], "key": [d.crawl_date or None for d in docs]},
        schema=pa.schema([("id", pa.string()), ("key", pa.string())]),
    )
    rank = keep_rank(keys, params.keep)
    ekept = exact_kept(exact_digests([d.text for d in docs]), rank) if params.exact else np.arange(n)
    hasher = dm.MinHasher(params.num_perm, params.seed, params.shingle_size, params.hash_function)
    hashes = [hasher.hashes(d.text) for d in docs]
    sig = hasher.signatures(hashes)
    eligible = (ekept == np.arange(n)) & np.array([len(h) > 0 for h in hashes])
    ids = np.flatnonzero(eligible)
    r = params.rows
    bands = params.bands if params.near else 0
    pairs = dm.unique_pairs(dm.band_pairs(sig[b * r : (b + 1) * r][:, ids], ids) for b in range(bands))
    candidates = len(pairs)
    if params.verify_jaccard and len(pairs):
        pairs = dm.expand_pairs(pairs, params.all_pairs_max)
        sets = [np.unique(h) for h in hashes]
        ok = [dm.jaccard_sorted(sets[u], sets[v]) >= params.jaccard_threshold for u, v in pairs.tolist()]
        pairs = pairs[np.array(ok, dtype=bool)]
    nkept = np.arange(n)
    nodes = np.unique(pairs)
    labels = dm.connected_components(len(nodes), np.searchsorted(nodes, pairs))
    nkept[nodes] = nodes[dm.choose_kept(labels, rank[nodes])]
    cluster = np.full(n, -1)
    _, cluster[nodes] = np.unique(labels, return_inverse=True)
    out = {}
    for i in range(n):
        if ekept[i] != i:
            out[docs[i].id] = ("exact_duplicate", {"kept_id": docs[ekept[i]].id})
        elif nkept[i] != i:
            out[docs[i].id] = ("near_duplicate", {"cluster_id": int(cluster[i]), "kept_id": docs[nkept[i]].id})
    # `_work/clusters.parquet`: every member of every final cluster (exact copies of near duplicates included)
    final = nkept[ekept]
    sizes = np.bincount(final, minlength=n)
    members = np.flatnonzero(sizes[final] > 1)
    kinds = {True: "kept"}
    clusters = [
        {
            "doc_id": docs[m].id,
            "kept_id": docs[final[m]].id,
            "near_cluster_id": int(cluster[ekept[m]]),
            "kind": kinds.get(bool(final[m] == m), "exact_duplicate" if ekept[m] != m else "near_duplicate"),
        }
        for m in members.tolist()
    ]
    return out, candidates, clusters


@pytest.mark.parametrize(
    "seed,params",
    [
        (0, DedupParams()),
        (0, DedupParams(partitions=5)),
        (1, DedupParams(verify_jaccard=False, bands=20, rows=3, partitions=3)),
        (2, DedupParams(exact=False, bands=9, rows=4, all_pairs_max=3, jaccard_threshold=0.6, partitions=2)),
        (3, DedupParams(near=False, partitions=4)),
    ],
)
def test_union_step_equals_the_single_process_clustering(tmp_path, seed, params):
    sources, docs = _corpus(tmp_path, 400, seed=seed, shards=4)
    out = str(tmp_path / "out")
    summary = run_steps(sources, out, params)
    want, candidates, want_clusters = _reference(docs, params)
    got = _decisions(out, len(sources))
    assert len(want) > 20 and got == want
    assert summary.candidate_pairs == candidates
    clusters = pq.read_table(f"{out}/_work/clusters.parquet").to_pylist()
    assert {c["doc_id"] for c in clusters if c["kind"] != "kept"} == set(want)
    assert clusters == want_clusters
    json.dumps(summary.model_dump())  # the manifest extras stay JSON


def test_partitions_change_nothing_but_the_split(tmp_path):
    """Summary (sizes, largest clusters), decisions and clusters file equal for 1, 2 and 7 partitions."""
    sources, _ = _corpus(tmp_path, 400, seed=5, shards=3)
    seen = []
    for k in (1, 2, 7):
        out = str(tmp_path / f"out-{k}")
        summary = run_steps(sources, out, DedupParams(partitions=k))
        clusters = pq.read_table(f"{out}/_work/clusters.parquet").to_pylist()
        seen.append((summary.model_dump(), _decisions(out, len(sources)), clusters))
    assert seen[0][0]["exact_duplicates"] > 0 and seen[0][0]["near_duplicates"] > 0
    assert seen[0] == seen[1] == seen[2]


def test_partitions_follow_the_corpus_size():
    from tasks.dedup import resolve_partitions

    assert resolve_partitions(DedupParams(partition_docs=1000), 999).partitions == 1
    assert resolve_partitions(DedupParams(partition_docs=1000), 4001).partitions == 5
    assert resolve_partitions(DedupParams(partitions=3), 10**9).partitions == 3
    assert DedupParams(partitions=3).version_params() == DedupParams(partition_docs=7).version_params()


def test_partitioned_steps_on_an_object_store_equal_local(s3_server, tmp_path, monkeypatch):
    """Every task reads its slice of the work files with range requests on S3 (moto on 127.0.0.1): the same
    decisions and clusters as on a local root, and no local work directory left behind."""
    import uuid

    import fsspec

    monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    sources, _ = _corpus(tmp_path, 300, seed=6, shards=3)
    params = DedupParams(partitions=3)
    remote, local = f"s3://{bucket}/dedup", str(tmp_path / "local")
    assert run_steps(sources, remote, params) == run_steps(sources, local, params)
    assert _decisions(remote, len(sources)) == _decisions(local, len(sources))
    with fs.open(f"{bucket}/dedup/_work/clusters.parquet", "rb") as f:
        assert pq.read_table(f).to_pylist() == pq.read_table(f"{local}/_work/clusters.parquet").to_pylist()
    assert not list((tmp_path / "cache" / "work").iterdir())
