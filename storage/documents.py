"""Documents and their Parquet shards: `Document`, streaming readers and atomic shard writers.

A document shard is `part-NNNNN.parquet` (zstd) with the base columns `id, url, text, source,
crawl_date` plus the columns stages add (`language`, `quality_score`, ...). In Python, added columns
live in `Document.meta`. Writers have an explicit schema (base + declared extra fields) and refuse meta
keys they do not know, so a column can never vanish silently. Rejected shards (`rejected/part-NNNNN`)
have two more columns: `reason` (snake_case drop reason) and `reason_detail` (JSON, e.g. the kept id).

`run_document_shard` is what a stage's shard task calls: it streams one input shard through the stage's
`process(docs, stats, rejects)` generator, writes kept documents to `part-NNNNN.parquet` and rejected
ones to `rejected/part-NNNNN.parquet` (`Rejects`), and returns a small `ShardResult` (counts only:
Prefect passes it between processes).

Readers stream record batches (`pyarrow.parquet.ParquetFile.iter_batches`); nothing here loads a whole
shard into a list. Files are written whole or not at all (storage.files.AtomicFile).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from storage import paths
from storage.files import AtomicFile
from storage.manifest import ShardInfo
from storage.stats import StageStats

BASE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string()),
    pa.field("url", pa.string()),
    pa.field("text", pa.string()),
    pa.field("source", pa.string()),
    pa.field("crawl_date", pa.string()),
]
BASE_NAMES = [f.name for f in BASE_FIELDS]
REJECT_FIELDS: list[pa.Field] = [pa.field("reason", pa.string()), pa.field("reason_detail", pa.string())]
REJECT_NAMES = {f.name for f in REJECT_FIELDS}

T = TypeVar("T")


@dataclass(slots=True)
class Document:
    id: str
    text: str
    url: str = ""
    source: str = "web"
    crawl_date: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def schema_with(extra: list[pa.Field]) -> pa.Schema:
    """Base schema plus extra fields (later definitions of a name replace earlier ones)."""
    fields: dict[str, pa.Field] = {f.name: f for f in BASE_FIELDS}
    for f in extra:
        fields[f.name] = f
    return pa.schema(list(fields.values()))


def extra_fields(schema: pa.Schema) -> list[pa.Field]:
    """The non-base, non-reject fields of a shard schema (what a stage must carry through)."""
    return [f for f in schema if f.name not in BASE_NAMES and f.name not in REJECT_NAMES]


def read_schema(path: str) -> pa.Schema:
    fs, p = paths.filesystem(path)
    with fs.open(p, "rb") as f:
        return pq.read_schema(f)


def iter_batches(path: str, columns: list[str] | None = None, batch_size: int = 2048) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet shard as record batches (constant memory in the shard size)."""
    fs, p = paths.filesystem(path)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def _to_document(row: dict[str, Any]) -> Document:
    meta = {k: v for k, v in row.items() if k not in BASE_NAMES}
    return Document(
        id=row["id"],
        text=row["text"] or "",
        url=row.get("url") or "",
        source=row.get("source") or "web",
        crawl_date=row.get("crawl_date") or "",
        meta=meta,
    )


