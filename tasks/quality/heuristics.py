"""The heuristic layer of the quality stage: datatrove's published filters, per language, all verdicts kept.

Filters (datatrove.pipeline.filters, their published defaults unless `filter_options` overrides a
constructor argument), evaluated in FineWeb's order on every document, without stopping at the first
failure, so every verdict is stored and enforcement can change later without recomputing:
  gopher_repetition  GopherRepetitionFilter  (Rae et al. 2021, Gopher table A1: duplicate lines/paragraphs/n-grams;
                                              run as tasks.quality.repetition's FastGopherRepetitionFilter:
                                              the same verdicts, n-gram counts over word ids)
  gopher_quality     GopherPaperQualityFilter by default, GopherQualityFilter with `datatrove_compatible`
                     (word count, mean word length, symbols, bullets, alpha words, stop words; see below)
  c4_quality         C4QualityFilter         (Raffel et al. 2020: lorem ipsum, curly brackets, >= 5 sentences
                                              in kept lines)
  fineweb_quality    FineWebQualityFilter    (Penedo et al. 2024: line punctuation, short lines, duplicate chars,
                                              list ratio)
A verdict is `pass`, the filter's own reason (`gopher_short_doc`, `dup_line_frac`, `too_few_sentences`,
...), `undefined` (the filter divided by zero on this text, e.g. words disabled by an override), or null
when the filter does not apply to the document's language. C4QualityFilter rewrites the text it keeps
(drops lines without terminal punctuation); as in datatrove's pipeline the filters after it see that
text, so the verdicts equal datatrove's chain. The stored document text is never rewritten.
`filter_options` are checked when the params are validated, before any stage runs (`check_options`): every
name must be a constructor argument and every value must fit its annotation (int, float, bool, null, lists
for tuples), and the error names `filter_options.<filter>.<option>` and the expected type, never the value.

Languages (the heuristics were written for English; langid may admit others):
  en                      all four filters as published.
  other languages         gopher_repetition, fineweb_quality, and gopher_quality without its English
                          stop-word rule (min_stop_words=None); c4_quality is not applied (its terminal
                          punctuation, "javascript", policy and lorem-ipsum rules are English).
  zh ja th lo km my bo    none: these scripts do not separate words with spaces, so word counts, word
  yue wuu                 lengths and word n-grams are meaningless; the classifier layer still applies.

Gopher quality words (issue 10): the Gopher paper (Rae et al. 2021, appendix A.1.1) states its rules on
words, "80% of words in a document contain at least one alphabetic character". datatrove's
GopherQualityFilter takes spaCy tokens as words, so every punctuation mark and symbol is a "word" of
its own: "(see Fig. 3)." is 6 words with 3 alphabetic ones instead of 3 of 3. On the real English pages
of ../shared/data (bench/gopher_words.py) datatrove's alpha rule drops 10.6% of the 161 news articles of
html_extraction (the paper's rule: 1.9%) and 49% of the 156 crawl pages (paper: 31%). By default
`GopherPaperQualityFilter` applies the paper's rules on
whitespace-separated words (`str.split()`), the same thresholds and constructor arguments:
  word count         50..100,000 whitespace words (datatrove: spaCy tokens that are not pure punctuation)
  mean word length   3..10 characters over the whitespace words, punctuation attached to a word included
                     (datatrove: over its non-punctuation tokens)
  '#' and ellipsis   occurrences / whitespace words > 0.1 (datatrove divides by all spaCy tokens)
  bullets, ellipsis  unchanged (line based)
  lines
  alpha words        >= 80% of whitespace words contain an alphabetic character (`str.isalpha`)
  stop words         >= 2 distinct of the, be, to, of, and, that, have, with among the words lowercased with
                     the punctuation around them stripped ("The", "of," count; datatrove needs a token exactly
                     equal, so a sentence-initial "The" does not count)
It tokenizes nothing (a few C-level passes over the text): ~40x faster than datatrove's filter, which
tokenizes with spaCy (3,600 vs 85 pages/s on those pages). `datatrove_compatible: true` (QualityParams /
QualityClassifierParams) uses
datatrove's GopherQualityFilter instead and reproduces its verdicts exactly
(tests/tasks/test_quality_gopher_words.py checks that on real pages).

Words and sentences come from spaCy's rule-based tokenizer for the language (`spacy.blank(lang)`,
no model download; `xx` when spaCy has no tokenizer for it or it needs an extra package), exactly
the tokens datatrove's own SpaCyTokenizer yields. `SpacyWordTokenizer` calls the tokenizer directly
and applies spaCy's sentencizer rule itself instead of running the nlp pipeline per call (datatrove
runs it once per line in C4's sentence count): same words and sentence counts, fewer passes
(bench/filters.py measures the speed and the decision agreement with datatrove's stock chain).
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, filterfalse
from operator import attrgetter
from types import UnionType
from typing import Any, Literal, NamedTuple, Union, cast, get_args, get_origin

from datatrove.data import Document as DatatroveDocument
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.utils.text import PUNCTUATION, split_into_sentences
from datatrove.utils.word_tokenizers import WordTokenizer
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from tasks.quality.repetition import FastGopherRepetitionFilter

log = logging.getLogger(__name__)

FilterName = Literal["gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"]
FILTER_NAMES: tuple[FilterName, ...] = get_args(FilterName)
FILTER_CLASSES: dict[str, type[BaseFilter]] = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}
PASS = "pass"
UNDEFINED = "undefined"
ENGLISH = "en"
ENGLISH_ONLY: frozenset[str] = frozenset({"c4_quality"})
UNSEGMENTED: frozenset[str] = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})
NOT_CONSTRUCTOR_ARGS = ("language", "exclusion_writer")
RESET_DOCUMENTS = 5000
_TOKEN_ATTRS = ["IDX", "LENGTH", "IS_PUNCT"]
_SPANS = re.compile(r"\S+")
_FOLLOW = attrgetter("follow")
_WORDS = attrgetter("words")


def import_spacy() -> Any:
    """`import spacy` without torch. spaCy imports thinc, which imports torch when it is installed (~1.1 s of
    a pool worker's start, for a tokenizer that never uses it): while spaCy loads, `import torch` fails (thinc
    then runs without it), and torch stays importable afterwards. A process that already has torch keeps it."""
    if "spacy" in sys.modules or "torch" in sys.modules:
        import spacy

        return spacy
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
    try:
        import spacy
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return spacy


class _Span(NamedTuple):
    """One whitespace-free span as spaCy tokenizes it alone (SpacyWordTokenizer's cache)."""

    tokens: list[tuple[str, int, bool]]  # (text, offset in the span, is_punct)
    words: list[str]  # the non-blank tokens
    follow: frozenset[str]  # matcher pattern elements that may come right after its last token
    head: str  # its first token
    head_special: bool  # that token is the output of a special case (the matcher may have merged it)


# datatrove ships no type hints: its classes are Any to mypy
class SpacyWordTokenizer(WordTokenizer):  # type: ignore[misc]
    """datatrove WordTokenizer over spaCy's tokenizer for one language (tokens identical to datatrove's).

    spaCy splits text at whitespace before anything else and tokenizes each whitespace-free span on its own
    (prefixes, suffixes, infixes, exceptions), so a text's tokens are its spans' tokens in order, plus a
    token for every whitespace run other than one space. The one exception is the special-case matcher
    (emoticons and abbreviations containing punctuation, e.g. ":)" or "o.O"), which runs over the tokens of
    the whole text: a match that straddles two spans joined by a single space (") :)") can block a match
    inside a span. So each distinct span is tokenized once and cached across documents (`_span`), and a
    line whose span boundaries could hold such a match (the left span ends with one element of a
    matcher pattern and the right span starts with the next: `_straddles`) is tokenized whole by spaCy.
    Tokens (text, offset, punctuation flag) equal spaCy's on every line: tests/tasks/test_quality.py
    checks it on real pages and on generated emoticon soups; ~10x fewer tokenizer calls on real pages.
    Lines are tokenized once each and cached until `reset()` (called per document): the Gopher filters,
    C4's per-line sentence counts and FineWeb's pass over C4's rewritten text all reuse them, where
    datatrove tokenizes the text three times.
    """

    def __init__(self, language: str):
        super().__init__(language)
        self.nlp = self._blank(language)
        from spacy.pipeline import Sentencizer

        self.punct_chars = frozenset(Sentencizer.default_punct_chars)
        self._lines: dict[str, list[tuple[str, int, bool]]] = {}
        self._words: dict[str, list[str]] = {}  # per line
        self._texts: dict[str, list[str]] = {}  # per text word_tokenize was called on
        self._documents = 0
        self._spans: dict[str, _Span] = {}
        self._pattern_next, self._special = self._matcher_rules(self.nlp)
        self._atomic = self._atomic_test(self.nlp)

    @staticmethod
    def _matcher_rules(nlp: Any) -> tuple[dict[str, frozenset[str]] | None, frozenset[str]]:
        """({pattern element: the elements that follow it in some special-case matcher pattern}, the tokens
        those special cases produce). spaCy applies a special case whose text holds an affix character (or a
        space) with a matcher over the whole text's tokens, after the affix rules; the others apply inside a
        span like any affix rule. (None, {}) when the language's tokenizer is not spaCy's rule-based
        `Tokenizer` (then every line goes to spaCy whole)."""
        from spacy.attrs import ORTH
        from spacy.tokenizer import Tokenizer

        tk = nlp.tokenizer
        if type(tk) is not Tokenizer:
            return None, frozenset()
        # the patterns are the special cases' texts split by the affix rules alone (spaCy's add_special_case)
        plain = Tokenizer(
            nlp.vocab,
            rules={},
            prefix_search=tk.prefix_search,
            suffix_search=tk.suffix_search,
            infix_finditer=tk.infix_finditer,
            token_match=tk.token_match,
            url_match=tk.url_match,
        )
        pairs: dict[str, set[str]] = {}
        produced: set[str] = set()
        for rule, tokens in (tk.rules or {}).items():
            if tk.find_prefix(rule) or tk.find_infix(rule) or tk.find_suffix(rule) or " " in rule:
                parts = [t.text for t in plain(rule)]
                for a, b in zip(parts, parts[1:]):
                    pairs.setdefault(a, set()).add(b)
                produced.update(str(t[ORTH]) for t in tokens)
        return {a: frozenset(b) for a, b in pairs.items()}, frozenset(produced)

    @staticmethod
    def _atomic_test(nlp: Any) -> Callable[[str], tuple[str, int, bool] | None] | None:
        """A test that a whitespace-free span is one token of its own, the span itself: spaCy's tokenizer
        splits a span only at a special case (`rules`), a prefix, a suffix or an infix, and with none of them
        in it keeps it whole (token_match and url_match keep a span whole too). Asked through the
        tokenizer's own affix functions, it costs a few regex searches instead of a tokenizer call and a new
        vocabulary entry per span: most spans on real pages are plain words. The test returns the span's one
        token (text, offset, is_punct as the vocabulary would set it), or None when the span needs the
        tokenizer; it is None itself when the tokenizer is not spaCy's rule-based one."""
        from spacy.attrs import IS_PUNCT
        from spacy.tokenizer import Tokenizer

        tk = nlp.tokenizer
        punct = nlp.vocab.lex_attr_getters.get(IS_PUNCT)
        if type(tk) is not Tokenizer or punct is None:
            return None
        rules = frozenset(tk.rules or {})
        find_prefix, find_suffix, find_infix = tk.find_prefix, tk.find_suffix, tk.find_infix

        def atomic(span: str) -> tuple[str, int, bool] | None:
            if span in rules or find_prefix(span) or find_suffix(span) or find_infix(span):
                return None
            return (span, 0, bool(punct(span)))

        return atomic

    @staticmethod
    def _blank(language: str) -> Any:
        spacy = import_spacy()
        try:
            return spacy.blank(language)
        except (ImportError, KeyError, ValueError, OSError) as err:  # unknown code or a missing extra package
            log.warning("no spaCy tokenizer for %r (%s); using the multi-language tokenizer 'xx'", language, err)
            return spacy.blank("xx")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (SpacyWordTokenizer, (str(self.language),))

    def reset(self) -> None:
        """Forget the cached lines (call per document). spaCy's vocabulary keeps every word it has seen
        (datatrove opens a memory zone per call instead, which re-creates every word each time: 10x slower
        on short lines), so the tokenizer and the span cache are rebuilt every RESET_DOCUMENTS documents to
        bound memory."""
        self._lines.clear()
        self._words.clear()
        self._texts.clear()
        self._documents += 1
        if self._documents % RESET_DOCUMENTS == 0:
            self.nlp = self._blank(str(self.language))
            self._atomic = self._atomic_test(self.nlp)
            self._spans.clear()

    def _spacy_tokens(self, text: str) -> list[tuple[str, int, bool]]:
        # token attributes as one array: no Token object per token (a quarter of the tokenizer's cost)
        attrs = self.nlp.tokenizer(text).to_array(_TOKEN_ATTRS).tolist()
        return [(text[i : i + n], i, p == 1) for i, n, p in attrs]

    def _span(self, span: str) -> _Span:
        """Tokens, non-blank words, and what a special-case pattern needs at its edges, of one whitespace-free
        span (cached; `_learn` tokenizes many at once)."""
        hit = self._spans.get(span)
        if hit is None:
            self._learn([span])
            hit = self._spans[span]
        return hit

    def _learn(self, spans: Sequence[str]) -> None:
        """Tokenize distinct uncached spans in one spaCy call, joined by line breaks: a line break is a token
        of its own, so no special case straddles two spans and each gets the tokens it gets alone (one call
        per span costs ~20 us of overhead each). A span's last token `tail` came out of the affix rules
        unchanged unless a special case produced it, so a pattern can continue after it only with the
        elements that follow `tail` itself; a special-case token may hide a shorter affix token, so then every
        element the span ends with counts."""
        atomic = self._atomic
        if atomic is not None:  # a plain word needs no tokenizer call (`_atomic_test`)
            rest = []
            for span in spans:
                token = atomic(span)
                if token is None:
                    rest.append(span)
                else:
                    self._keep(span, [token])
            spans = rest
            if not spans:
                return
        text = "\n".join(spans)
        attrs = self.nlp.tokenizer(text).to_array(_TOKEN_ATTRS).tolist()
        k, start = 0, 0
        for span in spans:
            end = start + len(span)
            tokens: list[tuple[str, int, bool]] = []
            while k < len(attrs) and attrs[k][0] < end:
                i, n, p = attrs[k]
                tokens.append((text[i : i + n], i - start, p == 1))
                k += 1
            while k < len(attrs) and attrs[k][0] <= end:  # the line break after it
                k += 1
            start = end + 1
            self._keep(span, tokens)

    def _keep(self, span: str, tokens: list[tuple[str, int, bool]]) -> None:
        """Cache one span's tokens with what `_straddles` needs of them."""
        nexts = self._pattern_next
        assert nexts is not None
        tail, head = tokens[-1][0], tokens[0][0]
        if tail in self._special:
            follow = frozenset(b for a, after in nexts.items() if span.endswith(a) for b in after)
        else:
            follow = nexts.get(tail, frozenset())
        words = [w for w in (t[0].strip() for t in tokens) if w]
        self._spans[span] = _Span(tokens, words, follow, head, head in self._special)

    @staticmethod
    def _straddles(left: _Span | None, right: _Span) -> bool:
        """Could a special-case pattern match across the single space between the spans `left` and `right`?"""
        if left is None or not left.follow:
            return False
        if right.head_special:  # its first affix token may be shorter: any element it starts with
            span = "".join(t[0] for t in right.tokens)
            return any(span.startswith(b) for b in left.follow)
        return right.head in left.follow

    def _tokens(self, text: str) -> list[tuple[str, int, bool]]:
        """(text, char offset, is_punct) of every spaCy token of `text` (whitespace tokens included)."""
        cached = self._lines.get(text)
        if cached is None:
            cached = self._composed_tokens(text) if self._pattern_next is not None else None
            if cached is None:
                cached = self._spacy_tokens(text)
            self._lines[text] = cached
        return cached

    def _learn_missing(self, text: str) -> None:
        missing = [s for s in dict.fromkeys(text.split()) if s not in self._spans]
        if missing:
            self._learn(missing)

    def _composed_tokens(self, text: str) -> list[tuple[str, int, bool]] | None:
        """`text`'s tokens from its spans' cached tokens; None when a boundary may straddle a special case."""
        self._learn_missing(text)
        out: list[tuple[str, int, bool]] = []
        end, left = 0, None
        for m in _SPANS.finditer(text):
            span, start = m.group(), m.start()
            entry = self._span(span)
            if start > end:  # whitespace: one space after a span is its trailing space, any other run a token
                gap = text[end:start]
                if end == 0:
                    out.append((gap, 0, False))
                elif gap != " ":
                    out.append((gap[1:], end + 1, False) if gap[0] == " " else (gap, end, False))
                elif self._straddles(left, entry):
                    return None
            out.extend([(t, start + i, p) for t, i, p in entry.tokens])
            end, left = m.end(), entry
        if end < len(text):
            gap = text[end:]
            if end == 0:
                out.append((gap, 0, False))
            elif gap != " ":
                out.append((gap[1:], end + 1, False) if gap[0] == " " else (gap, end, False))
        return out

    def _line_words(self, line: str) -> list[str]:
        words = self._words.get(line)
        if words is None:
            words = self._composed_words(line) if self._pattern_next is not None else None
            if words is None:
                words = [w for w in (t[0].strip() for t in self._tokens(line)) if w]
            self._words[line] = words
        return words

    def _composed_words(self, text: str) -> list[str] | None:
        """The non-blank tokens of `text` from its spans' cached words; None as for `_composed_tokens`."""
        self._learn_missing(text)
        span_of = self._span
        words: list[str] = []
        extend = words.extend
        left: _Span | None = None  # the span right before the current single space
        for chunk in text.split(" "):  # a single space joins two spans directly; other whitespace is a token
            if not chunk:
                left = None
                continue
            parts = chunk.split()
            if len(parts) != 1 or parts[0] != chunk:  # other whitespace inside: a token, nothing straddles it
                if parts and not chunk[0].isspace() and self._straddles(left, span_of(parts[0])):
                    return None
                for part in parts:
                    extend(span_of(part).words)
                left = span_of(parts[-1]) if parts and not chunk[-1].isspace() else None
                continue
            entry = span_of(chunk)
            if self._straddles(left, entry):
                return None
            extend(entry.words)
            left = entry
        return words

    def _quick_words(self, text: str) -> list[str] | None:
        """`_composed_words` of a whole text at C speed: its spans' cached entries by `map`; None when some
        span could start a straddling special case (then line by line, where the gaps are checked)."""
        spans = text.split()
        found = list(map(self._spans.get, spans))
        if None in found:
            self._learn(list(dict.fromkeys(s for s, e in zip(spans, found) if e is None)))
            entries = list(map(self._spans.__getitem__, spans))
        else:
            entries = cast(list[_Span], found)
        if any(map(_FOLLOW, entries)):
            straddles = self._straddles
            if any(straddles(left, right) for left, right in zip(entries, entries[1:]) if left.follow):
                return None
        return list(chain.from_iterable(map(_WORDS, entries)))

    def word_tokenize(self, text: str) -> list[str]:
        """The non-blank tokens of every line (a new list; lines and whole texts are cached until `reset`).
        Line breaks are whitespace tokens, so nothing straddles them: the whole text is composed at once, and
        line by line only when some line needs spaCy."""
        words = self._texts.get(text)
        if words is None:
            composed = self._quick_words(text) if self._pattern_next is not None else None
            if composed is None:
                composed = list(chain.from_iterable(self._line_words(line.strip()) for line in text.split("\n")))
            words = self._texts[text] = composed
        return list(words)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.span_tokenize(text)]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        """Sentence spans by spaCy's Sentencizer rule: a sentence starts at the first token that is not
        punctuation after a token in the sentence-final punctuation set."""
        tokens = self._tokens(text)
        if not tokens:
            return []
        starts, seen_period = [0], False
        for i, (tok, _, is_punct) in enumerate(tokens):
            in_punct_chars = tok in self.punct_chars
            if seen_period and not is_punct and not in_punct_chars:
                starts.append(i)
                seen_period = False
            elif in_punct_chars:
                seen_period = True
        ends = [*starts[1:], len(tokens)]
        return [(tokens[s][1], tokens[e - 1][1] + len(tokens[e - 1][0])) for s, e in zip(starts, ends)]


