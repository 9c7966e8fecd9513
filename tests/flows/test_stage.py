"""The shared stage life cycle under a real Prefect (test) server: run, reuse, force, failure."""

import pyarrow as pa
import pytest
from prefect import flow, task

from flows.pipeline import Stage
from flows.stage import run_stage, sharded, task_runner
from storage.artifacts import ArtifactWriter
from storage.documents import Document, DocumentWriter, read_documents, run_document_shard
from storage.manifest import ShardInfo, list_versions, load_manifest, new_manifest
from storage.params import StageParams
from storage.stats import StageStats


class ToyParams(StageParams):
    min_len: int = 3


def _process(params):
    def process(docs, stats, rejects):
        for d in docs:
            if len(d.text) < params.min_len:
                rejects.add(d, "too_short", {"len": len(d.text)})
            else:
                d.meta["n"] = len(d.text)
                yield d

    return process


@task
def toy_shard(src: str, out_dir: str, index: int, params: ToyParams):
    if "boom" in src and params.min_len == 99:
        raise RuntimeError("shard exploded")
    return run_document_shard(src, out_dir, index, _process(params), [pa.field("n", pa.int64())])


@flow(task_runner=task_runner(1))
def toy_flow(params: ToyParams, data_root: str, force: bool = False) -> str:
    return run_stage(Stage.LANGID, 1, params, sharded(toy_shard), data_root, force=force)


def _fake_ingest(root, shards=3):
    w = ArtifactWriter(root, Stage.INGEST, "ing1")
    infos, total = [], 0
    for s in range(shards):
        name = f"part-{s:05d}.parquet"
        with DocumentWriter(f"{w.path}/{name}") as dw:
            for i in range(5):
                dw.write(Document(id=f"{s}-{i}", text="x" * (i + s), url=f"http://e/{s}/{i}"))
        infos.append(ShardInfo(name=name, rows=5, bytes=1))
        total += 5
    w.commit(new_manifest(Stage.INGEST, 1, "ing1", {}, {}, infos, [], StageStats(docs_in=total, docs_out=total)))


def test_run_reuse_force_and_conservation(prefect_backend, tmp_path):
    root = str(tmp_path)
    _fake_ingest(root)
    v = toy_flow(ToyParams(min_len=3), root)
    m = load_manifest(root, Stage.LANGID)
    assert m.version == v and m.inputs == {"ingest": "ing1"}
    assert m.stats.docs_in == 15 and m.stats.docs_in == m.stats.docs_out + m.stats.dropped["too_short"]
    assert [s.name for s in m.rejected] == [f"rejected/part-0000{i}.parquet" for i in range(3)]
    created = m.created_at
    # same params -> reused, not recomputed
    assert toy_flow(ToyParams(min_len=3), root) == v
    assert load_manifest(root, Stage.LANGID).created_at == created
    # force -> recomputed, same version id
    assert toy_flow(ToyParams(min_len=3), root, force=True) == v
    assert load_manifest(root, Stage.LANGID).created_at != created
    # changed param -> new version, both kept
    v2 = toy_flow(ToyParams(min_len=4), root)
    assert v2 != v and len(list_versions(root, Stage.LANGID)) == 2
    kept = [
        d for s in load_manifest(root, Stage.LANGID, v2).shards for d in read_documents(f"{root}/langid/{v2}/{s.name}")
    ]
    assert all(d.meta["n"] >= 4 for d in kept)


def test_failed_shard_leaves_no_version(prefect_backend, tmp_path):
    root = str(tmp_path)
    _fake_ingest(root)
    (tmp_path / "ingest" / "ing1" / "part-00000.parquet").rename(tmp_path / "ingest" / "ing1" / "boom.parquet")
    m = load_manifest(root, Stage.INGEST)
    m.shards[0].name = "boom.parquet"
    (tmp_path / "ingest" / "ing1" / "manifest.json").write_text(m.model_dump_json())
    with pytest.raises(Exception, match="shard exploded"):
        toy_flow(ToyParams(min_len=99), root)
    assert list_versions(root, Stage.LANGID) == []
    assert not [p for p in (tmp_path / "langid").iterdir() if p.name.startswith(".tmp")]
