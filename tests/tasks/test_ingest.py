"""Tests for tasks/ingest/__init__.py (+ tasks/ingest/warc.py, tasks/ingest/extract.py, tasks/ingest/sources.py).

Every WARC is built in the test with warcio; corrupt and truncated variants are cut from good bytes.
The --crawl path runs against an http.server on 127.0.0.1. Real-data tests use ../shared/data and skip
when it is absent.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from storage.documents import Document, Rejects, read_documents
from storage.stats import StageStats
from tasks import ingest
from tasks.ingest.extract import (
    UTF8_MIN_INVALID_ALLOWED,
    ExtractionTimeout,
    choose_charset,
    decode_html,
    time_limit,
    utf8_repairable,
)
from tasks.ingest.sources import classify_source, input_record

# tasks.ingest logs the first error drops of a file; outside a flow run Prefect's API handler warns
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'tasks.ingest' attempted to send logs to the API")

PROSE = (
    "The committee met on Tuesday to review the proposal for a new library in the town centre. "
    "Members discussed the budget, the timeline and the design, and agreed to publish a summary. "
)
PAGE = (
    f"<html><head><title>Library</title></head><body><article><p>{PROSE * 3}</p><p>{PROSE}</p></article></body></html>"
)
DATE = "2024-05-18T01:58:10Z"


# ---------------------------------------------------------------------------------------------- helpers


def response(
    url: str,
    body: bytes | str,
    status: str = "200 OK",
    content_type: str | None = "text/html; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
    record_id: str | None = None,
) -> dict[str, Any]:
    hdrs = ([("Content-Type", content_type)] if content_type else []) + list(headers)
    return {
        "type": "response",
        "url": url,
        "status": status,
        "headers": hdrs,
        "record_id": record_id,
        "body": body.encode() if isinstance(body, str) else body,
    }


def warc_bytes(records: list[dict[str, Any]], gz: bool = True, requests: bool = True) -> bytes:
    """A WARC: warcinfo, then per record (a request and) the response/conversion/other record."""
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=gz)
    w.write_record(w.create_warcinfo_record("test.warc.gz", {"software": "tests"}))
    for i, r in enumerate(records):
        warc_headers = {
            "WARC-Date": DATE,
            "WARC-Record-ID": r.get("record_id") or f"<urn:uuid:00000000-0000-0000-0000-{i:012d}>",
        }
        is_http = r["type"] == "response" and "status" in r
        if is_http and requests:
            req = StatusAndHeaders("GET / HTTP/1.1", [("Host", "x")], is_http_request=True)
            w.write_record(
                w.create_warc_record(r["url"], "request", http_headers=req, warc_headers_dict={"WARC-Date": DATE})
            )
        if is_http:
            http = StatusAndHeaders(r["status"], r["headers"], protocol="HTTP/1.1")
            rec = w.create_warc_record(
                r["url"], "response", payload=io.BytesIO(r["body"]), http_headers=http, warc_headers_dict=warc_headers
            )
        else:  # conversion (WET), dns response, metadata: no HTTP block
            rec = w.create_warc_record(
                r["url"],
                r["type"],
                payload=io.BytesIO(r["body"]),
                warc_content_type=r.get("warc_content_type", "text/plain"),
                warc_headers_dict=warc_headers,
                length=len(r["body"]),
            )
        w.write_record(rec)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


class ListRejects(Rejects):
    """Rejects sink that keeps (doc, reason, detail) in memory."""

    def __init__(self, stats: StageStats):
        self.stats, self.items = stats, []  # type: ignore[var-annotated]

    def add(self, doc: Document, reason: str, detail: dict[str, Any] | None = None, error: bool = False) -> None:
        self.stats.drop(reason, error=error)
        self.items.append((doc, reason, detail or {}))


def run(path: str, **params: Any) -> tuple[list[Document], ListRejects, StageStats]:
    p = ingest.IngestParams(inputs=[path], **params)
    stats = StageStats()
    rejects = ListRejects(stats)
    docs = list(ingest.process(path, p, stats, rejects))
    stats.docs_out = len(docs)
    stats.check_conservation(path)
    return docs, rejects, stats


def reasons(rejects: ListRejects) -> list[str]:
    return [r for _, r, _ in rejects.items]


# ------------------------------------------------------------------------------------ WARC records


def test_keeps_html_200_with_all_columns(tmp_path):
    rid = "<urn:uuid:2aabeff2-67f5-4608-8466-e87c6296e2b6>"
    path = write(
        tmp_path, "a.warc.gz", warc_bytes([response("https://en.wikipedia.org/wiki/Library", PAGE, record_id=rid)])
    )
    docs, rejects, stats = run(path)
    assert len(docs) == 1 and not rejects.items
    doc = docs[0]
    assert doc.id == hashlib.sha256(rid.encode()).hexdigest()[:20]
    assert doc.url == "https://en.wikipedia.org/wiki/Library" and doc.source == "wikipedia"
    assert doc.crawl_date == DATE
    assert "committee met on Tuesday" in doc.text and "<p>" not in doc.text
    assert doc.meta["warc_file"] == path and doc.meta["warc_record_id"] == rid
    assert doc.meta["content_type"] == "text/html" and doc.meta["charset"] == "utf-8"
    assert set(doc.meta) == {f.name for f in ingest.INGEST_FIELDS}
    # request and warcinfo records are counted, not treated as documents
    assert stats.docs_in == 1
    assert stats.counters["records.request"] == 1 and stats.counters["records.warcinfo"] == 1
    assert stats.counters["source.wikipedia"] == 1 and stats.bytes_in == len(PAGE.encode())


def test_offsets_locate_the_records(tmp_path):
    data = warc_bytes([response(f"http://example.com/{i}", PAGE) for i in range(3)])
    path = write(tmp_path, "a.warc.gz", data)
    docs, _, _ = run(path)
    for doc in docs:  # every offset starts a gzip member holding that response's WARC header
        member = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[doc.meta["warc_offset"] :])
        assert member.startswith(b"WARC/1") and doc.url.encode() in member[:400]


def test_ids_are_stable_and_depend_only_on_the_record_id(tmp_path):
    rid = "<urn:uuid:11111111-2222-3333-4444-555555555555>"
    a = write(tmp_path, "a.warc.gz", warc_bytes([response("http://a.com/", PAGE, record_id=rid)]))
    b = write(tmp_path, "b.warc", warc_bytes([response("http://a.com/", PAGE, record_id=rid)], gz=False))
    c = write(tmp_path, "c.warc.gz", warc_bytes([response("http://a.com/", PAGE)]))
    ids = [run(p)[0][0].id for p in (a, a, b, c)]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert len(ids[0]) == ingest.ID_HEX_CHARS and int(ids[0], 16) >= 0


@pytest.mark.parametrize("status", ["404 Not Found", "301 Moved Permanently", "500 Internal Server Error"])
def test_drops_non_200(tmp_path, status):
    path = write(tmp_path, "a.warc.gz", warc_bytes([response("http://a.com/x", PAGE, status=status)]))
    docs, rejects, stats = run(path)
    assert not docs and reasons(rejects) == [ingest.HTTP_STATUS]
    assert rejects.items[0][2]["status"] == int(status[:3]) and rejects.items[0][2]["file"] == path
    assert stats.errors == 0


def test_drops_non_html_and_non_http_responses(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    dns = {
        "type": "response",
        "url": "dns:example.com",
        "body": b"20080430204825\nexample.com. 589 IN A 1.2.3.4\n",
        "warc_content_type": "text/dns",
    }
    path = write(
        tmp_path,
        "a.warc.gz",
        warc_bytes(
            [
                response("http://a.com/logo.png", png, content_type="image/png"),
                response("http://a.com/data.json", "{}", content_type="application/json"),
                dns,
            ]
        ),
    )
    docs, rejects, _ = run(path)
    assert not docs and reasons(rejects) == [ingest.NOT_HTML] * 3
    assert [d["content_type"] for _, _, d in rejects.items] == ["image/png", "application/json", "text/dns"]


def test_sniffs_html_without_content_type(tmp_path):
    path = write(
        tmp_path,
        "a.warc.gz",
        warc_bytes(
            [
                response("http://a.com/", PAGE, content_type=None),
                response("http://a.com/b", b"\x00\x01binary", content_type=None),
            ]
        ),
    )
    docs, rejects, _ = run(path)
    assert len(docs) == 1 and reasons(rejects) == [ingest.NOT_HTML]


def test_identified_payload_type_wins_over_http_header(tmp_path):
    data = warc_bytes([response("http://a.com/", PAGE, content_type="application/octet-stream")], requests=False)
    data = gzip.compress(
        gzip.decompress(data).replace(
            b"WARC-Date: " + DATE.encode(), b"WARC-Identified-Payload-Type: text/html\r\nWARC-Date: " + DATE.encode(), 1
        )
    )
    # one gzip stream instead of per-record members: FastWARC reads both
    docs, _, _ = run(write(tmp_path, "a.warc.gz", data))
    assert len(docs) == 1 and docs[0].meta["content_type"] == "text/html"


def test_empty_short_and_long_texts(tmp_path):
    nav_only = "<html><body><script>document.write('hello');</script><img src='a.png'></body></html>"
    short = "<html><body><p>Hi there</p></body></html>"
    path = write(
        tmp_path,
        "a.warc.gz",
        warc_bytes(
            [response("http://a.com/1", nav_only), response("http://a.com/2", short), response("http://a.com/3", PAGE)]
        ),
    )
    docs, rejects, stats = run(path, max_text_chars=200)
    assert not docs
    assert reasons(rejects) == [ingest.EMPTY_TEXT, ingest.TOO_SHORT, ingest.TOO_LONG]
    assert rejects.items[1][0].text == "Hi there" and rejects.items[2][2]["chars"] > 200
    assert stats.errors == 0


def test_heritrix_style_chunked_gzip_body_is_decoded(tmp_path):
    raw = gzip.compress(PAGE.encode())
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(raw[i : i + 100]), raw[i : i + 100]) for i in range(0, len(raw), 100))
        + b"0\r\n\r\n"
    )
    stored_decoded = PAGE.encode()  # Common Crawl 2014 kept "Content-Encoding: gzip" on a decoded body
    path = write(
        tmp_path,
        "a.warc.gz",
        warc_bytes(
            [
                response(
                    "http://a.com/1", chunked, headers=(("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip"))
                ),
                response("http://a.com/2", stored_decoded, headers=(("Content-Encoding", "gzip"),)),
                response("http://a.com/3", b"\x1f\x8b\x08\x00broken gzip", headers=(("Content-Encoding", "gzip"),)),
            ]
        ),
    )
    docs, rejects, stats = run(path)
    assert [d.url for d in docs] == ["http://a.com/1", "http://a.com/2"]
    assert reasons(rejects) == [ingest.DECODE_ERROR] and stats.errors == 1


def test_wet_conversion_records_are_kept(tmp_path):
    text = "Escopete\n" + PROSE
    wet = {"type": "conversion", "url": "https://an.wikipedia.org/wiki/Escopete", "body": text.encode()}
    path = write(
        tmp_path, "a.warc.wet.gz", warc_bytes([wet, {"type": "conversion", "url": "http://b.com/", "body": b"  "}])
    )
    docs, rejects, _ = run(path)
    assert [d.text for d in docs] == [text.strip()] and docs[0].source == "wikipedia"
    assert docs[0].meta["content_type"] == "text/plain" and docs[0].crawl_date == DATE
    assert reasons(rejects) == [ingest.EMPTY_TEXT]


# ------------------------------------------------------------------------------------------ charsets


def test_charset_from_http_header(tmp_path):
    body = f"<html><body><p>{'Привет, мир. Это проверка кодировки страницы. ' * 5}</p></body></html>".encode("cp1251")
    path = write(
        tmp_path,
        "a.warc.gz",
        warc_bytes([response("http://a.ru/", body, content_type="text/html; charset=windows-1251")]),
    )
    docs, _, stats = run(path)
    assert "Привет, мир" in docs[0].text and docs[0].meta["charset"] == "cp1251"
    assert stats.counters["charset.http"] == 1


@pytest.mark.parametrize(
    "meta",
    ['<meta charset="windows-1251">', '<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'],
)
def test_charset_from_meta_tag(meta):
    body = f"<html><head>{meta}</head><body><p>Привет, мир</p></body></html>".encode("cp1251")
    text, encoding, source, replaced = decode_html(body, None)
    assert "Привет, мир" in text and encoding == "cp1251" and source == "meta" and replaced == 0


def test_charset_detected_and_bom_and_whatwg_labels():
    body = (
        "<html><body><p>" + "日本語のテキストです。文字コードを自動で判定します。" * 20 + "</p></body></html>"
    ).encode("shift_jis")
    text, _, source, _ = decode_html(body, None)
    assert source == "detected" and "日本語のテキスト" in text
    assert choose_charset(b"\xef\xbb\xbf<html>", "iso-8859-1") == ("utf-8", "bom")
    assert choose_charset(b"<html>", "ISO-8859-1") == ("cp1252", "http")  # WHATWG: latin-1 means windows-1252
    assert choose_charset(b"<html>", "no-such-charset")[1] == "detected"


def test_nearly_valid_utf8_is_decoded_as_utf8_with_one_replacement_character():
    body = (
        "<html><body><p>" + "Das Maskottchen der Stadt: Mäscot, größer und schöner. " * 20 + "</p></body></html>"
    ).encode()
    broken = body[:300] + b"\xff" + body[300:]
    for declared in ("text/html; charset=utf-8", None):  # declared, and only detected
        d = decode_html(broken, "utf-8" if declared else None)
        assert d.encoding == "utf-8" and d.replaced_bytes == 1 and d.source == ("http" if declared else "detected")
        assert d.text == body[:300].decode() + "\ufffd" + body[300:].decode()
    # the boundary: at most max(4 bytes, 0.1% of the payload) invalid bytes
    small = "<p>größer größer größer größer größer größer</p>".encode()
    ok = b"\xff" * UTF8_MIN_INVALID_ALLOWED + small
    assert utf8_repairable(ok) == ("\ufffd" * UTF8_MIN_INVALID_ALLOWED + small.decode(), UTF8_MIN_INVALID_ALLOWED)
    assert utf8_repairable(b"\xff" + ok) is None
    big = "<p>größer</p>".encode() * 1000  # 15,000 bytes: 15 invalid bytes allowed
    assert utf8_repairable(b"\xfe" * 15 + big)[1] == 15 and utf8_repairable(b"\xfe" * 16 + big) is None


def test_legacy_page_labelled_utf8_is_not_decoded_as_utf8():
    # a mostly-ASCII Windows-1252 page labelled UTF-8: few invalid bytes, but no valid multi-byte character
    body = "<html><body><p>" + "The council said \u201cyes\u201d to the caf\u00e9 plan. " * 40 + "</p></body></html>"
    d = decode_html(body.encode("cp1252"), "utf-8")
    assert d.encoding != "utf-8" and d.source == "detected" and d.text == body and d.replaced_bytes == 0
    # a Russian Windows-1251 page labelled UTF-8 (the hardening issue's case): detection decodes it
    ru = (
        "<html><body><p>"
        + "Привет, мир. Это проверка кодировки страницы, и текст длинный. " * 30
        + "</p></body></html>"
    )
    d = decode_html(ru.encode("cp1251"), "utf-8")
    assert (d.encoding, d.source, d.text) == ("cp1251", "detected", ru)


def _real_utf8_pages(shared_data: Path, n: int) -> Iterator[tuple[str, bytes, str]]:
    """(name, raw bytes, article body) of real UTF-8 pages whose article body has non-ASCII characters."""
    base = shared_data / "html_extraction" / "scrapinghub_article_extraction_benchmark"
    truth = json.loads((base / "ground-truth.json").read_text())
    found = 0
    for path in sorted((base / "html").glob("*.html.gz")):
        body = truth[path.name.split(".")[0]]["articleBody"]
        if found < n and not body.isascii():
            found += 1
            yield path.name, gzip.decompress(path.read_bytes()), body


def _inject_before_first_non_ascii_body_char(raw: bytes, body: str, byte: bytes) -> tuple[bytes, int]:
    """`raw` with `byte` inserted just before the first non-ASCII character of the article body in it."""
    html = raw.decode("utf-8")
    for word in body.split():
        if not word.isascii() and (i := html.find(word)) >= 0:
            i += next(k for k, c in enumerate(word) if not c.isascii())
            at = len(html[:i].encode("utf-8"))
            return raw[:at] + byte + raw[at:], at
    raise AssertionError("no non-ASCII word of the article body found in the page")


def test_real_utf8_pages_with_one_invalid_byte_stay_utf8(shared_data, tmp_path):
    records, expected = [], []
    for name, raw, body in _real_utf8_pages(shared_data, 12):
        broken, at = _inject_before_first_non_ascii_body_char(raw, body, b"\xff")
        d = decode_html(broken, None)
        assert d.encoding == "utf-8" and d.replaced_bytes == 1, name
        assert d.text == raw[:at].decode() + "\ufffd" + raw[at:].decode(), name  # no mojibake anywhere
        assert d.text.count("\ufffd") == raw.decode().count("\ufffd") + 1
        records += [response(f"http://clean.example/{name}", raw), response(f"http://broken.example/{name}", broken)]
        expected.append(name)
    docs, _, stats = run(write(tmp_path, "real.warc.gz", warc_bytes(records)))
    by_url = {d.url: d for d in docs}
    assert stats.counters["charset.replaced_pages"] == len(expected) == stats.counters["charset.replaced_bytes"]
    assert stats.counters["charset.http"] == 2 * len(expected) and "charset.fallback" not in stats.counters
    for name in expected:
        clean, broken = by_url[f"http://clean.example/{name}"], by_url[f"http://broken.example/{name}"]
        assert broken.meta["charset"] == clean.meta["charset"] == "utf-8"
        assert broken.text.replace("\ufffd", "") == clean.text.replace("\ufffd", ""), name


def test_real_pages_with_many_invalid_bytes_fall_back_and_charset_names_the_codec_used(shared_data, tmp_path):
    records = []
    for name, raw, _ in _real_utf8_pages(shared_data, 12):
        broken = b"".join(raw[i : i + 100] + b"\xff" for i in range(0, len(raw), 100))  # 1% invalid
        d = decode_html(broken, "utf-8")
        assert (d.encoding, d.source) != ("utf-8", "http"), name
        replaced = broken.decode(d.encoding, errors="replace")
        assert d.text == replaced.removeprefix("\ufeff"), (name, d.encoding)  # the codec really used
        records.append(response(f"http://broken.example/{name}", broken))
    docs, rejects, stats = run(write(tmp_path, "broken.warc.gz", warc_bytes(records)))
    assert stats.errors == 0 and "charset.http" not in stats.counters  # the UTF-8 label was not used as is
    # U+FFFD only from the last-resort forced decode (counted as `fallback`), never from the UTF-8 repair
    assert stats.counters.get("charset.replaced_pages", 0) <= stats.counters.get("charset.fallback", 0)
    for doc in docs:
        raw = next(r["body"] for r in records if r["url"] == doc.url)
        assert decode_html(raw, "utf-8").encoding == doc.meta["charset"]
    sources = sum(stats.counters.get(f"charset.{s}", 0) for s in ("bom", "http", "meta", "detected", "fallback"))
    assert sources == len(docs) + sum(1 for _, r, _ in rejects.items if r not in (ingest.HTTP_STATUS, ingest.NOT_HTML))


def test_real_russian_page_in_cp1251_labelled_utf8_is_decoded_as_cp1251(shared_data):
    checked = 0
    for name, raw, body in _real_utf8_pages(shared_data, 200):
        html = raw.decode()
        if sum("а" <= c <= "я" for c in body) < 500:
            continue
        try:
            legacy = html.encode("cp1251")
        except UnicodeEncodeError:
            continue
        d = decode_html(legacy, "utf-8")
        assert (d.encoding, d.text) == ("cp1251", html), name
        checked += 1
    assert checked >= 1


# ------------------------------------------------------------------------------- extraction limits


def _slow_extraction(html: str, extractor: str) -> str:
    if "SLOW" in html:
        while True:  # a pathological page: never finishes on its own
            pass
    return "a perfectly ordinary extracted text of some length"


def test_extraction_timeout_interrupts_in_main_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "extract_main_text", _slow_extraction)
    path = write(
        tmp_path, "a.warc.gz", warc_bytes([response("http://a.com/1", "<p>SLOW</p>"), response("http://a.com/2", PAGE)])
    )
    docs, rejects, stats = run(path, extract_timeout_s=0.2)
    assert [d.url for d in docs] == ["http://a.com/2"]
    assert reasons(rejects) == [ingest.EXTRACTION_TIMEOUT] and stats.errors == 0
    assert "SLOW" in rejects.items[0][0].text  # the raw HTML is kept for inspection


def test_extraction_timeout_interrupts_in_worker_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "extract_main_text", _slow_extraction)
    path = write(
        tmp_path, "a.warc.gz", warc_bytes([response("http://a.com/1", "<p>SLOW</p>"), response("http://a.com/2", PAGE)])
    )
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.update(result=run(path, extract_timeout_s=0.2)))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the watchdog did not interrupt the extraction"
    docs, rejects, _ = out["result"]
    assert [d.url for d in docs] == ["http://a.com/2"] and reasons(rejects) == [ingest.EXTRACTION_TIMEOUT]


@pytest.mark.parametrize("in_thread", [False, True])
def test_time_limit_does_not_fire_after_the_block(in_thread):
    def many_quick_blocks() -> None:
        for _ in range(300):
            with time_limit(0.05):
                sum(range(1000))
        with pytest.raises(ExtractionTimeout), time_limit(0.05):
            while True:
                pass

    if in_thread:
        worker = threading.Thread(target=many_quick_blocks)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive()
    else:
        many_quick_blocks()


def test_slow_trafilatura_page_falls_back_to_resiliparse(tmp_path, monkeypatch):
    def slow_trafilatura(html: str, extractor: str) -> str:
        if extractor == "trafilatura":
            while True:
                pass
        return "text from the fallback extractor, long enough to keep"

    monkeypatch.setattr(ingest, "extract_main_text", slow_trafilatura)
    path = write(tmp_path, "a.warc.gz", warc_bytes([response("http://a.com/", PAGE)]))
    docs, rejects, stats = run(path, fallback_after_s=0.1, extract_timeout_s=2)
    assert [d.text for d in docs] == ["text from the fallback extractor, long enough to keep"] and not rejects.items
    assert stats.counters["extractor.fallback"] == 1
    _, rejects, stats = run(path, fallback_after_s=0, extract_timeout_s=0.2)  # no fallback: dropped
    assert reasons(rejects) == [ingest.EXTRACTION_TIMEOUT] and "extractor.fallback" not in stats.counters


def test_extraction_error_is_a_counted_error(tmp_path, monkeypatch):
    def broken(html: str, extractor: str) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(ingest, "extract_main_text", broken)
    path = write(tmp_path, "a.warc.gz", warc_bytes([response("http://a.com/", PAGE)]))
    docs, rejects, stats = run(path)
    assert not docs and reasons(rejects) == [ingest.EXTRACTION_ERROR] and stats.errors == 1
    assert "RecursionError" in rejects.items[0][2]["error"]


def test_resiliparse_extractor(tmp_path):
    path = write(tmp_path, "a.warc.gz", warc_bytes([response("http://a.com/", PAGE)]))
    docs, _, _ = run(path, extractor="resiliparse")
    assert "committee met on Tuesday" in docs[0].text


# ------------------------------------------------------------------------------------- bad input


def _three_pages() -> bytes:
    return warc_bytes([response(f"http://a.com/{i}", PAGE.replace("library", f"library {i}")) for i in range(3)])


def test_truncated_gzip_keeps_the_records_before(tmp_path):
    data = _three_pages()
    path = write(tmp_path, "cut.warc.gz", data[: len(data) - 300])  # inside the last response's member
    docs, rejects, stats = run(path)
    assert [d.url for d in docs] == ["http://a.com/0", "http://a.com/1"]
    assert reasons(rejects) == [ingest.TRUNCATED_FILE] and stats.errors == 1
    detail = rejects.items[0][2]
    assert detail["file"] == path and detail["offset"] > docs[-1].meta["warc_offset"]


def test_truncated_uncompressed_warc(tmp_path):
    data = warc_bytes([response(f"http://a.com/{i}", PAGE) for i in range(3)], gz=False)
    docs, rejects, _ = run(write(tmp_path, "cut.warc", data[: len(data) - 200]))
    assert len(docs) == 2 and reasons(rejects) == [ingest.TRUNCATED_FILE]


def test_corrupt_gzip_member_keeps_the_records_before(tmp_path):
    data = bytearray(_three_pages())
    data[-500:-450] = bytes(50)  # zeroes inside the deflate stream of the last record
    path = write(tmp_path, "bad.warc.gz", bytes(data))
    docs, rejects, stats = run(path, max_error_fraction=1.0)
    assert len(docs) == 2 and reasons(rejects) in ([ingest.CORRUPT_RECORD], [ingest.TRUNCATED_FILE])
    assert stats.errors == 1 and rejects.items[0][2]["file"] == path


@pytest.mark.parametrize(
    "name,data",
    [
        ("notes.warc.gz", gzip.compress(b"hello, this is not a WARC file\n" * 10)),
        ("notes.warc", b"plain text, not a WARC\n" * 10),
        ("empty.warc.gz", b""),
    ],
)
def test_unreadable_file_raises_naming_the_file(tmp_path, name, data):
    path = write(tmp_path, name, data)
    with pytest.raises(ValueError, match=r"(?s)" + name + r".*(re-download|remove)"):
        run(path)


class _FlakyStream(io.BytesIO):
    """A stream whose connection drops after `limit` bytes."""

    def __init__(self, data: bytes, limit: int):
        super().__init__(data)
        self.limit = limit

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.limit:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size if size and size > 0 else self.limit, self.limit - self.tell()))


def test_network_failure_midway_is_an_io_error_not_a_drop():
    from tasks.ingest.warc import read_warc

    data = _three_pages()
    with pytest.raises(OSError, match=r"https://x/a.warc.gz: reading failed near offset \d+.*reset"):
        list(read_warc(_FlakyStream(data, len(data) // 2), "https://x/a.warc.gz", StageStats()))


def test_error_fraction_fails_the_run_not_the_shard(tmp_path):
    """The shard keeps its good records (issue 11); the whole input's budget fails the run, naming the file."""
    data = _three_pages()
    path = write(tmp_path, "cut.warc.gz", data[: len(data) - 300])  # 1 of 3 records fails
    result = ingest.ingest_shard.fn(path, str(tmp_path / "out"), 0, ingest.IngestParams(inputs=[path]))
    assert (result.stats.docs_in, result.stats.docs_out, result.stats.errors) == (3, 2, 1)
    with pytest.raises(ValueError, match="cut.warc.gz.*max_error_fraction"):
        ingest.check_error_budget([result], [path], 0.05, "ingest@v")
    ingest.check_error_budget([result], [path], 0.5, "ingest@v")


