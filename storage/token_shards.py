"""Token shards: the tokenize stage's output and the train stage's input (Arrow IPC, memory-mapped).

Layout under a tokenize version directory: `train/tokens-NNNNN.arrow` and `val/tokens-NNNNN.arrow`.
Each file is an Arrow IPC *file* (random access) with two columns:

    tokens       fixed_size_list<uint16 | uint32>[seq_len + 1]   uint16 when vocab_size <= 65,536
    doc_offsets  list<int32>   positions in the row where a document starts (after an <eos>)

Rows are packed sequences: documents, each followed by <eos>, concatenated and cut into rows of
`seq_len + 1` tokens (no padding; the last partial row of a stream is dropped). A training example is
x = row[:-1], y = row[1:]. Position 0 of a row always starts a segment (a document that may have
begun in the previous row), so it is listed in `doc_offsets` only when a document truly starts there.
The schema metadata holds `seq_len`, `vocab_size` and `eos_id`.

`TokenShardWriter` writes one file whole or not at all (storage.files.AtomicFile). `TokenShards` memory-maps
every file (`pa.memory_map` + `pa.ipc.open_file`) and exposes each record batch's flat values buffer
as a zero-copy numpy view (n, seq_len + 1): reading a batch of rows copies only those rows, never a
whole shard, so memory stays flat however large the dataset is. Memory maps need local files: shards on an
object store are downloaded once into the local cache (storage.paths.local_copy) and mapped from there.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from storage import paths
from storage.files import AtomicFile

if TYPE_CHECKING:
    import torch

TRAIN_DIR = "train"
VAL_DIR = "val"
SHARD_KIND = "tokens"
SHARD_EXT = "arrow"
UINT16_MAX_VOCAB = 65_536  # ids 0..65535 fit in uint16


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 for vocabularies up to 65,536 ids, else uint32."""
    if vocab_size < 1 or vocab_size > 2**32:
        raise ValueError(f"vocab_size={vocab_size} out of range 1..2**32")
    return np.dtype(np.uint16) if vocab_size <= UINT16_MAX_VOCAB else np.dtype(np.uint32)


def shard_schema(seq_len: int, vocab_size: int, eos_id: int | None = None) -> pa.Schema:
    value_type = pa.uint16() if token_dtype(vocab_size) == np.uint16 else pa.uint32()
    meta = {"seq_len": str(seq_len), "vocab_size": str(vocab_size), "eos_id": "" if eos_id is None else str(eos_id)}
    return pa.schema(
        [pa.field("tokens", pa.list_(value_type, seq_len + 1)), pa.field("doc_offsets", pa.list_(pa.int32()))],
        metadata=meta,
    )


def pack_documents(docs: Iterable[Sequence[int]], seq_len: int, eos_id: int) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Pack token documents into rows of seq_len + 1 tokens (each doc + <eos>), with doc start offsets."""
    row_len = seq_len + 1
    buf: list[int] = []
    starts: list[int] = []
    for doc in docs:
        starts.append(len(buf))
        buf.extend(doc)
        buf.append(eos_id)
        while len(buf) >= row_len:
            row = np.asarray(buf[:row_len], dtype=np.int64)
            yield row, [s for s in starts if s < row_len]
            buf = buf[row_len:]
            starts = [s - row_len for s in starts if s >= row_len]


def doc_ids_from_offsets(offsets: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Document index of each of the first `length` positions of each row: (n, length) int64."""
    out = np.zeros((len(offsets), length), dtype=np.int64)
    for i, off in enumerate(offsets):
        starts = np.asarray(off, dtype=np.int64)
        starts = starts[(starts > 0) & (starts < length)]
        np.add.at(out[i], starts, 1)
    return np.cumsum(out, axis=1)


class TokenShardWriter:
    """Atomic writer of one token shard: `write_sequences` appends a record batch; `close` puts it in place."""

    def __init__(self, path: str, seq_len: int, vocab_size: int, eos_id: int | None = None):
        self.path, self.seq_len, self.vocab_size = path, seq_len, vocab_size
        self.dtype = token_dtype(vocab_size)
        self.schema = shard_schema(seq_len, vocab_size, eos_id)
        self.rows = 0
        self.fs, self._p = paths.filesystem(path)
        self._out = AtomicFile(self.fs, self._p)
        self._writer = ipc.new_file(self._out.file, self.schema)

    @property
    def tokens(self) -> int:
        """Tokens written, counting the extra target token of each row."""
        return self.rows * (self.seq_len + 1)

    def write_sequences(self, tokens: np.ndarray, doc_offsets: Sequence[Sequence[int] | np.ndarray]) -> None:
        """Append rows: tokens (n, seq_len + 1) integer ids < vocab_size; doc_offsets one list per row."""
        row_len = self.seq_len + 1
        if tokens.ndim != 2 or tokens.shape[1] != row_len:
            raise ValueError(f"{self.path}: tokens must have shape (n, {row_len}), got {tokens.shape}")
        if len(doc_offsets) != tokens.shape[0]:
            raise ValueError(f"{self.path}: {len(doc_offsets)} doc_offsets lists for {tokens.shape[0]} rows")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"{self.path}: token ids must lie in [0, {self.vocab_size}), got [{tokens.min()}, {tokens.max()}]"
            )
        flat_offsets = [int(o) for row in doc_offsets for o in row]
        assert all(0 <= o < row_len for o in flat_offsets), f"{self.path}: doc offset outside 0..{row_len - 1}"
        values = pa.array(np.ascontiguousarray(tokens, dtype=self.dtype).reshape(-1))
        tok_arr = pa.FixedSizeListArray.from_arrays(values, row_len)
        lengths = np.fromiter((len(r) for r in doc_offsets), dtype=np.int32, count=len(doc_offsets))
        list_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        off_arr = pa.ListArray.from_arrays(list_offsets, pa.array(flat_offsets, type=pa.int32()))
        self._writer.write_batch(pa.record_batch([tok_arr, off_arr], schema=self.schema))
        self.rows += tokens.shape[0]

    def close(self) -> int:
        """Finish the file and put it in place; returns the size in bytes."""
        self._writer.close()
        return self._out.commit()

    def abort(self) -> None:
        self._writer.close()
        self._out.discard()

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def shard_files(directory: str) -> list[str]:
    """Complete token shard files of a directory, in name order (`.tmp` files are ignored); URLs for a directory
    on an object store."""
    pattern = f"{SHARD_KIND}-*.{SHARD_EXT}"
    if paths.is_remote(directory):
        fs, base = paths.filesystem(directory)
        protocol = directory.split("://", 1)[0]
        return sorted(f"{protocol}://{f}" for f in fs.glob(paths.join(base, pattern)))
    return sorted(glob.glob(os.path.join(directory.removeprefix("file://"), pattern)))


