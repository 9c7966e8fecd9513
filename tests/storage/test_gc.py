"""`pretrain gc`: keeps latest, the N newest and the whole lineage of what it keeps; cleans stale temp dirs."""

import json
import os
import time

import numpy as np
import pytest

from flows.cli import main
from flows.pipeline import Stage
from storage.artifacts import ArtifactWriter
from storage.gc import apply, collect, gc
from storage.locks import VersionLock
from storage.manifest import (
    ShardInfo,
    is_complete,
    latest_version,
    list_versions,
    load_manifest,
    new_manifest,
    set_latest,
)
from storage.stats import StageStats


def _commit(root, stage, version, created_at, inputs=None, extras=None):
    w = ArtifactWriter(str(root), Stage(stage), version)
    with open(os.path.join(w.path, "part-00000.parquet"), "wb") as f:
        f.write(b"x" * 1000)
    m = new_manifest(
        Stage(stage),
        1,
        version,
        {},
        inputs or {},
        [ShardInfo(name="part-00000.parquet", rows=1, bytes=1000)],
        [],
        StageStats(docs_in=1, docs_out=1),
    )
    w.commit(m.model_copy(update={"created_at": created_at, "extras": extras or {}}))
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


def _age(*paths, seconds=7200):
    """Make files/dirs look `seconds` old (gc judges a temp dir by the newest file inside it)."""
    then = time.time() - seconds
    for p in paths:
        os.utime(p, (then, then))


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
    _age(old / "part-00000.parquet", old, old_ptr)
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
    _age(*hidden[0].rglob("*"), hidden[0])
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


# ---------------------------------------------------------------- decontaminate's n-gram indexes, train work dirs


def _index(root, ident, age_s=7200):
    d = root / "decontaminate" / "_index" / ident
    d.mkdir(parents=True)
    (d / "hashes.npy").write_bytes(b"x" * 500)
    (d / "index.json").write_text(json.dumps({"version": ident}))
    _age(d / "hashes.npy", d / "index.json", d, seconds=age_s)
    return d


def _running_decontaminate(root, name, ident, age_s=0):
    """An in-progress decontaminate version dir whose `_work/index.json` names the index it filters with."""
    d = root / "decontaminate" / name
    (d / "_work").mkdir(parents=True)
    ref = d / "_work" / "index.json"
    ref.write_text(json.dumps({"version": ident, "dir": str(root / "decontaminate" / "_index" / ident)}))
    if age_s:
        _age(ref, d / "_work", d, seconds=age_s)
    return d


@pytest.fixture
def decon_store(store):
    """dedup d1 <- langid l3 (lineage skipped); decontaminate x1 (old, index A), x2 (newest, index B)."""
    _commit(store, "dedup", "d1", "2026-01-07T00:00:00.000+00:00", {"langid": "l3"})
    _commit(store, "decontaminate", "x1", "2026-01-08T00:00:00.000+00:00", {"dedup": "d1", "decontaminate_index": "A"})
    _commit(store, "decontaminate", "x2", "2026-01-09T00:00:00.000+00:00", {"dedup": "d1", "decontaminate_index": "B"})
    for ident in ("A", "B", "C"):  # C: no version references it
        _index(store, ident)
    return store


def _indexes(root):
    return sorted(p.name for p in (root / "decontaminate" / "_index").iterdir())


def test_index_of_deleted_decontaminate_version_is_pruned_with_it(decon_store):
    plan = gc(str(decon_store), keep=1)
    assert _versions(decon_store, "decontaminate") == ["x2"]
    assert _indexes(decon_store) == ["B"]
    decided = {(d.stage, d.name): (d.keep, d.why) for d in plan.versions}
    assert decided[("decontaminate", "_index/B")] == (True, "used by decontaminate@x2")
    assert decided[("decontaminate", "_index/A")] == (False, "unreferenced")
    assert decided[("decontaminate", "_index/C")] == (False, "unreferenced")
    assert next(d for d in plan.to_delete if d.name == "_index/A").bytes >= 500
    assert not [p for p in (decon_store / "decontaminate" / "_index").iterdir() if p.name.startswith(".")]