def test_retry_only_on_io_errors():
    from prefect.states import Failed

    assert not ingest._retry_on_io_error(None, None, Failed(data=ValueError("bad file")))  # type: ignore[arg-type]
    assert ingest._retry_on_io_error(None, None, Failed(data=ConnectionResetError("reset")))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ shard task


def test_ingest_shard_writes_kept_and_rejected_shards(tmp_path):
    path = write(
        tmp_path,
        "a.warc.gz",
        warc_bytes([response("http://a.edu/", PAGE), response("http://a.edu/404", PAGE, status="404 Not Found")]),
    )
    out = tmp_path / "out"
    result = ingest.ingest_shard.fn(path, str(out), 3, ingest.IngestParams(inputs=[path]))
    assert (result.shard.rows, result.rejected.rows) == (1, 1) and result.stats.docs_in == 2
    kept = list(read_documents(str(out / "data" / "part-00003.parquet")))
    assert kept[0].source == "academic" and kept[0].meta["warc_offset"] > 0
    schema = pq.read_schema(out / "data" / "part-00003.parquet")
    assert schema.field("warc_offset").type == pa.int64() and "warc_record_id" in schema.names
    rejected = pq.read_table(out / "rejected" / "part-00003.parquet").to_pylist()
    assert rejected[0]["reason"] == ingest.HTTP_STATUS and json.loads(rejected[0]["reason_detail"])["status"] == 404


