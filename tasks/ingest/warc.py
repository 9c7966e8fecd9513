"""Reading WARC/WET files into candidate records, with byte offsets and fault detection.

Parser: FastWARC (`fastwarc.warc.ArchiveIterator`), about 3x faster than warcio on the same files
(`bench/ingest.py` measures both). Only `response` (WARC) and `conversion` (WET) records
become `WarcItem`s; every other record type is counted in `stats.counters["records.<type>"]` and its
body is skipped. `WarcItem.offset` is the record's byte offset in the file as stored (the compressed
offset for per-record gzip, as in the Common Crawl index), so `(file, offset)` locates the record.

Faults. FastWARC stops silently at a truncated stream, so every record's bytes are checked against its
`Content-Length`, and the gzip members of a compressed file are followed alongside FastWARC (zlib, output
discarded in 1 MiB steps: about the cost of a second decompression, small next to text extraction): a
stream that ends inside a gzip member was cut short, wherever the cut falls (inside a body, a header, or
a member FastWARC drops without a word). A stream that ends inside a record or a gzip member (`truncated`:
a cut download) or cannot be decompressed or parsed after some good records (`corrupt`) yields one final
item with `fault` set, at the offset of the record that failed (for per-record gzip, the start of the cut
member; else the last good record); the records before it have been yielded normally.

Size. A record whose `Content-Length` exceeds `max_record_bytes` is skipped unread (FastWARC streams past
its body) and yielded with `too_large` set to that length; an HTTP body whose transfer/content coding
would decode to more than `max_record_bytes` is stopped there (`too_large` = the bytes decoded so far).
So a worker holds at most about `max_record_bytes` of payload, whatever the file claims or contains. A file whose
first record already fails, or that holds no record at all (empty, not a WARC), raises `ValueError`
naming the file and the fix. Errors raised by the input stream itself (network, disk) are re-raised as
`OSError` so that the task's retries apply.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Literal, cast

from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

from storage.stats import StageStats

RecordKind = Literal["response", "conversion"]
Fault = Literal["truncated", "corrupt"]
DEFAULT_MAX_RECORD_BYTES = 10 * 1024 * 1024
_GZIP_STEP = 1 << 20  # output bytes zlib may produce per call while following members (bounds memory)
# WarcRecordType is an unhashable flag type: key the tables by its integer value
_KINDS: dict[int, RecordKind] = {int(WarcRecordType.response): "response", int(WarcRecordType.conversion): "conversion"}
_TYPE_NAMES = {
    int(t): name
    for t, name in [
        (WarcRecordType.warcinfo, "warcinfo"),
        (WarcRecordType.request, "request"),
        (WarcRecordType.metadata, "metadata"),
        (WarcRecordType.resource, "resource"),
        (WarcRecordType.revisit, "revisit"),
        (WarcRecordType.continuation, "continuation"),
    ]
}


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
    too_large: int = 0  # bytes of the record (or of its decoded body) when over max_record_bytes
    too_large_part: str = ""
    fault: Fault | None = None
    fault_detail: str = ""


class _TooLarge(Exception):
    """A decoded HTTP body grew past the record size limit."""


class _GzipMembers:
    """Follows the gzip members of the raw stream (output discarded) to tell a cut stream from an ended one.

    `active` is decided on the first bytes (gzip magic); after a zlib error it stops (`error` set), leaving
    the verdict to FastWARC. `member_start` is the file offset where the unfinished member began."""

    def __init__(self) -> None:
        self.active: bool | None = None
        self.error = ""
        self.pos = 0
        self.member_start = 0
        self.unfinished = 0  # compressed bytes of the member in progress (0: between members)
        self._inflate: Any = None
        self._head = b""

    def feed(self, data: bytes) -> None:
        if self.active is None:
            self._head += data
            if len(self._head) < 2 and data:
                return
            self.active, data, self._head = self._head[:2] == b"\x1f\x8b", self._head, b""
        if not self.active or self.error:
            return
        try:
            while data:
                if self._inflate is None:
                    self._inflate, self.member_start, self.unfinished = (
                        zlib.decompressobj(16 + zlib.MAX_WBITS),
                        self.pos,
                        0,
                    )
                out = self._inflate.decompress(data, _GZIP_STEP)
                if self._inflate.eof:
                    rest = self._inflate.unused_data
                    self.pos += len(data) - len(rest)
                    self._inflate, self.unfinished, data = None, 0, rest
                    continue
                tail = self._inflate.unconsumed_tail
                self.pos += len(data) - len(tail)
                self.unfinished += len(data) - len(tail)
                data = tail
                while not data and len(out) == _GZIP_STEP and not self._inflate.eof:  # pending output
                    out = self._inflate.decompress(b"", _GZIP_STEP)
                if self._inflate.eof:
                    self._inflate, self.unfinished = None, 0
        except zlib.error as e:
            self.error = f"gzip data unreadable near offset {self.pos}: {e}"

    @property
    def cut(self) -> bool:
        """True when the stream so far ends inside a gzip member."""
        return bool(self.active) and not self.error and self._inflate is not None


class _TrackedStream:
    """Read-only proxy that remembers an exception raised by the underlying stream (I/O, not data) and
    counts its own position (FastWARC calls `tell`, which streamed HTTP files do not all support)."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.pos = raw, 0
        self.error: Exception | None = None
        self.members = _GzipMembers()
        self.eof = False

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size)
        except Exception as e:
            self.error = e
            raise
        self.pos += len(data)
        self.eof = self.eof or not data and size != 0
        self.members.feed(data)
        return data

    def at_end(self) -> bool:
        """Whether the raw stream is exhausted (reads one more byte if FastWARC has not seen the end)."""
        return self.eof or not self.read(1)

    def end_fault(self, last_offset: int) -> WarcItem | None:
        """The fault of a stream FastWARC has finished with (or failed on), judged from the raw bytes."""
        if not self.at_end():
            return WarcItem(
                "response",
                last_offset,
                fault="corrupt",
                fault_detail=(
                    f"unreadable data after offset {last_offset}: parsing stopped at byte {self.pos} before the end"
                ),
            )
        m = self.members
        if m.cut:
            offset = m.member_start if m.member_start > last_offset else last_offset
            return WarcItem(
                "response",
                offset,
                fault="truncated",
                fault_detail=(
                    f"file ends inside the gzip member that starts at offset {m.member_start} "
                    f"({m.unfinished} compressed bytes, no gzip trailer): the file was cut short"
                ),
            )
        return None

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
        out += body[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def _bounded(out: bytes, limit: int) -> bytes:
    if len(out) > limit:
        raise _TooLarge(len(out))
    return out


def _decode_body(body: bytes, transfer: str, content: str, limit: int) -> bytes:
    """Undo transfer and content codings, decoding at most `limit` + 1 bytes (a gzip bomb in a small
    record raises `_TooLarge` instead of filling memory). Done here, per record, rather than by FastWARC's
    `auto_decode`, because FastWARC aborts the whole file on one record's bad gzip body. Crawlers
    often store the decoded body but keep the original header (Common Crawl 2014 does), so a body
    that is not actually encoded is returned as it is."""
    if "chunked" in transfer:
        body = _dechunk(body)
    if content in ("gzip", "x-gzip"):
        if not body.startswith(b"\x1f\x8b"):
            return body
        return _bounded(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, limit + 1), limit)
    if content == "deflate":
        for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):  # servers often send raw deflate, no zlib header
            try:
                return _bounded(zlib.decompressobj(wbits).decompress(body, limit + 1), limit)
            except zlib.error:
                continue
        return body
    if content == "br":
        import brotli  # optional: only pages stored brotli-encoded need it

        decompressor = brotli.Decompressor()
        try:
            out = _bounded(bytes(decompressor.process(body, output_buffer_limit=limit + 1)), limit)
        except brotli.error:
            return body
        return out if decompressor.is_finished() else body
    return body


