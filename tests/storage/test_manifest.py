"""Version ids, manifests, the `latest` pointer and conservation (the commit protocol: test_artifacts.py)."""

import time

import pytest

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


def _manifest(version, docs_in=3, docs_out=2, dropped=None, inputs=None, kind="ingest"):
    stats = StageStats(docs_in=docs_in, docs_out=docs_out, dropped=dropped if dropped is not None else {"x": 1})
    return new_manifest(
        kind,
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
    assert compute_version("quality_scores", 1, {"threshold": 0.65, "languages": ["en"]}, {"ingest": "abc"}) != v1


def test_conservation_is_checked_before_commit(tmp_path):
    w = ArtifactWriter(str(tmp_path), "ingest", "v1")
    with pytest.raises(AssertionError, match="a document was lost"):
        w.commit(_manifest("v1", docs_in=5, docs_out=2, dropped={"x": 1}))
    assert not is_complete(str(tmp_path), "ingest", "v1") and latest_version(str(tmp_path), "ingest") is None


def test_latest_pointer_refuses_incomplete_and_load_names_fix(tmp_path):
    with pytest.raises(AssertionError):
        set_latest(str(tmp_path), "ingest", "nope")
    with pytest.raises(FileNotFoundError, match="pretrain run --to ingest"):
        load_manifest(str(tmp_path), "ingest")
    (tmp_path / "ingest" / "half").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not complete"):
        load_manifest(str(tmp_path), "ingest", "half")


def test_list_versions_is_oldest_first_and_skips_incomplete(tmp_path):
    root = str(tmp_path)
    for v in ("b2", "a1"):
        ArtifactWriter(root, "quality_scores", v).commit(_manifest(v, kind="quality_scores"))
        time.sleep(0.002)
    ArtifactWriter(root, "quality_scores", "c3")  # being written: not a version yet
    assert [m.version for m in list_versions(root, "quality_scores")] == ["b2", "a1"]
    assert latest_version(root, "quality_scores") == "a1"
    set_latest(root, "quality_scores", "b2")
    assert load_manifest(root, "quality_scores").version == "b2"
    assert list_versions(root, "nothing") == []


def test_stats_merge_and_error_fraction():
    a = StageStats(docs_in=10, docs_out=8, dropped={"r": 2}, errors=2, counters={"k": 1})
    b = StageStats(docs_in=5, docs_out=5, counters={"k": 2})
    m = a.merge(b)
    assert (m.docs_in, m.docs_out, m.dropped, m.errors, m.counters) == (15, 13, {"r": 2}, 2, {"k": 3})
    m.check_error_fraction(0.2, "x")
    with pytest.raises(ValueError, match="max_error_fraction=0.1"):
        m.check_error_fraction(0.1, "x")