# ------------------------------------------------------------------------------- JSONL / Parquet


def test_jsonl_rows(tmp_path):
    lines = [
        json.dumps({"id": "a1", "text": PROSE, "url": "https://github.com/x/y", "crawl_date": DATE}),
        json.dumps({"text": PROSE + " second", "source": "books"}),
        json.dumps({"id": "a3", "url": "http://a.com/"}),
        "{not json",
        "",
        json.dumps({"id": "a5", "text": "tiny"}),
    ]
    path = write(tmp_path, "docs.jsonl.gz", gzip.compress("\n".join(lines).encode()))
    docs, rejects, stats = run(path)
    assert docs[0].id == "a1" and docs[0].source == "code" and docs[0].crawl_date == DATE
    assert docs[1].source == "books" and len(docs[1].id) == ingest.ID_HEX_CHARS
    assert reasons(rejects) == [ingest.MISSING_TEXT, ingest.CORRUPT_RECORD, ingest.TOO_SHORT]
    assert [d["line"] for _, _, d in rejects.items] == [3, 4, 6] and rejects.items[0][2]["file"] == path
    assert stats.docs_in == 5 and stats.errors == 2


def test_parquet_rows(tmp_path):
    table = pa.table({"id": ["p1", "p2"], "text": [PROSE, None], "url": ["https://arxiv.org/abs/1", None]})
    path = str(tmp_path / "docs.parquet")
    pq.write_table(table, path)
    docs, rejects, _ = run(path)
    assert [d.id for d in docs] == ["p1"] and docs[0].source == "academic" and docs[0].meta["warc_offset"] == 0
    assert reasons(rejects) == [ingest.MISSING_TEXT] and rejects.items[0][2]["row"] == 1


