from tasks.text import hash64, ngrams, normalise, text_hash, words


def test_normalise_nfkc_case_whitespace():
    assert normalise("  Ｈｅｌｌｏ\u00a0 WORLD\n\tagain ") == "hello world again"
    assert text_hash("Hello   world") == text_hash("hello world") != text_hash("hello worlds")


def test_words_drop_punctuation_and_ngrams():
    assert words("Hello, world! It's snake_case—ok.") == ["hello", "world", "it", "s", "snake", "case", "ok"]
    assert list(ngrams(["a", "b", "c", "d"], 3)) == ["a b c", "b c d"]
    assert list(ngrams(["a", "b"], 3)) == []


def test_hash64_is_stable():
    assert hash64("abc") == hash64("abc") != hash64("abd")
    assert 0 <= hash64("abc") < 2**64
