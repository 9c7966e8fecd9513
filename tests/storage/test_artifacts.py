"""The commit protocol of every artifact (storage.artifacts.ArtifactWriter) and single-file writes
(storage.files), on a local disk and on `memory://` (fsspec's in-memory store: no atomic rename, no locks).

A version is `<root>/<kind>/<version>/`, written in place; `manifest.json` is written last and is what makes
it exist: until then readers (load_manifest, list_versions, latest) do not see it."""

import json
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid

import pytest

from storage import paths
from storage.artifacts import WRITING, ArtifactWriter, read_writing
from storage.files import AtomicFile, write_atomic
from storage.manifest import (
    MANIFEST,
    ShardInfo,
    is_complete,
    latest_version,
    list_versions,
    load_manifest,
    new_manifest,
)
from storage.stats import StageStats

PART = "part-00000.parquet"


def _manifest(version, kind="ingest"):
    return new_manifest(
        kind,
        1,
        version,
        {"a": 1},
        {},
        [ShardInfo(name=PART, rows=2, bytes=10)],
        [],
        StageStats(docs_in=2, docs_out=2),
    )


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "data")
        return
    url = f"memory://artifacts-{uuid.uuid4().hex[:8]}"
    yield url
    fs, base = paths.filesystem(url)
    if fs.exists(base):
        fs.rm(base, recursive=True)


def _write(w, name=PART, data=b"new"):
    path = paths.join(w.path, name)
    w.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with w.fs.open(path, "wb") as f:
        f.write(data)


def _read(root, *parts):
    fs, base = paths.filesystem(root)
    return fs.cat(paths.join(base, *parts))


def _exists(root, *parts):
    fs, base = paths.filesystem(root)
    return bool(fs.exists(paths.join(base, *parts)))


def _assert_no_version(root, kind, version):
    assert not is_complete(root, kind, version)
    assert list_versions(root, kind) == [] and latest_version(root, kind) is None
    with pytest.raises(FileNotFoundError, match=f"pretrain run --to {kind}"):
        load_manifest(root, kind)
    with pytest.raises(FileNotFoundError, match="not complete"):
        load_manifest(root, kind, version)


# ---------------------------------------------------------------- write, commit, reuse


def test_write_commit_reuse(root):
    w = ArtifactWriter(root, "ingest", "v1", {"files": "d1"})
    assert w.path == paths.join(root, "ingest", "v1")  # the final path: no temp dir
    _write(w)
    marker = read_writing(w.fs, w.path)
    assert marker is not None and marker["pid"] == os.getpid() and marker["inputs"] == {"files": "d1"}
    assert marker["resumable"] is False
    _assert_no_version(root, "ingest", "v1")  # files there, no manifest: does not exist to readers
    w.commit(_manifest("v1"))
    assert is_complete(root, "ingest", "v1") and latest_version(root, "ingest") == "v1"
    assert load_manifest(root, "ingest").version == "v1" and _read(root, "ingest", "v1", PART) == b"new"
    assert not _exists(root, "ingest", "v1", WRITING)
    with pytest.raises(FileExistsError, match="reuse it"):
        ArtifactWriter(root, "ingest", "v1")
    assert [m.version for m in list_versions(root, "ingest")] == ["v1"]
    fs, base = paths.filesystem(root)
    assert not [p for p in fs.find(base) if ".tmp-" in p]  # no temp files or dirs left (latest included)


def test_note_input_updates_the_marker(root):
    w = ArtifactWriter(root, "quality", "q1", {"langid": "l1"})
    w.note_input("quality_scores", "s1")
    assert read_writing(w.fs, w.path)["inputs"] == {"langid": "l1", "quality_scores": "s1"}


# ---------------------------------------------------------------- killed writers


