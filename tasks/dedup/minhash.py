"""MinHash + LSH near-duplicate detection, vectorised with NumPy: the pure parts of the dedup stage.

Shingles are word n-grams (default 5, FineWeb) of `tasks.text.words` (NFKC, lowercase, punctuation
dropped), joined by one space and UTF-8 encoded; a document with fewer than n words has one shingle,
all its words; a document without words has none and never becomes a candidate.

Signatures use datasketch's permutation scheme (datasketch >= 2.0, "affine32") bit for bit: a 32-bit
shingle hash `h`, pre-mixed with the MurmurHash3 32-bit finalizer, then permutation k is
`a_k * h + b_k mod 2^32` with odd `a_k`; `a, b` are drawn from `numpy.random.RandomState(seed)` exactly
as datasketch does. The shingle hash is the only choice (`hash_function`):
  - `sha1`: first 4 bytes of SHA-1, little-endian = datasketch's default `sha1_hash32`, so `signatures()`
    equals `MinHash(num_perm, seed).hashvalues`;
  - `xxhash` (the dedup stage's default): `xxhash.xxh32_intdigest`, so `signatures()` equals
    `MinHash(num_perm, seed, hashfunc=xxhash.xxh32_intdigest).hashvalues`. SHA-1 costs ~0.6 us per
    shingle in hashlib (a vectorised NumPy SHA-1 was measured only 1.2x faster), xxh32 ~0.2 us.
Both are tested equal to datasketch (tests/tasks/test_dedup_minhash.py); per-row collision rates and
band-candidate rates of both match the theory (bench/dedup.py). We do not call datasketch per
document: its `update_batch` hashes and permutes one document at a time, while `signatures()` batches
many documents into one (num_perm x shingles) array per call and reduces per document with
`minimum.reduceat` (bench/dedup.py measures both).

LSH: the signature is cut into `bands` bands of `rows` rows. Documents whose band rows are equal land in
one bucket; buckets are found by sorting a 64-bit key of each band (one band at a time, so memory is a
few arrays of length N, never a dict of buckets) and confirming equal rows (on a key collision the band is
re-sorted by its rows), so collisions neither create nor hide candidates.
P(candidate | Jaccard s) = 1 - (1 - s^rows)^bands (`s_curve`; 14 x 8 gives 0.924 at s = 0.8).
Candidate pairs, optionally verified by the true Jaccard of the shingle-hash sets (`expand_pairs` adds
the pairs inside small candidate components, so copies linked only through a third copy are checked
too), are joined into clusters by `connected_components`, a vectorised union-find (hook to the smaller
root, pointer jumping) over integer document indices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tasks.text import words

HashFunction = Literal["sha1", "xxhash"]
MAX_HASH = np.uint32(0xFFFFFFFF)
_FMIX32 = (np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35))
# Shingles per vectorised permutation call: 112 x 64k uint32 is 29 MB of scratch.
_CHUNK_SHINGLES = 1 << 16


def _sha1_digest4(buf: bytes, starts: list[int], ends: list[int]) -> np.ndarray:
    sha1 = hashlib.sha1
    packed = b"".join([sha1(buf[s:e]).digest()[:4] for s, e in zip(starts, ends)])
    return np.frombuffer(packed, dtype="<u4").astype(np.uint32)


XXHASH_MISSING = (
    "dedup hash_function='xxhash' (the default) needs the `xxhash` package, a dependency of "
    "pretrain-pipeline: pip install xxhash, or set dedup.hash_function='sha1'"
)


def _xxh32(buf: bytes, starts: list[int], ends: list[int]) -> np.ndarray:
    try:
        import xxhash
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(XXHASH_MISSING) from err
    f = xxhash.xxh32_intdigest
    return np.fromiter([f(buf[s:e]) for s, e in zip(starts, ends)], dtype=np.uint32, count=len(starts))


_HASHERS: dict[str, Callable[[bytes, list[int], list[int]], np.ndarray]] = {"sha1": _sha1_digest4, "xxhash": _xxh32}


def shingle_bytes(text: str, n: int) -> list[bytes]:
    """The shingles of `text` as bytes (the slow, obvious definition; tests feed these to datasketch)."""
    toks = words(text)
    if not toks:
        return []
    if len(toks) < n:
        return [" ".join(toks).encode("utf-8", "surrogatepass")]
    return [" ".join(toks[i : i + n]).encode("utf-8", "surrogatepass") for i in range(len(toks) - n + 1)]


def shingle_hashes(text: str, n: int, hash_function: HashFunction = "sha1") -> np.ndarray:
    """32-bit hash of every shingle of `text` (in order, repeats kept), without building shingle strings.

    The words are joined once and each shingle is a byte slice of that buffer between word boundaries
    (found as the spaces of the UTF-8 buffer: words never contain one), which is exactly what
    `shingle_bytes` produces, at a fraction of the cost of joining and encoding every n-gram.
    """
    toks = words(text)
    if not toks:
        return np.empty(0, dtype=np.uint32)
    buf = " ".join(toks).encode("utf-8", "surrogatepass")
    if len(toks) < n:
        return _HASHERS[hash_function](buf, [0], [len(buf)])
    spaces = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 32)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.append(spaces, len(buf))
    m = len(toks) - n + 1
    return _HASHERS[hash_function](buf, starts[:m].tolist(), ends[n - 1 :].tolist())


def unique_sets(hashes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values of each uint32 array, concatenated, and their lengths.

    One sort of (document << 32 | hash) for the whole batch: ~4x cheaper than numpy.unique per document.
    """
    lens = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
    if lens.sum() == 0:
        return np.empty(0, dtype=np.uint32), np.zeros(len(hashes), dtype=np.int64)
    doc = np.repeat(np.arange(len(hashes), dtype=np.uint64), lens)
    key = (doc << np.uint64(32)) | np.concatenate(hashes).astype(np.uint64)
    key.sort()
    key = key[np.concatenate(([True], key[1:] != key[:-1]))]
    counts = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=len(hashes))
    return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32), counts


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix before the affine permutations)."""
    h = h ^ (h >> np.uint32(16))
    h = h * _FMIX32[0]
    h = h ^ (h >> np.uint32(13))
    h = h * _FMIX32[1]
    return np.asarray(h ^ (h >> np.uint32(16)))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for (num_perm, seed)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


@dataclass(frozen=True)
class MinHasher:
    """Signatures for (num_perm, seed, shingle size, hash function); `a`, `b` are derived once."""

    num_perm: int
    seed: int
    shingle_size: int = 5
    hash_function: HashFunction = "sha1"
    a: np.ndarray = field(init=False, repr=False, compare=False)
    b: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        a, b = permutations(self.num_perm, self.seed)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    def hashes(self, text: str) -> np.ndarray:
        return shingle_hashes(text, self.shingle_size, self.hash_function)

    def signatures(self, hashes: Sequence[np.ndarray]) -> np.ndarray:
        """(num_perm, len(hashes)) uint32 signatures; a document without shingles gets all MAX_HASH."""
        out = np.full((self.num_perm, len(hashes)), MAX_HASH, dtype=np.uint32)
        batch: list[int] = []
        size = 0
        for j, h in enumerate(hashes):
            if len(h) == 0:
                continue
            batch.append(j)
            size += len(h)
            if size >= _CHUNK_SHINGLES:
                self._fill(out, hashes, batch)
                batch, size = [], 0
        if batch:
            self._fill(out, hashes, batch)
        return out

    def _fill(self, out: np.ndarray, hashes: Sequence[np.ndarray], batch: list[int]) -> None:
        flat = fmix32(np.concatenate([hashes[j] for j in batch]))
        offsets = np.zeros(len(batch), dtype=np.int64)
        np.cumsum([len(hashes[j]) for j in batch[:-1]], out=offsets[1:])
        tmp = np.empty_like(flat)
        cols = np.asarray(batch)
        # one permutation at a time over the whole batch: measured fastest (contiguous, no 2-D temp)
        for k in range(self.num_perm):
            np.multiply(flat, self.a[k], out=tmp)
            tmp += self.b[k]
            out[k, cols] = np.minimum.reduceat(tmp, offsets)


# ---------------------------------------------------------------- LSH buckets and candidate pairs


def s_curve(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - np.power(s, rows)) ** bands


def band_keys(band: np.ndarray) -> np.ndarray:
    """64-bit key per column of a (rows, N) uint32 band (splitmix-style mix of the rows)."""
    key = np.zeros(band.shape[1], dtype=np.uint64)
    for row in band:
        key ^= row.astype(np.uint64)
        key *= np.uint64(0x9E3779B97F4A7C15)
        key ^= key >> np.uint64(29)
    return key


def band_pairs(band: np.ndarray, ids: np.ndarray, all_pairs_max: int = 2) -> np.ndarray:
    """Candidate pairs (k, 2) of `ids` whose columns of `band` (rows, len(ids)) are identical.

    Buckets come from sorting the band keys and confirming equal rows between neighbours. A bucket of up
    to `all_pairs_max` members gives all its pairs; a larger one pairs every member with the first and
    with its neighbour (enough to connect it; `expand_pairs` adds the rest where verification needs
    them). Pairs are (smaller id, larger id).
    """
    if len(ids) < 2:
        return np.empty((0, 2), dtype=np.int64)
    keys = band_keys(band)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    same = sk[1:] == sk[:-1]
    if same.any():
        rows_sorted = band[:, order]
        equal_rows = np.all(rows_sorted[:, 1:] == rows_sorted[:, :-1], axis=0)
        if (same & ~equal_rows).any():
            # a 64-bit key collision (about N^2 / 2^65 per band): sort by the rows themselves instead
            order = np.lexsort(tuple(band[::-1]))
            rows_sorted = band[:, order]
            same = np.all(rows_sorted[:, 1:] == rows_sorted[:, :-1], axis=0)
        else:
            same &= equal_rows
    if not same.any():
        return np.empty((0, 2), dtype=np.int64)
    return group_pairs(ids[order], np.concatenate(([True], ~same)), all_pairs_max)


def band_check(band: np.ndarray) -> np.ndarray:
    """A second, independent 32-bit key per column of a (rows, N) uint32 band (FNV-style): with `band_keys`
    it tells two columns apart in a band file that stores keys, not rows (96 bits instead of the rows)."""
    h = np.full(band.shape[1], 0x811C9DC5, dtype=np.uint32)
    for row in band:
        h = (h ^ row.astype(np.uint32)) * np.uint32(0x01000193)
        h ^= h >> np.uint32(15)
    return h


def keyed_band_pairs(keys: np.ndarray, check: np.ndarray, ids: np.ndarray, all_pairs_max: int = 2) -> np.ndarray:
    """`band_pairs` from the band's keys instead of its rows: `keys` (`band_keys`), `check` (`band_check`) and
    `ids` (ascending) of the documents; documents with equal (key, check) share a bucket. Same pairs as
    `band_pairs` on the rows unless two different bands agree on all 96 bits."""
    if len(ids) < 2:
        return np.empty((0, 2), dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    same = sk[1:] == sk[:-1]
    if same.any():
        sc = check[order]
        equal_check = sc[1:] == sc[:-1]
        if (same & ~equal_check).any():  # a 64-bit key collision: sort by (key, check), ties by id
            order = np.lexsort((check, keys))
            sk, sc = keys[order], check[order]
            same = (sk[1:] == sk[:-1]) & (sc[1:] == sc[:-1])
        else:
            same &= equal_check
    if not same.any():
        return np.empty((0, 2), dtype=np.int64)
    return group_pairs(ids[order], np.concatenate(([True], ~same)), all_pairs_max)


def group_pairs(members: np.ndarray, starts_flag: np.ndarray, all_pairs_max: int) -> np.ndarray:
    """Pairs within consecutive groups of `members` (a group starts where `starts_flag` is True):
    all pairs for groups of up to `all_pairs_max`, star (to the first) + chain (to the previous) beyond."""
    run_id = np.cumsum(starts_flag) - 1
    run_start = np.flatnonzero(starts_flag)
    run_size = np.diff(np.append(run_start, len(members)))
    rest = np.flatnonzero(~starts_flag)  # positions that are not the first of their group
    chain = rest[run_size[run_id[rest]] > all_pairs_max]
    parts = [
        np.stack([members[run_start[run_id[rest]]], members[rest]], axis=1),
        np.stack([members[chain - 1], members[chain]], axis=1),
    ]
    for k in range(3, all_pairs_max + 1):
        starts_k = run_start[run_size == k]
        if len(starts_k) == 0:
            continue
        i, j = np.triu_indices(k, 1)
        keep = i > 0  # pairs with the first member are already in the star
        pos_i = starts_k[:, None] + i[keep][None, :]
        pos_j = starts_k[:, None] + j[keep][None, :]
        parts.append(np.stack([members[pos_i.ravel()], members[pos_j.ravel()]], axis=1))
    return np.sort(np.concatenate(parts).astype(np.int64), axis=1)


def expand_pairs(pairs: np.ndarray, all_pairs_max: int) -> np.ndarray:
    """The pairs to verify: the candidates, plus every pair inside each candidate component (documents
    connected by candidate pairs) of up to `all_pairs_max` members.

    Two near duplicates that share no band are often connected through a third copy; without
    verification union-find joins them anyway (and with them pairs below the threshold), with
    verification this recovers them at the true-Jaccard threshold: the recall of unverified LSH
    clusters with the precision of verified pairs.
    """
    if len(pairs) == 0:
        return pairs
    nodes = np.unique(pairs)
    labels = connected_components(len(nodes), np.searchsorted(nodes, pairs))
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate(([True], labels[order][1:] != labels[order][:-1]))
    within = group_pairs(nodes[order], starts, all_pairs_max)
    return unique_pairs([pairs, within])


def unique_pairs(pairs: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate (k, 2) pair arrays and drop repeats (pairs must be sorted within each row)."""
    arrays = [p for p in pairs if len(p)]
    if not arrays:
        return np.empty((0, 2), dtype=np.int64)
    allp = np.concatenate(arrays)
    return np.unique(allp, axis=0)


