"""MinHash signatures (bit-identical to datasketch), LSH buckets, union-find, and the planted-set quality.

The quality test plants near duplicates of real English prose (Python standard-library docstrings,
available offline) at known word-5-gram Jaccard similarities, finds duplicates with the same LSH steps
the stage uses, and checks recall at J >= 0.8 and precision against brute-force exact Jaccard over all
pairs of the set.
"""

import random

import numpy as np
import pytest
from datasketch import MinHash
from datasketch.hashfunc import sha1_hash32

from bench.dedup import edit_to_jaccard, stdlib_docstrings
from tasks.dedup import minhash as dm

TEXTS = [
    "",
    "one",
    "two words here",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Ünïcödé straße — ﬁne text, İstanbul ΣΊΣΥΦΟΣ and more words to make shingles",
    "a b c d e",
    "repeat repeat repeat repeat repeat repeat repeat",
]


def test_shingles_are_word_5grams_of_the_shared_normaliser():
    assert dm.shingle_bytes("Hello, World!  This is A test.", 5) == [b"hello world this is a", b"world this is a test"]
    assert dm.shingle_bytes("Two words", 5) == [b"two words"]
    assert dm.shingle_bytes(" ... ", 5) == []
    for t in TEXTS:
        expected = [sha1_hash32(s) for s in dm.shingle_bytes(t, 5)]
        assert dm.shingle_hashes(t, 5).tolist() == expected


@pytest.mark.parametrize("seed", [1, 42])
def test_signatures_equal_datasketch(seed):
    texts = TEXTS + stdlib_docstrings()[:20]
    hasher = dm.MinHasher(num_perm=112, seed=seed)
    a, b = MinHash(num_perm=112, seed=seed).permutations
    assert (hasher.a == a).all() and (hasher.b == b).all()
    sig = hasher.signatures([hasher.hashes(t) for t in texts])
    assert sig.shape == (112, len(texts)) and sig.dtype == np.uint32
    for j, t in enumerate(texts):
        m = MinHash(num_perm=112, seed=seed)
        m.update_batch(dm.shingle_bytes(t, 5))
        assert (sig[:, j] == m.hashvalues).all(), f"text {j} differs from datasketch"
    assert (sig[:, 0] == dm.MAX_HASH).all()  # no shingles: the empty signature


@pytest.mark.parametrize("num_perm,seed", [(32, 3), (112, 1)])
def test_xxhash_signatures_equal_datasketch_with_that_hashfunc(num_perm, seed):
    """The stage's default shingle hash: datasketch's MinHash with hashfunc=xxh32, bit for bit."""
    import xxhash  # a core dependency: the dedup stage's default hash_function

    texts = TEXTS + stdlib_docstrings()[:20]
    hasher = dm.MinHasher(num_perm=num_perm, seed=seed, hash_function="xxhash")
    sig = hasher.signatures([hasher.hashes(t) for t in texts])
    for j, t in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
        m.update_batch(dm.shingle_bytes(t, 5))
        assert (sig[:, j] == m.hashvalues).all(), f"text {j} differs from datasketch"
    assert dm.shingle_hashes(TEXTS[3], 5, "xxhash").tolist() == [
        xxhash.xxh32_intdigest(s) for s in dm.shingle_bytes(TEXTS[3], 5)
    ]


def test_s_curve_matches_fineweb():
    assert dm.s_curve(0.8, 14, 8) == pytest.approx(0.924, abs=5e-4)
    values = dm.s_curve(np.linspace(0, 1, 11), 14, 8)
    assert values[0] == 0 and values[-1] == 1 and (np.diff(values) >= 0).all()


def test_band_pairs_all_pairs_small_star_and_chain_large():
    band = np.array([[5, 5, 5, 7, 9, 9, 9, 9, 9], [1, 1, 1, 2, 3, 3, 3, 3, 3]], dtype=np.uint32)
    ids = np.arange(100, 109)
    pairs = {tuple(p) for p in dm.band_pairs(band, ids, all_pairs_max=3).tolist()}
    small = {(100, 101), (100, 102), (101, 102)}
    assert small <= pairs
    big = {p for p in pairs if p[0] >= 104}
    # bucket of 5 > all_pairs_max: star to its first member plus neighbour chain, not all 10 pairs
    assert big == {(104, 105), (104, 106), (104, 107), (104, 108), (105, 106), (106, 107), (107, 108)}
    assert not any(103 in p for p in pairs)


def test_expand_pairs_adds_pairs_inside_small_candidate_components():
    pairs = np.array([[1, 2], [2, 3], [7, 8]] + [[10, k] for k in range(11, 30)])
    out = {tuple(p) for p in dm.expand_pairs(pairs, all_pairs_max=4).tolist()}
    assert {(1, 2), (2, 3), (1, 3), (7, 8)} <= out
    big = {p for p in out if p[0] >= 10}  # 20 members > 4: only its candidates (no all-pairs explosion)
    assert (10, 11) in big and len(big) < 40
    assert dm.expand_pairs(np.empty((0, 2), dtype=np.int64), 4).shape == (0, 2)


def test_band_pairs_never_trust_a_key_collision(monkeypatch):
    monkeypatch.setattr(dm, "band_keys", lambda band: np.zeros(band.shape[1], dtype=np.uint64))
    band = np.array([[1, 2, 1, 3]], dtype=np.uint32)
    assert dm.band_pairs(band, np.arange(4), 16).tolist() == [[0, 2]]