def test_index_of_kept_old_version_survives(decon_store):
    set_latest(str(decon_store), Stage.DECONTAMINATE, "x1")  # the latest target is old: it and its index stay
    gc(str(decon_store), keep=1)
    assert _versions(decon_store, "decontaminate") == ["x1", "x2"]
    assert _indexes(decon_store) == ["A", "B"]


def test_index_used_by_a_run_in_progress_or_just_built_survives(decon_store):
    _running_decontaminate(decon_store, ".tmp-x3-0000aaaa", "C")  # young: a run filtering with index C now
    _index(decon_store, "D", age_s=60)  # built a minute ago; its run has not written the reference yet
    _running_decontaminate(decon_store, ".tmp-x4-0000bbbb", "A", age_s=7200)  # killed long ago: no protection
    plan = gc(str(decon_store), keep=1)
    assert _indexes(decon_store) == ["B", "C", "D"]
    why = {d.name: d.why for d in plan.versions if d.parent}
    assert why["_index/C"] == "used by the run in progress decontaminate/.tmp-x3-0000aaaa"
    assert why["_index/D"].startswith("built less than stale_after ago")
    assert str(decon_store / "decontaminate" / ".tmp-x4-0000bbbb") in plan.stale
    assert (decon_store / "decontaminate" / ".tmp-x3-0000aaaa").exists()


def test_stale_temp_dirs_inside_the_index_dir_are_removed(decon_store):
    idx = decon_store / "decontaminate" / "_index"
    dead, building = idx / ".tmp-E-1234abcd", idx / ".tmp-F-5678abcd"
    for d in (dead, building):
        d.mkdir()
        (d / "hashes.npy").write_bytes(b"x")
    _age(dead / "hashes.npy", dead)
    plan = gc(str(decon_store), keep=3)
    assert plan.stale == [str(dead)] and not dead.exists() and building.exists()


def test_temp_dir_with_a_fresh_file_deep_inside_is_not_stale(store):
    running = store / "langid" / ".tmp-l9-1234abcd"
    (running / "_work" / "phase2").mkdir(parents=True)
    (running / "_work" / "phase2" / "clusters.bin").write_bytes(b"x")  # a long phase writing in a subdirectory
    _age(running / "_work", running)  # the top directory itself has not changed for two hours
    plan = gc(str(store), keep=1)
    assert plan.stale == [] and running.exists()


def test_train_work_dirs_are_never_removed(store, capsys):
    resumable = store / "train" / ".work-t1"
    (resumable / "step-000100").mkdir(parents=True)
    (resumable / "step-000100" / "model.pt").write_bytes(b"w" * 100)
    _age(resumable / "step-000100" / "model.pt", resumable / "step-000100", resumable, seconds=10 * 86400)
    dead_ptr = store / "train" / "latest.tmp-0000aaaa"  # not work: a pointer file a killed commit left
    dead_ptr.write_text("t0\n")
    _age(dead_ptr)
    plan = gc(str(store), keep=1)
    assert plan.train_work == [str(resumable)]
    assert (resumable / "step-000100" / "model.pt").exists()
    assert plan.stale == [str(dead_ptr)] and not dead_ptr.exists()
    assert main(["gc", "--keep", "1", "--dry-run", "--data-root", str(store)]) == 0
    assert f"checkpoints of a running or killed run; delete by hand): {resumable}" in capsys.readouterr().out


def test_train_temp_dir_of_a_killed_run_is_collected_unless_its_run_holds_the_lock(store):
    """A killed train run left an empty `train/.tmp-<v>-*` that gc never collected (issue 11, defect 9);
    now it goes once stale, unless a run of that version is alive (holds `train/.lock-<v>`): a training
    run leaves its temp dir empty for hours, writing into its work dir."""
    killed, alive = store / "train" / ".tmp-t1-1234abcd", store / "train" / ".tmp-t2-5678abcd"
    linked = store / "train" / ".tmp-t3-9abcdef0"  # killed while hard-linking the work dir's files in
    for d in (killed, alive, linked):
        d.mkdir(parents=True)
    (linked / "step-000100").mkdir()
    (linked / "step-000100" / "model.pt").write_bytes(b"w")
    _age(linked / "step-000100" / "model.pt", linked / "step-000100", killed, alive, linked, seconds=10 * 86400)
    lock = VersionLock(str(store), Stage.TRAIN, "t2")
    assert lock.try_acquire()
    try:
        plan = gc(str(store), keep=1)
    finally:
        lock.release()
    assert sorted(plan.stale) == sorted([str(killed), str(linked)]) and plan.train_work == []
    assert not killed.exists() and not linked.exists() and alive.exists()
    young = store / "train" / ".tmp-t4-00000000"  # not stale yet: kept even without a lock
    young.mkdir()
    assert gc(str(store), keep=1).stale == [str(alive)] and young.exists()


