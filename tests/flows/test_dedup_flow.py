"""dedup_flow under a Prefect test server: global exact + near dedup over shards, keep rules, the report,
reuse, bad input, and (slow) the demo crawl's planted duplicates."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.dedup import edit_to_jaccard, stdlib_docstrings
from flows.dedup import dedup_flow
from flows.pipeline import Stage, upstream_of
from flows.stage import task_runner
from storage.documents import Document, read_documents
from storage.manifest import list_versions, load_manifest
from tasks.dedup import CLUSTERS, WORK, DedupParams
from tasks.dedup.report import plan_for_input
from tasks.dedup.report import report as dedup_report

FLOW = dedup_flow.with_options(task_runner=task_runner(1))
UPSTREAM = str(upstream_of(Stage.DEDUP))  # the artifact dedup reads: the row before it in the pipeline table


def _date(day):
    return f"2024-{1 + day // 28:02d}-{1 + day % 28:02d}T00:00:00Z"


def planted_corpus(seed=0):
    """Documents of two real docstrings each, plus edited copies at Jaccard 0.6-0.98 (the copies dated
    later), plus exact copies; returns (shards, near pairs)."""
    rng = random.Random(seed)
    doc = stdlib_docstrings()
    base = [" ".join(doc[i : i + 2]) for i in range(0, len(doc) - 1, 2)]
    vocabulary = sorted({w for t in base for w in t.split() if w.isalpha()})
    docs = [
        Document(id=f"b{i:03d}", text=t, url=f"https://docs.example/{i}", crawl_date=_date(i % 100))
        for i, t in enumerate(base)
    ]
    for i, original in enumerate(base[:100]):
        copy, _ = edit_to_jaccard(original, rng.uniform(0.6, 0.98), rng, vocabulary)
        docs.append(
            Document(id=f"n{i:03d}", text=copy, url=f"https://mirror.example/{i}", crawl_date=_date(i % 100 + 150))
        )
    return docs


def _shard(docs, n=3):
    return [docs[k::n] for k in range(n)]


def _rejected(root, m):
    out = {}
    for s in m.rejected:
        for d in read_documents(f"{root}/dedup/{m.version}/{s.name}"):
            out[d.id] = (d.meta["reason"], json.loads(d.meta["reason_detail"]))
    return out


def test_global_exact_and_near_dedup(prefect_backend, data_root, make_version):
    docs = planted_corpus()
    by_id = {d.id: d for d in docs}
    # an exact copy (case + whitespace) in another shard, dated EARLIER than b005: the copy is kept
    docs.append(
        Document(
            id="x005",
            text="  " + by_id["b005"].text.upper().replace(" ", "\n ", 3),
            url="https://copy.example/5",
            crawl_date="2023-01-01T00:00:00Z",
        )
    )
    # a duplicate pair split across shards on purpose: shard 0 holds b120, shard 2 its near copy
    near = edit_to_jaccard(by_id["b120"].text, 0.9, random.Random(1), by_id["b121"].text.split())[0]
    shards = _shard([d for d in docs if d.id != "b120"])
    shards[0].append(by_id["b120"])
    shards[2].append(Document(id="split-copy", text=near, url="https://split.example", crawl_date=_date(199)))
    make_version(data_root, UPSTREAM, shards, version="q1")
    everything = [d for s in shards for d in s]

    v = FLOW(params=DedupParams(), data_root=str(data_root))
    m = load_manifest(str(data_root), Stage.DEDUP)
    assert m.version == v and m.inputs == {UPSTREAM: "q1"}
    assert m.stats.docs_in == len(everything) == m.stats.docs_out + m.stats.docs_dropped
    rejected = _rejected(data_root, m)
    assert rejected["b005"] == ("exact_duplicate", {"kept_id": "x005"})
    assert m.stats.dropped["exact_duplicate"] == 1
    reason, detail = rejected["split-copy"]
    assert reason == "near_duplicate" and detail["kept_id"] == "b120" and isinstance(detail["cluster_id"], int)

    # quality against brute-force exact Jaccard over all pairs
    texts = {d.id: d.text for d in everything}
    truth = _truth(texts)
    clusters = pq.read_table(f"{data_root}/dedup/{v}/{CLUSTERS}").to_pylist()
    group = {r["doc_id"]: r["kept_id"] for r in clusters}
    recall = sum(a in group and group.get(a) == group.get(b) for a, b in truth) / len(truth)
    assert len(truth) >= 40 and recall >= 0.92, (len(truth), recall)
    neighbours = {}
    for a, b in truth:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    near_removed = [i for i, (r, _) in rejected.items() if r == "near_duplicate"]
    good = sum(any(group.get(j) == group[i] for j in neighbours.get(i, ())) for i in near_removed)
    precision = good / len(near_removed)
    assert precision >= 0.98, precision
    date = {d.id: d.crawl_date for d in everything}
    assert all(date[rejected[i][1]["kept_id"]] <= date[i] for i in near_removed), "the earliest copy is kept"

    # artifacts and the report
    vdir = data_root / "dedup" / v
    assert (vdir / "s_curve.png").stat().st_size > 1000 and not (vdir / WORK).exists()
    report = dedup_report(m, str(data_root))
    for needle in (
        "exact duplicates: 1",
        "Cluster sizes",
        "Largest clusters",
        "S-curve (14 bands x 8 rows)",
        "0.924",
        "https://",
    ):
        assert needle in report
    assert m.extras["largest_clusters"][0]["size"] >= 2

    # same params: reused; the plan reads the input's size
    assert FLOW(params=DedupParams(), data_root=str(data_root)) == v
    assert len(list_versions(str(data_root), Stage.DEDUP)) == 1
    plan = plan_for_input(str(data_root), DedupParams(), input_kind=UPSTREAM)
    assert f"documents: {len(everything)}" in plan and "signatures on disk" in plan


def test_cli_inspect_report_and_plan(prefect_backend, data_root, make_version, capsys):
    from flows.cli import main

    text = " ".join(stdlib_docstrings()[0].split())
    make_version(
        data_root,
        UPSTREAM,
        [
            [
                Document(id="a", text=text, url="https://a.example", crawl_date="2024-01-01"),
                Document(id="b", text=text.upper(), crawl_date="2024-02-01"),
            ]
        ],
    )
    assert main(["inspect", "dedup", "--plan", "--data-root", str(data_root)]) == 0
    assert f"## Dedup plan for {UPSTREAM}@fixture1" in capsys.readouterr().out
    FLOW(params=DedupParams(), data_root=str(data_root))
    assert main(["inspect", "dedup", "--data-root", str(data_root), "--rejected"]) == 0
    out = capsys.readouterr().out
    assert "exact duplicates: 1" in out and "https://a.example" in out
    assert 'reason=exact_duplicate {"kept_id": "a"}' in out
    assert main(["inspect", "ingest", "--plan", "--data-root", str(data_root)]) == 2


def _truth(texts):
    from bench.dedup import shingle_set
    from tasks.dedup.minhash import jaccard_sorted

    ids = sorted(texts)
    sets = [shingle_set(texts[i]) for i in ids]
    return {
        (ids[i], ids[j])
        for i in range(len(ids))
        for j in range(i + 1, len(ids))
        if jaccard_sorted(sets[i], sets[j]) >= 0.8
    }


def test_highest_quality_keep_rule_and_missing_column(prefect_backend, data_root, make_version):
    text = " ".join(stdlib_docstrings()[3].split())
    docs = [
        Document(id="low", text=text, crawl_date="2024-01-01T00:00:00Z", meta={"quality_score": 0.2}),
        Document(id="high", text=text.lower(), crawl_date="2024-06-01T00:00:00Z", meta={"quality_score": 0.9}),
        Document(id="tie", text=text + "  ", crawl_date="2024-06-01T00:00:00Z", meta={"quality_score": 0.9}),
    ]
    make_version(data_root, UPSTREAM, [docs[:1], docs[1:]], extra=[pa.field("quality_score", pa.float64())])
    v = FLOW(params=DedupParams(keep="highest_quality"), data_root=str(data_root))
    rejected = _rejected(data_root, load_manifest(str(data_root), Stage.DEDUP, v))
    assert rejected == {
        "low": ("exact_duplicate", {"kept_id": "high"}),
        "tie": ("exact_duplicate", {"kept_id": "high"}),
    }
    # earliest keeps the January copy instead
    v2 = FLOW(params=DedupParams(keep="earliest"), data_root=str(data_root))
    assert set(_rejected(data_root, load_manifest(str(data_root), Stage.DEDUP, v2))) == {"high", "tie"}


def test_missing_quality_column_fails_before_any_shard(prefect_backend, data_root, make_version):
    make_version(data_root, UPSTREAM, [[Document(id="a", text="some text")]])
    with pytest.raises(ValueError, match="keep='highest_quality' needs a 'quality_score' column"):
        FLOW(params=DedupParams(keep="highest_quality"), data_root=str(data_root))
    assert list_versions(str(data_root), Stage.DEDUP) == []
    assert not [p for p in (data_root / "dedup").iterdir() if p.is_dir()]  # the aborted version is gone


def test_exact_only_keeps_near_duplicates_and_empty_inputs(prefect_backend, data_root, make_version):
    a = " ".join(stdlib_docstrings()[7].split())
    b = edit_to_jaccard(a, 0.9, random.Random(0), ["zebra", "quartz"])[0]
    make_version(
        data_root,
        UPSTREAM,
        [
            [
                Document(id="a", text=a, crawl_date="2024-01-01"),
                Document(id="b", text=b, crawl_date="2024-01-02"),
                Document(id="c", text="", crawl_date="2024-01-03"),
                Document(id="d", text="", crawl_date="2024-01-04"),
            ],
            [],
        ],
    )
    v = FLOW(params=DedupParams(near=False), data_root=str(data_root))
    m = load_manifest(str(data_root), Stage.DEDUP, v)
    assert _rejected(data_root, m) == {"d": ("exact_duplicate", {"kept_id": "c"})}
    assert "S-curve" not in dedup_report(m, str(data_root))
    v2 = FLOW(params=DedupParams(), data_root=str(data_root))
    assert _rejected(data_root, load_manifest(str(data_root), Stage.DEDUP, v2))["b"][0] == "near_duplicate"


@pytest.mark.slow
def test_demo_crawl_duplicates_are_removed(prefect_backend, data_root, make_version, tmp_path):
    """The demo crawl's planted exact and near duplicates (ground truth) are removed, nothing else is."""
    from demo.crawl import generate_demo_crawl

    truth = [json.loads(x) for x in open(generate_demo_crawl(tmp_path / "crawl", pages=400).ground_truth_path)]
    pages = [t for t in truth if t["text"] and (t["expected_drop"] or "dedup").startswith("dedup")]
    docs = [
        Document(id=f"p{i:04d}", text=t["text"], url=t["url"], crawl_date=t["warc_date"]) for i, t in enumerate(pages)
    ]
    make_version(data_root, UPSTREAM, _shard(docs, 4))
    v = FLOW(params=DedupParams(), data_root=str(data_root))
    rejected = _rejected(data_root, load_manifest(str(data_root), Stage.DEDUP, v))
    url_of = {d.id: d.url for d in docs}
    got = {url_of[i]: (r, url_of[d["kept_id"]]) for i, (r, d) in rejected.items()}
    want = {
        t["url"]: ("exact_duplicate", t["duplicate_of"])
        if t["expected_drop"] == "dedup:exact"
        else ("near_duplicate", t["near_duplicate_of"])
        for t in pages
        if t["expected_drop"]
    }
    assert len(want) >= 40
    missed = set(want) - set(got)
    assert set(got) <= set(want), f"dropped pages that should stay: {set(got) - set(want)}"
    assert len(missed) <= 0.08 * len(want), missed
    assert all(got[u] == want[u] for u in got)
    assert np.mean([t["near_duplicate_jaccard"] >= 0.8 for t in pages if t["near_duplicate_jaccard"]]) == 1.0


def test_no_documents_at_all_gives_an_empty_version(prefect_backend, data_root, make_version):
    """Every upstream shard empty (quality kept nothing of a small real crawl): dedup crashed with
    FileNotFoundError on `_work/minhash/decisions-00000.parquet`; it now commits an empty version."""
    make_version(data_root, UPSTREAM, [[], []])
    v = FLOW(params=DedupParams(), data_root=str(data_root))
    m = load_manifest(str(data_root), Stage.DEDUP, v)
    assert (m.stats.docs_in, m.stats.docs_out) == (0, 0) and [s.rows for s in m.shards] == [0, 0]