class CountedC4QualityFilter(C4QualityFilter):  # type: ignore[misc]
    """datatrove's C4QualityFilter whose sentence count stops at `min_num_sentences`.

    The count decides only `num_sentences < min_num_sentences`, so sentences after the threshold need no
    sentence split (a spaCy tokenization per kept line in datatrove: a fifth of the quality stage's CPU on
    real pages). Everything else is datatrove's `filter` line for line: same rule order, drop reasons,
    line statistics and rewritten text (the kept lines), so the same verdicts (tests/tasks/test_quality.py
    compares the two on real pages)."""

    def filter(self, doc: DatatroveDocument) -> bool | tuple[bool, str]:
        lines = doc.text.splitlines() if self.split_paragraph else split_into_sentences(doc.text, self.language)
        counting = self.min_num_sentences != -1
        num_sentences = 0
        kept_lines = []
        for line in lines:
            line = line.strip()
            words = line.split()
            self.stat_update("line-total")
            if self.max_word_length != -1 and max(map(len, words), default=0) > self.max_word_length:
                self.stat_update("line-filter-too_long_word")
                continue
            if self.remove_citations:
                line = CITATION_REGEX.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                self.stat_update("line-filter-no_terminal_punc")
                continue
            if len(words) < self.min_words_per_line:
                self.stat_update("line-filter-too_few_words")
                continue
            line_l = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in line_l:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in line_l:
                self.stat_update("line-filter-javascript")
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(p in line_l for p in POLICY_SUBSTRINGS):
                self.stat_update("line-filter-policy")
                continue
            if counting and num_sentences < self.min_num_sentences:  # datatrove counts every kept line's
                num_sentences += len(split_into_sentences(line, self.language)) if self.split_paragraph else 1
            kept_lines.append(line)
            self.stat_update("line-kept")
        if num_sentences < self.min_num_sentences:
            return False, "too_few_sentences"
        doc.text = ("\n" if self.split_paragraph else " ").join(kept_lines).strip()
        return True


