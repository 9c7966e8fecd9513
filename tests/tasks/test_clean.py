"""tasks.clean without Prefect: each rule on planted text (URL lists, built-in words, line dedup, PII with
allow-lists and the density drop) and on real page text from ../shared/data (skipped when it is absent)."""

import json

import pytest

from storage.documents import Document, DocumentWriter, Rejects, read_documents
from storage.stats import StageStats
from tasks.clean import CleanParams, filter_for, run_steps
from tasks.clean.lines import line_key
from tasks.clean.pii import redact
from tasks.clean.urls import normalize_url, parent_domains

WET = "warc/commoncrawl/CC-MAIN-20161202170900-00009_fragment.warc.wet.gz"
FILLER = " ".join(f"word{i}" for i in range(60))  # enough words to survive min_words_after_clean


def _write(path, docs):
    with DocumentWriter(str(path)) as w:
        for d in docs:
            w.write(d)
    return str(path)


def _run(tmp_path, shards, params):
    """The stage's steps over hand-made shards; returns (kept docs, rejected docs, stats, results, partitions)."""
    out = tmp_path / "out"
    out.mkdir()
    sources = [_write(tmp_path / f"in-{i}.parquet", docs) for i, docs in enumerate(shards)]
    results, partitions = run_steps(sources, str(out), params)
    kept = [d for r in results for d in read_documents(str(out / r.shard.name))]
    rejected = [d for r in results for d in read_documents(str(out / r.rejected.name))]
    stats = StageStats.merge_all([r.stats for r in results])
    stats.check_conservation("clean")
    return kept, rejected, stats, results, partitions


def _lists(tmp_path, **files):
    paths = {}
    for kind, lines in files.items():
        p = tmp_path / f"{kind}.txt"
        p.write_text("# a comment\n\n" + "\n".join(lines) + "\n")
        paths[kind] = [str(p)]
    return paths


# ---------------------------------------------------------------- URL filter


def test_url_helpers():
    assert parent_domains("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com", "com"]
    assert normalize_url("https://User@WWW.Example.com:8080/a/b/?q=1#frag") == "example.com/a/b/?q=1"
    assert normalize_url("example.com/a/b/") == "example.com/a/b"


def test_url_lists_block_subdomains_urls_and_substrings(tmp_path):
    lists = _lists(
        tmp_path, domains=["Bad.Example", "*.spam.test"], urls=["shop.test/buy-now/"], substrings=["freemoney"]
    )
    params = CleanParams(
        domain_lists=lists["domains"],
        url_lists=lists["urls"],
        url_substring_lists=lists["substrings"],
        line_dedup=False,
        pii=[],
    )
    docs = [
        Document(id="sub", text=FILLER, url="https://deep.www.bad.example/page"),
        Document(id="parent-only", text=FILLER, url="https://example/page"),  # the parent of a listed domain: kept
        Document(id="spam", text=FILLER, url="http://x.spam.test/"),
        Document(id="url", text=FILLER, url="HTTPS://www.shop.test/buy-now"),
        Document(id="url-other-path", text=FILLER, url="https://shop.test/buy-later"),
        Document(id="substring", text=FILLER, url="https://ok.test/Free-Money/now"),
        Document(id="fine", text=FILLER, url="https://good.test/article"),
    ]
    kept, rejected, stats, _, _ = _run(tmp_path, [docs], params)
    assert {d.id for d in kept} == {"parent-only", "url-other-path", "fine"}
    why = {d.id: (d.meta["reason"], json.loads(d.meta["reason_detail"])) for d in rejected}
    assert why["sub"] == ("url_blocked", {"rule": "domain", "match": "bad.example"})
    assert why["spam"] == ("url_blocked", {"rule": "domain", "match": "spam.test"})
    assert why["url"] == ("url_blocked", {"rule": "url", "match": "shop.test/buy-now"})
    assert why["substring"] == ("url_blocked", {"rule": "substring", "match": "freemoney"})
    assert stats.dropped == {"url_blocked": 4} and stats.counters["url_blocked.domain"] == 2
    assert stats.counters["chars_removed.url_blocked"] == 4 * len(FILLER)


def test_builtin_hard_and_soft_words(tmp_path):
    out = tmp_path / "w"
    on = filter_for(str(out), CleanParams())
    assert on.blocked("https://site.test/free-PORN-videos") == ("word", "porn")
    assert on.blocked("https://site.test/casino/") is None  # one soft word is not enough
    assert on.blocked("https://site.test/hot-girls") == ("soft_words", "girls,hot")
    assert on.blocked("https://site.test/pornography-research") is None  # whole words only
    assert filter_for(str(out), CleanParams(soft_word_threshold=3)).blocked("https://site.test/hot-girls") is None
    assert filter_for(str(out), CleanParams(builtin_words=False)).blocked("https://site.test/porn") is None