def _write_forever(root):
    w = ArtifactWriter(root, "ingest", "vkill")
    with open(os.path.join(w.path, PART), "wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()
            time.sleep(0.001)


def test_local_writer_killed_mid_write_leaves_no_version_and_the_next_writer_commits(tmp_path):
    root = str(tmp_path)
    p = mp.get_context("spawn").Process(target=_write_forever, args=(root,))
    p.start()
    part = tmp_path / "ingest" / "vkill" / PART
    deadline = time.time() + 60
    while time.time() < deadline and not (part.exists() and part.stat().st_size > 0):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert part.stat().st_size > 0  # the partial write is there, under the final path...
    assert json.loads((tmp_path / "ingest" / "vkill" / WRITING).read_text())["pid"] == p.pid
    _assert_no_version(root, "ingest", "vkill")  # ...but is not a version
    w = ArtifactWriter(root, "ingest", "vkill")  # the next run: leftovers go first
    assert not part.exists()
    _write(w)
    w.commit(_manifest("vkill"))
    assert load_manifest(root, "ingest").version == "vkill" and part.read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "ingest" / "vkill").iterdir()) == [MANIFEST, PART]


def test_object_store_writer_that_never_commits_leaves_no_version_and_the_next_writer_commits():
    root = f"memory://killed-{uuid.uuid4().hex[:8]}"
    fs, base = paths.filesystem(root)
    try:
        dead = ArtifactWriter(root, "ingest", "vkill")
        _write(dead, data=b"half")  # then the process dies: no abort, no commit
        _assert_no_version(root, "ingest", "vkill")
        w = ArtifactWriter(root, "ingest", "vkill")  # nothing removed at the start (no lock on object stores)
        _write(w)  # same file names: the leftovers are overwritten
        w.commit(_manifest("vkill"))
        assert load_manifest(root, "ingest").version == "vkill" and _read(root, "ingest", "vkill", PART) == b"new"
        assert not fs.exists(paths.join(base, "ingest", "vkill", WRITING))
    finally:
        fs.rm(base, recursive=True)


# ---------------------------------------------------------------- forced replace, abort, resumable


def test_forced_replace_removes_the_manifest_before_touching_files(root, monkeypatch):
    first = ArtifactWriter(root, "ingest", "v1")
    _write(first, data=b"old")
    first.commit(_manifest("v1"))
    created = load_manifest(root, "ingest", "v1").created_at
    fs, base = paths.filesystem(root)
    manifest = fs._strip_protocol(paths.join(root, "ingest", "v1", MANIFEST))
    ops: list[tuple[str, str]] = []
    real_rm, real_open = fs.rm, fs.open

    def rm(path, *a, **kw):
        ops.append(("rm", fs._strip_protocol(str(path)).rstrip("/")))
        return real_rm(path, *a, **kw)

    def open_(path, mode="rb", *a, **kw):
        if "r" not in mode:
            ops.append(("write", str(path)))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(fs, "rm", rm)
    monkeypatch.setattr(fs, "open", open_)
    time.sleep(0.01)
    w = ArtifactWriter(root, "ingest", "v1", replace=True)
    assert ops[0] == ("rm", manifest)  # the old version stops existing first
    with pytest.raises(FileNotFoundError, match="not complete"):
        load_manifest(root, "ingest", "v1")  # no reader sees a half-replaced version
    _write(w)
    w.commit(_manifest("v1"))
    monkeypatch.undo()
    assert load_manifest(root, "ingest", "v1").created_at != created and _read(root, "ingest", "v1", PART) == b"new"
    assert len(list_versions(root, "ingest")) == 1


def test_abort_removes_what_the_attempt_wrote(root):
    w = ArtifactWriter(root, "ingest", "v1")
    _write(w)
    w.abort()
    assert not _exists(root, "ingest", "v1")
    _assert_no_version(root, "ingest", "v1")


def test_abort_leaves_a_version_an_identical_run_committed(root):
    w1 = ArtifactWriter(root, "ingest", "v1")
    w2 = ArtifactWriter(root, "ingest", "v1")
    _write(w1)
    _write(w2)
    w2.commit(_manifest("v1"))
    w1.abort()
    assert load_manifest(root, "ingest", "v1").version == "v1" and _read(root, "ingest", "v1", PART) == b"new"


