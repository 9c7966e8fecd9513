"""The sentencepiece wrapper: exact round trip, byte fallback, fixed special ids, deterministic sha256."""

import numpy as np
import pytest

from models.tokenizer import (
    MAX_LINE_CHARS,
    MAX_PIECE_CHARS,
    SPECIAL_IDS,
    Tokenizer,
    file_sha256,
    load_tokenizer,
    train_tokenizer,
    training_lines,
)

SYLLABLES = ["ka", "ro", "mi", "tu", "sel", "an", "dor", "pe", "li", "qua", "ven", "zo", "ti", "mar", "eth", "bo"]
_rng = np.random.default_rng(0)
LEXICON = ["".join(_rng.choice(SYLLABLES, 1 + i % 3)) for i in range(300)]


def synthetic_text(rng, words=200):
    lexicon = LEXICON
    out = []
    for i in range(words):
        w = lexicon[int(rng.zipf(1.3)) % len(lexicon)]
        out.append(w.capitalize() if i % 12 == 0 else w)
        if i % 12 == 11:
            out.append(f"{int(rng.integers(0, 3000))}." if i % 5 == 0 else ".\n")
    return " ".join(out)


def corpus_lines(n_docs=300, seed=0):
    rng = np.random.default_rng(seed)
    return [line for _ in range(n_docs) for line in training_lines(synthetic_text(rng))]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return Tokenizer(train_tokenizer(corpus_lines(), path, vocab_size=400))


def test_round_trip_is_exact_and_unseen_characters_use_bytes(tok):
    texts = ["  leading spaces\tand tabs\n\nand   runs  ", "Ω café 東京 🙂 naïve", "katu 2024 mi.\r\nro", ""]
    for t in texts:
        ids = tok.encode([t])[0]
        assert tok.decode(ids) == t
        assert tok.unk_id not in ids
    ids = tok.encode(["🙂"])[0]
    assert sum(tok.byte_piece_mask()[ids]) == 4  # four UTF-8 bytes, no <unk>


def test_special_pieces_have_fixed_ids_and_digits_are_split(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3) == tuple(SPECIAL_IDS.values())
    assert [tok.sp.id_to_piece(i) for i in range(4)] == list(SPECIAL_IDS)
    assert tok.vocab_size == 400
    pieces = [tok.sp.id_to_piece(i) for i in tok.encode(["12345"])[0]]
    assert "".join(pieces).replace("\u2581", "") == "12345" and all(len(p.replace("\u2581", "")) <= 1 for p in pieces)
    assert tok.encode(["<eos>"])[0] != [tok.eos_id]  # the text "<eos>" is not the control piece


def test_training_is_deterministic(tmp_path, tok):
    again = train_tokenizer(corpus_lines(), tmp_path / "again.model", vocab_size=400)
    assert file_sha256(again) == tok.sha256
    assert (tmp_path / "again.vocab").read_text().splitlines()[2].startswith("<eos>\t")


def test_vocab_larger_than_the_sample_supports_names_the_param(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"tokenize.vocab_size=5000 is larger than the training sample supports "
        r"\(at most \d+ pieces\); lower tokenize.vocab_size or raise "
        r"tokenize.sample_chars",
    ):
        train_tokenizer(corpus_lines(20), tmp_path / "big.model", vocab_size=5000)
    with pytest.raises(
        ValueError,
        match=r"tokenize.vocab_size=300 is smaller than the special, byte and character "
        r"pieces the sample needs \(\d+\); raise tokenize.vocab_size",
    ):
        train_tokenizer(corpus_lines(20) + ["αβγδεζηθικλμνξοπρστυφχψω" * 3], tmp_path / "small.model", vocab_size=300)


def test_training_lines_cut_long_lines_and_skip_blank_ones():
    long = ("abcd " * 3000).strip()
    lines = list(training_lines(f"first\n\n   \n{long}\nlast"))
    assert lines[0] == "first" and lines[-1] == "last"
    assert all(0 < len(x) <= MAX_LINE_CHARS for x in lines)
    assert "".join(lines[1:-1]) == long


def test_load_tokenizer_once_per_process_and_clear_errors(tok, tmp_path):
    assert load_tokenizer(tok.path) is load_tokenizer(str(tok.path))
    with pytest.raises(FileNotFoundError, match="tokenize.tokenizer_path"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a sentencepiece model"):
        Tokenizer(tmp_path / "junk.model")


def test_pieces_are_at_most_max_piece_chars_so_token_counts_have_a_lower_bound(tmp_path):
    """The tokenize stage bounds its val split before the tokenizer exists with len(text) // MAX_PIECE_CHARS;
    long repeated runs are what BPE would merge into the longest pieces."""
    rng = np.random.default_rng(5)
    lines = [("a" * int(rng.integers(20, 200))) + " " + ("xy" * int(rng.integers(10, 90))) for _ in range(400)]
    lines += corpus_lines(50)
    tok = Tokenizer(train_tokenizer(lines, tmp_path / "long.model", vocab_size=500))
    longest = max(len(tok.sp.id_to_piece(i)) for i in range(tok.vocab_size) if not tok.sp.is_byte(i))
    assert longest == MAX_PIECE_CHARS  # the runs did push pieces to the limit
    texts = lines[:50] + ["a" * 1000, " " * 333, "xy" * 400 + "\n" + "a" * 77]
    for text, ids in zip(texts, tok.encode(texts)):
        assert len(ids) >= len(text) // MAX_PIECE_CHARS, (len(text), len(ids))