def local_shard_files(directory: str) -> list[str]:
    """`shard_files` as local files: the files themselves on a local disk, else cached downloads
    (storage.paths.local_copy: fetched once per machine and object version)."""
    return [paths.local_copy(f) for f in shard_files(directory)]


class TokenShards:
    """Memory-mapped, random-access view of all token shards in one directory."""

    def __init__(self, directory: str):
        self.directory = directory.removeprefix("file://")
        self.files = local_shard_files(self.directory)  # on an object store: downloaded to the local cache
        if not self.files:
            raise FileNotFoundError(
                f"no {SHARD_KIND}-NNNNN.{SHARD_EXT} files in {self.directory}; run the tokenize stage"
            )
        self._tokens: list[np.ndarray] = []  # per record batch: zero-copy (n, seq_len + 1) views
        self._offsets: list[tuple[np.ndarray, np.ndarray]] = []  # per batch: (list offsets, flat values)
        self._maps: list[pa.MemoryMappedFile] = []
        self.seq_len, self.vocab_size = 0, 0  # set from the first file's schema
        self.eos_id: int | None = None
        for f in self.files:
            self._open(f)
        counts = np.array([len(t) for t in self._tokens], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_sequences = int(self._starts[-1])

    def _open(self, file: str) -> None:
        mm = pa.memory_map(file, "r")
        reader = ipc.open_file(mm)
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        seq_len, vocab = int(meta["seq_len"]), int(meta["vocab_size"])
        eos = int(meta["eos_id"]) if meta.get("eos_id") else None
        if self._maps and (seq_len, vocab, eos) != (self.seq_len, self.vocab_size, self.eos_id):
            raise ValueError(
                f"{file}: seq_len/vocab_size/eos_id {seq_len, vocab, eos} differ from "
                f"{self.files[0]}: {self.seq_len, self.vocab_size, self.eos_id}"
            )
        self.seq_len, self.vocab_size, self.eos_id = seq_len, vocab, eos
        self._maps.append(mm)
        row_len = seq_len + 1
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            if batch.num_rows == 0:
                continue
            tok = batch.column(0)
            flat = tok.values.slice(tok.offset * row_len, len(tok) * row_len)
            self._tokens.append(flat.to_numpy(zero_copy_only=True).reshape(len(tok), row_len))
            offs = batch.column(1)
            self._offsets.append(
                (offs.offsets.to_numpy(zero_copy_only=True), offs.values.to_numpy(zero_copy_only=True))
            )

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    @property
    def num_tokens(self) -> int:
        return self.num_sequences * (self.seq_len + 1)

    def __len__(self) -> int:
        return self.num_sequences

    def _locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_sequences):
            raise IndexError(f"sequence index out of range 0..{self.num_sequences - 1}")
        batch = np.searchsorted(self._starts, idx, side="right") - 1
        return batch, idx - self._starts[batch]

    def get(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows idx as a new (len(idx), seq_len + 1) array in the shard dtype (copies only those rows)."""
        batch, row = self._locate(np.asarray(idx))
        out = np.empty((len(batch), self.seq_len + 1), dtype=self.dtype)
        for b in np.unique(batch):
            sel = batch == b
            out[sel] = self._tokens[b][row[sel]]
        return out

    def offsets(self, idx: np.ndarray | Sequence[int]) -> list[np.ndarray]:
        """Document start offsets of rows idx (one int32 array per row)."""
        batch, row = self._locate(np.asarray(idx))
        out = []
        for b, r in zip(batch.tolist(), row.tolist(), strict=True):
            list_offsets, values = self._offsets[b]
            out.append(values[list_offsets[r] : list_offsets[r + 1]].copy())
        return out

    def iter_chunks(self) -> Iterator[np.ndarray]:
        """The zero-copy (n, seq_len + 1) view of each record batch, in order (for streaming statistics)."""
        yield from self._tokens


def to_torch(
    rows: np.ndarray, device: str | torch.device = "cpu", pin: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 tensors from rows (n, seq_len + 1): x = rows[:, :-1], y = rows[:, 1:]."""
    import torch

    t = torch.from_numpy(rows.astype(np.int64))
    if pin and torch.cuda.is_available():
        t = t.pin_memory()
    t = t.to(device, non_blocking=pin)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def doc_ids_to_torch(offsets: Sequence[np.ndarray], seq_len: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """(n, seq_len) int64 document ids of the x positions, for `GPT.forward(doc_ids=...)`."""
    import torch

    return torch.from_numpy(doc_ids_from_offsets(offsets, seq_len)).to(device)
