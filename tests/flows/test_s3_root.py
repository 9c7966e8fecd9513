"""An object-store data root end to end: the pipeline up to `tokenize` on `s3://bucket/root` against a moto S3
server (a real process on 127.0.0.1, the `s3_server` fixture; credentials and endpoint from the standard AWS
environment variables). Every stage gives the same counts (documents in/out, drops, shard rows) as on a local root,
manifests and `latest` pointers are objects in the bucket, nothing is written to a local directory named `s3:`,
the local work directories (dedup's signatures, the tokenizer sample) are gone after the run, and a re-run reuses
everything. A writer killed before its manifest leaves no complete version, and gc removes its leftovers.
"""

import contextlib
import io
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

SMALL = {"workers": 2, "demo_pages": 60, "tokenize": {"vocab_size": 600, "seq_len": 64}}
TO = "tokenize"


def _s3():
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)  # reads AWS_ENDPOINT_URL now (set per test)
    return fs


def _bucket() -> str:
    fs = _s3()
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    return name


def _s3_dirs(top: Path, max_depth: int | None = None) -> list[str]:
    """Local directories literally named `s3:` under `top` (what a URL handed to a local path API makes)."""
    found = []
    base = len(top.parts)
    for d, dirs, _ in os.walk(top):
        found += [os.path.join(d, x) for x in dirs if x.startswith("s3:")]
        if max_depth is not None and len(Path(d).parts) - base >= max_depth:
            dirs[:] = []
    return found


def test_pipeline_to_tokenize_on_s3_matches_local(prefect_backend, s3_server, tmp_path, monkeypatch):
    from flows.cli import main
    from flows.config import parse_config
    from flows.pipeline import pipeline_flow
    from storage.manifest import load_manifest

    cwd, cache = tmp_path / "cwd", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(cache))
    tmp_before = set(_s3_dirs(Path(tempfile.gettempdir()), max_depth=2))
    config = parse_config(SMALL)
    bucket = _bucket()
    root = f"s3://{bucket}/root"

    t0 = time.perf_counter()
    versions = pipeline_flow(config=config, data_root=root, to_stage=TO)
    t_s3 = time.perf_counter() - t0
    assert list(versions)[-1] == TO
    local = tmp_path / "local"
    t0 = time.perf_counter()
    # the same stages; version ids may differ from ingest on: the crawl file's identity is its ETag on S3
    local_versions = pipeline_flow(config=config, data_root=str(local), to_stage=TO)
    assert list(local_versions) == list(versions)
    t_local = time.perf_counter() - t0
    print(f"s3 root {t_s3:.1f}s, local root {t_local:.1f}s")

    fs = _s3()
    created = {}
    for stage, version in versions.items():
        on_s3, here = load_manifest(root, stage, version), load_manifest(str(local), stage, local_versions[stage])
        assert (on_s3.stats.docs_in, on_s3.stats.docs_out) == (here.stats.docs_in, here.stats.docs_out), stage
        assert on_s3.stats.dropped == here.stats.dropped, stage
        assert [(s.name, s.rows) for s in on_s3.shards] == [(s.name, s.rows) for s in here.shards], stage
        assert fs.cat_file(f"{bucket}/root/{stage}/latest").decode().strip() == version
        assert fs.exists(f"{bucket}/root/{stage}/{version}/manifest.json")
        assert not fs.exists(f"{bucket}/root/{stage}/{version}/_writing.json")
        created[stage] = on_s3.created_at
    # side artifacts and the files that stay in a version
    assert fs.glob(f"{bucket}/root/tokenizer/*/manifest.json")
    tok = f"{bucket}/root/tokenize/{versions['tokenize']}"
    assert fs.exists(f"{tok}/tokenizer.model") and fs.glob(f"{tok}/train/tokens-*.arrow")
    assert not fs.exists(f"{tok}/_work")
    dedup = f"{bucket}/root/dedup/{versions['dedup']}"
    assert fs.exists(f"{dedup}/_work/clusters.parquet") and not fs.exists(f"{dedup}/_work/minhash")
    assert fs.exists(f"{bucket}/root/_inputs/demo-crawl/pages-60/demo-crawl.warc.gz")

    # nothing went to a local directory named after the URL; the local work directories were removed
    assert _s3_dirs(cwd) == [] and _s3_dirs(tmp_path) == []
    assert set(_s3_dirs(Path(tempfile.gettempdir()), max_depth=2)) == tmp_before
    assert not (cwd / "pretrain-data").exists()
    assert not list((cache / "work").iterdir()) if (cache / "work").exists() else True

    # a re-run reuses every version: no manifest is rewritten
    assert pipeline_flow(config=config, data_root=root, to_stage=TO) == versions
    assert {s: load_manifest(root, s, v).created_at for s, v in versions.items()} == created

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", "--data-root", root]) == 0
    for version in versions.values():
        assert version in out.getvalue()