# ---------------------------------------------------------------- line dedup


def test_line_key_normalises_case_space_and_digits():
    assert line_key("  Page 3 of  12 ") == line_key("page 4 of 99") is not None
    assert line_key("   \t") is None


def test_line_dedup_across_shards_empties_a_page_and_reports_top_lines(tmp_path):
    nav = "Home | About | Contact"
    cookie = "We use cookies to improve your experience."
    pages = [
        Document(
            id=f"p{i}", text=f"{nav}\n{cookie}\nArticle {'abcd'[i]}: {FILLER}\n\n{cookie}", url=f"https://s.test/{i}"
        )
        for i in range(4)
    ]
    only_boilerplate = Document(id="empty", text=f"{nav}\n{cookie}\n", url="https://s.test/empty")
    short_left = Document(id="short", text=f"{nav}\nJust a few words here.", url="https://s.test/short")
    params = CleanParams(max_line_repeats=3, pii=[], line_partitions=3)
    shards = [pages[:2] + [only_boilerplate], pages[2:] + [short_left]]
    kept, rejected, stats, results, partitions = _run(tmp_path, shards, params)
    assert sorted(d.id for d in kept) == ["p0", "p1", "p2", "p3"]
    for d in kept:
        assert nav not in d.text and cookie not in d.text and d.text.startswith("Article")
        assert d.meta["clean_lines_removed"] == 3
    why = {d.id: (d.meta["reason"], json.loads(d.meta["reason_detail"])) for d in rejected}
    assert why["empty"] == ("too_short_after_clean", {"lines_removed": 2, "words_left": 0})
    assert why["short"][0] == "too_short_after_clean" and why["short"][1]["words_left"] == 5
    assert next(d for d in rejected if d.id == "empty").text.startswith(nav)  # the original text is kept
    # nav: 6 occurrences (every page), cookie: 9 (twice in each article page, once in `empty`)
    assert stats.counters["lines_removed"] == 4 * 3 + 2 + 1
    from tasks.clean import top_lines
    from tasks.clean.report import merge_extras

    extras = merge_extras(results, partitions, top_lines(partitions), [], {})
    assert extras["top_removed_lines"][:2] == [{"line": cookie, "count": 9}, {"line": nav, "count": 6}]
    assert extras["frequent_lines"] == 2
    assert {s["rule"] for s in extras["samples"]} == {"line_dedup"}
    assert stats.counters["docs_changed.line_dedup"] == 4


def test_line_dedup_off_keeps_every_line(tmp_path):
    docs = [Document(id=f"d{i}", text=f"same line\n{FILLER}", url="https://s.test") for i in range(10)]
    kept, _, stats, _, partitions = _run(tmp_path, [docs], CleanParams(line_dedup=False, pii=[]))
    assert len(kept) == 10 and all(d.text.startswith("same line") for d in kept) and partitions == []


# ---------------------------------------------------------------- PII


def test_planted_pii_is_redacted_with_allow_lists():
    text = (
        "Mail jane.doe@mail.test.org or info@example.com; call (415) 555-2671, +44 20 7946 0958 or 415.555.2672.\n"
        "Hosts: 8.8.8.8, 192.168.1.1, 192.0.2.5, 2001:4860:4860::8888, 2001:db8::1 and ::1; v1.2.3.4.5.\n"
        "Not PII: 2020-08-08, ISBN 978-3-16-148410-0, 10:30:45, std::vector, 5551234567, black9.69.49.8Hispanic."
    )
    r = redact(text, CleanParams().pii_config())
    assert r.found == {"email": 1, "ip": 2, "phone": 3}
    assert r.allowed == {"email": 1, "ip": 4}  # example.com; private, documentation and loopback addresses
    assert "Mail <EMAIL> or info@example.com; call <PHONE>, <PHONE> or <PHONE>." in r.text
    assert "Hosts: <IP>, 192.168.1.1, 192.0.2.5, <IP>, 2001:db8::1 and ::1; v1.2.3.4.5." in r.text
    assert text.splitlines()[2] == r.text.splitlines()[2]
    glued = redact("Phone: (803) 593-9231Fax: 1-800-555-1234, id 11-800-555-1234", CleanParams().pii_config())
    assert glued.text == "Phone: <PHONE>Fax: <PHONE>, id 11-800-555-1234"  # cells glued by extraction
    custom = CleanParams(
        email_placeholder="[e]",
        ip_placeholder="[ip]",
        pii=["email", "ip"],
        email_allow_domains=[],
        ip_public_only=False,
    )
    r2 = redact(text, custom.pii_config())
    assert r2.text.startswith("Mail [e] or [e]; call (415) 555-2671") and "192.168.1.1" not in r2.text
    assert "192.0.2.5" in r2.text  # the documentation range stays allow-listed


