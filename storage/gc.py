"""Garbage collection of the artifact store: `pretrain gc --keep N [--dry-run]`.

gc knows no stage names and no table of side artifacts: it follows the layout of storage.artifacts and the
lineage in the manifests. The artifact kinds are the top-level directories of the data root whose names do
not start with `_` or `.` (`_inputs/` and the like are never looked into) and that hold something of that
layout (a `latest` pointer, a version directory with `manifest.json` or `_writing.json`, a lock file);
a top-level directory that holds none of these is reported in `plan.unknown` and left alone. Every
directory `<kind>/<version>/` is a version: complete when it has `manifest.json`, else incomplete.

Which complete versions survive; the same rules for every kind, a stage or a side artifact (the quality
classifier, a score cache, a tokenizer, a decontamination index):
  - per kind, the `latest` version (what the next run reads) and the N newest by `created_at`;
  - the lineage closure: every artifact a kept version names in its `inputs` (a key `k` with value `v`
    is an artifact when `<root>/<k>/<v>/manifest.json` exists; other keys, e.g. `files`, are content
    digests), their inputs, and so on. So a side artifact survives while a kept version names it (quality
    names its `quality_scores` and `quality_classifier`) and goes with the last version that did;
  - the inputs of a run in progress, and their lineage: the `inputs` in the `_writing.json` of an
    incomplete version that is alive (below);
  - a version built (`created_at`) less than `stale_after` ago (default one hour) that nothing kept names:
    a run may have just built it and be about to use it (it has not written its reference yet).
The closure is computed over all kinds before anything is deleted, so nothing a kept version was built
from is removed, however old it is. Every other complete version is deleted.

Incomplete versions (no `manifest.json`: invisible to readers):
  - resumable (its `_writing.json` says so: a failed training run's checkpoints, which the next run of the
    version resumes from): listed in `plan.partial` and never deleted; delete one by hand once abandoned;
  - alive: a run holds the version's lock (local data roots: `<kind>/.lock-<version>`, storage.locks), or
    its newest file, at any depth, is younger than `stale_after` (object stores have no locks): kept;
  - otherwise a killed run's leftover: removed (`plan.stale`). A directory without `_writing.json` (a run
    killed while it aborted or committed, a delete interrupted on an object store) is judged the same way.
Also in `plan.stale`: `latest.tmp-*` pointer files and `.gc-*` directories (half-deleted versions) older
than `stale_after`, and lock files no run holds (left by killed runs: the kernel dropped their lock)
whatever their age. Other entries of a kind directory (hidden or `_`-prefixed names, plain files, a
version whose manifest cannot be read) are reported in `plan.unknown` and left alone.

Deletion: on a local disk a version is deleted under its lock (left for the next gc when a run holds it):
it is renamed to `<kind>/.gc-<version>-<nonce>` (one rename, after which readers no longer see it) and then
removed, so a crash in the middle leaves a hidden directory that the next gc removes. On an object store,
where a rename is a copy, its `manifest.json` is deleted first (the version stops existing at once), then
the rest; a crash in between leaves an incomplete directory that the next gc removes once stale. Before it
deletes a version gc checks again that it is what the plan saw (complete; or incomplete, not resumable and
stale).

Sizes (`bytes`, the `mb` column) are measured for every complete version, kept or deleted.

Caveat: a run protects its inputs from the moment it opens its writer (`_writing.json`); a run that has
resolved an old, unreferenced input but not yet opened its writer can lose it to a concurrent gc, so run gc
when no run pins an old `input_version`.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec

from storage import paths
from storage.artifacts import is_local, read_writing
from storage.locks import LOCK_PREFIX, VersionLock, lock_is_held, remove_lock_if_free
from storage.manifest import LATEST, MANIFEST, Manifest, latest_version, load_manifest

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 3600.0
GC_PREFIX = ".gc-"
LATEST_TMP_PREFIX = f"{LATEST}.tmp-"
YOUNG = "built less than stale_after ago: a run may be about to use it"
UNREFERENCED = "unreferenced"

Key = tuple[str, str]  # (kind, version)


@dataclass
class VersionDecision:
    stage: str  # the artifact kind (a stage or a side artifact)
    version: str
    created_at: str
    keep: bool
    why: str
    bytes: int = 0


@dataclass
class GcPlan:
    """What `collect` decided; `applied` is set when the plan is applied."""

    root: str
    keep: int
    versions: list[VersionDecision] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # killed runs' leftovers (removed)
    unknown: list[str] = field(default_factory=list)  # not of the artifact layout (left alone)
    partial: list[str] = field(default_factory=list)  # resumable incomplete versions (never removed)
    applied: bool = False
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    clock_offset_s: float = 0.0  # `now` given to collect minus the real time then (apply re-checks ages)

    @property
    def to_delete(self) -> list[VersionDecision]:
        return [d for d in self.versions if not d.keep]

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.to_delete)

    @property
    def bytes_kept(self) -> int:
        return sum(d.bytes for d in self.versions if d.keep)

    def rows(self) -> list[dict[str, object]]:
        return [
            {
                "stage": d.stage,
                "version": d.version,
                "created_at": d.created_at,
                "action": "keep" if d.keep else ("deleted" if self.applied else "delete"),
                "why": d.why,
                "mb": round(d.bytes / 1e6, 3),
            }
            for d in self.versions
        ]


def delete_hint(path: str) -> str:
    """How to delete a resumable partial version by hand (gc never does)."""
    return (
        f"{path}: resumable partial version (a failed or running run's work, resumed by the next run of it); "
        f"gc never deletes it; if abandoned, delete it by hand: rm -r {path}"
    )


# ---------------------------------------------------------------- file system helpers


def _info_mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)
    return None


def _newest_mtime(fs: fsspec.AbstractFileSystem, path: str) -> float | None:
    """Newest mtime of `path` and everything under it: a long phase may write only in a subdirectory."""
    times = [_info_mtime(fs.info(path))]
    if fs.isdir(path):
        times += [_info_mtime(info) for info in fs.find(path, withdirs=True, detail=True).values()]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _du(fs: fsspec.AbstractFileSystem, path: str) -> int:
    try:
        return int(fs.du(path, total=True))
    except (OSError, ValueError):
        return 0


def _entries(fs: fsspec.AbstractFileSystem, d: str) -> list[tuple[str, bool]]:
    """(name, is a directory) of the entries of `d`, sorted by name."""
    if not fs.exists(d):
        return []
    out = [(str(e["name"]).rstrip("/").rsplit("/", 1)[-1], e.get("type") == "directory") for e in fs.ls(d, detail=True)]
    return sorted(out)


def _created(m: Manifest) -> float | None:
    try:
        t = dt.datetime.fromisoformat(m.created_at)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def _locked(root: str, kind: str, version: str) -> bool:
    """Whether a run holds the lock of kind@version (never on object stores: they have no locks)."""
    path = VersionLock(root, kind, version).path
    return path is not None and lock_is_held(path)


def _is_stale(fs: fsspec.AbstractFileSystem, path: str, now: float, stale_after_s: float) -> bool:
    mtime = _newest_mtime(fs, path)
    return mtime is not None and now - mtime > stale_after_s


# ---------------------------------------------------------------- collect


@dataclass
class _Scan:
    """What one kind directory holds."""

    complete: dict[str, Manifest] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    running: dict[str, dict[str, str]] = field(default_factory=dict)  # alive incomplete version -> its inputs
    layout: bool = False  # holds something of the artifact layout (else: not a kind)


def _scan_kind(
    root: str, fs: fsspec.AbstractFileSystem, kind_dir: str, kind: str, now: float, stale_after_s: float
) -> _Scan:
    scan = _Scan()
    local = is_local(fs)
    for name, is_dir in _entries(fs, kind_dir):
        path = paths.join(kind_dir, name)
        if name == LATEST and not is_dir:
            scan.layout = True
        elif local and name.startswith(LOCK_PREFIX) and not is_dir:
            scan.layout = True
            if not _locked(root, kind, name.removeprefix(LOCK_PREFIX)):
                scan.stale.append(path)  # left by a killed run (the kernel dropped its lock)
        elif name.startswith((LATEST_TMP_PREFIX, GC_PREFIX)):
            scan.layout = True
            if _is_stale(fs, path, now, stale_after_s):
                scan.stale.append(path)
        elif name.startswith((".", "_")) or not is_dir:
            scan.unknown.append(path)
        elif fs.exists(paths.join(path, MANIFEST)):
            scan.layout = True
            try:
                scan.complete[name] = load_manifest(root, kind, name)
            except (OSError, ValueError) as err:  # an unreadable manifest, a name no version has
                log.warning("gc: left alone %s: its manifest cannot be read (%s)", path, err)
                scan.unknown.append(path)
        else:
            _scan_incomplete(scan, root, fs, path, kind, name, now, stale_after_s)
    return scan


def _scan_incomplete(
    scan: _Scan,
    root: str,
    fs: fsspec.AbstractFileSystem,
    path: str,
    kind: str,
    version: str,
    now: float,
    stale_after_s: float,
) -> None:
    writing = read_writing(fs, path)
    scan.layout = scan.layout or writing is not None
    resumable = bool(writing and writing.get("resumable"))
    alive = (is_local(fs) and _locked(root, kind, version)) or not _is_stale(fs, path, now, stale_after_s)
    if resumable:
        scan.partial.append(path)
        log.warning("gc: %s", delete_hint(path))
    if alive:
        inputs = (writing or {}).get("inputs") or {}
        scan.running[version] = {str(k): str(v) for k, v in inputs.items()} if isinstance(inputs, dict) else {}
    elif not resumable:
        scan.stale.append(path)


def _kind_order(kinds: list[str], manifests: dict[Key, Manifest]) -> dict[str, int]:
    """Kinds in lineage order (a kind after the kinds its versions are built from), by name among equals."""
    ups: dict[str, set[str]] = {k: set() for k in kinds}
    for (kind, _), m in manifests.items():
        ups[kind] |= {k for k in m.inputs if k in ups and k != kind}
    order: list[str] = []
    while len(order) < len(kinds):
        left = [k for k in sorted(kinds) if k not in order]
        ready = [k for k in left if ups[k] <= set(order)]
        order.append((ready or left)[0])  # a cycle (not from our writers): by name
    return {k: i for i, k in enumerate(order)}


def collect(root: str, keep: int, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: float | None = None) -> GcPlan:
    """Decide what to keep and what to delete; touches nothing."""
    if keep < 1:
        raise ValueError(f"--keep {keep}: must be at least 1 (the newest version of every kind is always kept)")
    root = paths.resolve_data_root(root)
    fs, _ = paths.filesystem(root)
    real_now = time.time()
    now = real_now if now is None else now
    plan = GcPlan(root=root, keep=keep, stale_after_s=stale_after_s, clock_offset_s=now - real_now)
    manifests: dict[Key, Manifest] = {}
    running: dict[Key, dict[str, str]] = {}
    kinds: list[str] = []
    for kind, is_dir in _entries(fs, root):
        if not is_dir or kind.startswith(("_", ".")):
            continue
        kind_dir = paths.join(root, kind)  # paths as the root names them (URLs keep their scheme)
        scan = _scan_kind(root, fs, kind_dir, kind, now, stale_after_s)
        if not scan.layout:
            plan.unknown.append(kind_dir)
            continue
        kinds.append(kind)
        manifests.update({(kind, v): m for v, m in scan.complete.items()})
        running.update({(kind, v): inputs for v, inputs in scan.running.items()})
        plan.stale += scan.stale
        plan.unknown += scan.unknown
        plan.partial += scan.partial

    why: dict[Key, str] = {}

    def close(roots: list[tuple[Key, str]]) -> None:
        """Keep `roots` (first reason wins) and, breadth first, everything they were built from."""
        todo: collections.deque[Key] = collections.deque()
        for key, reason in roots:
            if key in manifests and key not in why:
                why[key] = reason
                todo.append(key)
        while todo:
            key = todo.popleft()
            for up in sorted(manifests[key].inputs.items()):
                if up in manifests and up not in why:
                    why[up] = f"input of {key[0]}@{key[1]}"
                    todo.append(up)

    newest: list[tuple[Key, str]] = []
    for kind in kinds:
        latest = latest_version(root, kind)
        if latest is not None:
            newest.append(((kind, latest), "latest"))
        versions = sorted((m.created_at, v) for (k, v), m in manifests.items() if k == kind)
        newest += [((kind, v), f"newest {keep}") for _, v in versions[-keep:]]
    close(newest)
    close(
        [
            ((up_kind, up_version), f"input of the run in progress {kind}/{version}")
            for (kind, version), inputs in sorted(running.items())
            for up_kind, up_version in sorted(inputs.items())
        ]
    )
    young = [
        (key, YOUNG) for key, m in sorted(manifests.items()) if (t := _created(m)) is None or now - t <= stale_after_s
    ]
    close(young)

    for (kind, version), m in manifests.items():
        plan.versions.append(
            VersionDecision(
                kind,
                version,
                m.created_at,
                (kind, version) in why,
                why.get((kind, version), UNREFERENCED),
                _du(fs, paths.join(root, kind, version)),
            )
        )
    order = _kind_order(kinds, manifests)
    plan.versions.sort(key=lambda d: (order[d.stage], d.created_at, d.version))
    return plan


# ---------------------------------------------------------------- apply


def _delete_version(plan: GcPlan, fs: fsspec.AbstractFileSystem, kind: str, version: str, complete: bool) -> bool:
    """Delete `<kind>/<version>/` if it is still what the plan saw (module docstring); False when left alone."""
    path = paths.join(plan.root, kind, version)
    lock = VersionLock(plan.root, kind, version) if is_local(fs) else None
    if lock is not None and not lock.try_acquire():
        log.info("gc: left %s@%s alone: a run holds its lock now", kind, version)
        return False
    try:
        has_manifest = fs.exists(paths.join(path, MANIFEST))
        if complete:
            still = has_manifest
        else:
            writing = read_writing(fs, path) or {}
            now = time.time() + plan.clock_offset_s
            still = (
                fs.exists(path)
                and not has_manifest
                and not writing.get("resumable")
                and _is_stale(fs, path, now, plan.stale_after_s)
            )
        if not still:
            log.info("gc: left %s@%s alone: it changed since gc looked", kind, version)
            return False
        if lock is not None:  # local: one rename hides it from readers
            target = paths.join(plan.root, kind, f"{GC_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
            fs.mv(path, target, recursive=True)
        else:  # object store: the version stops existing when its manifest goes
            target = path
            if has_manifest:
                fs.rm(paths.join(path, MANIFEST))
    finally:
        if lock is not None:
            lock.release()
    fs.rm(target, recursive=True)
    return True


def apply(plan: GcPlan) -> GcPlan:
    """Delete what the plan marks for deletion; what a run took up since `collect` is left alone."""
    fs, _ = paths.filesystem(plan.root)
    for d in plan.to_delete:
        if _delete_version(plan, fs, d.stage, d.version, complete=True):
            log.info("gc: deleted %s@%s (%s)", d.stage, d.version, d.why)
        else:
            d.keep, d.why = True, "in use by a run now: left for the next gc"
    removed: list[str] = []
    for path in plan.stale:
        kind_dir, name = path.rsplit("/", 1)
        if name.startswith(LOCK_PREFIX):
            done = remove_lock_if_free(path)  # taken first: a run that started since collect keeps its lock
        elif name.startswith((GC_PREFIX, LATEST_TMP_PREFIX)):
            done = bool(fs.exists(path))
            if done:
                fs.rm(path, recursive=fs.isdir(path))
        else:
            done = _delete_version(plan, fs, kind_dir.rsplit("/", 1)[-1], name, complete=False)
        if done:
            removed.append(path)
            log.info("gc: removed stale %s", path)
    plan.stale = removed
    plan.applied = True
    return plan


def gc(root: str, keep: int, dry_run: bool = False, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> GcPlan:
    """Collect and (unless dry_run) apply; returns the plan."""
    plan = collect(root, keep, stale_after_s)
    return plan if dry_run else apply(plan)