class GopherPaperQualityFilter(GopherQualityFilter):  # type: ignore[misc]
    """Gopher's quality rules as the paper states them: words are whitespace-separated (module docstring).

    Same constructor arguments, thresholds, rule order and drop reasons as datatrove's GopherQualityFilter;
    only the word definition differs (its `language` tokenizer is accepted and not used)."""

    name = "🥇 Gopher Quality (paper words)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stop = frozenset(w.lower() for w in self.stop_words)
        self._strip = PUNCTUATION

    def filter(self, doc: DatatroveDocument) -> bool | tuple[bool, str]:
        text = doc.text
        words = text.split()
        n_words = len(words)
        if self.min_doc_words and n_words < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_words > self.max_doc_words:
            return False, "gopher_long_doc"
        # ZeroDivisionError (no words, with the word-count rule disabled) is the layer's `undefined`
        avg_word_length = sum(map(len, words)) / n_words
        if self.min_avg_word_length and avg_word_length < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg_word_length > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if self.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if (
            self.max_bullet_lines_ratio
            and sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > self.max_bullet_lines_ratio
        ):
            return False, "gopher_too_many_bullets"
        if (
            self.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio
        ):
            return False, "gopher_too_many_end_ellipsis"
        if self.max_non_alpha_words_ratio:
            # most words are all letters (one C call); the rest need a character scan
            alpha = sum(map(str.isalpha, words))
            alpha += sum(1 for w in filterfalse(str.isalpha, words) if any(map(str.isalpha, w)))
            if alpha / n_words < self.max_non_alpha_words_ratio:
                return False, "gopher_below_alpha_threshold"
        if (
            self.min_stop_words
            and _stop_words_found(words, self._stop, self._strip, self.min_stop_words) < self.min_stop_words
        ):
            return False, "gopher_enough_stop_words"
        return True


