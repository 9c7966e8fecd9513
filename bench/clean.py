"""Clean-stage benchmark: our URL filter and PII redaction vs datatrove's URLFilter and PIIFormatter, on the
same real pages, plus what every rule of the stage removes from them.

    .venv/bin/python -m bench.clean [--data ../shared/data] [--repeat 20] [--probes 3000] [--cache DIR]

Pages: every WARC/WET file under `<data>/warc/`, through our ingest code (`tasks.ingest.process`, default
params: trafilatura extraction), cached as JSONL. Both sides get the same lists: datatrove's bundled UT1-derived
`domains` (4.6M) and `urls` (20k) files from `url_filterblacklistsv0_3_0.tar.gz` and its `banned_subwords.txt`
as our list files, and our built-in hard/soft URL words as datatrove's `banned_words` / `soft_banned_words`
(`use_integrated_lists=False`, so the word lists agree too). tldextract uses its bundled suffix list (no network).

URL decisions are compared on the pages' URLs and on probes built from the lists (seeded): a listed domain as
the host, behind `www.` and behind two more subdomain levels, and listed URLs with a scheme. Rules that differ
by design are named in the output: datatrove compares a document's whole URL (with its scheme) to the URL list,
whose entries have none, so its URL rule never fires on them; it checks the registered domain and the full
host only, we check every parent of the host; it splits the URL into words without lowercasing it.
PII: ours with e-mails and IPs only, no allow-lists (datatrove has neither phones nor allow-lists; both redact
public IPs only) and the same placeholders; texts compared document by document.
Throughput: single process, CPU seconds, the URL filter plus PII pass of each side over the pages repeated
`--repeat` times (ours with its full default rules, phones and IPv6 included); ratio = ours / datatrove docs/s.
Last: the whole stage (`tasks.clean.run_steps`, default params plus the lists) on the pages: drops by rule,
lines removed, the top removed lines, PII counts.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import tarfile
import time
from pathlib import Path
from typing import Any

from storage.documents import Document, DocumentWriter, Rejects
from storage.stats import StageStats
from tasks.clean import CleanParams, filter_for, run_steps
from tasks.clean.pii import redact
from tasks.clean.urls import HARD_WORDS, SOFT_WORDS

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data")


class _NullWriter:
    def write(self, doc: Any, reason: str | None = None, detail: Any = None) -> None:
        pass


def real_pages(data: str, cache: str) -> list[Document]:
    """The pages of every WARC/WET file under `<data>/warc`, extracted by our ingest code (cached)."""
    from tasks.ingest import IngestParams, process

    path = os.path.join(cache, "real_pages.jsonl")
    if not os.path.exists(path):
        files = sorted(set(glob.glob(f"{data}/warc/**/*.warc.gz", recursive=True)))
        files += sorted(set(glob.glob(f"{data}/warc/**/*.wet.gz", recursive=True)))
        params = IngestParams(inputs=files)
        with open(path + ".tmp", "w") as f:
            for src in files:
                stats = StageStats()
                for d in process(src, params, stats, Rejects(_NullWriter(), stats)):  # type: ignore[arg-type]
                    f.write(json.dumps({"id": d.id, "url": d.url, "text": d.text}) + "\n")
        os.replace(path + ".tmp", path)
    return [Document(id=r["id"], url=r["url"], text=r["text"]) for r in map(json.loads, open(path))]


def datatrove_lists(cache: str) -> dict[str, str]:
    """datatrove's bundled lists as files: domains, urls (UT1-derived tarball) and banned_subwords."""
    from datatrove.utils._import_utils import ASSETS_PATH

    out = os.path.join(cache, "datatrove_lists")
    if not os.path.exists(os.path.join(out, "urls")):
        with tarfile.open(os.path.join(ASSETS_PATH, "url_filterblacklistsv0_3_0.tar.gz"), "r:gz") as tar:
            tar.extractall(out, filter="data")
    return {
        "domains": os.path.join(out, "domains"),
        "urls": os.path.join(out, "urls"),
        "substrings": os.path.join(ASSETS_PATH, "banned_subwords.txt"),
    }


def lines_of(path: str) -> list[str]:
    return [x.strip() for x in open(path, encoding="utf-8", errors="replace") if x.strip()]


