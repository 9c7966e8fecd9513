"""The one text normaliser, word splitter and n-gram generator shared by dedup and decontaminate.

normalise: Unicode NFKC, lowercase, every run of whitespace collapsed to one space, stripped. This is
the key for exact dedup (two pages differing only in case, spacing or Unicode compatibility forms are
the same document).
words: normalise, then split on anything that is not a letter or digit (punctuation is dropped), so a
benchmark item matches a document regardless of punctuation spacing (GPT-3 / NeMo decontamination
split on whitespace and strip punctuation the same way).
ngrams: consecutive word n-grams, joined with a single space (hash them for compact indexes).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def words(text: str) -> list[str]:
    """Lowercased NFKC word tokens without punctuation (`_` counts as a separator too)."""
    return [w for w in _WORD.findall(unicodedata.normalize("NFKC", text).lower().replace("_", " ")) if w]


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    for i in range(len(tokens) - n + 1):
        yield " ".join(tokens[i:i + n])


def hash64(s: str) -> int:
    """Stable 64-bit hash (blake2b; Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def text_hash(text: str) -> str:
    """Hex digest of the normalised text: the exact-duplicate key."""
    return hashlib.blake2b(normalise(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