def _read_item(record: WarcRecord, kind: RecordKind, max_bytes: int) -> WarcItem:
    """Read one wanted record; sets `fault='truncated'` if its bytes end before its Content-Length, and
    `too_large` (body skipped unread) if that length exceeds `max_bytes`."""
    headers = record.headers
    item = WarcItem(
        kind=kind,
        offset=record.stream_pos,
        record_id=str(headers.get("WARC-Record-ID") or ""),
        url=str(headers.get("WARC-Target-URI") or "").strip("<>"),
        date=_iso_date(record),
    )
    expected = record.content_length
    if expected > max_bytes:  # before parse_http: even its header block is not read into memory
        got = record.reader.consume()
        if got < expected:
            item.fault = "truncated"
            item.fault_detail = f"stream ends inside the record: {got} of {expected} bytes"
        else:
            item.too_large, item.too_large_part = expected, "record"
        return item
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
    expected = record.content_length  # after parse_http: the body's length, without the HTTP headers
    item.payload = record.reader.read(max_bytes + 1)  # bounded even if FastWARC's length disagrees
    if len(item.payload) > max_bytes:
        item.too_large, item.too_large_part, item.payload = len(item.payload) + record.reader.consume(), "record", b""
        return item
    if len(item.payload) < expected and "WARC-Truncated" not in headers:
        item.fault = "truncated"
        item.fault_detail = f"stream ends inside the record: {len(item.payload)} of {expected} payload bytes"
    elif http is not None:
        transfer = str(http.get("Transfer-Encoding") or "").lower()
        content = str(http.get("Content-Encoding") or "").lower().strip()
        if transfer or content:
            try:
                item.payload = _decode_body(item.payload, transfer, content, max_bytes)
            except _TooLarge as e:
                item.too_large, item.too_large_part, item.payload = (
                    e.args[0],
                    f"body decoded from {content or transfer}",
                    b"",
                )
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