def test_lock_files_of_killed_runs_are_removed_held_ones_kept(store):
    leftover = store / "langid" / ".lock-l9"  # a killed run's lock file (the kernel dropped its lock)
    leftover.write_text("pid 1 on elsewhere\n")
    held = VersionLock(str(store), Stage.LANGID, "l8")
    assert held.try_acquire()
    running = store / "langid" / ".tmp-l8-1234abcd"  # the holder's temp dir: a long phase writes nothing
    running.mkdir()
    _age(running)
    try:
        plan = gc(str(store), keep=3)
        assert plan.stale == [str(leftover)] and not leftover.exists()
        assert (store / "langid" / ".lock-l8").exists() and running.exists() and plan.unknown == []
    finally:
        held.release()
    assert gc(str(store), keep=3).stale == [str(running)] and not running.exists()


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


def test_train_work_prefix_matches_the_train_flow():
    import flows.train

    prefix = getattr(flows.train, "WORK_PREFIX", None)
    if prefix is None:
        pytest.skip("flows/train.py keeps no cross-run work dir")
    from storage.gc import TRAIN_WORK_PREFIXES

    assert prefix in TRAIN_WORK_PREFIXES


def test_cli_reports_index_deletions(decon_store, capsys):
    assert main(["gc", "--keep", "1", "--dry-run", "--data-root", str(decon_store)]) == 0
    out = capsys.readouterr().out
    assert "_index/A" in out and "used by decontaminate@x2" in out and _indexes(decon_store) == ["A", "B", "C"]


def test_side_artifact_names_match_the_decontaminate_stage():
    from storage.gc import SIDE_ARTIFACTS
    from tasks import decontaminate

    side = next(s for s in SIDE_ARTIFACTS if s.stage == Stage.DECONTAMINATE)
    assert (side.subdir, side.work_ref) == (decontaminate.INDEX_DIR, decontaminate.WORK_REF)


def test_gc_on_real_decontaminate_versions(prefect_backend, tmp_path, make_version, monkeypatch):
    """Two real decontaminate runs with different benchmark files: gc --keep 1 prunes the old run's index."""
    from flows.decontaminate import decontaminate_flow
    from flows.stage import task_runner
    from storage.documents import Document
    from tasks.decontaminate import DecontaminateParams, index_version
    from tasks.decontaminate import benchmarks as bm

    root = tmp_path / "data"
    docs = [Document(id=f"d{i}", url=f"http://e/{i}", text=" ".join(f"w{i}x{j}" for j in range(60))) for i in range(4)]
    make_version(root, "dedup", [docs[:2], docs[2:]], version="dedup1")
    bench = tmp_path / "bench.jsonl"
    monkeypatch.setenv("PRETRAIN_ALLOWED_ROOTS", str(tmp_path))  # benchmark files must lie under an allowed root
    versions = []
    for text in (
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron",
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    ):
        bench.write_text(json.dumps({"id": "q1", "q": text}) + "\n")
        params = DecontaminateParams(
            humaneval=False, benchmarks=[bm.BenchmarkFile(name="toy", path=str(bench), fields=["q"], id_field="id")]
        )
        v = decontaminate_flow.with_options(task_runner=task_runner(1))(params=params, data_root=str(root))
        versions.append((v, index_version(params)))
        time.sleep(0.01)  # distinct created_at
    (v_old, idx_old), (v_new, idx_new) = versions
    assert idx_old != idx_new and _indexes(root) == sorted([idx_old, idx_new])
    plan = gc(str(root), keep=1, stale_after_s=0)  # the indexes were built seconds ago: no age protection
    assert _versions(root, "decontaminate") == [v_new] and _indexes(root) == [idx_new]
    assert {(d.stage, d.name) for d in plan.to_delete} == {
        ("decontaminate", v_old),
        ("decontaminate", f"_index/{idx_old}"),
    }
    assert _versions(root, "dedup") == ["dedup1"]