def test_parquet_without_text_column_raises(tmp_path):
    path = str(tmp_path / "docs.parquet")
    pq.write_table(pa.table({"id": ["p1"], "body": ["x"]}), path)
    with pytest.raises(ValueError, match="no 'text' column"):
        run(path)


# --------------------------------------------------------------------------- inputs and params


def test_resolve_inputs_globs_dirs_and_errors(tmp_path):
    (tmp_path / "crawl" / "sub").mkdir(parents=True)
    for name in ("a.warc.gz", "sub/b.warc.wet.gz", "sub/c.jsonl", "notes.txt"):
        (tmp_path / "crawl" / name).write_bytes(b"x")
    found = ingest.resolve_inputs(ingest.IngestParams(inputs=[str(tmp_path / "crawl")]))
    # a directory gives its crawl files only (a demo-crawl directory's ground-truth.jsonl was ingested too)
    assert [Path(p).name for p in found] == ["a.warc.gz", "b.warc.wet.gz"]
    explicit = ingest.resolve_inputs(ingest.IngestParams(inputs=[str(tmp_path / "crawl/sub/*.jsonl")]))
    assert [Path(p).name for p in explicit] == ["c.jsonl"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "d.jsonl").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds no WARC/WET files .*glob such as .*docs/\*\.jsonl"):
        ingest.resolve_inputs(ingest.IngestParams(inputs=[str(tmp_path / "docs")]))
    globbed = ingest.resolve_inputs(
        ingest.IngestParams(inputs=[str(tmp_path / "crawl/**/*.gz"), str(tmp_path / "crawl/a.warc.gz")])
    )
    assert [Path(p).name for p in globbed] == ["a.warc.gz", "b.warc.wet.gz"]  # duplicates removed
    with pytest.raises(ValueError, match="matches no files"):
        ingest.resolve_inputs(ingest.IngestParams(inputs=[str(tmp_path / "nothing-*.warc.gz")]))
    with pytest.raises(ValueError, match="does not exist"):
        ingest.resolve_inputs(ingest.IngestParams(inputs=[str(tmp_path / "missing.warc.gz")]))
    with pytest.raises(ValueError, match="unsupported input files"):
        ingest.resolve_inputs(ingest.IngestParams(inputs=[str(tmp_path / "crawl/*.txt")]))


