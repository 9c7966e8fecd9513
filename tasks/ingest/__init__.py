"""Ingest: raw crawl files (WARC, WET, JSONL, Parquet) -> the `ingest` artifact (documents).

Input: the files named by `IngestParams.inputs` (paths, globs, directories, http(s)/s3 URLs) plus, with
`crawl`, the first `segments` WARC files listed in that Common Crawl crawl's `warc.paths.gz`.
One input file becomes one output shard. Output: documents with the base columns and `INGEST_FIELDS`.

Algorithm, per WARC record (`tasks.ingest.warc`, FastWARC): keep `response` records with HTTP 200 and an HTML
content type (WARC-Identified-Payload-Type, else HTTP Content-Type, else sniffed), decode the charset
(BOM, HTTP header, `<meta>`, detection: `tasks.ingest.extract`), extract the main text (trafilatura by
default; `extractor`) under per-page CPU limits that really interrupt (a page trafilatura has not
finished within `fallback_after_s` goes to resiliparse; `extract_timeout_s` drops it), keep texts of
`min_text_chars`..`max_text_chars` characters. WET `conversion` records are text already. JSONL and
Parquet rows (`id`, `text`, optional `url`, `source`, `crawl_date`) pass the same length checks.

Columns: `id` = first 20 hex digits (80 bits) of sha256 of the WARC-Record-ID (collision odds ~1e-5
at 5e9 documents; the same record always gets the same id). JSONL/Parquet rows keep their `id`, or
get sha256(url + "\\n" + text)[:20] if they have none. `crawl_date` = WARC-Date as ISO 8601 UTC.
`source` = `tasks.ingest.sources.classify_source(url)` unless a table row brings its own; `source_from` says which
(`url`: the default rules, which `mix` re-applies as `mix.source_rules`; `input`: the row's). `warc_file` = the
input path or URL, `warc_offset` = the record's byte offset (row number for JSONL/Parquet),
`warc_record_id`, `content_type`, `charset` (the codec the HTML was really decoded with, after any
fallback: `tasks.ingest.extract.decode_html`).
Stats: `docs_in` counts response/conversion records and table rows; `bytes_in` their payload bytes;
other record types only in `counters["records.<type>"]`; `counters["charset.<bom|http|meta|detected|fallback>"]`
(where the codec in `charset` came from), `counters["charset.replaced_pages"]` / `["charset.replaced_bytes"]`
(pages where invalid bytes became U+FFFD: nearly valid UTF-8, or the forced last resort counted as `fallback`)
and `counters["source.<category>"]` (kept documents).

Drop reasons (errors, counted against `max_error_fraction`, are marked *): `http_status`, `not_html`,
`decode_error`*, `extraction_timeout`, `extraction_error`*, `empty_text`, `too_short`, `too_long`,
`too_large` (a WARC record or JSONL line over `max_record_bytes`, skipped unread; an HTTP body that
decodes past it), `corrupt_record`*, `truncated_file`* (the file ends inside a record or gzip member: a cut
download; detail names the offset), `missing_text`*, `bad_file` (only with `on_bad_file: drop_file`: the good
records of a file whose own error fraction exceeds `max_error_fraction`). A file that cannot be read at
all raises `ValueError` naming the file; a fault part-way keeps the records before it.

Error budget. Bad records are counted drops, never silent. With `on_bad_file: keep_good_records` (default)
a partly bad file keeps its good records and the budget applies to the whole input: the flow fails, naming
the worst files, when errors / records over all files exceed `max_error_fraction` (`check_error_budget`).
Resources: at most `max_record_bytes` of one record is read into memory; HTTP inputs are read with
`http_timeout_s` per connect/read and resumed (Range) up to `http_retries` times (`tasks.ingest.sources.open_input`).

Version: the params that shape the output (`IngestParams.version_params`: not `inputs`, nor the error budget
and HTTP patience) and the content fingerprint of the resolved files in order (`input_fingerprint`: names
relative to the data root or bare file names, sizes, content digests / ETags), nothing that names where the
data root or the inputs lie, so a copied or moved data root reuses every version. STAGE_VERSION 5 marks
that change: versions made before it (absolute paths in the hash) get new ids and are not reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from storage import paths
from storage.documents import (
    Document,
    DocumentWriter,
    Rejects,
    ShardResult,
    open_shard_writers,
    read_documents,
    shard_result,
    write_stream,
)
from storage.params import StageParams
from storage.stats import StageStats
from tasks.ingest.extract import (
    ExtractionTimeout,
    Extractor,
    decode_html,
    extract_main_text,
    looks_like_html,
    prepare_extractor,
    time_limit,
)
from tasks.ingest.sources import (
    SUFFIXES,
    InputFormat,
    classify_source,
    expand_inputs,
    input_fingerprint,
    input_format,
    open_input,
)
from tasks.ingest.warc import DEFAULT_MAX_RECORD_BYTES, WarcItem, read_warc
from tasks.lazy_task import task

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

__all__ = [
    "INGEST_FIELDS",
    "STAGE",
    "STAGE_VERSION",
    "IngestParams",
    "check_error_budget",
    "ingest_shard",
    "input_fingerprint",
    "process",
    "resolve_inputs",
]

log = logging.getLogger(__name__)

STAGE = "ingest"
STAGE_VERSION = 5  # 2: the source_from column; 3: nearly valid UTF-8 kept as UTF-8, `charset` = codec used;
# 4: records over max_record_bytes dropped as too_large, cut gzip members found (truncated_file);
# 5: location-free version (content fingerprint without absolute paths, `inputs` out of the hash)

HTTP_STATUS = "http_status"
NOT_HTML = "not_html"
DECODE_ERROR = "decode_error"
EXTRACTION_TIMEOUT = "extraction_timeout"
EXTRACTION_ERROR = "extraction_error"
EMPTY_TEXT = "empty_text"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
TOO_LARGE = "too_large"
BAD_FILE = "bad_file"
CORRUPT_RECORD = "corrupt_record"
TRUNCATED_FILE = "truncated_file"
MISSING_TEXT = "missing_text"

INGEST_FIELDS: list[pa.Field] = [
    pa.field("warc_file", pa.string()),
    pa.field("warc_offset", pa.int64()),
    pa.field("warc_record_id", pa.string()),
    pa.field("content_type", pa.string()),
    pa.field("charset", pa.string()),
    pa.field("source_from", pa.string()),
]
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
ID_HEX_CHARS = 20
REJECT_TEXT_CHARS = 10_000  # how much raw text a rejected document keeps for inspection
_LOGGED_ERRORS = 5  # per file: the first few error drops are logged with their offsets


class IngestParams(StageParams):
    inputs: list[str] = Field(
        default_factory=list,
        max_length=100_000,
        description=(
            "Input files: paths, globs (`data/**/*.warc.gz`), directories (their WARC/WET/JSONL/Parquet files) "
            "or http(s)/s3 URLs. Formats by suffix: .warc(.gz), .wet(.gz), .jsonl(.gz), .parquet."
        ),
    )
    crawl: str | None = Field(
        None,
        pattern=r"^CC-MAIN-\d{4}-\d{2}$",
        description=(
            "Common Crawl crawl id (`CC-MAIN-YYYY-WW`): adds the first `segments` WARC files of its warc.paths.gz."
        ),
    )
    segments: int = Field(
        1,
        ge=1,
        le=100_000,
        description=("How many WARC files (lines of warc.paths.gz, in listed order) to take from `crawl`."),
    )
    crawl_base_url: str = Field(
        "https://data.commoncrawl.org",
        min_length=1,
        description=("Base URL the crawl listing and WARC paths are relative to (an http(s), s3 or file URL)."),
    )
    extractor: Extractor = Field(
        "trafilatura",
        description=(
            "Main-text extractor: `trafilatura` (higher F1) or `resiliparse` (about 8x faster); see bench/ingest.py."
        ),
    )
    fallback_after_s: float = Field(
        0.25,
        ge=0,
        le=600,
        description=(
            "CPU seconds trafilatura may spend on one page before it is interrupted and resiliparse extracts "
            "the page instead (0 = never). Bounds the cost of pathological pages (huge link tables take 1-3 s; "
            "the median page ~0.015 s); counted in `counters['extractor.fallback']`."
        ),
    )
    extract_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description=(
            "CPU seconds allowed for extracting one page (the median page takes ~0.02 s); slower pages are "
            "interrupted and dropped as `extraction_timeout`."
        ),
    )
    min_text_chars: int = Field(
        20,
        ge=1,
        le=100_000,
        description=("Texts shorter than this are dropped as `too_short` (navigation residue such as 'Loading...')."),
    )
    max_text_chars: int = Field(
        1_000_000,
        ge=1,
        le=100_000_000,
        description=("Texts longer than this are dropped as `too_long` (logs and data dumps rather than prose)."),
    )
    max_error_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description=(
            "Fail the run if more than this fraction of all input records are unreadable (counted drops marked as "
            "errors: corrupt_record, truncated_file, decode_error, ...); the message names the worst files."
        ),
    )
    on_bad_file: Literal["keep_good_records", "drop_file"] = Field(
        "keep_good_records",
        description=(
            "A file whose own fraction of bad records exceeds max_error_fraction: `keep_good_records` keeps its "
            "good records (its bad ones are counted drops; only the whole input's fraction can fail the run), "
            "`drop_file` also drops its good records as `bad_file`."
        ),
    )
    max_record_bytes: int = Field(
        DEFAULT_MAX_RECORD_BYTES,
        ge=1024,
        le=1 << 30,
        description=(
            "Largest WARC record (Content-Length), decoded HTTP body or JSONL line read into memory; larger ones "
            "are skipped unread and dropped as `too_large`. Common Crawl cuts payloads at 1 MiB, so 10 MiB drops "
            "no real page while bounding a worker to roughly 10-20x this (decoded text + parse tree)."
        ),
    )
    http_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Seconds an http(s) input may take to connect or to deliver the next bytes before the read is retried."
        ),
    )
    http_retries: int = Field(
        3,
        ge=0,
        le=100,
        description=(
            "Times a stalled or dropped http(s) read is resumed (Range request) before the file fails, naming the URL."
        ),
    )

    @field_validator("inputs")
    @classmethod
    def _non_empty_inputs(cls, v: list[str]) -> list[str]:
        blank = [i for i, s in enumerate(v) if not s.strip()]
        if blank:
            raise ValueError(f"inputs{blank} are empty strings; remove them")
        return [s.strip() for s in v]

    @model_validator(mode="after")
    def _check(self) -> IngestParams:
        if self.crawl is None and self.segments != type(self).model_fields["segments"].default:
            raise ValueError("`segments` only applies with `crawl`; set `crawl` or drop `segments`")
        if self.min_text_chars > self.max_text_chars:
            raise ValueError(f"min_text_chars={self.min_text_chars} > max_text_chars={self.max_text_chars}")
        if "://" not in self.crawl_base_url:
            raise ValueError("crawl_base_url must be a URL such as https://data.commoncrawl.org")
        return self

    def version_params(self) -> dict[str, Any]:
        # the error budget and HTTP patience decide pass/fail, not what is written (with drop_file they do);
        # `inputs` names where the files lie (the demo crawl's absolute path under the data root): what is read
        # is hashed by the flow as the files' content fingerprint (`input_fingerprint`), in order, instead
        io_only = {"inputs", "http_timeout_s", "http_retries"}
        if self.on_bad_file == "keep_good_records":
            io_only |= {"max_error_fraction"}
        return self.model_dump(mode="json", exclude=io_only)


def resolve_inputs(params: IngestParams) -> list[str]:
    """Concrete input files (absolute paths or URLs), in order, without duplicates."""
    if not params.inputs and params.crawl is None:  # valid params (the flow fills in the demo crawl)
        raise ValueError("nothing to ingest: set `inputs` (paths, globs, URLs) and/or `crawl` (CC-MAIN-YYYY-WW)")
    return expand_inputs(params.inputs, params.crawl, params.segments, params.crawl_base_url)


class _Drop(Exception):
    """A record is dropped: reason constant, detail for `reason_detail`, and whether it is an error."""

    def __init__(self, reason: str, detail: dict[str, Any] | None = None, error: bool = False, text: str = ""):
        super().__init__(reason)
        self.reason, self.detail, self.error, self.text = reason, detail or {}, error, text


def _checked_text(text: str, params: IngestParams) -> str:
    if not text:
        raise _Drop(EMPTY_TEXT)
    if len(text) < params.min_text_chars:
        raise _Drop(TOO_SHORT, {"chars": len(text)}, text=text)
    if len(text) > params.max_text_chars:
        raise _Drop(TOO_LONG, {"chars": len(text)}, text=text[:REJECT_TEXT_CHARS])
    return text


def _extract(html: str, params: IngestParams, stats: StageStats) -> str:
    """Main text under the time limits: trafilatura within its budget, else resiliparse (see params)."""
    extractor = params.extractor
    prepare_extractor(extractor)
    if extractor == "trafilatura" and 0 < params.fallback_after_s < params.extract_timeout_s:
        try:
            with time_limit(params.fallback_after_s):
                return extract_main_text(html, extractor)
        except ExtractionTimeout:
            stats.count("extractor.fallback")
            extractor = "resiliparse"
    with time_limit(params.extract_timeout_s):
        return extract_main_text(html, extractor)


def _html_text(item: WarcItem, doc: Document, params: IngestParams, stats: StageStats) -> str:
    """Main text of an HTTP response record, or raise `_Drop`."""
    if item.http_status is not None and item.http_status != 200:
        raise _Drop(HTTP_STATUS, {"status": item.http_status})
    html_type = item.content_type in HTML_TYPES if item.content_type else looks_like_html(item.payload)
    if item.http_status is None or not html_type:
        raise _Drop(NOT_HTML, {"content_type": item.content_type})
    if item.body_error:
        raise _Drop(DECODE_ERROR, {"error": item.body_error}, error=True)
    try:
        decoded = decode_html(item.payload, item.http_charset)
    except (UnicodeError, LookupError) as e:
        raise _Drop(DECODE_ERROR, {"error": repr(e)}, error=True) from e
    html, doc.meta["charset"] = decoded.text, decoded.encoding
    stats.count(f"charset.{decoded.source}")
    if decoded.replaced_bytes:
        stats.count("charset.replaced_pages")
        stats.count("charset.replaced_bytes", decoded.replaced_bytes)
    t0 = time.process_time()
    try:
        text = _extract(html, params, stats)
    except ExtractionTimeout as e:
        raise _Drop(
            EXTRACTION_TIMEOUT, {"cpu_seconds": round(time.process_time() - t0, 3)}, text=html[:REJECT_TEXT_CHARS]
        ) from e
    except Exception as e:  # the extractor's own failure on one page: a counted drop, never the whole file
        raise _Drop(EXTRACTION_ERROR, {"error": repr(e)[:500]}, error=True, text=html[:REJECT_TEXT_CHARS]) from e
    return _checked_text(text, params)


def _record_doc(item: WarcItem, path: str) -> Document:
    record_id = item.record_id or f"{path}@{item.offset}"
    return Document(
        id=hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:ID_HEX_CHARS],
        text="",
        url=item.url,
        source=classify_source(item.url),
        crawl_date=item.date,
        meta={
            "warc_file": path,
            "warc_offset": item.offset,
            "warc_record_id": item.record_id or None,
            "content_type": item.content_type or None,
            "charset": None,
            "source_from": "url",
        },
    )


def _warc_docs(
    f: IO[bytes], path: str, params: IngestParams, stats: StageStats, rejects: Rejects
) -> Iterator[Document]:
    errors = 0
    for item in read_warc(f, path, stats, params.max_record_bytes):
        stats.docs_in += 1
        stats.bytes_in += len(item.payload)
        doc = _record_doc(item, path)
        try:
            if item.fault is not None:
                reason = TRUNCATED_FILE if item.fault == "truncated" else CORRUPT_RECORD
                raise _Drop(reason, {"error": f"{item.fault_detail}; records after this offset are lost"}, error=True)
            if item.too_large:
                raise _Drop(
                    TOO_LARGE,
                    {
                        "bytes": item.too_large,
                        "part": item.too_large_part,
                        "max_record_bytes": params.max_record_bytes,
                        "error": f"{item.too_large_part} of {item.too_large} bytes exceeds "
                        f"max_record_bytes={params.max_record_bytes}; skipped unread",
                    },
                )
            if item.kind == "conversion":
                doc.meta["charset"] = "utf-8"
                doc.text = _checked_text(item.payload.decode("utf-8", errors="replace").strip(), params)
            else:
                doc.text = _html_text(item, doc, params, stats)
        except _Drop as drop:
            doc.text = drop.text
            rejects.add(doc, drop.reason, {"file": path, "offset": item.offset, **drop.detail}, error=drop.error)
            if drop.error and (errors := errors + 1) <= _LOGGED_ERRORS:
                log.warning("%s: offset %d dropped as %s: %s", path, item.offset, drop.reason, drop.detail)
            continue
        stats.count(f"source.{doc.source}")
        yield doc


def _lines(f: IO[bytes], limit: int) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line, 0) per line, or (line number, b"", its length) for a line over `limit` bytes,
    which is read past in `limit`-sized pieces, never held whole."""
    number = 0
    while line := f.readline(limit + 1):
        number += 1
        if len(line) <= limit or line.endswith(b"\n"):
            yield number, line, 0
            continue
        size = len(line)
        while (piece := f.readline(limit)) and not piece.endswith(b"\n"):
            size += len(piece)
        yield number, b"", size + len(piece)