# ---------------------------------------------------------------- verification and clusters


def jaccard_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted arrays of unique values."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    if len(a) > len(b):
        a, b = b, a
    if len(a) == 0:
        return 0.0
    idx = np.searchsorted(b, a)
    idx[idx == len(b)] = 0
    inter = int(np.count_nonzero(b[idx] == a))
    return inter / (len(a) + len(b) - inter)


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label (smallest member index) of each of n nodes joined by `pairs` (k, 2).

    Union-find in vectorised form: every round hooks the larger root of each unjoined pair under the
    smaller one (`minimum.at`), then pointer jumping compresses paths; O(log n) rounds in practice.
    """
    parent = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return parent
    u, v = pairs[:, 0], pairs[:, 1]
    while True:
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        ru, rv = parent[u], parent[v]
        diff = ru != rv
        if not diff.any():
            return parent
        np.minimum.at(parent, np.maximum(ru[diff], rv[diff]), np.minimum(ru[diff], rv[diff]))


def choose_kept(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each node, the node its cluster keeps: the member with the smallest rank."""
    if len(labels) == 0:
        return labels.copy()
    order = np.lexsort((rank, labels))
    sorted_labels = labels[order]
    first = np.concatenate(([True], sorted_labels[1:] != sorted_labels[:-1]))
    group = np.cumsum(first) - 1
    kept = np.empty_like(labels)
    kept[order] = order[first][group]
    return kept