def _stop_words_found(words: list[str], stop: frozenset[str], strip: str, enough: int) -> int:
    """Distinct stop words among the words (lowercased, surrounding punctuation stripped), up to `enough`."""
    found: set[str] = set()
    for w in words:
        key = w.lower().strip(strip)
        if key in stop:
            found.add(key)
            if len(found) >= enough:
                break
    return len(found)


def applicable_filters(language: str | None, filters: list[FilterName]) -> list[FilterName]:
    """The filters that apply to a document in `language` (see the module docstring)."""
    lang = (language or ENGLISH).split("_")[0]
    if lang in UNSEGMENTED:
        return []
    if lang == ENGLISH:
        return list(filters)
    return [f for f in filters if f not in ENGLISH_ONLY]


def build_filter(
    name: FilterName,
    language: str,
    tokenizer: WordTokenizer | str,
    options: dict[str, Any] | None = None,
    datatrove_compatible: bool = False,
) -> BaseFilter:
    """A datatrove filter with its published defaults, the language's tokenizer and `options` overrides
    (gopher_quality: `GopherPaperQualityFilter` unless `datatrove_compatible`)."""
    kwargs = {k: _tuples(v) if _wants_tuple(name, k) else v for k, v in (options or {}).items()}
    if name == "gopher_quality" and language.split("_")[0] != ENGLISH:
        kwargs.setdefault("min_stop_words", None)  # Gopher's stop words are English
    bad = [k for k in kwargs if k in NOT_CONSTRUCTOR_ARGS]
    if bad:
        raise ValueError(f"filter_options.{name}: {bad} are set by the stage, not by options")
    cls = FILTER_CLASSES[name]
    if name == "gopher_quality" and not datatrove_compatible:
        cls = GopherPaperQualityFilter
    elif name == "gopher_repetition":
        cls = FastGopherRepetitionFilter  # datatrove's verdicts, n-grams over integer ids
    elif name == "c4_quality":
        cls = CountedC4QualityFilter  # datatrove's verdicts, sentences counted up to the threshold
    try:
        return cls(language=tokenizer, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"filter_options.{name}: {err}; see datatrove's {FILTER_CLASSES[name].__name__} "
            f"constructor for the allowed arguments"
        ) from None


