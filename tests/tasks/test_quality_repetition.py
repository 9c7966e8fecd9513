"""Gopher repetition over word ids (tasks.quality.repetition) gives datatrove's numbers and verdicts: every
reason, the top n-gram's tie-break, concatenation collisions, words with spaces, random repetitive texts.
Real pages: tests/tasks/test_quality_gopher_words.py runs the whole layer against datatrove's filters."""

import random

import pytest
from datatrove.data import Document as DtDocument
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams
from datatrove.utils.word_tokenizers import WordTokenizer

from tasks.quality.heuristics import SpacyWordTokenizer, build_filter
from tasks.quality.repetition import FastGopherRepetitionFilter, RepetitionStats


class ListTokenizer(WordTokenizer):
    """Words given in advance (to build cases a real tokenizer never yields, e.g. words with spaces)."""

    def __init__(self, words):
        super().__init__("en")
        self.words = words

    def word_tokenize(self, text):
        return list(self.words)

    def sent_tokenize(self, text):
        return [text]

    def span_tokenize(self, text):
        return [(0, len(text))]


def _both(text, tokenizer):
    doc = DtDocument(text=text, id="")
    return (
        GopherRepetitionFilter(language=tokenizer).filter(doc),
        FastGopherRepetitionFilter(language=tokenizer).filter(doc),
    )


def _numbers(words):
    stats = RepetitionStats(words)
    ours = [stats.top_chars(n) for n in (2, 3, 4)] + [stats.dup_chars(n) for n in range(5, 11)]
    theirs = [find_top_duplicate(get_n_grams(words, n)) if len(words) >= n else None for n in (2, 3, 4)]
    theirs += [find_all_duplicate(words, n) for n in range(5, 11)]
    return ours, theirs


PROSE = (
    "The council met on Tuesday to discuss the new library. Members asked how the budget would be spent, "
    "and the mayor answered that most of it would go to books, staff and longer opening hours. "
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (PROSE + "\n\nSame paragraph here.\n\nSame paragraph here.\n\nSame paragraph here.", "dup_para_frac"),
        ("a line\n" * 3 + PROSE, "dup_line_frac"),
        (PROSE + "\n" + "buy now " * 60, "top_2_gram"),
        (
            " ".join(
                "extraordinary unbelievable circumstances " + " ".join(f"w{i}x{j}" for j in range(20))
                for i in range(10)
            ),
            "top_3_gram",
        ),
        (PROSE + " ".join(f"w{i}" for i in range(200)) + " " + PROSE, "duplicated_9_n_grams"),
        (PROSE + " ".join(f"w{i}" for i in range(100)) + " " + PROSE[:100] + " " + PROSE[:100], "duplicated_5_n_grams"),
        (PROSE + " ".join(f"w{i}" for i in range(300)), True),
    ],
)
def test_every_verdict_equals_datatrove(text, reason):
    theirs, ours = _both(text, SpacyWordTokenizer("en"))
    assert ours == theirs
    assert ours is True if reason is True else ours == (False, reason)


def test_top_ngram_ties_go_to_the_first_inserted():
    """Counter.most_common(1) returns the first n-gram reaching the top count; lengths differ, so it matters."""
    words = "aa bbbbbbbb x aa bbbbbbbb y cc d z cc d".split()
    ours, theirs = _numbers(words)
    assert ours == theirs and ours[0] == len("aa bbbbbbbb") * 2


def test_equal_concatenations_of_different_words_count_as_datatrove_counts_them():
    """datatrove joins 5..10-grams without a separator: "ab"+"c" equals "a"+"bc" (a repeat for it)."""
    first = ["ab", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
    second = ["a", "bc", "d", "e", "f", "g", "h", "i", "j", "k"]
    words = first + [f"u{i}" for i in range(20)] + second
    ours, theirs = _numbers(words)
    assert ours == theirs and theirs[3] > 0  # find_all_duplicate(words, 5) saw the collision
    text = " ".join(words)
    assert _both(text, ListTokenizer(words))[0] == _both(text, ListTokenizer(words))[1]


def test_words_with_spaces_fall_back_to_datatrove():
    """ " ".join merges ("a b", "c") and ("a", "b c"): tuple ids alone would count two n-grams."""
    words = ["a b", "c", "x", "a", "b c", "y"] * 3
    ours, theirs = _numbers(words)
    assert ours == theirs


@pytest.mark.parametrize("seed", range(40))
def test_random_repetitive_texts_equal_datatrove(seed):
    rng = random.Random(seed)
    vocab = ["a", "ab", "b", "ba", "the", "of", "x", "xy", "y", "."][: rng.randint(3, 10)]
    words = [rng.choice(vocab) for _ in range(rng.randint(0, 400))]
    ours, theirs = _numbers(words)
    assert ours == theirs
    text = " ".join(words) or "."
    theirs_verdict, ours_verdict = _both(text, ListTokenizer(words))
    assert ours_verdict == theirs_verdict


def test_the_layer_uses_the_fast_filter_with_options():
    flt = build_filter("gopher_repetition", "en", SpacyWordTokenizer("en"), {"top_n_grams": [[2, 0.5]]})
    assert isinstance(flt, FastGopherRepetitionFilter) and flt.top_n_grams == ((2, 0.5),)


def test_word_tokenize_returns_a_fresh_list_from_its_cache():
    tok = SpacyWordTokenizer("en")
    words = tok.word_tokenize("Hello, world.\nAgain here.")
    words.append("mutated")
    assert tok.word_tokenize("Hello, world.\nAgain here.") == ["Hello", ",", "world", ".", "Again", "here", "."]