# ---------------------------------------------------------------- quality's score caches, tokenize's tokenizer caches


def _cache(root, stage, subdir, ident, age_s=7200):
    d = root / stage / subdir / ident
    d.mkdir(parents=True)
    (d / "part-00000.parquet").write_bytes(b"s" * 400)
    _age(d / "part-00000.parquet", d, seconds=age_s)
    return d


def _caches(root, stage, subdir):
    return sorted(p.name for p in (root / stage / subdir).iterdir())


def _decided(plan):
    return {(d.stage, d.name): (d.keep, d.why) for d in plan.versions if d.parent}


@pytest.fixture
def cache_store(store):
    """quality q1 (old, scores S1) and q2 (newest, scores S2); tokenize t1 (old, tokenizer K1), t2 (an older
    manifest naming its tokenizer only in extras.tokenizer.version: K2), t3 (newest, a given tokenizer_path);
    caches S3 and K3 are named by nothing."""
    _commit(store, "quality", "q1", "2026-01-07T00:00:00.000+00:00", {"langid": "l3"}, {"scores_version": "S1"})
    _commit(store, "quality", "q2", "2026-01-08T00:00:00.000+00:00", {"langid": "l3"}, {"scores_version": "S2"})
    _commit(
        store,
        "tokenize",
        "t1",
        "2026-01-09T00:00:00.000+00:00",
        {},
        {"tokenizer_cache": "K1", "tokenizer": {"source": "trained", "version": "K1"}},
    )
    _commit(
        store,
        "tokenize",
        "t2",
        "2026-01-10T00:00:00.000+00:00",
        {},
        {"tokenizer": {"source": "trained", "version": "K2"}},
    )
    _commit(
        store,
        "tokenize",
        "t3",
        "2026-01-11T00:00:00.000+00:00",
        {},
        {"tokenizer_cache": None, "tokenizer": {"source": "file", "given_path": "/m/tokenizer.model"}},
    )
    for ident in ("S1", "S2", "S3"):
        _cache(store, "quality", "_scores", ident)
    for ident in ("K1", "K2", "K3"):
        _cache(store, "tokenize", "_tokenizer", ident)
    return store


def test_score_and_tokenizer_caches_of_deleted_versions_are_pruned(cache_store):
    plan = gc(str(cache_store), keep=1)
    assert _versions(cache_store, "quality") == ["q2"] and _versions(cache_store, "tokenize") == ["t3"]
    assert _caches(cache_store, "quality", "_scores") == ["S2"]
    assert _caches(cache_store, "tokenize", "_tokenizer") == []  # t3 used a given model file: no cache
    decided = _decided(plan)
    assert decided[("quality", "_scores/S2")] == (True, "used by quality@q2")
    assert decided[("quality", "_scores/S1")] == decided[("tokenize", "_tokenizer/K3")] == (False, "unreferenced")
    assert next(d for d in plan.to_delete if d.name == "_tokenizer/K1").bytes >= 400
    for sub in (cache_store / "quality" / "_scores", cache_store / "tokenize" / "_tokenizer"):
        assert not [p for p in sub.iterdir() if p.name.startswith(".")]


def test_caches_of_kept_versions_survive_including_an_older_tokenize_manifest(cache_store):
    set_latest(str(cache_store), Stage.QUALITY, "q1")
    plan = gc(str(cache_store), keep=2)  # tokenize keeps t2 and t3; quality keeps q1 (latest) and q2
    assert _caches(cache_store, "quality", "_scores") == ["S1", "S2"]
    assert _caches(cache_store, "tokenize", "_tokenizer") == ["K2"]
    assert _decided(plan)[("tokenize", "_tokenizer/K2")] == (True, "used by tokenize@t2")