def test_input_fingerprint_follows_content_not_mtime(tmp_path):
    path = write(tmp_path, "a.warc.gz", b"one")
    before = ingest.input_fingerprint([path])
    Path(path).write_bytes(b"one")  # rewritten identically (the demo crawl is regenerated each run)
    assert ingest.input_fingerprint([path]) == before
    Path(path).write_bytes(b"two")
    after = ingest.input_fingerprint([path])
    assert before[0]["name"] == "a.warc.gz" and before[0]["size"] == after[0]["size"] == 3
    assert before[0]["sample_sha256"] != after[0]["sample_sha256"]
    big = write(tmp_path, "big.warc.gz", bytes(3 << 20))
    changed = bytearray(bytes(3 << 20))
    changed[-1] = 1
    fp = ingest.input_fingerprint([big])
    Path(big).write_bytes(bytes(changed))
    assert ingest.input_fingerprint([big]) != fp  # the tail is sampled too
    with pytest.raises(FileNotFoundError, match="missing.warc.gz"):
        ingest.input_fingerprint([str(tmp_path / "missing.warc.gz")])


def test_input_fingerprint_is_location_free(tmp_path):
    """Under the data root a file is named by its root-relative path, elsewhere by its name: a copied or moved
    root (new paths, new mtimes) keeps the fingerprint; a changed content does not."""
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    (root_a / "_inputs" / "crawl").mkdir(parents=True)
    inside = write(root_a / "_inputs" / "crawl", "x.warc.gz", b"x" * 100)
    (tmp_path / "elsewhere").mkdir()
    outside = write(tmp_path / "elsewhere", "y.warc.gz", b"y" * 50)
    fp = ingest.input_fingerprint([inside, outside], str(root_a))
    assert [e["name"] for e in fp] == ["_inputs/crawl/x.warc.gz", "y.warc.gz"]
    assert all(str(tmp_path) not in json.dumps(e) for e in fp) and all("mtime" not in e for e in fp)
    shutil.copytree(root_a, root_b)  # new paths, new mtimes
    moved = str(root_b / "_inputs" / "crawl" / "x.warc.gz")
    os.utime(moved, (1, 1))
    assert ingest.input_fingerprint([moved, outside], str(root_b)) == fp
    assert ingest.input_fingerprint([moved, outside], f"file://{root_b}") == fp  # a file:// root is the same
    (tmp_path / "other").mkdir()
    assert ingest.input_fingerprint([write(tmp_path / "other", "y.warc.gz", b"y" * 50)])[0] == fp[1]
    # the same content elsewhere under the root is another input (its name differs); the order is kept
    assert ingest.input_fingerprint([outside, moved], str(root_b)) == fp[::-1]
    Path(moved).write_bytes(b"z" * 100)  # same size and name, new content
    assert ingest.input_fingerprint([moved, outside], str(root_b)) != fp
    record = input_record([moved, outside], fp)
    assert [r["path"] for r in record] == [moved, outside] and record[0]["name"] == fp[0]["name"]


