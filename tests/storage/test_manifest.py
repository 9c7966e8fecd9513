"""Versioning, atomic commit, latest pointer and conservation of the artifact store."""

import multiprocessing as mp
import os
import signal
import time

import pytest

from flows.pipeline import Stage
from storage.artifacts import ArtifactWriter
from storage.manifest import (
    ShardInfo,
    compute_version,
    is_complete,
    latest_version,
    list_versions,
    load_manifest,
    new_manifest,
    set_latest,
)
from storage.stats import StageStats


def _manifest(version, docs_in=3, docs_out=2, dropped=None, inputs=None):
    stats = StageStats(docs_in=docs_in, docs_out=docs_out, dropped=dropped if dropped is not None else {"x": 1})
    return new_manifest(
        Stage.INGEST,
        1,
        version,
        {"a": 1},
        inputs or {},
        [ShardInfo(name="part-00000.parquet", rows=docs_out, bytes=10)],
        [],
        stats,
    )


def test_same_inputs_same_version_and_param_change_changes_it():
    v1 = compute_version("langid", 1, {"threshold": 0.65, "languages": ["en"]}, {"ingest": "abc"})
    v2 = compute_version("langid", 1, {"languages": ["en"], "threshold": 0.65}, {"ingest": "abc"})
    assert v1 == v2 and len(v1) == 12
    assert compute_version("langid", 1, {"threshold": 0.7, "languages": ["en"]}, {"ingest": "abc"}) != v1
    assert compute_version("langid", 2, {"threshold": 0.65, "languages": ["en"]}, {"ingest": "abc"}) != v1
    assert compute_version("langid", 1, {"threshold": 0.65, "languages": ["en"]}, {"ingest": "abd"}) != v1


def test_commit_writes_manifest_last_and_moves_into_place(tmp_path):
    root = str(tmp_path)
    w = ArtifactWriter(root, Stage.INGEST, "v1")
    (tmp_path / "ingest" / os.path.basename(w.path) / "part-00000.parquet").write_bytes(b"x")
    assert not is_complete(root, Stage.INGEST, "v1")
    assert latest_version(root, Stage.INGEST) is None
    w.commit(_manifest("v1"))
    assert is_complete(root, Stage.INGEST, "v1")
    assert latest_version(root, Stage.INGEST) == "v1"
    assert load_manifest(root, "ingest").version == "v1"
    assert [p.name for p in (tmp_path / "ingest").iterdir() if p.name.startswith(".")] == []


def test_conservation_is_checked_before_commit(tmp_path):
    w = ArtifactWriter(str(tmp_path), Stage.INGEST, "v1")
    with pytest.raises(AssertionError, match="a document was lost"):
        w.commit(_manifest("v1", docs_in=5, docs_out=2, dropped={"x": 1}))
    assert not is_complete(str(tmp_path), Stage.INGEST, "v1")


def _write_forever(root):
    w = ArtifactWriter(root, Stage.INGEST, "vkill")
    with open(os.path.join(w.path, "part-00000.parquet"), "wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()
            time.sleep(0.001)


def test_stage_killed_mid_write_leaves_no_complete_version(tmp_path):
    root = str(tmp_path)
    p = mp.get_context("spawn").Process(target=_write_forever, args=(root,))
    p.start()
    deadline = time.time() + 30
    while time.time() < deadline and not list((tmp_path / "ingest").glob(".tmp-vkill-*/part-00000.parquet")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert list((tmp_path / "ingest").glob(".tmp-vkill-*"))  # the partial write exists...
    assert not is_complete(root, Stage.INGEST, "vkill")  # ...but is not a version
    assert list_versions(root, Stage.INGEST) == []
    with pytest.raises(FileNotFoundError, match="pretrain run --to ingest"):
        load_manifest(root, Stage.INGEST)


def test_latest_pointer_refuses_incomplete_and_load_names_fix(tmp_path):
    with pytest.raises(AssertionError):
        set_latest(str(tmp_path), Stage.INGEST, "nope")
    (tmp_path / "ingest" / "half").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not complete"):
        load_manifest(str(tmp_path), Stage.INGEST, "half")


def test_forced_replace_swaps_version(tmp_path):
    root = str(tmp_path)
    ArtifactWriter(root, Stage.INGEST, "v1").commit(_manifest("v1"))
    first = load_manifest(root, Stage.INGEST, "v1").created_at
    time.sleep(0.01)
    ArtifactWriter(root, Stage.INGEST, "v1", replace=True).commit(_manifest("v1"))
    assert load_manifest(root, Stage.INGEST, "v1").created_at != first
    assert len(list_versions(root, Stage.INGEST)) == 1


def test_stats_merge_and_error_fraction():
    a = StageStats(docs_in=10, docs_out=8, dropped={"r": 2}, errors=2, counters={"k": 1})
    b = StageStats(docs_in=5, docs_out=5, counters={"k": 2})
    m = a.merge(b)
    assert (m.docs_in, m.docs_out, m.dropped, m.errors, m.counters) == (15, 13, {"r": 2}, 2, {"k": 3})
    m.check_error_fraction(0.2, "x")
    with pytest.raises(ValueError, match="max_error_fraction=0.1"):
        m.check_error_fraction(0.1, "x")
