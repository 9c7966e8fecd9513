"""`pretrain gc`: keeps latest, the N newest and the whole lineage of what it keeps, the artifacts of runs in
progress and young ones; removes killed runs' leftovers; lists resumable partial versions; knows no stage names.
Fixture artifacts are written with ArtifactWriter + new_manifest directly (no flows)."""

import datetime as dt
import os
import time
import uuid

import pytest

from flows.cli import main
from storage import paths
from storage.artifacts import WRITING, ArtifactWriter
from storage.gc import YOUNG, apply, collect, gc
from storage.locks import VersionLock
from storage.manifest import (
    MANIFEST,
    ShardInfo,
    is_complete,
    latest_version,
    list_versions,
    load_manifest,
    new_manifest,
    set_latest,
)
from storage.stats import StageStats

OLD = 7200  # seconds: older than the default stale_after (one hour)


def _writer(root, kind, version, inputs=None, resumable=False, size=1000):
    """An artifact being written: one file under its final path, no manifest yet."""
    w = ArtifactWriter(str(root), kind, version, inputs, resumable=resumable)
    with w.fs.open(paths.join(w.path, "part-00000.parquet"), "wb") as f:
        f.write(b"x" * size)
    return w


def _commit(root, kind, version, created_at, inputs=None):
    w = _writer(root, kind, version, inputs)
    m = new_manifest(
        kind,
        1,
        version,
        {},
        inputs or {},
        [ShardInfo(name="part-00000.parquet", rows=1, bytes=1000)],
        [],
        StageStats(docs_in=1, docs_out=1),
    )
    w.commit(m.model_copy(update={"created_at": created_at}))
    return version


def _day(n):
    return f"2026-01-{n:02d}T00:00:00.000+00:00"


def _ago(seconds):
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _make_store(root):
    """ingest i1..i3 (i3 newest); langid l1 <- i1 (old), l2 <- i2, l3 <- i1 (newest, built from the OLDEST ingest)."""
    for n in (1, 2, 3):
        _commit(root, "ingest", f"i{n}", _day(n), {"files": f"digest{n}"})
    _commit(root, "langid", "l1", _day(4), {"ingest": "i1"})
    _commit(root, "langid", "l2", _day(5), {"ingest": "i2"})
    _commit(root, "langid", "l3", _day(6), {"ingest": "i1"})
    set_latest(str(root), "ingest", "i3")
    return root


@pytest.fixture
def store(tmp_path):
    return _make_store(tmp_path / "data")


def _age(*tops, seconds=OLD):
    """Make files/dirs (and everything under them) look `seconds` old (gc judges by the newest file inside)."""
    then = time.time() - seconds
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top) if os.path.isdir(top) else []:
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (then, then))
        os.utime(top, (then, then))


def _versions(root, kind):
    return [m.version for m in list_versions(str(root), kind)]


def _why(plan):
    return {(d.stage, d.version): (d.keep, d.why) for d in plan.versions}


# ---------------------------------------------------------------- latest, newest, lineage


def test_keep_one_keeps_latest_newest_and_lineage(store):
    plan = gc(str(store), keep=1)
    # ingest: i3 is latest/newest; i1 is the input of the kept langid l3; i2 only fed l2, which goes
    assert _versions(store, "ingest") == ["i1", "i3"]
    assert _versions(store, "langid") == ["l3"]
    assert {(d.stage, d.version) for d in plan.to_delete} == {("ingest", "i2"), ("langid", "l1"), ("langid", "l2")}
    why = _why(plan)
    assert why[("ingest", "i1")] == (True, "input of langid@l3")
    assert why[("ingest", "i3")] == (True, "latest") and why[("ingest", "i2")] == (False, "unreferenced")
    assert plan.bytes_freed >= 3000
    assert latest_version(str(store), "langid") == "l3" and latest_version(str(store), "ingest") == "i3"
    assert not [p for p in (store / "ingest").iterdir() if p.name.startswith(".")]  # no .gc-* or lock left
    assert [d.stage for d in plan.versions] == ["ingest"] * 3 + ["langid"] * 3  # lineage order, oldest first


