"""tokenize shard task: exact packing, the val split by original id, the uint16/uint32 switch, shuffling,
and the tokenizer sample that leaves out every document val can hold."""

import numpy as np
import pyarrow as pa
import pytest

from models.tokenizer import Tokenizer, train_tokenizer, training_lines
from storage.documents import Document, DocumentWriter, read_documents
from storage.token_shards import TokenShards, pack_documents
from tasks.text import sample_key
from tasks.tokenization import (
    DROP_EMPTY,
    DROP_VAL_REPEAT,
    VAL_BUCKETS,
    TokenizeJob,
    TokenizeParams,
    TokenizerSampleJob,
    flatten_with_eos,
    held_out_sample_counts,
    held_out_sample_lines,
    min_tokens,
    pack,
    route,
    row_order,
    tail_path,
    tokenize_shard,
    tokenizer_sample_shard,
    train_tokenizer_task,
    val_reserve,
    val_threshold_for,
    write_rows,
)

REPEAT = pa.field("repeat", pa.int32())
SAMPLE_ALL = TokenizerSampleJob(threshold=1.0, seed=0, main_shards=1)  # every first copy of one main shard
SAMPLE_ANNEAL = TokenizerSampleJob(threshold=1.0, seed=0, main_shards=0)  # shard 0 is an anneal shard
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "omega", "pi"]


def _text(rng, n):
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)) + "."


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = np.random.default_rng(0)
    lines = [_text(rng, 30) for _ in range(400)]
    return Tokenizer(train_tokenizer(lines, tmp_path_factory.mktemp("t") / "tokenizer.model", vocab_size=320))


def test_flatten_with_eos_appends_eos_and_records_starts():
    flat, starts = flatten_with_eos([[5, 6], [], [7]], eos_id=2, dtype=np.dtype(np.uint16))
    assert flat.tolist() == [5, 6, 2, 2, 7, 2] and starts.tolist() == [0, 3, 4] and flat.dtype == np.uint16


def test_pack_matches_the_reference_packer():
    rng = np.random.default_rng(1)
    docs = [rng.integers(4, 300, int(rng.integers(0, 40))).tolist() for _ in range(60)]
    flat, starts = flatten_with_eos(docs, 2, np.dtype(np.uint16))
    rows, offsets, tail, tail_starts = pack(flat, starts, 17)
    ref = list(pack_documents(docs, 16, 2))
    assert len(rows) == len(ref) == len(flat) // 17
    for row, off, (ref_row, ref_off) in zip(rows, offsets, ref):
        assert row.tolist() == ref_row.tolist() and off.tolist() == ref_off
    assert tail.tolist() == flat[len(rows) * 17 :].tolist()
    assert tail_starts.tolist() == [s - len(rows) * 17 for s in starts.tolist() if s >= len(rows) * 17]


def test_row_order_is_a_seeded_permutation():
    a = row_order(50, 0, "train", 3, True)
    assert sorted(a.tolist()) == list(range(50)) and a.tolist() != list(range(50))
    assert a.tolist() == row_order(50, 0, "train", 3, True).tolist()
    assert a.tolist() != row_order(50, 0, "train", 4, True).tolist() != row_order(50, 1, "train", 3, True).tolist()
    assert row_order(50, 0, "val", 3, False).tolist() == list(range(50))


def test_val_split_by_original_id_drops_repeats_of_val_documents():
    job = TokenizeJob(params=TokenizeParams(), tokenizer_file="x", val_threshold=0.3)
    ids = [f"doc-{i}" for i in range(200)]
    val = [i for i in ids if sample_key("val", 0, i) < 0.3]
    train = [i for i in ids if i not in val]
    assert route(Document(id=val[0], text="t", meta={"repeat": 0}), job) == (
        "val",
        int(sample_key("val", 0, val[0]) * VAL_BUCKETS),
    )
    assert route(Document(id=f"{val[0]}#r2", text="t", meta={"repeat": 2}), job) == (None, -1)
    assert route(Document(id=f"{train[0]}#r1", text="t", meta={"repeat": 1}), job) == ("train", -1)
    assert route(Document(id=train[0], text="t"), job.model_copy(update={"kind": "anneal"})) == ("anneal", -1)


