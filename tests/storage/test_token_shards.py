"""Token shards: round trip, dtype switch at 65,536, memory mapping, atomic writes, packing."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from storage.token_shards import (
    TokenShards,
    TokenShardWriter,
    doc_ids_from_offsets,
    doc_ids_to_torch,
    pack_documents,
    to_torch,
    token_dtype,
)


def _write(path, rows, offsets, seq_len, vocab, batch=7):
    with TokenShardWriter(str(path), seq_len, vocab, eos_id=0) as w:
        for i in range(0, len(rows), batch):
            w.write_sequences(rows[i : i + batch], offsets[i : i + batch])
    return w


def _random_rows(rng, n, seq_len, vocab):
    rows = rng.integers(0, vocab, size=(n, seq_len + 1))
    offsets = [sorted(set(rng.integers(0, seq_len + 1, size=rng.integers(0, 4)).tolist())) for _ in range(n)]
    return rows, offsets


def test_round_trip_across_shards_and_batches(tmp_path):
    rng = np.random.default_rng(0)
    seq_len, vocab = 16, 1000
    r1, o1 = _random_rows(rng, 30, seq_len, vocab)
    r2, o2 = _random_rows(rng, 11, seq_len, vocab)
    w = _write(tmp_path / "tokens-00000.arrow", r1, o1, seq_len, vocab)
    _write(tmp_path / "tokens-00001.arrow", r2, o2, seq_len, vocab, batch=4)
    assert w.rows == 30 and w.tokens == 30 * 17
    shards = TokenShards(str(tmp_path))
    assert (shards.num_sequences, shards.seq_len, shards.vocab_size, shards.eos_id) == (41, 16, 1000, 0)
    all_rows, all_offsets = np.concatenate([r1, r2]), o1 + o2
    idx = rng.permutation(41)
    got = shards.get(idx)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, all_rows[idx])
    for i, off in zip(idx, shards.offsets(idx), strict=True):
        assert off.tolist() == all_offsets[i]
    x, y = to_torch(got[:3])
    assert x.dtype == torch.int64 and x.shape == (3, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    with pytest.raises(IndexError):
        shards.get([41])


@pytest.mark.parametrize(("vocab", "dtype"), [(65_536, np.uint16), (65_537, np.uint32)])
def test_dtype_switches_above_65536(tmp_path, vocab, dtype):
    assert token_dtype(vocab) == dtype
    rows = np.array([[0, vocab - 1, 5, vocab - 2]])
    _write(tmp_path / "tokens-00000.arrow", rows, [[0]], 3, vocab)
    shards = TokenShards(str(tmp_path))
    assert shards.dtype == dtype
    assert shards.get([0]).tolist() == rows.tolist()
    field = pa.ipc.open_file(pa.memory_map(shards.files[0])).schema.field("tokens")
    assert field.type.value_type == (pa.uint16() if dtype == np.uint16 else pa.uint32())
    assert field.type.list_size == 4


def test_reader_is_memory_mapped(tmp_path):
    seq_len, n = 1023, 4096  # 8 MiB of uint16 tokens
    rows = np.random.default_rng(1).integers(0, 50_000, size=(n, seq_len + 1))
    _write(tmp_path / "tokens-00000.arrow", rows, [[0]] * n, seq_len, 50_000, batch=1024)
    del rows
    before = pa.total_allocated_bytes()
    shards = TokenShards(str(tmp_path))
    got = shards.get(np.arange(0, n, 512))
    shards.offsets(np.arange(8))
    assert pa.total_allocated_bytes() - before < 64 * 1024, "reading must not copy shards into Arrow memory"
    assert got.shape == (8, seq_len + 1)
    view = next(shards.iter_chunks())
    assert not view.flags.writeable and not view.flags.owndata  # a view of the mapped file


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "tokens-00000.arrow"
    w = TokenShardWriter(str(path), 4, 100)
    w.write_sequences(np.zeros((2, 5), dtype=np.int64), [[0], [0]])
    assert not path.exists() and list(tmp_path.glob("tokens-00000.arrow.tmp-*"))
    with pytest.raises(FileNotFoundError):
        TokenShards(str(tmp_path))  # an unfinished .tmp shard is invisible
    assert w.close() > 0
    assert path.exists() and not list(tmp_path.glob("*.tmp-*"))

    failed = tmp_path / "tokens-00001.arrow"
    with pytest.raises(RuntimeError), TokenShardWriter(str(failed), 4, 100) as w2:
        w2.write_sequences(np.zeros((1, 5), dtype=np.int64), [[0]])
        raise RuntimeError("tokenizer crashed")
    assert not failed.exists() and not list(tmp_path.glob("*.tmp-*"))
    assert TokenShards(str(tmp_path)).num_sequences == 2


def test_writer_rejects_bad_input(tmp_path):
    with TokenShardWriter(str(tmp_path / "tokens-00000.arrow"), 4, 100) as w:
        with pytest.raises(ValueError, match="shape"):
            w.write_sequences(np.zeros((1, 4), dtype=np.int64), [[0]])
        with pytest.raises(ValueError, match="token ids"):
            w.write_sequences(np.full((1, 5), 100), [[0]])
        with pytest.raises(ValueError, match="doc_offsets"):
            w.write_sequences(np.zeros((2, 5), dtype=np.int64), [[0]])


def test_shards_with_different_seq_len_fail(tmp_path):
    _write(tmp_path / "tokens-00000.arrow", np.zeros((1, 5), dtype=np.int64), [[0]], 4, 100)
    _write(tmp_path / "tokens-00001.arrow", np.zeros((1, 9), dtype=np.int64), [[0]], 8, 100)
    with pytest.raises(ValueError, match="differ"):
        TokenShards(str(tmp_path))


def test_pack_documents_places_eos_and_offsets():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11], [12]]
    packed = list(pack_documents(docs, seq_len=4, eos_id=0))
    stream = [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10, 11, 0, 12, 0]
    assert [r.tolist() for r, _ in packed] == [stream[0:5], stream[5:10], stream[10:15]]
    assert [o for _, o in packed] == [[0, 4], [2], [4]]  # doc starts at stream 0, 4, 7, 14


def test_doc_ids_from_offsets():
    ids = doc_ids_from_offsets([np.array([0, 2, 5]), np.array([], dtype=np.int32)], 5)
    assert ids.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]  # offset 5 is past the x positions
    assert doc_ids_to_torch([np.array([3])], 4).tolist() == [[0, 0, 0, 1]]