def test_pii_counts_and_density_drop(tmp_path):
    dense = Document(id="dense", text="a@b.test.com c@d.test.com e@f.test.com", url="https://s.test/1")
    light = Document(id="light", text=f"Write to me at someone@mail.test.com. {FILLER}", url="https://s.test/2")
    kept, rejected, stats, _, _ = _run(tmp_path, [[dense, light]], CleanParams(pii_drop_density=5.0))
    assert [d.id for d in kept] == ["light"] and "<EMAIL>" in kept[0].text and kept[0].meta["clean_pii"] == 1
    assert rejected[0].meta["reason"] == "pii_dense" and "@" not in rejected[0].text
    assert stats.counters["pii.email"] == 1 and stats.counters["chars_removed.pii"] == len("someone@mail.test.com")
    assert stats.counters["chars_removed.pii_dense"] == len(dense.text)


def test_params_validate_networks():
    with pytest.raises(ValueError, match="CIDR"):
        CleanParams(ip_allow_networks=["not-a-network"])


# ---------------------------------------------------------------- real page text


@pytest.fixture
def real_pages(shared_data):
    from tasks.ingest import IngestParams, process

    path = shared_data / WET
    if not path.exists():
        pytest.skip(f"{WET} is not in the shared data")
    stats = StageStats()

    class _Discard:
        def write(self, *a, **k):
            pass

    docs = process(str(path), IngestParams(inputs=[str(path)]), stats, Rejects(_Discard(), stats))
    return [Document(id=d.id, text=d.text, url=d.url, crawl_date=d.crawl_date) for d in docs]


def test_real_pages_pii(real_pages):
    cfg = CleanParams().pii_config()
    by_url = {d.url: d for d in real_pages}
    cdc = redact(by_url["http://www.cdc.gov/pcd/issues/2013/12_0137.htm"].text, cfg)
    assert "Telephone: <PHONE>. E-mail: <EMAIL>." in cdc.text and "Kimberly.Lochner" not in cdc.text
    assert "(<PHONE>)\tTTY: <PHONE>" in cdc.text  # 800-232-4636, (888) 232-6348
    assert "black9.69.49.8Hispanic" in cdc.text  # a flattened percentage table, not an address
    saudi = next(d for u, d in by_url.items() if "Quality-life-patients" in u)
    r = redact(saudi.text, cfg)
    assert "Tel. <PHONE> Ext. 51002. Fax. <PHONE> Ext 11012. E-mail: <EMAIL>." in r.text
    assert r.found == {"email": 1, "phone": 2}


def test_real_pages_line_dedup_and_url_filter(real_pages, tmp_path):
    lists = _lists(tmp_path, domains=["cdc.gov"])
    params = CleanParams(domain_lists=lists["domains"], pii=[])
    kept, rejected, stats, results, partitions = _run(tmp_path, [real_pages[:13], real_pages[13:]], params)
    blocked = [d for d in rejected if d.meta["reason"] == "url_blocked"]
    assert {d.url.split("/")[2] for d in blocked} == {"www.cdc.gov"} and len(blocked) == 4
    # every line left in a kept page is seen at most max_line_repeats times over the non-blocked pages
    counts: dict = {}
    for d in real_pages:
        if "cdc.gov" not in d.url:
            for k in filter(None, map(line_key, d.text.split("\n"))):
                counts[k] = counts.get(k, 0) + 1
    frequent = {k for k, c in counts.items() if c > 6}
    assert frequent and all(line_key(x) not in frequent for d in kept for x in d.text.split("\n"))
    assert stats.counters["lines_removed"] == sum(counts[k] for k in frequent)
    from tasks.clean import top_lines
    from tasks.clean.report import merge_extras

    top = merge_extras(results, partitions, top_lines(partitions), [], {})["top_removed_lines"]
    assert top[0]["count"] == max(counts.values()) and all(t["line"] != "?" for t in top)