@pytest.mark.parametrize("vocab,dtype", [(65_536, np.uint16), (70_000, np.uint32)])
def test_uint16_uint32_switch(tmp_path, vocab, dtype):
    rows = np.array([[0, 1, 2, vocab - 1], [vocab - 2, 5, 2, 7]], dtype=np.int64)
    write_rows(str(tmp_path / "tokens-00000.arrow"), rows, [np.array([0]), np.array([3])], np.arange(2), 3, vocab, 2)
    shards = TokenShards(str(tmp_path))
    assert shards.dtype == dtype and shards.get([0, 1]).tolist() == rows.tolist()
    assert [o.tolist() for o in shards.offsets([0, 1])] == [[0], [3]]


def test_tokenize_shard_packs_every_token_in_order(tmp_path, tok):
    rng = np.random.default_rng(2)
    docs = [Document(id=f"d{i}", text=_text(rng, int(rng.integers(1, 60))), meta={"repeat": 0}) for i in range(120)]
    docs += [Document(id=f"{d.id}#r1", text=d.text, meta={"repeat": 1}) for d in docs[:40]]
    docs.insert(7, Document(id="blank", text=" \n\t ", meta={"repeat": 0}))
    src = str(tmp_path / "part-00000.parquet")
    with DocumentWriter(src, extra=[REPEAT]) as w:
        for d in docs:
            w.write(d)
    params = TokenizeParams(seq_len=31, shuffle=False, val_fraction=0.2)
    job = TokenizeJob(params=params, tokenizer_file=str(tok.path), val_threshold=0.2)
    out = str(tmp_path / "out")
    res = tokenize_shard.fn(src, out, 0, job)
    is_val = {d.id: sample_key("val", 0, d.id.split("#")[0]) < 0.2 for d in docs}
    rejected = {d.id: d.meta["reason"] for d in read_documents(f"{out}/rejected/part-00000.parquet")}
    assert rejected == {
        "blank": DROP_EMPTY,
        **{d.id: DROP_VAL_REPEAT for d in docs if d.meta["repeat"] and is_val[d.id]},
    }
    assert res.stats.docs_in == len(docs) == res.stats.docs_out + len(rejected)
    for split in ("train", "val"):
        kept = [d for d in docs if d.id not in rejected and is_val[d.id] == (split == "val")]
        expected, starts = [], []
        for d in kept:
            starts.append(len(expected))
            expected += tok.encode([d.text])[0] + [tok.eos_id]
        shards = TokenShards(f"{out}/{split}")
        n = len(shards)
        z = np.load(tail_path(out, split, 0))
        assert np.concatenate([shards.get(range(n)).reshape(-1), z["tokens"]]).tolist() == expected
        got_starts = [i * 32 + int(o) for i, offs in enumerate(shards.offsets(range(n))) for o in offs]
        assert got_starts + (z["starts"] + n * 32).tolist() == starts
        assert res.stats.counters[f"tokens.{split}"] == len(expected)
    first_copy_tokens = sum(len(tok.encode([d.text])[0]) + 1 for d in docs if d.meta["repeat"] == 0 and d.text.strip())
    assert sum(res.val_bucket_tokens) == first_copy_tokens


def _sample_mix(tmp_path, docs):
    src = str(tmp_path / "part-00000.parquet")
    with DocumentWriter(src, extra=[REPEAT]) as w:
        for d in docs:
            w.write(d)
    return src