def _type_name(value: Any) -> str:
    """The YAML/JSON name of a value's type (error messages name the type, never the value)."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _describe(ann: Any) -> str:
    """A constructor annotation in YAML terms: `int | None` -> 'int or null'."""
    origin, args = get_origin(ann), get_args(ann)
    if origin in (Union, UnionType):
        return " or ".join(_describe(a) for a in args)
    if ann is None or ann is type(None):
        return "null"
    if origin in (list, tuple) and (len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis)):
        return f"list of ({_describe(args[0])})"
    if origin is tuple:
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    return getattr(ann, "__name__", str(ann))


def _accepts(ann: Any, value: Any) -> bool:
    """Whether a YAML/JSON value fits a constructor annotation (bool is not an int; an int is a float;
    a list stands for a tuple, whose single argument datatrove uses for 'a sequence of')."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is inspect.Parameter.empty or ann is Any:
        return True
    if origin in (Union, UnionType):
        return any(_accepts(a, value) for a in args)
    if ann is None or ann is type(None):
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 1 or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            return all(_accepts(args[0], v) for v in value)
        return len(value) == len(args) and all(_accepts(a, v) for a, v in zip(args, value))
    if isinstance(ann, type):
        return isinstance(value, ann)
    return True  # an annotation this check does not model: the constructor decides