def test_resumable_keeps_its_files_for_the_next_attempt(root):
    w = ArtifactWriter(root, "train", "t1", {"tokenize": "k1"}, resumable=True)
    _write(w, "step-000100/model.pt", b"ckpt")
    w.abort()  # failed: the checkpoint stays
    assert _read(root, "train", "t1", "step-000100", "model.pt") == b"ckpt"
    assert read_writing(w.fs, w.path)["resumable"] is True
    _assert_no_version(root, "train", "t1")
    again = ArtifactWriter(root, "train", "t1", {"tokenize": "k1"}, resumable=True)  # resumes: nothing removed
    assert _read(root, "train", "t1", "step-000100", "model.pt") == b"ckpt"
    _write(again)
    again.commit(_manifest("t1", kind="train"))
    assert is_complete(root, "train", "t1") and _exists(root, "train", "t1", "step-000100", "model.pt")


# ---------------------------------------------------------------- concurrent identical writers (object stores)


def test_concurrent_identical_writers_on_an_object_store_both_commit():
    root = f"memory://twins-{uuid.uuid4().hex[:8]}"
    fs, base = paths.filesystem(root)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w = ArtifactWriter(root, "langid", "v1", {"ingest": "i1"})
            barrier.wait(10)  # both are writing before either commits
            for i in range(3):
                _write(w, f"part-{i:05d}.parquet", f"shard {i}".encode())
            barrier.wait(10)
            w.commit(_manifest("v1", kind="langid"))
        except BaseException as err:  # reported below
            errors.append(err)

    try:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert load_manifest(root, "langid").version == "v1" and latest_version(root, "langid") == "v1"
        vdir = paths.join(base, "langid", "v1")
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(vdir))
        assert names == [MANIFEST] + [f"part-{i:05d}.parquet" for i in range(3)]  # complete, no marker left
        assert [fs.cat(paths.join(vdir, f"part-{i:05d}.parquet")) for i in range(3)] == [
            b"shard 0",
            b"shard 1",
            b"shard 2",
        ]
    finally:
        fs.rm(base, recursive=True)


# ---------------------------------------------------------------- single files: write_atomic, AtomicFile


def test_write_atomic_and_atomic_file(root):
    fs, base = paths.filesystem(root)
    target = paths.join(base, "k", "latest")
    write_atomic(fs, target, b"v1\n")
    write_atomic(fs, target, [b"v", b"2\n"])  # chunks
    assert fs.cat(target) == b"v2\n"
    with AtomicFile(fs, target) as out:
        out.file.write(b"v3\n")
    assert fs.cat(target) == b"v3\n"
    failed = AtomicFile(fs, paths.join(base, "k", "other"))
    failed.file.write(b"half")
    failed.discard()
    assert not fs.exists(paths.join(base, "k", "other"))
    with pytest.raises(RuntimeError):
        with AtomicFile(fs, paths.join(base, "k", "third")) as out:
            out.file.write(b"half")
            raise RuntimeError("boom")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(paths.join(base, "k"))) == ["latest"]  # no .tmp-* left


def test_local_atomic_file_is_invisible_until_commit_and_discard_keeps_the_old_file(tmp_path):
    fs, base = paths.filesystem(str(tmp_path))
    target = paths.join(base, "latest")
    write_atomic(fs, target, b"old\n")
    out = AtomicFile(fs, target)
    out.file.write(b"new\n")
    out.file.flush()
    assert fs.cat(target) == b"old\n"  # readers see the old file while the new one is written
    assert out.commit() == 4 and fs.cat(target) == b"new\n"
    out = AtomicFile(fs, target)
    out.file.write(b"broken")
    out.discard()
    assert fs.cat(target) == b"new\n" and sorted(os.listdir(tmp_path)) == ["latest"]