def _table_rows(
    f: IO[bytes], path: str, fmt: InputFormat, limit: int
) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(row number, row or None, parse error) for each JSONL line or Parquet row."""
    if fmt == "parquet":
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        if "text" not in names:
            raise ValueError(
                f"{path}: has no 'text' column (columns: {sorted(names)}); document files need `id` and `text` columns"
            )
        wanted = [c for c in ("id", "text", "url", "source", "crawl_date") if c in names]
        row_number = 0
        for batch in pf.iter_batches(columns=wanted, batch_size=2048):
            for row in batch.to_pylist():
                yield row_number, row, ""
                row_number += 1
        return
    for line_number, line, oversize in _lines(f, limit):
        if oversize:
            yield line_number, None, f"{TOO_LARGE}:{oversize}"
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield line_number, None, f"invalid JSON: {e}"
            continue
        yield line_number, row if isinstance(row, dict) else None, "" if isinstance(row, dict) else "not a JSON object"


def _table_doc(row: dict[str, Any], path: str, row_number: int) -> Document:
    text, url = row.get("text"), str(row.get("url") or "")
    if not isinstance(text, str):
        raise _Drop(MISSING_TEXT, {"error": f"`text` is {type(text).__name__}, not a string"}, error=True)
    doc_id = row.get("id")
    if doc_id is None or doc_id == "":
        doc_id = hashlib.sha256(f"{url}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()[:ID_HEX_CHARS]
    source = row.get("source")
    own = isinstance(source, str) and bool(source)
    return Document(
        id=str(doc_id),
        text=text,
        url=url,
        source=str(source) if own else classify_source(url),
        crawl_date=str(row.get("crawl_date") or ""),
        meta={
            "warc_file": path,
            "warc_offset": row_number,
            "warc_record_id": None,
            "content_type": None,
            "charset": None,
            "source_from": "input" if own else "url",
        },
    )


def _table_docs(
    f: IO[bytes], path: str, fmt: InputFormat, params: IngestParams, stats: StageStats, rejects: Rejects
) -> Iterator[Document]:
    where = "row" if fmt == "parquet" else "line"
    for row_number, row, problem in _table_rows(f, path, fmt, params.max_record_bytes):
        stats.docs_in += 1
        placeholder = Document(
            id=f"{os.path.basename(path)}:{row_number}", text="", meta={"warc_file": path, "warc_offset": row_number}
        )
        try:
            if row is None and problem.startswith(f"{TOO_LARGE}:"):
                size = int(problem.split(":", 1)[1])
                raise _Drop(
                    TOO_LARGE,
                    {
                        "bytes": size,
                        "part": "line",
                        "max_record_bytes": params.max_record_bytes,
                        "error": f"line of {size} bytes exceeds max_record_bytes="
                        f"{params.max_record_bytes}; skipped unread",
                    },
                )
            if row is None:
                raise _Drop(CORRUPT_RECORD, {"error": problem}, error=True)
            doc = placeholder = _table_doc(row, path, row_number)
            stats.bytes_in += len(doc.text.encode("utf-8", "surrogatepass"))
            doc.text = _checked_text(doc.text.strip(), params)
        except _Drop as drop:
            placeholder.text = drop.text
            rejects.add(placeholder, drop.reason, {"file": path, where: row_number, **drop.detail}, error=drop.error)
            continue
        stats.count(f"source.{doc.source}")
        yield doc


def process(path: str, params: IngestParams, stats: StageStats, rejects: Rejects) -> Iterator[Document]:
    """Stream the kept documents of one input file; drops go to `rejects` (see module docstring)."""
    fmt = input_format(path)
    if fmt is None:
        raise ValueError(f"{path}: unsupported input type; expected one of {sorted(SUFFIXES)}")
    with open_input(path, timeout_s=params.http_timeout_s, retries=params.http_retries) as f:
        if fmt == "warc":
            yield from _warc_docs(f, path, params, stats, rejects)
        else:
            yield from _table_docs(f, path, fmt, params, stats, rejects)


def _retry_on_io_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry I/O failures; bad input (ValueError) and broken invariants fail the same way every time."""
    return not isinstance(state.data, (ValueError, AssertionError, TypeError))