def test_killed_writer_on_s3_leaves_no_version_and_gc_removes_it(s3_server):
    from storage import gc
    from storage.artifacts import ArtifactWriter
    from storage.documents import Document, DocumentWriter
    from storage.manifest import ShardInfo, is_complete, latest_version, list_versions, new_manifest
    from storage.stats import StageStats

    root = f"s3://{_bucket()}/root"

    def write(version: str, commit: bool) -> None:
        w = ArtifactWriter(root, "ingest", version)
        with DocumentWriter(f"{w.path}/part-00000.parquet") as dw:
            dw.write(Document(id="a", text="hello"))
        if commit:
            stats = StageStats(docs_in=1, docs_out=1)
            m = new_manifest(
                "ingest", 1, version, {}, {}, [ShardInfo(name="part-00000.parquet", rows=1, bytes=1)], [], stats
            )
            w.commit(m)

    write("done1", commit=True)
    write("killed1", commit=False)  # killed before its manifest: files and `_writing.json` stay
    fs = _s3()
    assert fs.exists(f"{root}/ingest/killed1/part-00000.parquet")
    assert is_complete(root, "ingest", "done1") and not is_complete(root, "ingest", "killed1")
    assert [m.version for m in list_versions(root, "ingest")] == ["done1"]
    assert latest_version(root, "ingest") == "done1"

    plan = gc.gc(root, keep=1, stale_after_s=0.0)  # stale at once: the leftovers go, the complete version stays
    assert any(p.rstrip("/").endswith("killed1") for p in plan.stale), plan
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/ingest/killed1") and fs.exists(f"{root}/ingest/done1/manifest.json")


def test_token_shards_and_local_copy_read_s3(s3_server, tmp_path, monkeypatch):
    """TokenShards maps shards on an object store from the local cache; a replaced object is fetched again."""
    import numpy as np

    from storage import paths
    from storage.token_shards import TokenShards, TokenShardWriter

    monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    root = f"s3://{_bucket()}/root"
    rows = np.arange(3 * 9).reshape(3, 9) % 50
    with TokenShardWriter(f"{root}/t/train/tokens-00000.arrow", seq_len=8, vocab_size=50, eos_id=1) as w:
        w.write_sequences(rows, [[0], [0, 3], []])
    shards = TokenShards(f"{root}/t/train")
    assert len(shards) == 3 and shards.files[0].startswith(str(tmp_path / "cache"))
    assert np.array_equal(shards.get([0, 1, 2]), rows)

    fs, p = paths.filesystem(f"{root}/x.json")
    fs.pipe_file(p, json.dumps({"a": 1}).encode())
    first = paths.local_copy(f"{root}/x.json")
    assert json.loads(Path(first).read_text()) == {"a": 1} and paths.local_copy(f"{root}/x.json") == first
    fs.pipe_file(p, json.dumps({"a": 2}).encode())
    fs.invalidate_cache()
    assert json.loads(Path(paths.local_copy(f"{root}/x.json")).read_text()) == {"a": 2}
    local = tmp_path / "plain.bin"
    local.write_bytes(b"x")
    assert paths.local_copy(str(local)) == str(local)  # local files are used in place


def test_train_on_s3_stages_checkpoints_locally_and_uploads(prefect_backend, s3_server, tmp_path, monkeypatch):
    """Train (tiny preset, 10 steps) on a tokenize version in the bucket: checkpoints, metrics and result are
    uploaded into the train version, the local work directory is removed, a re-run reuses the version."""
    from storage import checkpoints as ckpt
    from storage.manifest import load_manifest
    from tests.flows.test_train_flow import make_tokenize_version, params, run_train

    monkeypatch.setenv("PRETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root = f"s3://{_bucket()}/root"
    make_tokenize_version(root)
    version = run_train(root, params())
    m = load_manifest(root, "train", version)
    out = f"{root}/train/{version}"
    fs = _s3()
    assert ckpt.latest_step(out) == 10
    assert fs.exists(f"{out}/{m.extras['result']['metrics_path']}") and fs.exists(f"{out}/manifest.json")
    assert not fs.exists(f"{out}/_writing.json")
    # the uploaded result.json names files in the version, not in the local work directory removed below (issue 15)
    written = json.loads(fs.cat(f"{out}/result.json"))
    assert all(fs.exists(f"{out}/{written[k]}") for k in ("checkpoint", "metrics_path", "plot_path")), written
    assert not list((tmp_path / "cache" / "work").iterdir())
    assert _s3_dirs(tmp_path) == []
    assert run_train(root, params()) == version
    assert load_manifest(root, "train", version).created_at == m.created_at
