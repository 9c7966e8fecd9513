"""sentencepiece tokenizer: train, load once per process, encode/decode, sha256 of the model file.

Training recipe (the tokenize stage's; Llama-style): BPE, `byte_fallback` (characters outside the
vocabulary become `<0xNN>` byte pieces, so nothing maps to `<unk>`), `split_digits`, identity
normalisation with whitespace kept as is (`decode(encode(text)) == text`), whitespace-only pieces
allowed (code indentation), pieces of at most `MAX_PIECE_CHARS` characters. The special pieces have
fixed ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3. sentencepiece trains on sentences and skips any
longer than `max_sentence_length`, so training text is fed line by line (documents split at newlines,
long lines cut at whitespace); newlines are then encoded by byte fallback (`<0x0A>`).

The model is trained from an iterator into memory and written by us: the model file records the
trainer options, and with `input=`/`model_prefix=` paths (or a thread count that depends on the
machine) in it the same sample would give a different sha256. Here the sha256 depends only on the
sample and the options below.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

log = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_IDS = {PAD: 0, BOS: 1, EOS: 2, UNK: 3}
MAX_SENTENCE_BYTES = 16_384
MAX_LINE_CHARS = 4_096  # <= MAX_SENTENCE_BYTES / 4 (UTF-8 is at most 4 bytes per character)
TRAIN_THREADS = 4  # fixed: the thread count is recorded in the model file (and so in its sha256)
# longest piece in characters (sentencepiece's default, set explicitly because the tokenize stage relies on it:
# a text of n characters encodes to at least n // MAX_PIECE_CHARS tokens, which bounds its val split in advance)
MAX_PIECE_CHARS = 16
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_lines(text: str, max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """Non-blank lines of a document, each cut to at most max_chars (at the last space when there is one)."""
    for line in text.split("\n"):
        while len(line) > max_chars:
            cut = line.rfind(" ", max_chars // 2, max_chars)
            cut = cut if cut > 0 else max_chars
            yield line[:cut]
            line = line[cut:]
        if line.strip():
            yield line


def train_tokenizer(
    lines: Iterable[str],
    model_file: str | Path,
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
) -> Path:
    """Train a sentencepiece model on `lines` and write it to model_file (+ a `.vocab` listing beside it).

    Raises ValueError naming `tokenize.vocab_size` when the sample cannot support that many pieces, or when
    that many cannot hold the specials, the 256 byte pieces and the sample's characters.
    """
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            split_digits=True,
            character_coverage=character_coverage,
            pad_id=SPECIAL_IDS[PAD],
            bos_id=SPECIAL_IDS[BOS],
            eos_id=SPECIAL_IDS[EOS],
            unk_id=SPECIAL_IDS[UNK],
            pad_piece=PAD,
            bos_piece=BOS,
            eos_piece=EOS,
            unk_piece=UNK,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            max_sentence_length=MAX_SENTENCE_BYTES,
            max_sentencepiece_length=MAX_PIECE_CHARS,
            num_threads=TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as err:
        m = _TOO_HIGH.search(str(err))
        if m:
            raise ValueError(
                f"tokenize.vocab_size={m.group(1)} is larger than the training sample supports (at most "
                f"{m.group(2)} pieces); lower tokenize.vocab_size or raise tokenize.sample_chars"
            ) from None
        m = _TOO_LOW.search(str(err))
        if m:
            raise ValueError(
                f"tokenize.vocab_size={m.group(1)} is smaller than the special, byte and character pieces the "
                f"sample needs ({m.group(2)}); raise tokenize.vocab_size or lower tokenize.character_coverage"
            ) from None
        raise ValueError(
            f"sentencepiece training failed (tokenize.vocab_size={vocab_size}, model_type={model_type}): {err}"
        ) from None
    path = Path(model_file)
    path.write_bytes(out.getvalue())
    tok = Tokenizer(path)
    path.with_suffix(".vocab").write_text(
        "".join(f"{tok.sp.id_to_piece(i)}\t{tok.sp.get_score(i)}\n" for i in range(tok.vocab_size)), encoding="utf-8"
    )
    return path


class Tokenizer:
    """A loaded sentencepiece model plus what the pipeline needs from it (ids of specials, sha256)."""

    def __init__(self, model_file: str | Path):
        self.path = Path(model_file)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"tokenizer model {self.path} does not exist; set tokenize.tokenizer_path to a "
                f"sentencepiece .model file or leave it empty to train one"
            )
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{self.path} is not a sentencepiece model ({err}); fix tokenize.tokenizer_path") from None
        self.vocab_size = int(self.sp.vocab_size())
        self.pad_id, self.bos_id = int(self.sp.pad_id()), int(self.sp.bos_id())
        self.eos_id, self.unk_id = int(self.sp.eos_id()), int(self.sp.unk_id())
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no <bos>/<eos>), on this thread only: stages parallelise across processes."""
        ids: list[list[int]] = self.sp.encode(texts, out_type=int, num_threads=1)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return str(self.sp.decode([int(i) for i in ids]))

    def byte_piece_mask(self) -> np.ndarray:
        """Boolean array over ids: True for byte-fallback pieces `<0xNN>`."""
        return np.array([self.sp.is_byte(i) for i in range(self.vocab_size)], dtype=bool)


_LOADED: dict[tuple[str, int, int], Tokenizer] = {}


def load_tokenizer(model_file: str | Path) -> Tokenizer:
    """The tokenizer at model_file, loaded once per process (keyed by path, size and mtime)."""
    p = os.path.abspath(model_file)
    if not os.path.isfile(p):
        return Tokenizer(p)  # raises FileNotFoundError with the fix
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    if key not in _LOADED:
        _LOADED[key] = Tokenizer(p)
    return _LOADED[key]
