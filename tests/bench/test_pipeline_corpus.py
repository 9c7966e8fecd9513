"""bench/pipeline.py's real-page corpus: the requested number of HTML pages, spread over the files, every
copy with its own URL and record id (so ingest gives every copy its own document id). Skipped without
../shared/data."""

from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator

from bench.pipeline import build_corpus

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # as tests/conftest.py


def test_corpus_copies_real_pages_with_distinct_urls(tmp_path):
    if not (SHARED_DATA / "warc").is_dir():
        pytest.skip("../shared/data is absent (real-data tests are optional)")
    files, pages, distinct = build_corpus(SHARED_DATA, tmp_path, pages=450, files=3)
    assert len(files) == 3 and pages == 450 and distinct > 300  # more pages than the kit holds: copies
    urls, ids, html = [], [], 0
    for f in files:
        with open(f, "rb") as stream:
            for rec in ArchiveIterator(stream):
                urls.append(rec.rec_headers.get_header("WARC-Target-URI"))
                ids.append(rec.rec_headers.get_header("WARC-Record-ID"))
                kind = rec.rec_headers.get_header("WARC-Identified-Payload-Type") or rec.http_headers.get_header(
                    "Content-Type"
                )
                html += "html" in (kind or "").lower()
    assert html == 450 and len(set(urls)) == len(urls) and len(set(ids)) == len(ids)
    assert any("#copy-1." in u for u in urls)
