"""The one text normaliser, word splitter, n-gram generator and per-document sampling key shared by the stages.

normalise: Unicode NFKC, lowercase, every run of whitespace collapsed to one space, stripped. This is
the key for exact dedup (two pages differing only in case, spacing or Unicode compatibility forms are
the same document).
words: normalise, then split on anything that is not a letter or digit (punctuation is dropped), so a
benchmark item matches a document regardless of punctuation spacing (GPT-3 / NeMo decontamination
split on whitespace and strip punctuation the same way).
sample_key: a seeded uniform number in [0, 1) per document id (hash64), for hash-based sampling and splits.
ngrams: consecutive word n-grams, joined with a single space (hash them for compact indexes).
word_spans: the same words plus their character offsets in the original text (decontaminate's cut
mode removes matched spans). ngram_hashes: uint64 hashes of all word n-grams, vectorised;
window_hashes: the same hash for chosen windows only (decontaminate's whole-item windows).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator

import numpy as np

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def words(text: str) -> list[str]:
    """Lowercased NFKC word tokens without punctuation (`_` counts as a separator too)."""
    return [w for w in _WORD.findall(unicodedata.normalize("NFKC", text).lower().replace("_", " ")) if w]


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    for i in range(len(tokens) - n + 1):
        yield " ".join(tokens[i : i + n])


def hash64(s: str) -> int:
    """Stable 64-bit hash (blake2b; Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def sample_key(salt: str, seed: int, doc_id: str) -> float:
    """Deterministic uniform number in [0, 1) for a document (salted per use, seeded): mix's sampling,
    tokenize's val split and tokenizer sample."""
    return hash64(f"{salt}:{seed}:{doc_id}") / 2.0**64


def text_hash(text: str) -> str:
    """Hex digest of the normalised text: the exact-duplicate key."""
    return hashlib.blake2b(normalise(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# ---------------------------------------------------------------- offsets and vectorised n-gram hashes

_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")
_CHUNK = re.compile(r"\S+")
_MASK64 = (1 << 64) - 1


def _ascii_spans(text: str, base: int, toks: list[str], starts: list[int], ends: list[int]) -> None:
    for m in _ASCII_WORD.finditer(text):
        toks.append(m.group().lower())
        starts.append(base + m.start())
        ends.append(base + m.end())


def word_spans(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`words(text)` plus each word's [start, end) character offsets in the original `text`.

    Normalisation never crosses whitespace (NFKC composes and reorders only non-space characters, and
    lowercasing's one context rule, Greek final sigma, stops at whitespace), so each whitespace-free chunk
    is normalised alone and the words equal `words(text)` exactly. Offsets are exact where each character
    of the chunk normalises to one character (ASCII, most scripts); otherwise (ligatures, decomposed
    accents, dotted capital I) every word of the chunk gets the whole chunk's span: it may over-cover by
    the rest of the chunk, never under-cover.
    """
    toks: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    if text.isascii():
        _ascii_spans(text, 0, toks, starts, ends)
    else:
        for chunk in _CHUNK.finditer(text):
            s, base = chunk.group(), chunk.start()
            if s.isascii():
                _ascii_spans(s, base, toks, starts, ends)
                continue
            norm = unicodedata.normalize("NFKC", s).lower().replace("_", " ")
            aligned = len(norm) == len(s) and all(len(unicodedata.normalize("NFKC", c).lower()) == 1 for c in s)
            for m in _WORD.finditer(norm):
                toks.append(m.group())
                starts.append(base + m.start() if aligned else base)
                ends.append(base + m.end() if aligned else chunk.end())
    return toks, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


@functools.lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return hash64(word)


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=64)
def _position_multipliers(n: int) -> np.ndarray:
    return np.array([_splitmix64(0x5EED + k) | 1 for k in range(n)], dtype=np.uint64)


def word_hashes(tokens: Iterable[str], count: int = -1) -> np.ndarray:
    """uint64 `hash64` of each token (cached per process: most words of a corpus repeat)."""
    out: np.ndarray = np.fromiter(map(_word_hash, tokens), dtype=np.uint64, count=count)
    return out


def rolling_ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of n consecutive word hashes: sum_k hashes[i + k] * M_k mod 2^64.

    M_k are fixed odd 64-bit per-position multipliers, so the hash depends on word order and two
    different n-grams collide with probability about 2^-63 (word hashes are uniform; an odd M_k is
    invertible mod 2^64). n vectorised multiply-adds per call, whatever the number of windows.
    """
    m = len(hashes) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    mult = _position_multipliers(n)
    h: np.ndarray = hashes[:m] * mult[0]
    tmp = np.empty_like(h)
    for k in range(1, n):
        np.multiply(hashes[k : k + m], mult[k], out=tmp)
        h += tmp
    return h


def window_hashes(hashes: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """`rolling_ngram_hashes(hashes, n)[starts]`, computed for those windows only (each must fit in `hashes`)."""
    if len(starts) == 0:
        return np.empty(0, dtype=np.uint64)
    window = hashes[np.asarray(starts, dtype=np.int64)[:, None] + np.arange(n)]
    out: np.ndarray = (window * _position_multipliers(n)).sum(axis=1, dtype=np.uint64)  # wraps mod 2^64
    return out


def ngram_hashes(tokens: list[str], n: int) -> np.ndarray:
    """uint64 hash of every word n-gram of `tokens`; entry i covers `tokens[i:i + n]` (as `ngrams`).

    Each word is hashed once with `hash64` and the n-gram hashes are combined from those
    (`rolling_ngram_hashes`) instead of one blake2b per joined n-gram string: stable across processes
    and runs, and several times faster (bench/decontaminate.py).
    """
    return rolling_ngram_hashes(word_hashes(tokens, len(tokens)), n)


def text_digest(text: str) -> bytes:
    """`bytes.fromhex(text_hash(text))`, three times cheaper: `str.split()` collapses exactly the characters
    `\\s` matches (both are Unicode `isspace`; checked over every code point), without the regex."""
    norm = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=16).digest()