def test_a_kept_manifest_that_does_not_name_its_cache_keeps_them_all(cache_store, capsys):
    _commit(cache_store, "quality", "q0", "2026-01-12T00:00:00.000+00:00", {"langid": "l3"})  # no scores_version
    _commit(cache_store, "tokenize", "t0", "2026-01-12T00:00:00.000+00:00", {}, {"vocab_size": 400})
    plan = gc(str(cache_store), keep=1)
    assert _versions(cache_store, "quality") == ["q0"]  # q1, q2 are gone, but not their caches
    assert _caches(cache_store, "quality", "_scores") == ["S1", "S2", "S3"]
    assert _caches(cache_store, "tokenize", "_tokenizer") == ["K1", "K2", "K3"]
    why = _decided(plan)[("quality", "_scores/S3")]
    assert why == (
        True,
        ("quality@q0 does not record which _scores it uses (manifest from before gc tracked it): kept to be safe"),
    )
    assert main(["gc", "--keep", "1", "--dry-run", "--data-root", str(cache_store)]) == 0
    assert "tokenize@t0 does not record which _tokenizer it uses" in capsys.readouterr().out


def test_a_run_in_progress_keeps_every_cache_of_its_stage_and_young_caches_survive(cache_store):
    running = cache_store / "quality" / ".tmp-q9-1234abcd"  # quality runs name no cache: keep all while one runs
    running.mkdir()
    (running / "part-00000.parquet").write_bytes(b"x")
    killed = cache_store / "tokenize" / ".tmp-t9-5678abcd"  # killed long ago: protects nothing
    killed.mkdir()
    _age(killed, seconds=7200)
    _cache(cache_store, "tokenize", "_tokenizer", "K4", age_s=60)  # just trained; its version is not written yet
    plan = gc(str(cache_store), keep=1)
    assert _caches(cache_store, "quality", "_scores") == ["S1", "S2", "S3"]
    assert _decided(plan)[("quality", "_scores/S1")] == (
        True,
        "a quality run is in progress (quality/.tmp-q9-1234abcd) and may use it",
    )
    assert _decided(plan)[("quality", "_scores/S2")] == (True, "used by quality@q2")
    assert _caches(cache_store, "tokenize", "_tokenizer") == ["K4"]
    assert str(killed) in plan.stale and not killed.exists() and running.exists()


def test_stale_temp_dirs_inside_the_cache_dirs_are_removed(cache_store):
    dead, building = (
        cache_store / "quality" / "_scores" / ".tmp-S5-1234abcd",
        cache_store / "tokenize" / "_tokenizer" / ".tmp-K5-1234abcd",
    )
    for d in (dead, building):
        d.mkdir()
        (d / "part-00000.parquet").write_bytes(b"x")
    _age(dead / "part-00000.parquet", dead)
    plan = gc(str(cache_store), keep=3)
    assert plan.stale == [str(dead)] and not dead.exists() and building.exists()
    assert not [d for d in plan.to_delete if not d.parent]  # keep=3 keeps every version here


def test_side_artifact_names_match_the_quality_and_tokenize_stages():
    from storage.gc import SIDE_ARTIFACTS
    from tasks import quality, tokenization

    dirs = {s.stage: s.subdir for s in SIDE_ARTIFACTS}
    assert dirs[Stage.QUALITY] == quality.SCORES_DIR and dirs[Stage.TOKENIZE] == tokenization.TOKENIZER_DIR