def test_tokenizer_sample_leaves_out_every_document_val_can_hold(tmp_path, tok):
    """The tokenizer trains on held-out text only: no val document (at any threshold the flow can raise
    val to) and no repeat copy of one is in its sample; the rest of the sampled first copies all are."""
    rng = np.random.default_rng(3)
    docs = [
        Document(id=f"d{i}", text=f"marker{i}x " + _text(rng, int(rng.integers(5, 60))), meta={"repeat": 0})
        for i in range(150)
    ]
    docs += [Document(id=f"{d.id}#r1", text=d.text, meta={"repeat": 1}) for d in docs[::3]]
    src = _sample_mix(tmp_path, docs)
    counts = tokenizer_sample_shard.fn(src, str(tmp_path / "s"), 0, SAMPLE_ALL)
    firsts = [d for d in docs if d.meta["repeat"] == 0]
    assert counts.docs == len(firsts) and len(counts.val_min_tokens) == VAL_BUCKETS
    assert sum(counts.val_min_tokens) == sum(min_tokens(d.text) for d in firsts)
    # the real per-bucket tokens under a trained tokenizer: the threshold the flow would raise val to
    real = np.zeros(VAL_BUCKETS, dtype=np.int64)
    for d, ids in zip(firsts, tok.encode([d.text for d in firsts])):
        assert len(ids) + 1 >= min_tokens(d.text)
        real[int(sample_key("val", 0, d.id) * VAL_BUCKETS)] += len(ids) + 1
    for row_len in (32, 256, 1024):
        reserve = val_reserve(np.array(counts.val_min_tokens), row_len, 0.01)
        chosen = val_threshold_for(real, row_len, "m")
        assert 0.01 <= reserve < 1 and chosen <= reserve, (row_len, chosen, reserve)
        lines = set(held_out_sample_lines(str(tmp_path / "s"), reserve))
        val = {d.id for d in firsts if sample_key("val", 0, d.id) < max(chosen, 0.01)}
        for d in firsts:
            assert (f"marker{d.id[1:]}x" in " ".join(lines)) == (sample_key("val", 0, d.id) >= reserve)
        assert val and not any(f"marker{v[1:]}x " in line for v in val for line in lines)
        kept = held_out_sample_counts(str(tmp_path / "s"), reserve)
        assert kept["docs"] + kept["val_excluded_docs"] == len(firsts) and kept["lines"] == len(
            list(held_out_sample_lines(str(tmp_path / "s"), reserve))
        )
        job = TokenizeJob(params=TokenizeParams(), tokenizer_file="x", val_threshold=chosen)
        for d in docs:  # a repeat copy of a val document never reaches train
            if d.meta["repeat"] and d.id.split("#")[0] in val:
                assert route(d, job) == (None, -1)
    # too little text to bound a val sequence: everything is reserved (the flow then raises a clear error)
    assert val_reserve(np.array(counts.val_min_tokens), 10**7, 0.01) == 1.0


def test_anneal_shards_are_sampled_whole(tmp_path):
    docs = [Document(id=f"a{i}", text=f"anneal text number {i}", meta={"repeat": 0}) for i in range(50)]
    counts = tokenizer_sample_shard.fn(_sample_mix(tmp_path, docs), str(tmp_path / "s"), 0, SAMPLE_ANNEAL)
    assert counts.val_min_tokens == [] and held_out_sample_counts(str(tmp_path / "s"), 0.9)["docs"] == 50


def test_real_text_val_is_held_out_from_the_tokenizer(shared_data, tmp_path):
    """Real news article bodies: the stage's sample + train leaves val out, and val bytes/token then
    matches text the tokenizer never saw, where the in-sample tokenizer flatters val."""
    import json

    truth = shared_data / "html_extraction/scrapinghub_article_extraction_benchmark/ground-truth.json"
    texts = [v["articleBody"] for v in json.loads(truth.read_text()).values() if len(v["articleBody"]) > 500]
    docs = [Document(id=f"art{i}", text=t, meta={"repeat": 0}) for i, t in enumerate(texts)]
    src = _sample_mix(tmp_path, docs)
    counts = tokenizer_sample_shard.fn(src, str(tmp_path / "s"), 0, SAMPLE_ALL)
    reserve = val_reserve(np.array(counts.val_min_tokens), 1025, 0.2)
    params = TokenizeParams(vocab_size=3000, seq_len=1024, val_fraction=0.2)
    held = train_tokenizer_task.fn(str(tmp_path / "s"), params, reserve)
    tok_held = Tokenizer(tmp_path / "s" / "tokenizer.model")
    val = [d.text for d in docs if sample_key("val", 0, d.id) < reserve]
    sample = set(held_out_sample_lines(str(tmp_path / "s"), reserve))
    assert val and not any(line in sample for t in val for line in training_lines(t) if len(line) > 80)
    in_sample = Tokenizer(
        train_tokenizer([ln for d in docs for ln in training_lines(d.text)], tmp_path / "all.model", vocab_size=3000)
    )

    def bytes_per_token(t):
        return sum(len(x.encode()) for x in val) / sum(len(ids) + 1 for ids in t.encode(val))

    assert held["sample_bytes_per_token"] > bytes_per_token(tok_held)  # held-out text compresses worse
    assert bytes_per_token(in_sample) > bytes_per_token(tok_held) * 1.03  # the old, in-sample val flatters
