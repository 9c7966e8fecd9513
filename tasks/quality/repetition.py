"""Gopher repetition with datatrove's verdicts, its n-gram statistics computed over integer word ids (issue 14).

datatrove's GopherRepetitionFilter (Rae et al. 2021, table A1) builds a Python string for every word
n-gram of a document nine times over (the top 2-, 3-, 4-gram by `" ".join`, duplicated 5- to 10-grams by
`"".join` in a greedy scan): on the real English pages of ../shared/data that was 37% of the quality
stage's time, the spaCy tokenizer being most of the rest. `RepetitionStats` computes the same numbers:
  words      -> dense integer ids (one dict pass); lengths in a numpy array.
  n-gram ids -> the dense rank of (id of its (n-1)-gram prefix, id of its last word): `np.unique`, exact,
             no hashing; its first-occurrence index picks the top n-gram among equal counts as
             `Counter.most_common(1)` does (the first inserted).
  top_chars  (sum of the n-gram's word lengths + n - 1 spaces) x its count.
  dup_chars  datatrove's greedy scan (skip n words after a repeat) over the ids instead of strings.
Two things make word tuples and datatrove's strings differ, and both fall back to datatrove's own code:
a word containing a space (`" ".join` may then equal for different tuples), and different tuples whose
concatenations (`"".join`, no separator) are equal ("ab"+"c" vs "a"+"bc"). The second is detected
exactly: a polynomial hash of every n-gram's concatenation (mod 2^64, over the document's characters,
vectorised) is computed, and if it has fewer distinct values than the tuples the partitions differ (a
real coincidence or a hash collision: either way datatrove's scan runs for that n). Equal strings always
have equal hashes, so equal counts mean the tuple ids partition the n-grams exactly as the strings do.
tests/tasks/test_quality_repetition.py checks verdict equality with datatrove on real pages and on
constructed collisions; bench/pipeline.py measures the speed.
"""

from __future__ import annotations

import numpy as np
from datatrove.data import Document as DatatroveDocument
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_duplicates,
    find_top_duplicate,
    get_n_grams,
)
from datatrove.utils.text import split_into_words

_BASE = 0x100000001B3  # odd, so invertible mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)


class RepetitionStats:
    """Top and duplicated n-gram character counts of one word list, as datatrove computes them."""

    def __init__(self, words: list[str]):
        self.words = words
        self.n_words = len(words)
        first: dict[str, int] = {}  # word -> the position of its first occurrence: its id (in C, via map)
        self.ids = np.fromiter(map(first.setdefault, words, range(self.n_words)), np.int64, self.n_words)
        self.id_bound = max(self.n_words, 1)
        lens = np.fromiter(map(len, words), np.int64, self.n_words)
        self.offsets = np.concatenate(([0], np.cumsum(lens)))  # word i spans offsets[i]:offsets[i+1] of "".join
        self.spaced = any(" " in w for w in words)  # then " ".join may merge different tuples
        self._ngram: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._prefix: np.ndarray | None = None  # with _pow: built on the first dup_chars call
        self._pow = np.ones(1, np.uint64)

    def _ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct keys, first index of each, dense id of every position) of the n-grams (n >= 1)."""
        if n not in self._ngram:
            if n == 1:
                keys = self.ids
            else:
                prev = self._ngrams(n - 1)[2]
                keys = prev[: self.n_words - n + 1] * self.id_bound + self.ids[n - 1 :]
            self._ngram[n] = np.unique(keys, return_index=True, return_inverse=True)
        return self._ngram[n]

    def top_chars(self, n: int) -> int | None:
        """Characters of the most common n-gram (space-joined) times its count; None without n-grams."""
        if self.n_words < n:
            return None
        if self.spaced:
            return int(find_top_duplicate(get_n_grams(self.words, n)))
        _, first, inverse = self._ngrams(n)
        counts = np.bincount(inverse)
        top = counts.max()
        pos = int(first[counts == top].min())  # the first inserted among equal counts (Counter.most_common)
        chars = int(self.offsets[pos + n] - self.offsets[pos]) + n - 1
        return chars * int(top)

    def _concat_hashes(self, n: int) -> np.ndarray:
        """A polynomial hash (mod 2^64) of every n-gram's concatenation, from the words' characters."""
        if self._prefix is None:
            codes = np.frombuffer("".join(self.words).encode("utf-32-le"), np.uint32).astype(np.uint64)
            inv_pow = np.cumprod(np.full(len(codes), _BASE_INV, np.uint64)) * np.uint64(_BASE)  # BASE^-j
            self._prefix = np.concatenate(([np.uint64(0)], np.cumsum(codes * inv_pow, dtype=np.uint64)))
            self._pow = np.concatenate(([np.uint64(1)], np.cumprod(np.full(len(codes), _BASE, np.uint64))))
        starts, ends = self.offsets[: self.n_words - n + 1], self.offsets[n:]
        hashes: np.ndarray = (self._prefix[ends] - self._prefix[starts]) * self._pow[starts]
        return hashes

    def dup_chars(self, n: int) -> int:
        """Characters of the n-grams repeated in datatrove's greedy scan (`find_all_duplicate`)."""
        if self.n_words < n:
            return 0
        distinct, _, inverse = self._ngrams(n)
        if len(np.unique(self._concat_hashes(n))) != len(distinct):
            return int(find_all_duplicate(self.words, n))  # different tuples with equal strings (or a collision)
        if len(distinct) == len(inverse):
            return 0  # no n-gram repeats
        # datatrove's scan visits every position from the last skip on; an n-gram occurring once is only ever
        # added to its set, so the scan over the positions of repeated n-grams alone gives the same sum
        repeated_at = np.flatnonzero(np.bincount(inverse)[inverse] > 1)
        span = self.offsets[repeated_at + n] - self.offsets[repeated_at]
        seen: set[int] = set()
        total, resume = 0, 0
        for pos, key, chars in zip(repeated_at.tolist(), inverse[repeated_at].tolist(), span.tolist()):
            if pos < resume:
                continue  # inside the n words skipped after a repeat
            if key in seen:
                total += chars
                resume = pos + n
            else:
                seen.add(key)
        return total


class FastGopherRepetitionFilter(GopherRepetitionFilter):  # type: ignore[misc]
    """datatrove's GopherRepetitionFilter, same arguments, rule order and verdicts; n-grams via `RepetitionStats`."""

    def filter(self, doc: DatatroveDocument) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        failed = self._duplicate_blocks(text)
        if failed:
            return False, failed
        stats = RepetitionStats(split_into_words(text, self.language))
        for n, n_frac in self.top_n_grams:
            top = stats.top_chars(n)
            if top is not None and top / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            if stats.dup_chars(n) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True

    def _duplicate_blocks(self, text: str) -> str | None:
        """datatrove's paragraph and line rules (its own code path, unchanged)."""
        paragraphs = self.paragraph_exp.split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if self.dup_para_frac and paragraphs_duplicates / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac and char_duplicates / len(text) > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        line_duplicates, char_duplicates = find_duplicates(lines)
        if self.dup_line_frac and line_duplicates / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac and char_duplicates / len(text) > self.dup_line_char_frac:
            return "dup_line_char_frac"
        return None
