"""Reading WARC/WET files into candidate records, with byte offsets and fault detection.

Parser: FastWARC (`fastwarc.warc.ArchiveIterator`), about 3x faster than warcio on the same files
(`bench/ingest.py` measures both). Only `response` (WARC) and `conversion` (WET) records
become `WarcItem`s; every other record type is counted in `stats.counters["records.<type>"]` and its
body is skipped. `WarcItem.offset` is the record's byte offset in the file as stored (the compressed
offset for per-record gzip, as in the Common Crawl index), so `(file, offset)` locates the record.

Faults. FastWARC stops silently at a truncated stream, so every record's bytes are checked against its
`Content-Length`. A stream that ends inside a record (truncated download) or cannot be decompressed or
parsed after some good records yields one final item with `fault` set, at the offset of the record
that failed (or the last good one); the records before it have been yielded normally. A file whose
first record already fails, or that holds no record at all (empty, not a WARC), raises `ValueError`
naming the file and the fix. Errors raised by the input stream itself (network, disk) are re-raised as
`OSError` so that the task's retries apply.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, Literal, cast

from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

from storage.stats import StageStats

RecordKind = Literal["response", "conversion"]
Fault = Literal["truncated", "corrupt"]
# WarcRecordType is an unhashable flag type: key the tables by its integer value
_KINDS: dict[int, RecordKind] = {int(WarcRecordType.response): "response",
                                 int(WarcRecordType.conversion): "conversion"}
_TYPE_NAMES = {int(t): name for t, name in [
    (WarcRecordType.warcinfo, "warcinfo"), (WarcRecordType.request, "request"),
    (WarcRecordType.metadata, "metadata"), (WarcRecordType.resource, "resource"),
    (WarcRecordType.revisit, "revisit"), (WarcRecordType.continuation, "continuation")]}


@dataclass(slots=True)
class WarcItem:
    """A response/conversion record (payload read), or a fault marker (`fault` set, payload empty)."""

    kind: RecordKind
    offset: int
    record_id: str = ""
    url: str = ""
    date: str = ""
    http_status: int | None = None
    content_type: str = ""
    http_charset: str | None = None
    payload: bytes = b""
    body_error: str = ""
    fault: Fault | None = None
    fault_detail: str = ""


class _TrackedStream:
    """Read-only proxy that remembers an exception raised by the underlying stream (I/O, not data) and
    counts its own position (FastWARC calls `tell`, which streamed HTTP files do not all support)."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.pos = raw, 0
        self.error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size)
        except Exception as e:
            self.error = e
            raise
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.raw.close()


def _iso_date(record: WarcRecord) -> str:
    """WARC-Date as ISO 8601 UTC (`2024-05-18T00:12:34Z`); the raw header if it does not parse."""
    try:
        date = record.record_date
    except ValueError:
        date = None
    if date is None:
        return str(record.headers.get("WARC-Date") or "")
    return date.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dechunk(body: bytes) -> bytes:
    """Undo HTTP chunked transfer coding (stored as sent by crawlers such as Heritrix)."""
    out, pos = bytearray(), 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += body[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


def _decode_body(body: bytes, transfer: str, content: str) -> bytes:
    """Undo transfer and content codings. Done here, per record, rather than by FastWARC's
    `auto_decode`, because FastWARC aborts the whole file on one record's bad gzip body. Crawlers
    often store the decoded body but keep the original header (Common Crawl 2014 does), so a body
    that is not actually encoded is returned as it is."""
    if "chunked" in transfer:
        body = _dechunk(body)
    if content in ("gzip", "x-gzip"):
        if not body.startswith(b"\x1f\x8b"):
            return body
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body)
    if content == "deflate":
        for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):  # servers often send raw deflate, no zlib header
            try:
                return zlib.decompress(body, wbits)
            except zlib.error:
                continue
        return body
    if content == "br":
        import brotli  # optional: only pages stored brotli-encoded need it

        try:
            return bytes(brotli.decompress(body))
        except brotli.error:
            return body
    return body


