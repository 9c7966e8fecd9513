"""mix: the plan (budget, targets, shortfall, absent sources), source rules, the seeded sampling,
conservation, repeats and annealing; the default config on real crawl files keeps every document."""

import glob
import json
import logging

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from storage.documents import Document, DocumentWriter, Rejects, read_documents
from storage.stats import StageStats
from tasks import ingest
from tasks.ingest.sources import DEFAULT_SOURCE_RULES, SourceRule, classify_source
from tasks.mix import (
    DROP_DOWNSAMPLED,
    DROP_UNWEIGHTED,
    HASH_BUCKETS,
    MixJob,
    MixParams,
    count_batches,
    key_threshold,
    merge_counts,
    mix_count_shard,
    mix_shard,
    plan_mix,
)
from tasks.text import sample_key

QUALITY = pa.field("quality_score", pa.float64())


def _docs(source, n, length, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Document(
            id=f"{source}-{i}",
            text="w" * int(rng.integers(length // 2, length * 3 // 2)),
            source=source,
            url=f"http://{source}.example/{i}",
        )
        for i in range(n)
    ]


def _counts(docs, seed=0, quality=False):
    rows = [
        {"id": d.id, "text": d.text, "source": d.source, "quality_score": d.meta.get("quality_score")} for d in docs
    ]
    return count_batches([pa.RecordBatch.from_pylist(rows)], seed, quality)


def _write(path, docs, extra=None):
    with DocumentWriter(str(path), extra=extra) as w:
        for d in docs:
            w.write(d)
    return str(path)


def _chars(docs):
    return sum(len(d.text) for d in docs)


def test_default_budget_caps_a_scarce_source_without_downsampling_the_others(caplog):
    docs = [Document(id="w", text="w" * 9000, source="web"), Document(id="c", text="c" * 100, source="code")]
    with caplog.at_level(logging.INFO, logger="tasks.mix"):
        plan = plan_mix(_counts(docs), MixParams(weights={"web": 0.9, "code": 0.1}))
    # using all web once would need code x10 > max_repeats 4: code is capped at 4 epochs, web stays at 1 (it used
    # to be down-sampled to 0.4 so that the scarce source set the total), and there is no error
    assert plan.budget_from == "all_data" and plan.budget_chars == pytest.approx(9400)
    assert plan.sources["code"].rate == 4 and plan.sources["code"].full_copies == 4
    assert plan.sources["web"].rate == 1 and plan.sources["web"].threshold == 0
    assert plan.capped == ["code"] and plan.sources["code"].status == "capped" and plan.sources["web"].status == "ok"
    assert plan.sources["code"].share_target == pytest.approx(0.1)
    assert plan.sources["code"].share_planned == pytest.approx(400 / 9400)
    assert not plan.renormalised and not plan.redistributed
    assert "['code'] would need more than max_repeats=4" in caplog.text


def test_default_budget_uses_every_document_when_repeats_suffice():
    docs = [Document(id="w", text="w" * 9000, source="web"), Document(id="c", text="c" * 500, source="code")]
    plan = plan_mix(_counts(docs), MixParams(weights={"web": 0.9, "code": 0.1}))
    assert plan.budget_chars == pytest.approx(10000)
    assert plan.sources["web"].rate == 1 and plan.sources["code"].rate == 2


def test_shortfall_fails_naming_the_source_and_the_amount():
    docs = [Document(id="w", text="w" * 9000, source="web"), Document(id="c", text="c" * 100, source="code")]
    with pytest.raises(ValueError) as err:
        plan_mix(_counts(docs), MixParams(weights={"web": 0.9, "code": 0.1}, budget_chars=20000))
    msg = str(err.value)
    assert "source 'code' is short by 1,600 characters (80% of its target 2,000" in msg
    assert "mix.weights.code" in msg and "mix.allow_shortfall: true" in msg and "'web'" not in msg


def test_allow_shortfall_renormalises_and_reports():
    docs = [Document(id="w", text="w" * 9000, source="web"), Document(id="c", text="c" * 100, source="code")]
    plan = plan_mix(
        _counts(docs), MixParams(weights={"web": 0.9, "code": 0.1}, budget_chars=20000, allow_shortfall=True)
    )
    assert plan.renormalised
    assert plan.sources["code"].target_chars == pytest.approx(400) and plan.sources["code"].wanted_chars == 2000
    assert plan.sources["web"].target_chars == pytest.approx(19600)  # the deficit moved to web
    assert plan.sources["web"].rate == pytest.approx(19600 / 9000)


def test_budget_tokens_converts_with_chars_per_token():
    docs = [Document(id="w", text="w" * 9000, source="web")]
    plan = plan_mix(_counts(docs), MixParams(weights={"web": 1}, budget_tokens=1000, chars_per_token=3.0))
    assert plan.budget_from == "budget_tokens" and plan.budget_chars == 3000
    assert plan.sources["web"].rate == pytest.approx(1 / 3)


def test_absent_source_share_is_redistributed_in_proportion(caplog):
    # the real-crawl failure: the weights name a source (here academic) the crawl has no page of
    docs = [Document(id="w", text="w" * 6000, source="web"), Document(id="c", text="c" * 3000, source="code")]
    params = dict(weights={"web": 0.4, "code": 0.2, "academic": 0.4})
    with caplog.at_level(logging.WARNING, logger="tasks.mix"):
        plan = plan_mix(_counts(docs), MixParams(**params))
    assert "['academic'] have no documents in the input; their 40.0% share is redistributed" in caplog.text
    assert plan.redistributed == {"academic": pytest.approx(0.4)} and not plan.capped and not plan.renormalised
    src = plan.sources
    assert src["academic"].status == "absent" and src["academic"].rate == 0 and src["academic"].weight == 0.4
    assert src["web"].share_target == pytest.approx(2 / 3) and src["code"].share_target == pytest.approx(1 / 3)
    assert src["web"].rate == 1 and src["code"].rate == 1 and plan.budget_chars == 9000  # already at 2:1
    # with an explicit budget the present sources share it at the redistributed ratio, without a shortfall
    plan = plan_mix(_counts(docs), MixParams(**params, budget_chars=18000))
    assert plan.sources["web"].target_chars == pytest.approx(12000) and plan.sources["code"].rate == 2
    assert not plan.renormalised
    with pytest.raises(
        ValueError,
        match=r"sources \['academic'\] have no documents in the input \(sources present: "
        r"code, web\). Fix: .*mix.on_absent_source: redistribute",
    ):
        plan_mix(_counts(docs), MixParams(**params, on_absent_source="error"))
    with pytest.raises(ValueError, match="none of the weighted sources"):
        plan_mix(_counts(docs), MixParams(weights={"news": 1.0}))


def test_params_validation():
    with pytest.raises(ValidationError, match=r"pattern '\(\^' is not a valid regular expression"):
        MixParams(source_rules=[{"pattern": "(^", "source": "web"}])
    with pytest.raises(ValidationError, match="source_rules.0.source"):
        MixParams(source_rules=[{"pattern": "x", "source": "bad name"}])
    with pytest.raises(
        ValidationError,
        match=r"source_rules\[0\] maps URLs to source 'docs', which has no entry in "
        r"weights.*add weights.docs",
    ):
        MixParams(source_rules=[{"pattern": "readthedocs", "source": "docs"}])
    with pytest.raises(ValidationError, match="finite and >= 0"):
        MixParams(weights={"web": -1.0})
    with pytest.raises(ValidationError, match="positive weight"):
        MixParams(weights={"web": 0.0})
    with pytest.raises(ValidationError, match="not both"):
        MixParams(budget_chars=10, budget_tokens=10)


def test_key_threshold_reads_the_histogram():
    hist = np.full(HASH_BUCKETS, 10)
    assert key_threshold(hist, 0.25) == pytest.approx(0.25)
    assert key_threshold(hist, 0.0) == 0.0 and key_threshold(hist, 1.0) == 1.0
    skewed = np.zeros(HASH_BUCKETS)
    skewed[:10] = 100  # all characters in the lowest keys
    assert key_threshold(skewed, 0.5) == pytest.approx(5 / HASH_BUCKETS)


def _run_shard(tmp_path, docs, params, extra=None):
    src = _write(tmp_path / "in.parquet", docs, extra)
    plan = plan_mix(merge_counts([_counts(docs, params.seed, params.anneal_fraction > 0)]), params)
    out = str(tmp_path / "out")
    res = mix_shard.fn(src, out, 0, MixJob(params=params, plan=plan))
    kept = list(read_documents(f"{out}/data/part-00000.parquet"))
    rejected = list(read_documents(f"{out}/rejected/part-00000.parquet"))
    return plan, res, kept, rejected, out


def test_sampling_hits_the_targets_conserves_documents_and_marks_repeats(tmp_path):
    docs = _docs("web", 1500, 400, seed=1) + _docs("code", 120, 400, seed=2) + _docs("forum", 20, 100, seed=3)
    params = MixParams(weights={"web": 0.7, "code": 0.3}, budget_chars=400_000)
    plan, res, kept, rejected, _ = _run_shard(tmp_path, docs, params)
    s = res.stats
    assert s.docs_in == len(docs) == s.docs_out + sum(s.dropped.values())
    assert s.dropped[DROP_UNWEIGHTED] == 20 and s.dropped[DROP_DOWNSAMPLED] > 0
    assert {d.meta["reason"] for d in rejected} == {DROP_UNWEIGHTED, DROP_DOWNSAMPLED}
    assert res.shard.rows == len(kept) == s.counters["copies"] == s.docs_out + s.counters["repeat_copies"]
    for src, share in (("web", 0.7), ("code", 0.3)):
        got = _chars(d for d in kept if d.source == src)
        assert got == s.counters[f"chars_out.{src}"]
        assert abs(got - share * 400_000) / (share * 400_000) < 0.04, (src, got)
    code_rate = plan.sources["code"].rate
    assert 2 < code_rate < 3  # up-sampled: every code document 2 or 3 times
    by_id = {}
    for d in kept:
        base, _, k = d.id.partition("#r")
        assert d.meta["repeat"] == (int(k) if k else 0)
        by_id.setdefault(base, []).append(d.meta["repeat"])
    assert all(sorted(v) == list(range(len(v))) for v in by_id.values())
    assert {len(v) for b, v in by_id.items() if b.startswith("code")} == {2, 3}
    assert {len(v) for b, v in by_id.items() if b.startswith("web")} == {1}
    # copies are written in passes: no second copy before the last first copy
    reps = [d.meta["repeat"] for d in kept]
    assert reps == sorted(reps)


def test_sampling_is_deterministic_and_seeded(tmp_path):
    docs = _docs("web", 400, 200)
    ids = []
    for i, seed in enumerate((0, 0, 1)):
        d = tmp_path / str(i)
        d.mkdir()
        _, _, kept, _, _ = _run_shard(d, docs, MixParams(weights={"web": 1.0}, budget_chars=30_000, seed=seed))
        ids.append([k.id for k in kept])
    assert ids[0] == ids[1] and ids[0] != ids[2]
    # the decision is the documented hash, not Python's RNG
    plan = plan_mix(_counts(docs), MixParams(weights={"web": 1.0}, budget_chars=30_000))
    assert ids[0] == [d.id for d in docs if sample_key("mix", 0, d.id) < plan.sources["web"].threshold]


def test_anneal_split_takes_the_highest_quality_share(tmp_path):
    docs = _docs("web", 1000, 300)
    rng = np.random.default_rng(5)
    for d in docs:
        d.meta["quality_score"] = float(rng.random())
    params = MixParams(weights={"web": 1.0}, anneal_fraction=0.2)
    plan, res, kept, _, out = _run_shard(tmp_path, docs, params, extra=[QUALITY])
    anneal = list(read_documents(f"{out}/anneal/part-00000.parquet"))
    assert res.anneal is not None and res.anneal.rows == len(anneal) == res.stats.counters["anneal_copies"]
    assert min(d.meta["quality_score"] for d in anneal) >= plan.anneal_threshold
    assert max(d.meta["quality_score"] for d in kept) < plan.anneal_threshold
    share = _chars(anneal) / (_chars(anneal) + _chars(kept))
    assert abs(share - 0.2) < 0.03, share


def test_anneal_needs_a_quality_column(tmp_path):
    src = _write(tmp_path / "in.parquet", _docs("web", 5, 50))
    from tasks.mix import mix_count_shard

    with pytest.raises(ValueError, match="anneal_fraction=0.1 needs a quality_score column"):
        mix_count_shard.fn(src, "", 0, MixParams(weights={"web": 1.0}, anneal_fraction=0.1))


def test_default_budget_keeps_every_document_and_caps_only_the_scarce_source(tmp_path):
    docs = _docs("web", 1500, 400, seed=1) + _docs("code", 300, 400, seed=2) + _docs("forum", 20, 100, seed=3)
    params = MixParams(weights={"web": 0.5, "code": 0.3, "forum": 0.2, "wikipedia": 0.2})  # no wikipedia here
    plan, res, kept, rejected, _ = _run_shard(tmp_path, docs, params)
    assert {d.id for d in kept if d.meta["repeat"] == 0} == {d.id for d in docs}  # 100% of unique documents
    assert rejected == [] and res.stats.docs_out == res.stats.docs_in == len(docs) and not res.stats.dropped
    assert plan.redistributed == {"wikipedia": pytest.approx(0.2 / 1.2)} and plan.capped == ["forum"]
    web, code, forum = (plan.sources[s] for s in ("web", "code", "forum"))
    assert web.rate == 1 and 2.5 < code.rate < 3.5 and forum.rate == 4 and forum.status == "capped"
    c = res.stats.counters
    assert c["copies.web"] == 1500 and c["copies.forum"] == 80
    # the capped source does not hold the others back: code still reaches its ratio to web
    assert c["chars_out.code"] / c["chars_out.web"] == pytest.approx(0.3 / 0.5, rel=0.03)


class _RejectSink:
    def __init__(self):
        self.rows = []

    def write(self, doc, reason, detail):
        self.rows.append((doc.id, reason))


def _ingest(path):
    stats = StageStats()
    docs = list(
        ingest.process(str(path), ingest.IngestParams(inputs=[str(path)]), stats, Rejects(_RejectSink(), stats))
    )
    return list({d.id: d for d in docs}.values())


def test_default_source_rules_are_ingests_table():
    assert MixParams().source_rules == list(DEFAULT_SOURCE_RULES)
    for url, source in (
        ("https://en.wikipedia.org/wiki/X", "wikipedia"),
        ("https://arxiv.org/abs/1", "academic"),
        ("https://gitlab.com/a/b", "code"),
        ("http://forum.example.org/t/1", "forum"),
        ("https://www.bbc.co.uk/news/1", "news"),
        ("https://example.com/", "web"),
    ):
        assert classify_source(url) == classify_source(url, MixParams().source_rules) == source
    assert classify_source("dns:example.com", [SourceRule(pattern="^dns:", field="url", source="x")]) == "x"


def test_source_rules_override_reclassifies_only_url_derived_sources(tmp_path):
    rows = [
        {
            "id": "derived",
            "text": "The re module provides regular expressions. " * 3,
            "url": "https://docs.python.org/3/library/re.html",
        },
        {
            "id": "own",
            "text": "A page whose input named its source. " * 3,
            "url": "https://docs.python.org/3/library/os.html",
            "source": "code",
        },
        {"id": "plain", "text": "An ordinary page about gardens and rivers. " * 3, "url": "https://example.com/a"},
    ]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = _ingest(jsonl)  # ingest records where each source came from
    assert {(d.id, d.source, d.meta["source_from"]) for d in docs} == {
        ("derived", "code", "url"),
        ("own", "code", "input"),
        ("plain", "web", "url"),
    }
    src = _write(tmp_path / "in.parquet", docs, extra=ingest.INGEST_FIELDS)
    rules = [SourceRule(pattern=r"^docs\.python\.org$", source="pydocs"), *DEFAULT_SOURCE_RULES]
    params = MixParams(weights={"web": 1.0, "code": 1.0, "pydocs": 1.0}, source_rules=rules)
    counts = mix_count_shard.fn(src, "", 0, params).counts
    assert {s: c.docs for s, c in counts.items()} == {"code": 1, "pydocs": 1, "web": 1}
    plan = plan_mix(counts, params)
    out = str(tmp_path / "out")
    res = mix_shard.fn(src, out, 0, MixJob(params=params, plan=plan))
    first = {d.id: d.source for d in read_documents(f"{out}/data/part-00000.parquet") if d.meta["repeat"] == 0}
    assert first == {"derived": "pydocs", "own": "code", "plain": "web"}
    assert res.stats.counters["source_changed"] == 1 and res.stats.counters["docs_out.pydocs"] == 1
    # a shard without the source_from column (hand-made, older ingest) keeps its stored sources
    no_origin = _write(
        tmp_path / "plain.parquet", [Document(id="d", text="x" * 50, source="code", url="https://docs.python.org/3/")]
    )
    assert set(mix_count_shard.fn(no_origin, "", 0, params).counts) == {"code"}


REAL_WARCS = ("warc/commoncrawl/*.warc.gz", "warc/other_crawls/*.warc.gz")


def test_default_config_keeps_every_document_of_real_crawl_files(shared_data, tmp_path, caplog):
    """Real Common Crawl and other crawls' WARCs, through ingest, mixed with the DEFAULT params: the crawl
    lacks some weighted sources and has scarce ones, and every document is still kept (it used to fail)."""
    files = sorted(f for pattern in REAL_WARCS for f in glob.glob(str(shared_data / pattern)))
    assert len(files) >= 6, files
    docs = [d for f in files for d in _ingest(f)]
    assert len(docs) > 100 and all(d.meta["source_from"] == "url" for d in docs)
    src = _write(tmp_path / "in.parquet", docs, extra=ingest.INGEST_FIELDS)
    params = MixParams()
    with caplog.at_level(logging.INFO, logger="tasks.mix"):
        plan = plan_mix(mix_count_shard.fn(src, "", 0, params).counts, params)
    out = str(tmp_path / "out")
    res = mix_shard.fn(src, out, 0, MixJob(params=params, plan=plan))
    kept = list(read_documents(f"{out}/data/part-00000.parquet"))
    assert {d.id for d in kept if d.meta["repeat"] == 0} == {d.id for d in docs}  # 100% of unique documents
    assert res.stats.docs_out == res.stats.docs_in == len(docs) and not res.stats.dropped
    present = {d.source for d in docs}
    assert plan.redistributed and set(plan.redistributed) == set(params.weights) - present
    assert "share is redistributed" in caplog.text
    assert all(1 <= plan.sources[s].rate <= params.max_repeats for s in present)
    assert all(plan.sources[s].status == "capped" for s in plan.capped)