def test_old_latest_is_kept_even_when_not_newest(store):
    set_latest(str(store), "langid", "l1")  # e.g. a rerun reused an old version
    gc(str(store), keep=1)
    assert _versions(store, "langid") == ["l1", "l3"]
    assert _versions(store, "ingest") == ["i1", "i3"]


def test_input_of_kept_version_survives_transitively(tmp_path):
    root = tmp_path / "data"
    _commit(root, "ingest", "i-old", _day(1))
    _commit(root, "ingest", "i-new", _day(2))
    _commit(root, "langid", "l-old", _day(3), {"ingest": "i-old"})
    _commit(root, "langid", "l-new", _day(4), {"ingest": "i-new"})
    _commit(root, "quality", "q1", _day(5), {"langid": "l-old"})
    gc(str(root), keep=1)
    # q1 <- l-old <- i-old: two levels up, both old and neither latest, both kept
    assert _versions(root, "langid") == ["l-old", "l-new"]
    assert _versions(root, "ingest") == ["i-old", "i-new"]


def test_keep_two_keeps_two_newest(store):
    gc(str(store), keep=2)
    assert _versions(store, "langid") == ["l2", "l3"]
    assert _versions(store, "ingest") == ["i1", "i2", "i3"]


def test_dry_run_deletes_nothing_but_reports_the_same_plan(store):
    before = {s: _versions(store, s) for s in ("ingest", "langid")}
    dry = gc(str(store), keep=1, dry_run=True)
    assert {s: _versions(store, s) for s in ("ingest", "langid")} == before
    assert not dry.applied and [r["action"] for r in dry.rows()].count("delete") == 3
    real = gc(str(store), keep=1)
    assert [(d.stage, d.version) for d in real.to_delete] == [(d.stage, d.version) for d in dry.to_delete]
    assert [r["action"] for r in real.rows()].count("deleted") == 3


def test_keep_must_be_positive(store):
    with pytest.raises(ValueError, match="at least 1"):
        collect(str(store), keep=0)


# ---------------------------------------------------------------- side artifacts: kept while a kept version names them


@pytest.fixture
def side_store(store):
    """quality_classifier c1; quality_scores s0 (named by nothing), s1, s2; quality q1 (old) <- l3, s1, c1 and
    q2 (newest) <- l3, s2, c1; decontaminate_index x0 (named by nothing, older than x1). The side kinds'
    `latest` point at their newest (what their writers leave)."""
    _commit(store, "quality_classifier", "c1", _day(7), {"langid": "l3"})
    _commit(store, "quality_scores", "s0", _day(7), {"langid": "l1"})
    _commit(store, "quality_scores", "s1", _day(8), {"langid": "l3"})
    _commit(store, "quality_scores", "s2", _day(9), {"langid": "l3"})
    q_inputs = {"langid": "l3", "quality_classifier": "c1"}
    _commit(store, "quality", "q1", _day(10), {**q_inputs, "quality_scores": "s1"})
    _commit(store, "quality", "q2", _day(11), {**q_inputs, "quality_scores": "s2"})
    _commit(store, "decontaminate_index", "x0", _day(1))
    _commit(store, "decontaminate_index", "x1", _day(2))
    return store


def test_side_artifacts_go_with_the_last_version_that_names_them(side_store):
    plan = gc(str(side_store), keep=1)
    assert _versions(side_store, "quality") == ["q2"]
    assert _versions(side_store, "quality_scores") == ["s2"]  # s1 went with q1; s0 was named by nothing
    assert _versions(side_store, "quality_classifier") == ["c1"]
    assert _versions(side_store, "langid") == ["l3"]  # s0 <- l1 did not keep l1
    why = _why(plan)
    assert why[("quality_scores", "s1")] == why[("quality_scores", "s0")] == (False, "unreferenced")
    assert why[("quality_classifier", "c1")] == (True, "latest")  # every kind keeps its latest, side ones too
    assert why[("decontaminate_index", "x0")] == (False, "unreferenced")
    assert _versions(side_store, "decontaminate_index") == ["x1"]
    order = [d.stage for d in plan.versions]  # lineage order: a kind after the kinds it is built from
    assert order.index("langid") < order.index("quality_scores") < order.index("quality")
    assert order.index("quality_classifier") < order.index("quality")


