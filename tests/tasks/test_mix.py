"""mix: the plan (budget, targets, shortfall), the seeded sampling, conservation, repeats and annealing."""

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from storage.documents import Document, DocumentWriter, read_documents
from tasks.mix import (DROP_DOWNSAMPLED, DROP_UNWEIGHTED, HASH_BUCKETS, MixJob, MixParams, count_batches,
                       key_threshold, merge_counts, mix_shard, plan_mix, sample_key)

QUALITY = pa.field("quality_score", pa.float64())


def _docs(source, n, length, seed=0):
    rng = np.random.default_rng(seed)
    return [Document(id=f"{source}-{i}", text="w" * int(rng.integers(length // 2, length * 3 // 2)), source=source,
                     url=f"http://{source}.example/{i}") for i in range(n)]


def _counts(docs, seed=0, quality=False):
    rows = [{"id": d.id, "text": d.text, "source": d.source, "quality_score": d.meta.get("quality_score")}
            for d in docs]
    return count_batches([pa.RecordBatch.from_pylist(rows)], seed, quality)


def _write(path, docs, extra=None):
    with DocumentWriter(str(path), extra=extra) as w:
        for d in docs:
            w.write(d)
    return str(path)


def _chars(docs):
    return sum(len(d.text) for d in docs)


def test_default_budget_upsamples_scarce_source_to_max_repeats_then_downsamples():
    docs = [Document(id="w", text="w" * 9000, source="web"), Document(id="c", text="c" * 100, source="code")]
    plan = plan_mix(_counts(docs), MixParams(weights={"web": 0.9, "code": 0.1}))
    # using all web once would need code x10 > max_repeats 4, so code is capped at 4 epochs and sets the total
    assert plan.budget_from == "all_data" and plan.budget_chars == pytest.approx(4000)
    assert plan.sources["code"].rate == 4 and plan.sources["code"].full_copies == 4
    assert plan.sources["web"].rate == pytest.approx(0.4)
    assert not plan.renormalised


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
    plan = plan_mix(_counts(docs), MixParams(weights={"web": 0.9, "code": 0.1}, budget_chars=20000,
                                             allow_shortfall=True))
    assert plan.renormalised
    assert plan.sources["code"].target_chars == pytest.approx(400) and plan.sources["code"].wanted_chars == 2000
    assert plan.sources["web"].target_chars == pytest.approx(19600)  # the deficit moved to web
    assert plan.sources["web"].rate == pytest.approx(19600 / 9000)


def test_budget_tokens_converts_with_chars_per_token():
    docs = [Document(id="w", text="w" * 9000, source="web")]
    plan = plan_mix(_counts(docs), MixParams(weights={"web": 1}, budget_tokens=1000, chars_per_token=3.0))
    assert plan.budget_from == "budget_tokens" and plan.budget_chars == 3000
    assert plan.sources["web"].rate == pytest.approx(1 / 3)


def test_missing_source_is_an_error_unless_shortfall_allowed():
    docs = [Document(id="w", text="w" * 9000, source="web")]
    params = dict(weights={"web": 0.9, "academic": 0.1})
    with pytest.raises(ValueError, match="source 'academic' has weight 0.1 but no documents in the input"):
        plan_mix(_counts(docs), MixParams(**params))
    plan = plan_mix(_counts(docs), MixParams(**params, allow_shortfall=True))
    assert plan.renormalised and plan.sources["academic"].rate == 0 and plan.sources["web"].rate == 1
    with pytest.raises(ValueError, match="none of the weighted sources"):
        plan_mix(_counts(docs), MixParams(weights={"code": 1.0}))


def test_params_validation():
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
    kept = list(read_documents(f"{out}/part-00000.parquet"))
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
        mix_count_shard.fn(src, MixParams(weights={"web": 1.0}, anneal_fraction=0.1))
