"""Shard plumbing shared by every document stage: rejected-document sink and the shard runner.

`run_document_shard` is what a stage's `@task` calls: it streams one input shard, hands the documents
to the stage's pure `process(docs, stats, rejects)` generator, writes kept documents to
`part-NNNNN.parquet` and rejected ones (with `reason`, `reason_detail`) to `rejected/part-NNNNN.parquet`,
and returns a small `ShardResult` (counts only: Prefect passes it between processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from storage import paths
from storage.documents import Document, DocumentWriter, extra_fields, read_documents, read_schema
from storage.manifest import ShardInfo
from storage.stats import StageStats

REJECTED_DIR = "rejected"


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


def open_shard_writers(out_dir: str, index: int, extra: list[pa.Field]) -> tuple[DocumentWriter, DocumentWriter]:
    name = paths.shard_name(index)
    kept = DocumentWriter(paths.join(out_dir, name), extra=extra)
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
        shard=ShardInfo(name=name, rows=kept_w.rows, bytes=int(fs.size(paths.filesystem(kept_w.path)[1]))),
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
