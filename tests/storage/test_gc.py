"""`pretrain gc`: keeps latest, the N newest and the whole lineage of what it keeps; cleans stale temp dirs."""

import os
import time

import pytest

from flows.cli import main
from storage.gc import apply, collect, gc
from storage.manifest import (ShardInfo, Stage, VersionWriter, is_complete, latest_version, list_versions,
                              new_manifest, set_latest)
from storage.stats import StageStats


def _commit(root, stage, version, created_at, inputs=None):
    w = VersionWriter(str(root), Stage(stage), version)
    with open(os.path.join(w.tmp_path, "part-00000.parquet"), "wb") as f:
        f.write(b"x" * 1000)
    m = new_manifest(Stage(stage), 1, version, {}, inputs or {}, [ShardInfo(name="part-00000.parquet", rows=1,
                     bytes=1000)], [], StageStats(docs_in=1, docs_out=1))
    w.commit(m.model_copy(update={"created_at": created_at}))
    return version


@pytest.fixture
def store(tmp_path):
    """ingest i1..i3 (i3 newest); langid l1 <- i1 (old), l2 <- i2, l3 <- i1 (newest, built from the OLDEST ingest)."""
    root = tmp_path / "data"
    for n in (1, 2, 3):
        _commit(root, "ingest", f"i{n}", f"2026-01-0{n}T00:00:00.000+00:00", {"files": f"digest{n}"})
    _commit(root, "langid", "l1", "2026-01-04T00:00:00.000+00:00", {"ingest": "i1"})
    _commit(root, "langid", "l2", "2026-01-05T00:00:00.000+00:00", {"ingest": "i2"})
    _commit(root, "langid", "l3", "2026-01-06T00:00:00.000+00:00", {"ingest": "i1"})
    set_latest(str(root), Stage.INGEST, "i3")
    return root


def _versions(root, stage):
    return [m.version for m in list_versions(str(root), stage)]


def test_keep_one_keeps_latest_newest_and_lineage(store):
    plan = gc(str(store), keep=1)
    # ingest: i3 is latest/newest; i1 is the input of the kept langid l3; i2 only fed l2, which goes
    assert _versions(store, "ingest") == ["i1", "i3"]
    assert _versions(store, "langid") == ["l3"]
    assert {(d.stage, d.version) for d in plan.to_delete} == {("ingest", "i2"), ("langid", "l1"), ("langid", "l2")}
    why = {(d.stage, d.version): d.why for d in plan.versions}
    assert why[("ingest", "i1")] == "input of langid@l3"
    assert plan.bytes_freed >= 3000
    assert latest_version(str(store), "langid") == "l3" and latest_version(str(store), "ingest") == "i3"
    assert not [p for p in (store / "ingest").iterdir() if p.name.startswith(".")]


def test_old_latest_is_kept_even_when_not_newest(store):
    set_latest(str(store), Stage.LANGID, "l1")  # e.g. a rerun reused an old version
    gc(str(store), keep=1)
    assert _versions(store, "langid") == ["l1", "l3"]
    assert _versions(store, "ingest") == ["i1", "i3"]


def test_input_of_kept_version_survives_transitively(tmp_path):
    root = tmp_path / "data"
    _commit(root, "ingest", "i-old", "2026-01-01T00:00:00.000+00:00")
    _commit(root, "ingest", "i-new", "2026-01-02T00:00:00.000+00:00")
    _commit(root, "langid", "l-old", "2026-01-03T00:00:00.000+00:00", {"ingest": "i-old"})
    _commit(root, "langid", "l-new", "2026-01-04T00:00:00.000+00:00", {"ingest": "i-new"})
    _commit(root, "quality", "q1", "2026-01-05T00:00:00.000+00:00", {"langid": "l-old"})
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


def test_stale_temp_dirs_removed_only_when_older_than_an_hour(store):
    old = store / "ingest" / ".tmp-dead-1234abcd"
    young = store / "ingest" / ".tmp-running-5678abcd"
    old_ptr = store / "langid" / "latest.tmp-0000aaaa"
    for p in (old, young):
        p.mkdir()
        (p / "part-00000.parquet").write_bytes(b"x")
    old_ptr.write_text("l1\n")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(old_ptr, (two_hours_ago, two_hours_ago))
    plan = gc(str(store), keep=3)
    assert sorted(plan.stale) == sorted([str(old), str(old_ptr)])
    assert not old.exists() and not old_ptr.exists() and young.exists()
    assert not plan.to_delete  # keep=3 keeps every version here


def test_directory_without_manifest_is_reported_not_deleted(store):
    odd = store / "langid" / "handmade"
    odd.mkdir()
    internal = store / "langid" / "_index" / "abc"  # a stage's own work area (decontaminate has one)
    internal.mkdir(parents=True)
    plan = gc(str(store), keep=1)
    assert plan.unknown == [str(odd)] and odd.exists() and internal.exists()


def test_keep_must_be_positive(store):
    with pytest.raises(ValueError, match="at least 1"):
        collect(str(store), keep=0)


def test_interrupted_delete_leaves_only_a_hidden_dir_that_the_next_gc_removes(store, monkeypatch):
    plan = collect(str(store), keep=1)
    import storage.gc as gcmod
    calls = {"n": 0}

    class Boom(RuntimeError):
        pass

    real_fs, _ = gcmod.paths.filesystem(str(store))
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
    two_hours_ago = time.time() - 7200
    os.utime(hidden[0], (two_hours_ago, two_hours_ago))
    monkeypatch.undo()
    again = gc(str(store), keep=1)
    assert str(hidden[0]) in again.stale and not hidden[0].exists()


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