def test_input_fingerprint_uses_the_etag_of_objects(monkeypatch):
    """Object stores: name, size and ETag (nothing is read); a copy to another bucket keeps them."""
    import fsspec.implementations.memory as memory

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket-a/root/_inputs/x.warc.gz", b"abc")
    fs.pipe("/bucket-b/root/_inputs/x.warc.gz", b"abc")
    real_info = memory.MemoryFileSystem.info

    def info(self: Any, path: str, **kwargs: Any) -> dict[str, Any]:
        return {**real_info(self, path, **kwargs), "ETag": '"etag-of-abc"', "LastModified": path}

    monkeypatch.setattr(memory.MemoryFileSystem, "info", info)
    a = ingest.input_fingerprint(["memory://bucket-a/root/_inputs/x.warc.gz"], "memory://bucket-a/root")
    b = ingest.input_fingerprint(["memory://bucket-b/root/_inputs/x.warc.gz"], "memory://bucket-b/root")
    assert a == b == [{"name": "_inputs/x.warc.gz", "size": 3, "etag": '"etag-of-abc"'}]
    fs.rm("/bucket-a", recursive=True)
    fs.rm("/bucket-b", recursive=True)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"crawl": "CC-MAIN-24-22"}, "pattern"),
        ({"inputs": ["a.warc.gz"], "segments": 3}, "only applies with `crawl`"),
        ({"inputs": ["a.warc.gz"], "min_text_chars": 50, "max_text_chars": 10}, "min_text_chars"),
        ({"inputs": ["a.warc.gz"], "extractor": "regex"}, "trafilatura"),
        ({"inputs": ["a.warc.gz"], "max_error_fraction": 1.5}, "less than or equal"),
        ({"inputs": ["  "]}, "empty strings"),
        ({"crawl": "CC-MAIN-2024-22", "crawl_base_url": "data.commoncrawl.org"}, "must be a URL"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ingest.IngestParams(**kwargs)


def test_empty_params_are_valid_but_resolve_to_an_error():
    params = ingest.IngestParams()  # the flow's default: it fills in the demo crawl
    with pytest.raises(ValueError, match="nothing to ingest"):
        ingest.resolve_inputs(params)


def test_error_budget_is_not_part_of_the_version():
    a = ingest.IngestParams(inputs=["a.warc.gz"], max_error_fraction=0.1).version_params()
    b = ingest.IngestParams(inputs=["a.warc.gz"], max_error_fraction=0.2).version_params()
    assert a == b and "extract_timeout_s" in a


def test_input_paths_are_not_part_of_the_version():
    """Where the inputs lie is not hashed (the flow hashes their content fingerprint instead)."""
    a = ingest.IngestParams(inputs=["/data/a/_inputs/x.warc.gz"]).version_params()
    assert a == ingest.IngestParams(inputs=["/data/b/_inputs/x.warc.gz"]).version_params()
    assert "inputs" not in a


@pytest.mark.parametrize(
    "url,source",
    [
        ("https://en.wikipedia.org/wiki/Python", "wikipedia"),
        ("https://commons.wikimedia.org/x", "wikipedia"),
        ("https://github.com/torvalds/linux", "code"),
        ("https://unix.stackexchange.com/questions/1", "code"),
        ("https://arxiv.org/abs/2101.00001", "academic"),
        ("http://www.cs.stanford.edu/people", "academic"),
        ("https://www.ox.ac.uk/research", "academic"),
        ("https://www.reddit.com/r/python", "forum"),
        ("http://forum.example.org/t/1", "forum"),
        ("http://www.archive.org/iathreads/forum-display.php?forum=x", "forum"),
        ("https://www.nytimes.com/2024/01/01/world.html", "news"),
        ("https://dailynews.example.com/a", "news"),
        ("https://example.news/a", "web"),  # a .news TLD alone says nothing
        ("https://notgithub.com/x", "web"),
        ("dns:example.com", "web"),
        ("", "web"),
        ("http://[::1", "web"),
    ],
)
def test_source_categories(url, source):
    assert classify_source(url) == source


# ------------------------------------------------------------------------- --crawl over HTTP


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[Path, str]]:
    """A directory served by http.server on 127.0.0.1 (free port); yields (dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_crawl_resolution_and_http_streaming(http_root):
    root, base = http_root
    crawl = root / "crawl-data" / "CC-MAIN-2099-01"
    (crawl / "segments" / "1" / "warc").mkdir(parents=True)
    names = [f"crawl-data/CC-MAIN-2099-01/segments/1/warc/CC-MAIN-{i}.warc.gz" for i in range(2)]
    for i, name in enumerate(names):
        (root / name).write_bytes(warc_bytes([response(f"https://news.example.com/{i}", PAGE)]))
    listing = "cc-index/table/cc-main/warc/part-0.parquet\n" + "\n".join(names) + "\n"
    (crawl / "warc.paths.gz").write_bytes(gzip.compress(listing.encode()))

    params = ingest.IngestParams(crawl="CC-MAIN-2099-01", segments=1, crawl_base_url=base)
    urls = ingest.resolve_inputs(params)
    assert urls == [f"{base}/{names[0]}"]  # the non-WARC first line is skipped
    fingerprint = ingest.input_fingerprint(urls)
    assert fingerprint[0]["size"] == (root / names[0]).stat().st_size and "last_modified" in fingerprint[0]
    stats = StageStats()
    docs = list(ingest.process(urls[0], params, stats, ListRejects(stats)))
    assert len(docs) == 1 and docs[0].source == "news" and docs[0].meta["warc_file"] == urls[0]

    with pytest.raises(ValueError, match="fewer than segments=5"):
        ingest.resolve_inputs(params.model_copy(update={"segments": 5}))
    with pytest.raises(ValueError, match="CC-MAIN-2099-02.*crawl id"):
        ingest.resolve_inputs(params.model_copy(update={"crawl": "CC-MAIN-2099-02"}))


def test_unreachable_url_names_the_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/crawl/x.warc.gz"
    with pytest.raises(FileNotFoundError, match="x.warc.gz"):
        ingest.input_fingerprint([url])
    with pytest.raises(OSError, match="x.warc.gz"):
        run(url)


def test_missing_http_file_names_the_url(http_root):
    _, base = http_root
    with pytest.raises(OSError, match="missing.warc.gz"):
        run(f"{base}/missing.warc.gz")


# ------------------------------------------------------------------------------------ real data


def test_real_common_crawl_files(shared_data):
    files = sorted((shared_data / "warc" / "commoncrawl").glob("*0*.warc.gz"))
    files += sorted((shared_data / "warc" / "commoncrawl").glob("*.warc.wet.gz"))
    assert files
    total = StageStats()
    for path in files:
        _, rejects, stats = run(str(path))
        assert stats.errors == 0, (path, rejects.items[:3])
        total = total.merge(stats)
    assert total.docs_out >= 45 and total.counters["records.request"] >= 20
    whirlwind = run(
        str(shared_data / "warc/commoncrawl/CC-MAIN-20240517233122-20240518023122-00000_whirlwind.warc.gz")
    )[0]
    assert whirlwind[0].url == "https://an.wikipedia.org/wiki/Escopete" and whirlwind[0].source == "wikipedia"
    assert "Escopete" in whirlwind[0].text and whirlwind[0].crawl_date.startswith("2024-05-18T")


def test_real_heritrix_file_drops(shared_data):
    path = shared_data / "warc" / "other_crawls" / "IAH-20080430204825-00000-blackbook_sample.warc.gz"
    docs, _, stats = run(str(path), extractor="resiliparse")  # trafilatura takes ~5 s on this file
    assert stats.docs_in == 299 and stats.errors == 0
    assert stats.dropped[ingest.HTTP_STATUS] >= 40 and stats.dropped[ingest.NOT_HTML] >= 100
    assert len(docs) >= 80


def test_real_paths_listing_is_not_a_warc(shared_data):
    with pytest.raises(ValueError, match="unsupported input files"):
        ingest.resolve_inputs(ingest.IngestParams(inputs=[str(shared_data / "warc/commoncrawl/*.paths.gz")]))
