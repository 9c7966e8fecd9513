"""Documents and their Parquet shards: `Document`, streaming readers and atomic shard writers.

A document shard is `part-NNNNN.parquet` (zstd) with the base columns `id, url, text, source,
crawl_date` plus the columns stages add (`language`, `quality_score`, ...). In Python, added columns
live in `Document.meta`. Writers have an explicit schema (base + declared extra fields) and refuse meta
keys they do not know, so a column can never vanish silently. Rejected shards (`rejected/part-NNNNN`)
have two more columns: `reason` (snake_case drop reason) and `reason_detail` (JSON, e.g. the kept id).

Readers stream record batches (`pyarrow.parquet.ParquetFile.iter_batches`); nothing here loads a whole
shard into a list. Files are written as `<name>.tmp` and renamed when closed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import paths

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
        self.fs.makedirs(self._p.rsplit("/", 1)[0], exist_ok=True)
        self._file = self.fs.open(self._p + ".tmp", "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema, compression="zstd")

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
        """Flush, close and rename into place; returns the file size in bytes."""
        self._flush()
        self._writer.close()
        self._file.close()
        self.fs.mv(self._p + ".tmp", self._p)
        return int(self.fs.size(self._p))

    def __enter__(self) -> DocumentWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()
            self._file.close()
            self.fs.rm(self._p + ".tmp")