@task(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io_error)
def ingest_shard(src: str, out_dir: str, index: int, params: IngestParams) -> ShardResult:
    """Ingest one input file into shard `index` under `out_dir` (kept and rejected documents)."""
    stats = StageStats()
    if params.on_bad_file == "drop_file":
        result = _write_unless_bad(src, out_dir, index, params, stats)
    else:
        result = write_stream(
            [], out_dir, index, INGEST_FIELDS, lambda _docs, st, rj: process(src, params, st, rj), stats
        )
    result.stats.check_conservation(src)
    log.info(
        "%s: %d records -> %d documents (%s)", src, result.stats.docs_in, result.stats.docs_out, result.stats.dropped
    )
    return result


def _write_unless_bad(src: str, out_dir: str, index: int, params: IngestParams, stats: StageStats) -> ShardResult:
    """`on_bad_file: drop_file`: kept documents wait in a spool shard until the file's error fraction is known,
    then go to the kept shard, or to the rejected one as `bad_file` when it exceeds max_error_fraction."""
    t0 = time.perf_counter()
    name = paths.shard_name(index)
    spool = paths.join(out_dir, f"_spool-{index:05d}", name)  # one folder per shard: removed whole below
    kept_w, rej_w = open_shard_writers(out_dir, index, INGEST_FIELDS)
    with kept_w, rej_w:
        rejects = Rejects(rej_w, stats)
        with DocumentWriter(spool, extra=INGEST_FIELDS) as spool_w:
            for doc in process(src, params, stats, rejects):
                spool_w.write(doc)
        bad = stats.docs_in > 0 and stats.errors / stats.docs_in > params.max_error_fraction
        detail = {
            "file": src,
            "errors": stats.errors,
            "records": stats.docs_in,
            "max_error_fraction": params.max_error_fraction,
            "bad_records": dict(stats.dropped),
        }
        for doc in read_documents(spool):
            if bad:
                rejects.add(doc, BAD_FILE, detail)
            else:
                kept_w.write(doc)
                stats.docs_out += 1
    if bad:
        log.warning(
            "%s: %d of %d records bad (> max_error_fraction=%s): file dropped (on_bad_file=drop_file)",
            src,
            stats.errors,
            stats.docs_in,
            params.max_error_fraction,
        )
    fs, inner = paths.filesystem(spool)
    fs.rm(inner.rsplit("/", 1)[0], recursive=True)
    stats.seconds += time.perf_counter() - t0
    return shard_result(index, kept_w, rej_w, stats)