def read_warc(
    raw: IO[bytes], name: str, stats: StageStats, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[WarcItem]:
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
                item = WarcItem(
                    "response",
                    offset,
                    fault=_cut_header_fault(records),
                    fault_detail="WARC header without Content-Length",
                )
            elif (kind := _KINDS.get(int(record.record_type))) is None:
                problem = _skip_record(record, stats)
                item = (
                    None if problem is None else WarcItem("response", offset, fault="truncated", fault_detail=problem)
                )
            else:
                item = _read_item(record, kind, max_record_bytes)
        except StopIteration:
            item = stream.end_fault(offset) if seen else None  # FastWARC ends silently at a cut gzip member
            if item is None:
                break
        except Exception as e:
            if stream.error is not None:  # the network or disk failed, not the data: let the task retry
                raise OSError(f"{name}: reading failed near offset {offset}: {stream.error!r}") from stream.error
            if not isinstance(e, OSError):  # a bug, not bad data
                raise
            cut = stream.members.cut and stream.at_end()
            if seen == 0:
                what = (
                    "it is cut short inside its first gzip member (truncated download)"
                    if cut
                    else "Check that it is a WARC (.warc, .warc.gz) or WET file"
                )
                raise ValueError(
                    f"{name}: not a readable WARC/WET file ({e}). {what}; re-download it, or remove it from inputs"
                ) from e
            item = stream.end_fault(offset) if cut else None
            if item is None or item.fault != "truncated":
                item = WarcItem("response", offset, fault="corrupt", fault_detail=str(e))
            else:
                item.fault_detail += f" ({e})"
        seen += 1
        if item is not None:
            yield item
            if item.fault is not None:
                return
    if seen == 0:
        raise ValueError(f"{name}: holds no WARC records (empty file?). Re-download it or remove it from inputs")