def test_side_artifact_of_a_kept_old_version_survives(side_store):
    set_latest(str(side_store), "quality", "q1")  # the latest quality is old: it and its score cache stay
    plan = gc(str(side_store), keep=1)
    assert _versions(side_store, "quality") == ["q1", "q2"]
    assert _versions(side_store, "quality_scores") == ["s1", "s2"]
    assert _why(plan)[("quality_scores", "s1")] == (True, "input of quality@q1")


def test_young_unreferenced_artifacts_are_kept_until_stale(store):
    _commit(store, "ingest", "i0", _day(1))  # old and unreferenced: goes
    set_latest(str(store), "ingest", "i3")
    _commit(store, "quality_scores", "fresh", _ago(60), {"langid": "l1"})  # just built; its run not done yet
    _commit(store, "quality_scores", "newer", _ago(30))  # the newest of its kind (and latest): kept as such
    plan = gc(str(store), keep=1, dry_run=True)
    why = _why(plan)
    assert why[("quality_scores", "fresh")] == (True, YOUNG)
    assert why[("langid", "l1")] == (True, "input of quality_scores@fresh")  # its lineage stays with it
    assert why[("ingest", "i0")] == (False, "unreferenced")
    assert why[("quality_scores", "newer")] == (True, "latest")
    gc(str(store), keep=1, stale_after_s=0)  # no age protection: it goes, and so does l1
    assert _versions(store, "quality_scores") == ["newer"] and _versions(store, "langid") == ["l3"]


# ---------------------------------------------------------------- incomplete versions


def test_stale_incomplete_version_is_removed_young_and_locked_ones_kept(store):
    dead = _writer(store, "langid", "ldead", {"ingest": "i2"})  # a killed run's leftover
    young = _writer(store, "langid", "lyoung")  # a run writing right now (lock not taken: judged by age)
    locked = _writer(store, "langid", "llocked")  # a run in a long phase that writes nothing: holds its lock
    _age(dead.path, locked.path)
    lock = VersionLock(str(store), "langid", "llocked")
    assert lock.try_acquire()
    try:
        plan = gc(str(store), keep=3)
    finally:
        lock.release()
    assert plan.stale == [dead.path] and not os.path.exists(dead.path)
    assert os.path.exists(young.path) and os.path.exists(locked.path) and plan.partial == []
    assert not plan.to_delete  # keep=3 keeps every version here
    assert not [p for p in (store / "langid").iterdir() if p.name.startswith(".")]
    plan = gc(str(store), keep=3)  # the lock is free now: the old dir is a killed run's leftover
    assert plan.stale == [locked.path] and not os.path.exists(locked.path) and os.path.exists(young.path)


def test_incomplete_dir_with_a_fresh_file_deep_inside_is_not_stale(store):
    w = _writer(store, "langid", "l9")
    os.makedirs(os.path.join(w.path, "_work", "phase2"))
    _age(w.path)
    with open(os.path.join(w.path, "_work", "phase2", "clusters.bin"), "wb") as f:
        f.write(b"x")  # a long phase writing only in a subdirectory
    assert gc(str(store), keep=1).stale == [] and os.path.exists(w.path)


def test_incomplete_dir_without_writing_marker_is_judged_by_age(store):
    """A run killed between removing `_writing.json` and writing `manifest.json` (or while aborting)."""
    w = _writer(store, "langid", "l9")
    os.remove(os.path.join(w.path, WRITING))
    assert gc(str(store), keep=3).stale == [] and os.path.exists(w.path)
    _age(w.path)
    assert gc(str(store), keep=3).stale == [w.path] and not os.path.exists(w.path)