def check_error_budget(results: list[ShardResult], sources: list[str], max_error_fraction: float, where: str) -> None:
    """Fail the run when the bad records of the whole input exceed the budget, naming the worst files."""
    errors, records = sum(r.stats.errors for r in results), sum(r.stats.docs_in for r in results)
    if not records or errors / records <= max_error_fraction:
        return
    worst = sorted((r for r in results if r.stats.errors), key=lambda r: -r.stats.errors)
    named = "; ".join(
        f"{sources[r.index]} ({r.stats.errors} of {r.stats.docs_in} records bad: {_error_reasons(r.stats)})"
        for r in worst[:10]
    )
    more = f"; and {len(worst) - 10} more files" if len(worst) > 10 else ""
    raise ValueError(
        f"{where}: {errors} of {records} input records are unreadable ({errors / records:.1%} > "
        f"max_error_fraction={max_error_fraction}) in {len(worst)} files: {named}{more}. Re-download or remove "
        f"those files from inputs, or raise ingest.max_error_fraction in the config"
    )


def _error_reasons(stats: StageStats) -> str:
    errors = (CORRUPT_RECORD, TRUNCATED_FILE, DECODE_ERROR, EXTRACTION_ERROR, MISSING_TEXT)
    return ", ".join(f"{k} {v}" for k, v in stats.dropped.items() if k in errors) or "errors"