# ---------------------------------------------------------------- dry-run estimate


def plan_estimate(
    n_docs: int,
    bytes_in: int,
    num_perm: int,
    bands: int,
    rows: int,
    verify: bool,
    background_similarity: float = 0.05,
    duplicate_fraction: float = 0.05,
    partitions: int = 1,
) -> dict[str, float]:
    """Sizes and expected candidate pairs for a corpus of `n_docs` documents / `bytes_in` text bytes, cut into
    `partitions` hash partitions.

    Candidate pairs: unrelated pairs at `background_similarity` (N^2/2 * P(s)), plus each near-duplicate
    document (`duplicate_fraction` of N) meeting its original in one band-bucket pair per band it shares
    (bands * P(0.8) at most; we count one pair per band, an upper bound for pairs per duplicate).
    """
    words_est = bytes_in / 6.0  # ~6 bytes per English word incl. the space (measured on DCLM text)
    pairs_bg = n_docs * (n_docs - 1) / 2 * float(s_curve(background_similarity, bands, rows))
    pairs_dup = n_docs * duplicate_fraction * bands * float(np.power(0.8, rows))
    per_part = n_docs / max(partitions, 1)
    return {
        "docs": float(n_docs),
        "signature_bytes": float(n_docs * num_perm * 4),
        "shingle_set_bytes": float(words_est * 4) if verify else 0.0,
        # band files: (64-bit key, 32-bit check, 32-bit row) per document and band
        "band_bytes": float(n_docs * bands * 16),
        # one band task: its slice's keys, checks and ids and the sort order, plus one bit per document
        "band_task_bytes": float(per_part * (8 + 4 + 8 + 8 + 8) + n_docs / 8),
        # one exact task: its partition's digests, ids, keep keys, rank and kept copies
        "exact_task_bytes": float(per_part * (16 + 32 + 8 + 8 + 8 + 8)),
        # the union step: per candidate pair 16 bytes, per document of a pair ~64 (ids, keys, clusters)
        "pair_bytes": 16.0,
        "expected_candidate_pairs": pairs_bg + pairs_dup,
        "threshold_50pct": float((1.0 / bands) ** (1.0 / rows)),
        "p_at_0.8": float(s_curve(0.8, bands, rows)),
    }
