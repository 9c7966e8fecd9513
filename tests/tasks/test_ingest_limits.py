"""Ingest under hostile input (issue 11): record size limit, stalled HTTP, cut gzip, partly bad files.

Every input is generated in the test (tmp_path) or cut from a real WARC of ../shared/data (skipped when
absent); HTTP servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from storage.stats import StageStats
from tasks import ingest
from tasks.ingest.warc import read_warc
from tests.tasks.test_ingest import PAGE, PROSE, reasons, response, run, warc_bytes, write

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'tasks.*' attempted to send logs to the API")

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


# ------------------------------------------------------------------------------------ record size


def _huge_response_member(body_bytes: int, url: str = "http://big.example/") -> bytes:
    """One gzip member holding a WARC response whose HTML body is `body_bytes` long, compressed as it is
    generated (the body never exists whole in this process)."""
    http_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    head, tail = b"<html><body>", b"</body></html>"
    filler = b"<p>" + b"x" * 4088 + b"</p>\n"  # 4096 bytes
    n_fill, rest = divmod(body_bytes - len(head) - len(tail), len(filler))
    block = len(http_head) + body_bytes
    warc_head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:11111111-2222-3333-4444-555555555555>\r\n"
        f"WARC-Date: 2024-05-18T01:58:10Z\r\nWARC-Target-URI: {url}\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {block}\r\n\r\n"
    ).encode()
    z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [z.compress(warc_head + http_head + head)]
    chunk = filler * 256  # 1 MiB
    for _ in range(n_fill // 256):
        out.append(z.compress(chunk))
    out.append(z.compress(filler * (n_fill % 256) + b" " * rest + tail + b"\r\n\r\n"))
    out.append(z.flush())
    return b"".join(out)


_CHILD = """
import json, resource, sys
from tasks import ingest
small, big, out = sys.argv[1:4]
ingest.ingest_shard.fn(small, out + "/warm", 0, ingest.IngestParams(inputs=[small]))  # load the extractor
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = ingest.ingest_shard.fn(big, out + "/big", 0, ingest.IngestParams(inputs=[big]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_growth_kib": after - before, "stats": result.stats.model_dump()}))
"""


def test_huge_record_is_dropped_unread_in_bounded_memory(tmp_path):
    """A 1 MB .warc.gz whose one HTML record decompresses to 200 MiB: skipped, not read (defect 2)."""
    body = 200 * MiB
    small = write(tmp_path, "small.warc.gz", warc_bytes([response("http://a.com/", PAGE)]))
    big = write(
        tmp_path,
        "big.warc.gz",
        warc_bytes([]) + _huge_response_member(body) + _one_response_members("http://after.com/"),
    )
    assert Path(big).stat().st_size < 2 * MiB
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, small, big, str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert time.perf_counter() - t0 < 30
    assert report["rss_growth_kib"] * 1024 < 40 * MiB, report  # far below the 200 MiB record
    stats = report["stats"]
    assert stats["dropped"] == {ingest.TOO_LARGE: 1} and stats["docs_out"] == 1 and stats["errors"] == 0
    rejected = pq.read_table(tmp_path / "out" / "big" / "rejected" / "part-00000.parquet").to_pylist()
    detail = json.loads(rejected[0]["reason_detail"])
    assert rejected[0]["reason"] == ingest.TOO_LARGE and rejected[0]["url"] == "http://big.example/"
    assert detail["max_record_bytes"] == 10 * MiB and detail["bytes"] > body
    assert str(detail["bytes"]) in detail["error"] and "max_record_bytes=10485760" in detail["error"]


def _one_response_members(url: str) -> bytes:
    """The gzip members of one request/response pair (a WARC without its warcinfo member)."""
    data = warc_bytes([response(url, PAGE)])
    first = zlib.decompressobj(16 + zlib.MAX_WBITS)
    first.decompress(data)
    return first.unused_data


def test_record_over_the_limit_is_too_large_and_the_next_one_is_kept(tmp_path):
    page = "<html><body>" + "<p>" + PROSE * 200 + "</p></body></html>"  # ~40 kB
    path = write(
        tmp_path, "a.warc.gz", warc_bytes([response("http://big.com/", page), response("http://ok.com/", PAGE)])
    )
    docs, rejects, stats = run(path, max_record_bytes=16 * 1024)
    assert [d.url for d in docs] == ["http://ok.com/"] and reasons(rejects) == [ingest.TOO_LARGE]
    detail = rejects.items[0][2]
    assert detail["max_record_bytes"] == 16 * 1024 and detail["bytes"] > len(page) and stats.errors == 0
    assert run(path)[1].items == []  # under the default limit both are kept


def test_gzip_bomb_body_stops_at_the_limit(tmp_path):
    """A small record whose gzip-encoded HTTP body inflates to 64 MiB: the decoded size is what counts."""
    bomb = gzip.compress(b"<html><body><p>" + b"a" * (64 * MiB) + b"</p></body></html>", 1)
    assert len(bomb) < MiB
    path = write(
        tmp_path,
        "bomb.warc.gz",
        warc_bytes([response("http://bomb.com/", bomb, headers=(("Content-Encoding", "gzip"),))]),
    )
    t0 = time.perf_counter()
    docs, rejects, _ = run(path, max_record_bytes=MiB)
    assert not docs and reasons(rejects) == [ingest.TOO_LARGE] and time.perf_counter() - t0 < 5
    detail = rejects.items[0][2]
    assert detail["part"] == "body decoded from gzip" and detail["bytes"] > MiB and detail["max_record_bytes"] == MiB


def test_jsonl_line_over_the_limit_is_too_large(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": PROSE}),
        json.dumps({"id": "b", "text": "x" * 50_000}),
        json.dumps({"id": "c", "text": PROSE + " three"}),
    ]
    path = write(tmp_path, "rows.jsonl", ("\n".join(lines) + "\n").encode())
    docs, rejects, _ = run(path, max_record_bytes=4096)
    assert [d.id for d in docs] == ["a", "c"] and reasons(rejects) == [ingest.TOO_LARGE]
    assert rejects.items[0][2]["bytes"] == len(lines[1]) + 1 and rejects.items[0][2]["line"] == 2


# ------------------------------------------------------------------------------------ cut gzip


def _members(data: bytes) -> list[int]:
    """Start offsets of the gzip members of `data`."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        d.decompress(data[pos:])
        pos = len(data) - len(d.unused_data)
    return starts


def _assert_cut_is_truncated(data: bytes, cut: int, member: int) -> None:
    items = list(read_warc(io.BytesIO(data[:cut]), "x.warc.gz", StageStats()))
    faults = [(i.fault, i.offset) for i in items if i.fault]
    assert faults == [("truncated", member)], (cut, member, [(i.fault, i.offset, i.fault_detail) for i in items])


def test_cut_inside_any_gzip_member_is_truncated_generated(tmp_path):
    data = warc_bytes([response(f"http://a.com/{i}", PAGE) for i in range(4)])
    starts = _members(data)
    for start, end in zip(starts[1:], starts[2:] + [len(data)]):
        for cut in (start + 5, start + 40, (start + end) // 2, end - 3):  # gzip header, WARC header, body, trailer
            _assert_cut_is_truncated(data, cut, start)
    path = write(tmp_path, "cut.warc.gz", data[: starts[-1] + 30])  # inside the last response's WARC header
    docs, rejects, stats = run(path, max_error_fraction=1.0)
    assert len(docs) == 3 and reasons(rejects) == [ingest.TRUNCATED_FILE]
    assert rejects.items[0][2]["offset"] == starts[-1] and "cut short" in rejects.items[0][2]["error"]


def test_cut_real_warc_is_truncated_not_corrupt(shared_data, tmp_path):
    real = (shared_data / "warc/commoncrawl/CC-MAIN-20140820021334-00006.warc.gz").read_bytes()
    starts = _members(real)
    for start, end in zip(starts[1:], starts[2:] + [len(real)]):
        for cut in (start + 12, start + 200, (start + end) // 2, end - 1):
            if cut < end:
                _assert_cut_is_truncated(real, cut, start)
    big = max(zip(starts, starts[1:]), key=lambda se: se[1] - se[0])  # the largest member: a response
    path = write(tmp_path, "cut.warc.gz", real[: (big[0] + big[1]) // 2])
    _, rejects, _ = run(path, max_error_fraction=1.0, extractor="resiliparse")
    faults = [(r, d["offset"]) for _, r, d in rejects.items if r in (ingest.TRUNCATED_FILE, ingest.CORRUPT_RECORD)]
    assert faults == [(ingest.TRUNCATED_FILE, big[0])]


def test_complete_files_have_no_fault(shared_data):
    for path in sorted((shared_data / "warc").glob("*/*.gz")):
        if path.name.endswith(".paths.gz"):
            continue
        items = list(read_warc(io.BytesIO(path.read_bytes()), path.name, StageStats()))
        assert not [i for i in items if i.fault], path


# ------------------------------------------------------------------------------------ stalled HTTP


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Serves `data`; the first `stalls` requests send their headers and `before_stall` bytes, then stall."""

    data = b""
    before_stall = 100_000
    stalls = 10**9
    release = threading.Event()
    requests: list[str] = []

    def do_GET(self) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=", 1)[1].rstrip("-"))
        type(self).requests.append(rng or "")
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(self.data) - start))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        if len(type(self).requests) <= type(self).stalls:
            self.wfile.write(self.data[start : start + self.before_stall])
            self.wfile.flush()
            self.release.wait(30)
            return
        self.wfile.write(self.data[start:])

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stalling_server() -> Iterator[tuple[type[_StallingHandler], str]]:
    handler = type("Handler", (_StallingHandler,), {"release": threading.Event(), "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


def _run_in_thread(url: str, wait_s: float, **params: Any) -> dict[str, Any]:
    """Ingest `url` in a thread, waiting at most `wait_s` (a hang fails the test instead of blocking it)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        t0 = time.perf_counter()
        try:
            outcome["docs"] = run(url, **params)[0]
        except Exception as e:
            outcome["error"] = e
        outcome["seconds"] = time.perf_counter() - t0

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(wait_s)
    assert not thread.is_alive(), f"ingest of {url} still running after {wait_s}s: a stalled input hangs"
    return outcome


def _big_warc(pages: int = 60) -> bytes:
    return warc_bytes(
        [response(f"http://a.com/{i}", PAGE + f"<!-- {i} {'z' * 3000} -->") for i in range(pages)], gz=False
    )


def test_stalled_http_input_fails_naming_the_url_timeout_and_fix(stalling_server):
    handler, base = stalling_server
    handler.data = _big_warc()
    assert len(handler.data) > 2 * handler.before_stall
    url = f"{base}/crawl/stall.warc"
    outcome = _run_in_thread(url, 15, http_timeout_s=0.5, http_retries=2, extractor="resiliparse")
    error = outcome.get("error")
    assert isinstance(error, OSError), outcome
    message = str(error)
    assert url in message and "no data for 0.5s" in message and "http_timeout_s=0.5" in message
    assert "http_retries=2" in message and "raise ingest.http_timeout_s" in message
    assert outcome["seconds"] < 0.5 * 3 + 3  # ~ timeout x (retries + 1), not for ever
    assert handler.requests[0] == "" and all(r.startswith("bytes=") for r in handler.requests[1:])
    assert len(handler.requests) == 3


def test_stalled_http_input_resumes_where_it_stopped(stalling_server):
    handler, base = stalling_server
    handler.data, handler.stalls = _big_warc(), 1  # the first response stalls; the Range request completes
    outcome = _run_in_thread(f"{base}/ok.warc", 15, http_timeout_s=0.5, http_retries=1, extractor="resiliparse")
    assert "error" not in outcome, outcome
    assert len(outcome["docs"]) == 60 and handler.requests[1].startswith("bytes=")
    assert 0 < int(handler.requests[1].split("=")[1].rstrip("-")) <= handler.before_stall  # bytes delivered


# ------------------------------------------------------------------------------------ error budget


def _fourteen(bad: bool) -> bytes:
    """14 response records; with `bad`, the file is cut inside the last one (1 bad record of 14)."""
    data = warc_bytes([response(f"http://a.com/{i}", PAGE.replace("library", f"library {i}")) for i in range(14)])
    return data[: len(data) - 300] if bad else data


def test_partly_bad_file_keeps_its_good_records(tmp_path):
    path = write(tmp_path, "bad.warc.gz", _fourteen(bad=True))
    result = ingest.ingest_shard.fn(path, str(tmp_path / "out"), 0, ingest.IngestParams(inputs=[path]))
    s = result.stats
    assert (s.docs_in, s.docs_out, s.errors, s.dropped) == (14, 13, 1, {ingest.TRUNCATED_FILE: 1})
    rejected = pq.read_table(tmp_path / "out" / "rejected" / "part-00000.parquet").to_pylist()
    assert [r["reason"] for r in rejected] == [ingest.TRUNCATED_FILE]


def test_error_budget_counts_records_over_the_whole_input(tmp_path):
    bad = write(tmp_path, "bad.warc.gz", _fourteen(bad=True))
    good = [write(tmp_path, f"good{i}.warc.gz", _fourteen(bad=False)) for i in range(2)]
    params = ingest.IngestParams(inputs=[bad, *good])
    results = [ingest.ingest_shard.fn(p, str(tmp_path / "out"), i, params) for i, p in enumerate([bad, *good])]
    ingest.check_error_budget(results, [bad, *good], 0.05, "ingest@v")  # 1 of 42 records: 2.4% passes
    with pytest.raises(
        ValueError,
        match=r"(?s)ingest@v: 1 of 14 .*bad\.warc\.gz \(1 of 14 records bad: "
        r"truncated_file 1\).*remove those files.*max_error_fraction",
    ):
        ingest.check_error_budget(results[:1], [bad], 0.05, "ingest@v")


def test_drop_file_drops_the_good_records_of_a_bad_file_as_counted_drops(tmp_path):
    path = write(tmp_path, "bad.warc.gz", _fourteen(bad=True))
    params = ingest.IngestParams(inputs=[path], on_bad_file="drop_file")
    result = ingest.ingest_shard.fn(path, str(tmp_path / "out"), 0, params)
    s = result.stats
    assert (s.docs_in, s.docs_out, s.errors) == (14, 0, 1)
    assert s.dropped == {ingest.TRUNCATED_FILE: 1, ingest.BAD_FILE: 13} and result.rejected.rows == 14
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data", "rejected"]
    kept = ingest.ingest_shard.fn(
        path, str(tmp_path / "out2"), 0, params.model_copy(update={"max_error_fraction": 0.1})
    )
    assert kept.stats.docs_out == 13  # under its budget the file is kept
    assert params.version_params() != ingest.IngestParams(inputs=[path]).version_params()


def test_ingest_flow_keeps_partly_bad_files_and_fails_over_budget(prefect_backend, tmp_path):
    from flows.ingest import ingest_flow
    from flows.stage import task_runner
    from storage.manifest import load_manifest

    bad = write(tmp_path, "bad.warc.gz", _fourteen(bad=True))
    good = write(tmp_path, "good.warc.gz", _fourteen(bad=False))
    flow = ingest_flow.with_options(task_runner=task_runner(1))
    root = str(tmp_path / "data")
    params = ingest.IngestParams(inputs=[bad, good], extractor="resiliparse")
    flow(params=params, data_root=root)  # 1 of 28 = 3.6% <= 5%
    m = load_manifest(root, ingest.STAGE)
    assert (m.stats.docs_in, m.stats.docs_out, m.stats.dropped) == (28, 27, {ingest.TRUNCATED_FILE: 1})
    with pytest.raises(ValueError, match=r"(?s)1 of 28 .*bad\.warc\.gz.*max_error_fraction"):
        flow(params=params.model_copy(update={"max_error_fraction": 0.02}), data_root=root, force=True)