def _read_item(record: WarcRecord, kind: RecordKind) -> WarcItem:
    """Read one wanted record; sets `fault='truncated'` if its bytes end before its Content-Length."""
    headers = record.headers
    item = WarcItem(kind=kind, offset=record.stream_pos, record_id=str(headers.get("WARC-Record-ID") or ""),
                    url=str(headers.get("WARC-Target-URI") or "").strip("<>"), date=_iso_date(record))
    warc_type = str(headers.get("Content-Type") or "").lower()
    http = None
    if kind == "response" and warc_type.startswith("application/http"):
        record.parse_http(auto_decode="none")
        http = record.http_headers
        if http is None or not http.status_line:
            item.fault, item.fault_detail = "truncated", "stream ends inside the HTTP headers"
            return item
        item.http_status = http.status_code
        item.content_type = (record.http_content_type or "").lower()
        item.http_charset = record.http_charset
    else:
        item.content_type = warc_type.split(";", 1)[0].strip()
    identified = headers.get("WARC-Identified-Payload-Type")  # Common Crawl's own sniffing, when present
    if identified:
        item.content_type = str(identified).lower()
    expected = record.content_length
    item.payload = record.reader.read()
    if len(item.payload) < expected and "WARC-Truncated" not in headers:
        item.fault = "truncated"
        item.fault_detail = f"stream ends inside the record: {len(item.payload)} of {expected} payload bytes"
    elif http is not None:
        transfer = str(http.get("Transfer-Encoding") or "").lower()
        content = str(http.get("Content-Encoding") or "").lower().strip()
        if transfer or content:
            try:
                item.payload = _decode_body(item.payload, transfer, content)
            except (ValueError, zlib.error, ImportError, OSError) as e:
                item.body_error = f"cannot undo HTTP encoding (transfer={transfer!r}, content={content!r}): {e}"
    return item


def _skip_record(record: WarcRecord, stats: StageStats) -> str | None:
    """Skip a record we do not ingest; returns a fault message if its bytes are cut short."""
    name = _TYPE_NAMES.get(int(record.record_type), "unknown")
    stats.count(f"records.{name}")
    expected = record.content_length
    got = record.reader.consume()
    return None if got >= expected else f"stream ends inside a {name} record: {got} of {expected} bytes"


def _cut_header_fault(records: Iterator[WarcRecord]) -> Fault:
    """A header without Content-Length is a cut-off file if nothing follows it, else corruption."""
    try:
        next(records)
    except StopIteration:
        return "truncated"
    except OSError:
        pass
    return "corrupt"


def read_warc(raw: IO[bytes], name: str, stats: StageStats) -> Iterator[WarcItem]:
    """Stream the response/conversion records of one WARC/WET file (see module docstring for faults)."""
    stream = _TrackedStream(raw)
    records = iter(ArchiveIterator(cast(BinaryIO, stream), record_types=WarcRecordType.any_type, parse_http=False))
    seen, offset = 0, 0
    item: WarcItem | None
    while True:
        try:
            record = next(records)
            offset = record.stream_pos
            if "Content-Length" not in record.headers:
                item = WarcItem("response", offset, fault=_cut_header_fault(records),
                                fault_detail="WARC header without Content-Length")
            elif (kind := _KINDS.get(int(record.record_type))) is None:
                problem = _skip_record(record, stats)
                item = None if problem is None else WarcItem("response", offset, fault="truncated",
                                                               fault_detail=problem)
            else:
                item = _read_item(record, kind)
        except StopIteration:
            break
        except Exception as e:
            if stream.error is not None:  # the network or disk failed, not the data: let the task retry
                raise OSError(f"{name}: reading failed near offset {offset}: {stream.error!r}") from stream.error
            if not isinstance(e, OSError):  # a bug, not bad data
                raise
            if seen == 0:
                raise ValueError(f"{name}: not a readable WARC/WET file ({e}). Check that it is a WARC "
                                 "(.warc, .warc.gz) or WET file, re-download it, or remove it from inputs") from e
            item = WarcItem("response", offset, fault="corrupt", fault_detail=str(e))
        seen += 1
        if item is not None:
            yield item
            if item.fault is not None:
                return
    if seen == 0:
        raise ValueError(f"{name}: holds no WARC records (empty file?). Re-download it or remove it from inputs")
