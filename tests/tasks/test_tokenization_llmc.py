"""`pretrain export-tokens` (tasks/tokenization/llmc.py): files other trainers read the way those trainers read them.

The tokenize version is written by hand (two token shards of known rows), so no earlier stage runs. The
llm.c format itself is also checked end to end in tests/flows/test_mix_tokenize_flows.py.
"""

import numpy as np
import pytest

from flows.cli import main
from storage.artifacts import ArtifactWriter
from storage.manifest import ShardInfo, new_manifest
from storage.stats import StageStats
from storage.token_shards import TokenShardWriter
from tasks.tokenization.llmc import read_llmc

SEQ_LEN, VERSION = 8, "0123456789ab"


def make_tokenize_version(root, vocab_size: int) -> np.ndarray:
    """A committed tokenize version whose train split is two shards of random rows; the tokens in order."""
    w = ArtifactWriter(str(root), "tokenize", VERSION)
    rng = np.random.default_rng(0)
    rows, shards = [], []
    for i, n in enumerate((5, 3)):
        block = rng.integers(0, vocab_size, size=(n, SEQ_LEN + 1))
        name = f"train/tokens-{i:05d}.arrow"
        with TokenShardWriter(f"{w.path}/{name}", SEQ_LEN, vocab_size, eos_id=0) as tw:
            tw.write_sequences(block, [[0]] * n)
        rows.append(block)
        shards.append(ShardInfo(name=name, rows=n, bytes=1))
    extras = {"vocab_size": vocab_size, "seq_len": SEQ_LEN, "sequences": {"train": 8}}
    w.commit(new_manifest("tokenize", 1, VERSION, {}, {}, shards, [], StageStats(), extras))
    return np.concatenate(rows).reshape(-1)


def export(root, out, fmt: str) -> int:
    return main(["export-tokens", "--format", fmt, "--out", str(out), "--data-root", str(root)])


def test_nanogpt_file_reads_back_as_our_tokens_the_way_nanogpt_reads_it(tmp_path):
    tokens = make_tokenize_version(tmp_path, vocab_size=1000)
    assert export(tmp_path, tmp_path / "train.bin", "nanogpt") == 0
    # nanoGPT train.py: data = np.memmap(os.path.join(data_dir, 'train.bin'), dtype=np.uint16, mode='r')
    data = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r")
    assert data.tolist() == tokens.tolist()
    # the llm.c file, read the same way, starts with its 1024-byte header: 512 uint16 values that are not tokens
    assert export(tmp_path, tmp_path / "llmc.bin", "llm.c") == 0
    as_nanogpt = np.memmap(tmp_path / "llmc.bin", dtype=np.uint16, mode="r")
    assert as_nanogpt[512:].tolist() == tokens.tolist() and as_nanogpt[:2].tolist() == [
        20240520 & 0xFFFF,
        20240520 >> 16,
    ]
    assert read_llmc(str(tmp_path / "llmc.bin")).tolist() == tokens.tolist()


def test_nanogpt_refuses_tokens_wider_than_uint16(tmp_path, capsys):
    make_tokenize_version(tmp_path, vocab_size=70_000)
    assert export(tmp_path, tmp_path / "train.bin", "nanogpt") == 1
    assert "do not fit nanoGPT's uint16 .bin; use --format llm.c" in capsys.readouterr().err
    assert not (tmp_path / "train.bin").exists()
    assert export(tmp_path, tmp_path / "train.bin", "llm.c") == 0


@pytest.mark.parametrize("fmt", ["nanogpt", "llm.c"])
def test_a_missing_split_names_the_splits_there_are(tmp_path, capsys, fmt):
    make_tokenize_version(tmp_path, vocab_size=1000)
    out = tmp_path / "x.bin"
    assert (
        main(["export-tokens", "--format", fmt, "--split", "val", "--out", str(out), "--data-root", str(tmp_path)]) == 1
    )
    assert "has no split 'val'; it has ['train']" in capsys.readouterr().err