def _wants_tuple(name: str, key: str) -> bool:
    """Whether the constructor annotates `key` as a tuple (YAML gives lists; `str.endswith` needs a tuple)."""
    param = inspect.signature(FILTER_CLASSES[name].__init__).parameters.get(key)
    ann = param.annotation if param is not None else None
    return any(get_origin(a) is tuple for a in (ann, *get_args(ann)))


def _tuples(value: Any) -> Any:
    """Lists (nested too) as tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def option_errors(name: str, opts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(option, message) for every option of filter `name` that its datatrove constructor does not take
    or whose value does not fit the constructor's annotation; the messages name types, never values."""
    cls = FILTER_CLASSES[name]
    params = {
        n: p
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if n != "self" and n not in NOT_CONSTRUCTOR_ARGS and p.kind is p.POSITIONAL_OR_KEYWORD
    }
    errors: list[tuple[str, str]] = []
    for key, value in opts.items():
        if key in NOT_CONSTRUCTOR_ARGS:
            errors.append((str(key), "set by the stage; remove it from filter_options"))
        elif key not in params:
            errors.append((str(key), f"{cls.__name__} has no such argument; allowed: {', '.join(params)}"))
        elif not _accepts(params[key].annotation, value):
            p = params[key]
            errors.append(
                (
                    key,
                    f"expected {_describe(p.annotation)}, got {_type_name(value)}; set a value of "
                    f"that type (datatrove's default: {p.default!r}) or remove the key to use "
                    f"the default",
                )
            )
    return errors