def test_resumable_partial_version_is_listed_never_deleted(store, capsys):
    w = _writer(store, "train", "t1", {"tokenize": "k1"}, resumable=True)  # a failed run's checkpoints
    os.makedirs(os.path.join(w.path, "step-000100"))
    with open(os.path.join(w.path, "step-000100", "model.pt"), "wb") as f:
        f.write(b"w" * 100)
    _age(w.path, seconds=10 * 86400)
    dead_ptr = store / "train" / "latest.tmp-0000aaaa"  # not partial work: a pointer file a killed commit left
    dead_ptr.write_text("t0\n")
    _age(dead_ptr)
    plan = gc(str(store), keep=1, stale_after_s=0)
    assert plan.partial == [w.path] and os.path.exists(os.path.join(w.path, "step-000100", "model.pt"))
    assert plan.stale == [str(dead_ptr)] and not dead_ptr.exists()
    assert main(["gc", "--keep", "1", "--dry-run", "--data-root", str(store)]) == 0
    assert w.path in capsys.readouterr().out


def test_inputs_of_a_running_writer_are_kept_while_it_is_alive(store):
    running = _writer(store, "langid", "l9", {"ingest": "i2"})  # reads an old ingest version right now
    running.note_input("quality_classifier", "nope")  # names an artifact that does not exist: ignored
    plan = gc(str(store), keep=1, dry_run=True)
    assert _why(plan)[("ingest", "i2")] == (True, "input of the run in progress langid/l9")
    _age(running.path)  # killed long ago: protects nothing, and is a leftover itself
    plan = gc(str(store), keep=1)
    assert _versions(store, "ingest") == ["i1", "i3"] and plan.stale == [running.path]


def test_inputs_of_a_locked_old_writer_are_kept(store):
    running = _writer(store, "langid", "l9", {"ingest": "i2"})
    _age(running.path)
    lock = VersionLock(str(store), "langid", "l9")
    assert lock.try_acquire()
    try:
        plan = gc(str(store), keep=1)
    finally:
        lock.release()
    assert _versions(store, "ingest") == ["i1", "i2", "i3"] and plan.stale == [] and os.path.exists(running.path)


# ---------------------------------------------------------------- lock files, leftovers, unknown entries


def test_lock_files_of_killed_runs_are_removed_held_ones_kept(store):
    leftover = store / "langid" / ".lock-l9"  # a killed run's lock file (the kernel dropped its lock)
    leftover.write_text("pid 1 on elsewhere\n")
    held = VersionLock(str(store), "langid", "l8")
    assert held.try_acquire()
    try:
        plan = gc(str(store), keep=3)
        assert plan.stale == [str(leftover)] and not leftover.exists()
        assert (store / "langid" / ".lock-l8").exists() and plan.unknown == []
    finally:
        held.release()


def test_stale_pointer_files_and_gc_dirs_are_removed_when_old(store):
    old_ptr, young_ptr = store / "langid" / "latest.tmp-0000aaaa", store / "langid" / "latest.tmp-1111bbbb"
    old_gc, young_gc = store / "ingest" / ".gc-i0-1234abcd", store / "ingest" / ".gc-i9-5678abcd"
    for p in (old_ptr, young_ptr):
        p.write_text("l1\n")
    for d in (old_gc, young_gc):
        d.mkdir()
        (d / "part-00000.parquet").write_bytes(b"x")
    _age(old_ptr, old_gc)
    plan = gc(str(store), keep=3)
    assert sorted(plan.stale) == sorted([str(old_gc), str(old_ptr)])
    assert not old_ptr.exists() and not old_gc.exists() and young_ptr.exists() and young_gc.exists()