def test_gc_on_real_tokenize_versions(prefect_backend, tmp_path, make_version):
    """Two real tokenize runs with different vocabularies: the manifest names its cache; gc prunes the old one."""
    from flows.stage import task_runner
    from flows.tokenization import tokenization_flow
    from storage.documents import Document
    from tasks.tokenization import TokenizeParams

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "be", "fi", "ho", "ja"]
    words = ["".join(rng.choice(syll, int(rng.integers(1, 4)))) for _ in range(300)]
    docs = [
        Document(
            id=f"d{i}",
            text=" ".join(rng.choice(words, 120)) + f". Item {i}.",
            source="web",
            url=f"http://e/{i}",
            meta={"repeat": 0},
        )
        for i in range(40)
    ]
    import pyarrow as pa

    make_version(root, "mix", [docs[:20], docs[20:]], extra=[pa.field("repeat", pa.int32())], version="mix1")
    versions = []
    for vocab in (300, 320):
        params = TokenizeParams(vocab_size=vocab, seq_len=31, val_fraction=0.1)
        v = tokenization_flow.with_options(task_runner=task_runner(1))(params=params, data_root=str(root))
        m = load_manifest(str(root), Stage.TOKENIZE, v)
        assert (root / "tokenize" / "_tokenizer" / m.extras["tokenizer_cache"] / "tokenizer.json").is_file()
        versions.append((v, m.extras["tokenizer_cache"]))
        time.sleep(0.01)
    (v_old, k_old), (v_new, k_new) = versions
    assert k_old != k_new and _caches(root, "tokenize", "_tokenizer") == sorted([k_old, k_new])
    plan = gc(str(root), keep=1, stale_after_s=0)
    assert _versions(root, "tokenize") == [v_new] and _caches(root, "tokenize", "_tokenizer") == [k_new]
    assert {(d.stage, d.name) for d in plan.to_delete} == {("tokenize", v_old), ("tokenize", f"_tokenizer/{k_old}")}
    assert _versions(root, "mix") == ["mix1"]


def test_gc_on_real_quality_versions(prefect_backend, tmp_path, make_version):
    """Two real quality runs scoring with different filters: gc --keep 1 prunes the old run's score cache."""
    from flows.quality import quality_flow
    from flows.stage import task_runner
    from storage.documents import Document
    from tasks.langid import LANGID_FIELDS
    from tasks.quality import QualityParams

    root = tmp_path / "data"
    text = (
        "The museum reopened last spring after a long renovation of its east wing. Visitors can now see the "
        "restored ceiling, and the new rooms hold the collection of maps that had been stored for years. "
    )
    docs = [
        Document(
            id=f"d{i}",
            text=text * (2 + i % 3),
            url=f"http://e/{i}",
            meta={"language": "en", "language_score": 0.99, "language_top3": [{"lang": "en", "score": 0.99}]},
        )
        for i in range(6)
    ]
    make_version(root, "langid", [docs[:3], docs[3:]], extra=LANGID_FIELDS, version="00000000a1d1")  # a version id
    versions = []
    for filters in (["gopher_repetition"], ["c4_quality"]):
        params = QualityParams(use_classifier=False, filters=filters, min_score=None)
        v = quality_flow.with_options(task_runner=task_runner(1))(params=params, data_root=str(root))
        versions.append((v, load_manifest(str(root), Stage.QUALITY, v).extras["scores_version"]))
        time.sleep(0.01)
    (v_old, s_old), (v_new, s_new) = versions
    assert s_old != s_new and _caches(root, "quality", "_scores") == sorted([s_old, s_new])
    plan = gc(str(root), keep=1, stale_after_s=0)
    assert _versions(root, "quality") == [v_new] and _caches(root, "quality", "_scores") == [s_new]
    assert {(d.stage, d.name) for d in plan.to_delete} == {("quality", v_old), ("quality", f"_scores/{s_old}")}
    assert _versions(root, "langid") == ["00000000a1d1"]


def test_quality_run_scoring_into_its_cache_temp_dir_is_not_stale(store):
    # quality's scoring phase writes only into quality/_scores/.tmp-*, not into the run's own temp dir
    running = store / "quality" / ".tmp-q9-1234abcd"
    running.mkdir(parents=True)
    (running / "params.json").write_text("{}")
    _age(running / "params.json", running)
    scoring = store / "quality" / "_scores" / ".tmp-s1-abcd1234"
    scoring.mkdir(parents=True)
    (scoring / "scores-00000.parquet").write_bytes(b"x")
    plan = gc(str(store), keep=1)
    assert str(running) not in plan.stale and running.exists() and scoring.exists()
    # once the scoring temp dir is old too, the run is a killed run's leftover
    _age(scoring / "scores-00000.parquet", scoring)
    plan = gc(str(store), keep=1)
    assert str(running) in plan.stale and not running.exists()