def test_connected_components_matches_a_plain_union_find():
    rng = np.random.default_rng(0)
    n = 500
    pairs = np.sort(rng.integers(0, n, size=(300, 2)), axis=1)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in pairs.tolist():
        ru, rv = find(u), find(v)
        parent[max(ru, rv)] = min(ru, rv)
    labels = dm.connected_components(n, pairs)
    assert labels.tolist() == [find(i) for i in range(n)]
    chain = np.array([[i, i + 1] for i in range(99)])
    assert (dm.connected_components(100, chain) == 0).all()


def test_choose_kept_is_the_best_rank_in_each_cluster():
    labels = np.array([0, 0, 2, 2, 2, 5])
    rank = np.array([9, 3, 4, 1, 8, 0])
    assert dm.choose_kept(labels, rank).tolist() == [1, 1, 3, 3, 3, 5]


def test_jaccard_sorted():
    a, b = np.array([1, 2, 3, 4], np.uint32), np.array([3, 4, 5], np.uint32)
    assert dm.jaccard_sorted(a, b) == pytest.approx(2 / 5)
    assert dm.jaccard_sorted(a, a) == 1.0 and dm.jaccard_sorted(a, b[:0]) == 0.0


def test_plan_estimate_sizes():
    e = dm.plan_estimate(1_000_000, 3_000_000_000, 112, 14, 8, verify=True)
    assert e["signature_bytes"] == 1_000_000 * 112 * 4
    assert e["shingle_set_bytes"] == pytest.approx(2e9)
    assert e["p_at_0.8"] == pytest.approx(0.924, abs=5e-4) and 0.7 < e["threshold_50pct"] < 0.75
    assert e["expected_candidate_pairs"] > 0
    # partitions cut the exact and band tasks, not the corpus-wide bitmap
    e4 = dm.plan_estimate(1_000_000, 3_000_000_000, 112, 14, 8, verify=True, partitions=4)
    assert e4["exact_task_bytes"] == pytest.approx(e["exact_task_bytes"] / 4)
    assert e4["band_task_bytes"] - 1_000_000 / 8 == pytest.approx((e["band_task_bytes"] - 1_000_000 / 8) / 4)


# ---------------------------------------------------------------- quality on a planted set


def planted_set(seed=0):
    """~140 documents of two real docstrings each, plus edited copies (1-2 per document) at Jaccard 0.6-0.98."""
    rng = random.Random(seed)
    doc = stdlib_docstrings()
    base = [" ".join(doc[i : i + 2]) for i in range(0, len(doc) - 1, 2)]
    vocabulary = sorted({w for t in base for w in t.split() if w.isalpha()})
    texts = list(base)
    for original in base:
        for _ in range(1 + (rng.random() < 0.5)):
            texts.append(edit_to_jaccard(original, rng.uniform(0.6, 0.98), rng, vocabulary)[0])
    return texts


def brute_force_pairs(texts, threshold):
    sets = [np.unique(dm.shingle_hashes(t, 5)) for t in texts]
    out = set()
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if dm.jaccard_sorted(sets[i], sets[j]) >= threshold:
                out.add((i, j))
    return out, sets


def lsh_clusters(texts, sets, verify, bands=14, rows=8):
    hasher = dm.MinHasher(bands * rows, seed=1)
    sig = hasher.signatures([hasher.hashes(t) for t in texts])
    ids = np.arange(len(texts))
    pairs = dm.unique_pairs(dm.band_pairs(sig[b * rows : (b + 1) * rows], ids) for b in range(bands))
    if verify:  # as the stage does: candidates + pairs inside small candidate components, then true Jaccard
        pairs = dm.expand_pairs(pairs, 16)
        pairs = np.array([p for p in pairs.tolist() if dm.jaccard_sorted(sets[p[0]], sets[p[1]]) >= 0.8]).reshape(-1, 2)
    return dm.connected_components(len(texts), pairs)


def test_planted_near_duplicates_recall_and_precision():
    """Recall: pairs with true J >= 0.8 that end in one cluster. Precision: documents a cluster would
    remove (all but one member) that have true J >= 0.8 with some other member (brute force)."""
    texts = planted_set()
    truth, sets = brute_force_pairs(texts, 0.8)
    assert len(truth) >= 80, "the planted set should hold many pairs at J >= 0.8"
    linked = {i for pair in truth for i in pair}
    neighbours = {i: {j for p in truth if i in p for j in p if j != i} for i in linked}
    precision = {}
    for verify in (True, False):
        labels = lsh_clusters(texts, sets, verify)
        recall = sum(labels[i] == labels[j] for i, j in truth) / len(truth)
        assert recall >= 0.92, f"verify={verify}: recall {recall:.3f} at J >= 0.8"
        removed = [i for i in range(len(texts)) if (labels == labels[i]).sum() > 1 and labels[i] != i]
        good = sum(any(labels[j] == labels[i] for j in neighbours.get(i, ())) for i in removed)
        precision[verify] = good / len(removed)
    assert precision[True] >= 0.98, precision
    assert precision[False] < precision[True], "without verification some J < 0.8 pairs should be joined"
