"""Parquet document shards: schema, streaming read, rejected columns, atomic writes."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.documents import (
    Document,
    DocumentWriter,
    iter_batches,
    read_documents,
    read_schema,
    run_document_shard,
    write_stream,
)
from storage.stats import StageStats


def test_round_trip_with_extra_columns(tmp_path):
    path = str(tmp_path / "part-00000.parquet")
    with DocumentWriter(
        path, extra=[pa.field("language", pa.string()), pa.field("score", pa.float64())], rows_per_group=3
    ) as w:
        for i in range(10):
            w.write(
                Document(id=f"d{i}", text=f"text {i}", url=f"http://x/{i}", meta={"language": "en", "score": i / 10})
            )
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]  # no `.tmp-*` file left (AtomicFile)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4  # streamed in groups, not one table
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    docs = list(read_documents(path))
    assert [d.id for d in docs] == [f"d{i}" for i in range(10)]
    assert docs[3].meta == {"language": "en", "score": 0.3}
    assert sum(b.num_rows for b in iter_batches(path, batch_size=4)) == 10


def test_unknown_meta_key_is_refused(tmp_path):
    w = DocumentWriter(str(tmp_path / "p.parquet"))
    with pytest.raises(AssertionError, match="missing from the shard schema"):
        w.write(Document(id="a", text="t", meta={"oops": 1}))


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with DocumentWriter(str(tmp_path / "p.parquet")) as w:
            w.write(Document(id="a", text="t"))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_shard_runner_keeps_rejects_and_conserves(tmp_path):
    src = str(tmp_path / "in.parquet")
    with DocumentWriter(src, extra=[pa.field("lang", pa.string())]) as w:
        for i in range(6):
            w.write(Document(id=str(i), text="x" * i, meta={"lang": "en"}))

    def process(docs, stats, rejects):
        for d in docs:
            if len(d.text) % 2:
                rejects.add(d, "odd_length", {"len": len(d.text)})
            else:
                d.meta["half"] = len(d.text) // 2
                yield d

    res = run_document_shard(src, str(tmp_path / "out"), 0, process, new_fields=[pa.field("half", pa.int64())])
    assert (res.stats.docs_in, res.stats.docs_out, res.stats.dropped) == (6, 3, {"odd_length": 3})
    res.stats.check_conservation("test")
    kept = list(read_documents(str(tmp_path / "out" / "data" / "part-00000.parquet")))
    assert [d.meta for d in kept] == [{"lang": "en", "half": 0}, {"lang": "en", "half": 1}, {"lang": "en", "half": 2}]
    rej = list(read_documents(str(tmp_path / "out" / "rejected" / "part-00000.parquet")))
    assert {d.meta["reason"] for d in rej} == {"odd_length"} and rej[0].meta["reason_detail"] == '{"len": 1}'
    assert "reason" in read_schema(str(tmp_path / "out" / "rejected" / "part-00000.parquet")).names


def test_write_stream_of_nothing_writes_empty_shards(tmp_path):
    res = write_stream(iter([]), str(tmp_path), 3, [], lambda d, s, r: iter(d), StageStats())
    assert res.shard.name == "data/part-00003.parquet" and res.shard.rows == 0
    assert pq.read_table(str(tmp_path / "data" / "part-00003.parquet")).num_rows == 0