def read_documents(path: str, columns: list[str] | None = None, batch_size: int = 2048) -> Iterator[Document]:
    """Stream the documents of one shard."""
    for batch in iter_batches(path, columns=columns, batch_size=batch_size):
        for row in batch.to_pylist():
            yield _to_document(row)


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of `n` items (the last one shorter) from a stream, for batched model calls and writes."""
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def count_rows(path: str) -> int:
    fs, p = paths.filesystem(path)
    with fs.open(p, "rb") as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


class DocumentWriter:
    """Buffered, atomic Parquet shard writer with an explicit schema."""

    def __init__(
        self, path: str, extra: list[pa.Field] | None = None, rejected: bool = False, rows_per_group: int = 2048
    ):
        self.path = path
        self.fs, self._p = paths.filesystem(path)
        self.schema = schema_with(list(extra or []) + (REJECT_FIELDS if rejected else []))
        self._names = self.schema.names
        self._known = set(self._names)
        self._rows: list[dict[str, Any]] = []
        self._rows_per_group = rows_per_group
        self.rows = 0
        self.text_bytes = 0
        self._out = AtomicFile(self.fs, self._p)
        self._writer = pq.ParquetWriter(self._out.file, self.schema, compression="zstd")

    def write(self, doc: Document, reason: str | None = None, detail: dict[str, Any] | None = None) -> None:
        row: dict[str, Any] = {
            "id": doc.id,
            "url": doc.url,
            "text": doc.text,
            "source": doc.source,
            "crawl_date": doc.crawl_date,
        }
        unknown = [k for k in doc.meta if k not in self._known]
        assert not unknown, f"{self.path}: document {doc.id} has columns {unknown} missing from the shard schema"
        row.update(doc.meta)
        if reason is not None:
            row["reason"] = reason
            row["reason_detail"] = json.dumps(detail or {}, sort_keys=True, default=str)
        self._rows.append(row)
        self.rows += 1
        self.text_bytes += len(doc.text.encode("utf-8", "surrogatepass"))
        if len(self._rows) >= self._rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> int:
        """Flush, close and put the file in place; returns its size in bytes."""
        self._flush()
        self._writer.close()
        return self._out.commit()

    def __enter__(self) -> DocumentWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()
            self._out.discard()


# ---------------------------------------------------------------- running one shard of a document stage

REJECTED_DIR = "rejected"
DATA_DIR = "data"  # kept documents of a version: `data/part-NNNNN.parquet`


class Rejects:
    """Sink for dropped documents: writes them with their reason and counts the drop."""

    def __init__(self, writer: DocumentWriter, stats: StageStats):
        self.writer, self.stats = writer, stats

    def add(self, doc: Document, reason: str, detail: dict[str, Any] | None = None, error: bool = False) -> None:
        self.stats.drop(reason, error=error)
        self.writer.write(doc, reason=reason, detail=detail)


class ShardResult(BaseModel):
    index: int
    stats: StageStats
    shard: ShardInfo
    rejected: ShardInfo


ProcessFn = Callable[[Iterable[Document], StageStats, Rejects], Iterator[Document]]


def counted(docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
    """Count documents and text bytes entering a stage."""
    for d in docs:
        stats.docs_in += 1
        stats.bytes_in += len(d.text.encode("utf-8", "surrogatepass"))
        yield d


def kept_name(index: int) -> str:
    """A document stage's kept shard `index`, relative to its version directory: `data/part-NNNNN.parquet` (the
    version's README.md dataset card points loaders at `data/`; storage.dataset_card)."""
    return f"{DATA_DIR}/{paths.shard_name(index)}"


def open_shard_writers(out_dir: str, index: int, extra: list[pa.Field]) -> tuple[DocumentWriter, DocumentWriter]:
    name = paths.shard_name(index)
    kept = DocumentWriter(paths.join(out_dir, kept_name(index)), extra=extra)
    rejected = DocumentWriter(paths.join(out_dir, REJECTED_DIR, name), extra=extra, rejected=True)
    return kept, rejected


def write_stream(
    docs: Iterable[Document], out_dir: str, index: int, extra: list[pa.Field], process: ProcessFn, stats: StageStats
) -> ShardResult:
    """Run `process` over `docs` and write kept + rejected shards `index` under `out_dir`."""
    t0 = time.perf_counter()
    kept_w, rej_w = open_shard_writers(out_dir, index, extra)
    with kept_w, rej_w:
        for doc in process(docs, stats, Rejects(rej_w, stats)):
            kept_w.write(doc)
            stats.docs_out += 1
    stats.seconds += time.perf_counter() - t0
    return shard_result(index, kept_w, rej_w, stats)


def shard_result(index: int, kept_w: DocumentWriter, rej_w: DocumentWriter, stats: StageStats) -> ShardResult:
    """The ShardResult of closed kept/rejected writers of shard `index` (adds the kept text bytes to stats)."""
    stats.bytes_out += kept_w.text_bytes
    name = paths.shard_name(index)
    fs, _ = paths.filesystem(kept_w.path)
    return ShardResult(
        index=index,
        stats=stats,
        shard=ShardInfo(name=kept_name(index), rows=kept_w.rows, bytes=int(fs.size(paths.filesystem(kept_w.path)[1]))),
        rejected=ShardInfo(
            name=f"{REJECTED_DIR}/{name}", rows=rej_w.rows, bytes=int(fs.size(paths.filesystem(rej_w.path)[1]))
        ),
    )


def run_document_shard(
    src: str, out_dir: str, index: int, process: ProcessFn, new_fields: list[pa.Field] | None = None
) -> ShardResult:
    """Stream one upstream Parquet shard through `process`; carries every input column through."""
    stats = StageStats()
    extra = extra_fields(read_schema(src)) + list(new_fields or [])
    return write_stream(counted(read_documents(src), stats), out_dir, index, extra, process, stats)