def test_entries_gc_does_not_know_are_reported_and_left_alone(store):
    old_layout = store / "langid" / ".tmp-l7-1234abcd"  # the old layout's temp dir
    internal = store / "langid" / "_index" / "abc"
    note = store / "langid" / "NOTES.txt"
    foreign = store / "notes" / "drafts"  # a top-level dir with no artifact in it: not a kind
    inputs = store / "_inputs" / "crawl"  # `_` top-level dirs: never looked into
    for d in (old_layout, internal, foreign, inputs):
        d.mkdir(parents=True)
    note.write_text("hi")
    _age(old_layout, internal, foreign, inputs, note, store / "notes", store / "_inputs")
    plan = gc(str(store), keep=1)
    assert sorted(plan.unknown) == sorted(
        [str(old_layout), str(store / "langid" / "_index"), str(note), str(store / "notes")]
    )
    assert old_layout.exists() and internal.exists() and note.exists() and foreign.exists() and inputs.exists()
    assert plan.stale == []


# ---------------------------------------------------------------- deletion


def test_interrupted_delete_leaves_only_a_hidden_dir_that_the_next_gc_removes(store, monkeypatch):
    plan = collect(str(store), keep=1)
    calls = {"n": 0}

    class Boom(RuntimeError):
        pass

    real_fs, _ = paths.filesystem(str(store))
    real_rm = real_fs.rm

    def flaky_rm(path, recursive=False, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Boom("disk went away")
        return real_rm(path, recursive=recursive, **kw)

    monkeypatch.setattr(real_fs, "rm", flaky_rm)
    with pytest.raises(Boom):
        apply(plan)
    hidden = [p for p in (store / "ingest").iterdir() if p.name.startswith(".gc-")]
    assert len(hidden) == 1 and not is_complete(str(store), "ingest", "i2")  # invisible to readers already
    assert not (store / "ingest" / ".lock-i2").exists()  # the lock taken for the rename was released
    _age(hidden[0])
    monkeypatch.undo()
    again = gc(str(store), keep=1)
    assert str(hidden[0]) in again.stale and not hidden[0].exists()


def test_a_version_a_run_locks_after_collect_is_left_for_the_next_gc(store):
    plan = collect(str(store), keep=1)
    lock = VersionLock(str(store), "langid", "l2")  # e.g. a forced recompute of l2 started since
    assert lock.try_acquire()
    try:
        apply(plan)
    finally:
        lock.release()
    assert _versions(store, "langid") == ["l2", "l3"]
    assert _why(plan)[("langid", "l2")] == (True, "in use by a run now: left for the next gc")


def test_dry_run_reports_the_real_size_of_kept_versions(store, capsys):
    """`gc --dry-run` showed `mb 0.0` for every kept version (issue 11, defect 9)."""
    (store / "langid" / "l3" / "part-00000.parquet").write_bytes(b"x" * 2_500_000)
    plan = gc(str(store), keep=1, dry_run=True)
    sizes = {(d.stage, d.version): d.bytes for d in plan.versions}
    manifest = (store / "langid" / "l3" / "manifest.json").stat().st_size
    assert sizes[("langid", "l3")] == 2_500_000 + manifest
    assert sizes[("ingest", "i3")] == 1000 + (store / "ingest" / "i3" / "manifest.json").stat().st_size
    assert all(d.bytes > 0 for d in plan.versions)
    assert {r["version"]: r["mb"] for r in plan.rows()}["l3"] == round((2_500_000 + manifest) / 1e6, 3)
    assert main(["gc", "--keep", "1", "--dry-run", "--data-root", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"keeping 3 version(s), {plan.bytes_kept / 1e6:.1f} MB" in out and "keeping 3 version(s), 2.5 MB" in out


def test_cli_gc_dry_run_then_delete(store, capsys):
    assert main(["gc", "--keep", "1", "--dry-run", "--data-root", str(store)]) == 0
    out = capsys.readouterr().out
    assert "would delete 3 version(s)" in out and "input of langid@l3" in out
    assert _versions(store, "langid") == ["l1", "l2", "l3"]
    assert main(["gc", "--keep", "1", "--data-root", str(store)]) == 0
    assert "deleted 3 version(s)" in capsys.readouterr().out
    assert _versions(store, "langid") == ["l3"]
    assert main(["gc", "--keep", "0", "--data-root", str(store)]) == 2


def test_cli_status_all_lists_every_version_with_its_inputs(store, capsys):
    assert main(["status", "--all", "--json", "--data-root", str(store)]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)["stages"]
    got = {(r["stage"], r["version"]): (r["inputs"], r["latest"]) for r in rows}
    assert got[("langid", "l3")] == ("ingest@i1", True) and got[("langid", "l1")] == ("ingest@i1", False)
    assert got[("ingest", "i3")] == ("files@digest3", True) and len(got) == 6


# ---------------------------------------------------------------- object stores (memory://: no rename, no locks)


@pytest.fixture
def mem_store():
    root = f"memory://gc-{uuid.uuid4().hex[:8]}"
    fs, base = paths.filesystem(root)
    yield _make_store(root), fs, base
    if fs.exists(base):
        fs.rm(base, recursive=True)


def test_object_store_gc_deletes_the_manifest_first(mem_store, monkeypatch):
    root, fs, base = mem_store
    removed: list[str] = []
    real_rm = fs.rm

    def recording_rm(path, recursive=False, **kw):
        removed.append(fs._strip_protocol(path).rstrip("/"))
        return real_rm(path, recursive=recursive, **kw)

    monkeypatch.setattr(fs, "rm", recording_rm)
    plan = gc(root, keep=1)
    assert _versions(root, "ingest") == ["i1", "i3"] and _versions(root, "langid") == ["l3"]
    assert {(d.stage, d.version) for d in plan.to_delete} == {("ingest", "i2"), ("langid", "l1"), ("langid", "l2")}
    for kind, version in (("ingest", "i2"), ("langid", "l1"), ("langid", "l2")):
        path = fs._strip_protocol(f"{root}/{kind}/{version}")
        assert removed.index(f"{path}/{MANIFEST}") < removed.index(path) and not fs.exists(path)
    assert not [p for p in fs.find(base) if "/.gc-" in p or "/.lock-" in p]  # no renames, no locks


def test_object_store_interrupted_delete_leaves_an_incomplete_dir_that_goes_once_stale(mem_store, monkeypatch):
    root, fs, base = mem_store
    plan = collect(root, keep=1)
    real_rm = fs.rm

    def rm_only_manifests(path, recursive=False, **kw):
        if not path.endswith(MANIFEST):
            raise OSError("connection reset")
        return real_rm(path, recursive=recursive, **kw)

    monkeypatch.setattr(fs, "rm", rm_only_manifests)
    with pytest.raises(OSError, match="connection reset"):
        apply(plan)
    monkeypatch.undo()
    half = f"{root}/ingest/i2"
    assert fs.exists(f"{half}/part-00000.parquet") and not is_complete(root, "ingest", "i2")  # gone to readers
    assert gc(root, keep=1).stale == []  # young: it could be a run writing
    later = collect(root, keep=1, now=time.time() + OLD)
    assert f"{half}" in later.stale
    apply(later)
    assert not fs.exists(half)


def test_object_store_stale_incomplete_removed_young_kept_resumable_listed(mem_store):
    root, fs, base = mem_store
    dead = _writer(root, "langid", "ldead", {"ingest": "i2"})
    partial = _writer(root, "train", "t1", resumable=True)
    plan = collect(root, keep=3)
    assert plan.stale == [] and plan.partial == [partial.path]
    assert _why(plan)[("ingest", "i2")] == (True, "newest 3")
    plan = collect(root, keep=1, now=time.time() + OLD)
    assert plan.stale == [dead.path] and plan.partial == [partial.path]
    apply(plan)
    assert not fs.exists(dead.path) and fs.exists(f"{partial.path}/part-00000.parquet")
    assert _versions(root, "ingest") == ["i1", "i3"]


def test_object_store_inputs_of_a_running_writer_are_kept(mem_store):
    root, fs, base = mem_store
    _writer(root, "langid", "l9", {"ingest": "i2"})
    gc(root, keep=1)
    assert _versions(root, "ingest") == ["i1", "i2", "i3"]
    assert load_manifest(root, "ingest", "i2").version == "i2"