def check_options(options: Mapping[Any, Mapping[str, Any]]) -> None:
    """Fail at params validation for unknown filters, unknown constructor arguments or values of the wrong
    type (checked against the datatrove constructors' signatures; no tokenizer needed).

    Raises a pydantic ValidationError located at `filter_options.<filter>.<option>`, so inside a params
    model the error names the full key (`quality.filter_options.gopher_quality.min_doc_words`)."""
    details: list[InitErrorDetails] = []
    for name, opts in options.items():
        if name not in FILTER_NAMES:
            raise ValueError(f"filter_options: unknown filter {name!r}; choose from {list(FILTER_NAMES)}")
        for key, message in option_errors(name, opts):
            details.append(
                InitErrorDetails(
                    type=PydanticCustomError("filter_option", message),
                    loc=("filter_options", name, key),
                    input=_type_name(opts[key]),
                )
            )
    if details:
        raise ValidationError.from_exception_data("filter_options", details)
    for name, opts in options.items():  # what the signature cannot tell: the constructors' own checks
        build_filter(name, ENGLISH, ENGLISH, dict(opts))


class HeuristicLayer:
    """Evaluates the configured filters on documents; tokenizers and filters are built once per language."""

    def __init__(
        self,
        filters: Sequence[FilterName],
        options: Mapping[Any, Mapping[str, Any]] | None = None,
        datatrove_compatible: bool = False,
    ):
        self.filters = [f for f in FILTER_NAMES if f in filters]  # always FineWeb's order
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self.datatrove_compatible = datatrove_compatible
        self._by_language: dict[str, tuple[SpacyWordTokenizer | None, list[tuple[FilterName, BaseFilter]]]] = {}

    def _filters_for(
        self, language: str | None
    ) -> tuple[SpacyWordTokenizer | None, list[tuple[FilterName, BaseFilter]]]:
        lang = (language or ENGLISH).split("_")[0]
        if lang not in self._by_language:
            names = applicable_filters(lang, self.filters)
            tokenizer = SpacyWordTokenizer(lang) if names else None
            self._by_language[lang] = (
                tokenizer,
                [(n, build_filter(n, lang, tokenizer, self.options.get(n), self.datatrove_compatible)) for n in names],
            )
        return self._by_language[lang]

    def evaluate(self, text: str, language: str | None) -> dict[str, str | None]:
        """Verdict per configured filter: `pass`, the filter's reason, `undefined`, or None (not applied)."""
        verdicts: dict[str, str | None] = {f: None for f in self.filters}
        tokenizer, filters = self._filters_for(language)
        if tokenizer is not None:
            tokenizer.reset()
        doc = DatatroveDocument(text=text, id="")
        for name, flt in filters:
            try:
                result = flt.filter(doc)
            except ArithmeticError:  # e.g. a ratio over zero words when an override disabled the word-count rule
                verdicts[name] = UNDEFINED
                continue
            ok, reason = (result, None) if isinstance(result, bool) else result
            verdicts[name] = PASS if ok else (reason or "failed")
        return verdicts


def failures(verdicts: Mapping[str, str | None], enforce: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(filter, reason) for every applied, enforced filter that did not pass, in filter order."""
    return [(f, v) for f, v in verdicts.items() if v is not None and v != PASS and (enforce is None or f in enforce)]