def probes(lists: dict[str, str], n: int, seed: int = 0) -> dict[str, list[str]]:
    """URLs built from listed domains (bare, www., two subdomain levels) and listed URLs with a scheme."""
    rng = random.Random(seed)
    domains = rng.sample([d for d in lines_of(lists["domains"]) if not d.startswith("#")], n)
    urls = rng.sample([u for u in lines_of(lists["urls"]) if not u.startswith("#")], n // 3)
    return {
        "listed domain as host": [f"http://{d}/" for d in domains],
        "www. + listed domain": [f"https://www.{d}/index.html" for d in domains],
        "a.b. + listed domain": [f"https://a.b.{d}/page?id=1" for d in domains],
        "listed URL + scheme": [f"http://{u}" for u in urls],
    }


def datatrove_url_filter(lists: dict[str, str]) -> Any:
    from datatrove.pipeline.filters import URLFilter
    from tldextract import TLDExtract

    f = URLFilter(
        extra_domains=lines_of(lists["domains"]),
        extra_urls=lines_of(lists["urls"]),
        banned_words=list(HARD_WORDS),
        soft_banned_words=list(SOFT_WORDS),
        banned_subwords=lines_of(lists["substrings"]),
        use_integrated_lists=False,
    )
    f.tldextractor = TLDExtract(suffix_list_urls=())  # the bundled public suffix list: no network
    return f


def datatrove_blocked(f: Any, url: str) -> str | None:
    from datatrove.data import Document as DtDocument

    r = f.filter(DtDocument(text="", id="x", metadata={"url": url}))
    return None if r is True else r[1]


def _is_registered(f: Any, url: str) -> bool:
    """The probe's listed domain (its host minus `www.`) is a registered domain: datatrove's domain rule sees it."""
    ext = f.tldextractor(url)
    new = hasattr(ext, "top_domain_under_public_suffix")  # tldextract >= 5.3 renamed registered_domain
    registered = ext.top_domain_under_public_suffix if new else ext.registered_domain
    return bool(registered) and registered == url.split("/")[2].removeprefix("www.")


def compare_urls(ours: Any, theirs: Any, urls: list[str]) -> dict[str, Any]:
    both = keep = 0
    only_ours: dict[str, int] = {}
    only_theirs: dict[str, int] = {}
    examples: list[str] = []
    for u in urls:
        a, b = ours.blocked(u), datatrove_blocked(theirs, u)
        if a and b:
            both += 1
        elif not a and not b:
            keep += 1
        elif a:
            only_ours[a[0]] = only_ours.get(a[0], 0) + 1
            if len(examples) < 2:
                examples.append(f"ours only ({a[0]}: {a[1]}): {u}")
        else:
            assert b is not None
            only_theirs[b] = only_theirs.get(b, 0) + 1
            if len(examples) < 4:
                examples.append(f"datatrove only ({b}): {u}")
    return {
        "urls": len(urls),
        "both_block": both,
        "both_keep": keep,
        "only_ours": only_ours,
        "only_datatrove": only_theirs,
        "examples": examples,
    }


def compare_pii(docs: list[Document]) -> dict[str, Any]:
    from datatrove.pipeline.formatters import PIIFormatter

    cfg = CleanParams(pii=["email", "ip"], email_allow_domains=[], ip_allow_networks=[]).pii_config()
    theirs = PIIFormatter(email_replacement="<EMAIL>", ip_replacement="<IP>")
    same = 0
    diffs = []
    changed = 0
    for d in docs:
        a, b = redact(d.text, cfg).text, theirs.format(d.text)
        changed += a != d.text
        if a == b:
            same += 1
        elif len(diffs) < 8:
            i = next(k for k, (x, y) in enumerate(zip(a + "\0", b + "\0")) if x != y)
            diffs.append(f"{d.url}: ours {a[max(0, i - 40) : i + 40]!r} | datatrove {b[max(0, i - 40) : i + 40]!r}")
    return {"docs": len(docs), "identical": same, "redacted_by_ours": changed, "diffs": diffs}


def throughput(docs: list[Document], repeat: int, ours: Any, theirs_url: Any) -> dict[str, float]:
    from datatrove.data import Document as DtDocument
    from datatrove.pipeline.formatters import PIIFormatter

    cfg = CleanParams().pii_config()
    pii = PIIFormatter()
    work = docs * repeat
    chars = sum(len(d.text) for d in work)
    t = time.process_time()
    for d in work:
        if ours.blocked(d.url) is None:
            redact(d.text, cfg)
    ours_s = time.process_time() - t
    dt_docs = [DtDocument(text=d.text, id=d.id, metadata={"url": d.url}) for d in work]
    t = time.process_time()
    for d in dt_docs:
        if theirs_url.filter(d) is True:
            pii.format(d.text)
    theirs_s = time.process_time() - t
    return {"docs": len(work), "mb": chars / 1e6, "ours_s": ours_s, "datatrove_s": theirs_s}


def stage_on_pages(docs: list[Document], lists: dict[str, str], cache: str) -> dict[str, Any]:
    import tempfile

    params = CleanParams(
        domain_lists=[lists["domains"]], url_lists=[lists["urls"]], url_substring_lists=[lists["substrings"]]
    )
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = os.path.join(tmp, "input.parquet")
        with DocumentWriter(src) as w:
            for d in docs:
                w.write(d)
        os.makedirs(os.path.join(tmp, "out"))
        t = time.perf_counter()
        results, partitions = run_steps([src], os.path.join(tmp, "out"), params)
        seconds = time.perf_counter() - t
    from tasks.clean import top_lines
    from tasks.clean.report import merge_extras

    stats = StageStats.merge_all([r.stats for r in results])
    extras = merge_extras(results, partitions, top_lines(partitions), [], {})
    return {"stats": stats, "extras": extras, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="the shared data kit (its warc/ folder)")
    ap.add_argument("--repeat", type=int, default=20, help="passes over the pages for the throughput figures")
    ap.add_argument("--probes", type=int, default=3000, help="listed domains turned into probe URLs")
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "pretrain-bench-clean"))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    docs = real_pages(args.data, args.cache)
    if not docs:
        raise SystemExit(f"no pages: no WARC files under {args.data}/warc")
    lists = datatrove_lists(args.cache)
    print(f"pages: {len(docs)} from {args.data}/warc ({sum(len(d.text) for d in docs) / 1e6:.2f} M characters)")

    t = time.perf_counter()
    stage = stage_on_pages(docs, lists, args.cache)  # also compiles the lists, reused below
    print(f"\n## The stage on the pages (default params + the lists): {stage['seconds']:.1f}s incl. list compile")
    s, x = stage["stats"], stage["extras"]
    print(f"docs in {s.docs_in}, out {s.docs_out}, dropped {dict(s.dropped)}")
    keys = ("lines_removed", "docs_changed.line_dedup", "docs_changed.pii")
    print({k: v for k, v in sorted(s.counters.items()) if k.startswith(("chars_removed", "pii", "url_")) or k in keys})
    print(f"distinct lines {x['unique_lines']}, seen more than 6 times: {x['frequent_lines']}")
    print("| count | top removed line |\n|---|---|")
    for row in x["top_removed_lines"]:
        print(f"| {row['count']} | {' '.join(row['line'].split())[:90]} |")

    import tempfile

    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        params = CleanParams(
            domain_lists=[lists["domains"]], url_lists=[lists["urls"]], url_substring_lists=[lists["substrings"]]
        )
        from tasks.clean import clean_compile_lists

        clean_compile_lists.fn(tmp, params)
        ours = filter_for(tmp, params)
        t = time.perf_counter()
        theirs = datatrove_url_filter(lists)
        datatrove_blocked(theirs, "http://warm.up/")
        print(f"\ndatatrove URLFilter set-up (lists in memory): {time.perf_counter() - t:.1f}s")
        print("\n## URL decisions")
        groups = {"page URLs": [d.url for d in docs], **probes(lists, args.probes)}
        registered = [u for u in groups["www. + listed domain"] if _is_registered(theirs, u)]
        groups["www. + listed registered domain (rules agree)"] = registered
        for name, urls in groups.items():
            r = compare_urls(ours, theirs, urls)
            agree = r["both_block"] + r["both_keep"]
            print(
                f"- {name}: {r['urls']} URLs, agree {agree} ({agree / r['urls']:.1%}): both block {r['both_block']}, "
                f"both keep {r['both_keep']}; ours only {r['only_ours']}; datatrove only {r['only_datatrove']}"
            )
            for e in r["examples"]:
                print(f"    {e}")
        print("\n## PII (e-mails + public IPs, no allow-lists, same placeholders)")
        p = compare_pii(docs)
        same = f"{p['identical']} ({p['identical'] / p['docs']:.1%})"
        print(f"- {p['docs']} pages, identical text {same}; ours redacted {p['redacted_by_ours']} of them")
        for d in p["diffs"]:
            print(f"    {d}")
        print(f"\n## Throughput, one process, CPU seconds ({args.repeat} passes over the pages)")
        r = throughput(docs, args.repeat, ours, theirs)
        ours_rate, theirs_rate = r["docs"] / r["ours_s"], r["docs"] / r["datatrove_s"]
        print("| engine | docs | CPU s | docs/s | MB/s |\n|---|---|---|---|---|")
        for name, sec in (
            ("ours (URL filter + PII, phones + IPv6)", r["ours_s"]),
            ("datatrove (URLFilter + PIIFormatter)", r["datatrove_s"]),
        ):
            print(f"| {name} | {r['docs']} | {sec:.2f} | {r['docs'] / sec:,.0f} | {r['mb'] / sec:.1f} |")
        print(f"ratio ours / datatrove: {ours_rate / theirs_rate:.2f}x per core")


if __name__ == "__main__":
    main()
