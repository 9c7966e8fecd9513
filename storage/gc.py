"""Garbage collection of the artifact store: `pretrain gc --keep N [--dry-run]`.

Which complete versions survive, per stage:
  - the `latest` version (what the next run reads);
  - the N newest versions by `created_at`;
  - every version in the lineage of a surviving version: its `inputs`, their inputs, and so on up to
    ingest. This closure is computed over all stages before anything is deleted, so a version that
    some kept version was built from is never removed, however old it is.
Everything else is removed. A version is removed by renaming it to `.gc-<version>-<nonce>` first (a
single rename, after which readers no longer see it) and then deleting that directory, so a crash in
the middle leaves only a hidden directory that the next `gc` cleans up.

Stage side artifacts (`SIDE_ARTIFACTS`): caches under `<stage>/<subdir>/<id>/` that several versions of a
stage share, each named by the versions that use it:
  - decontaminate's benchmark n-gram indexes `decontaminate/_index/<id>/` (`inputs["decontaminate_index"]`);
  - quality's score cache `quality/_scores/<id>/` (`extras["scores_version"]`);
  - tokenize's trained tokenizers `tokenize/_tokenizer/<id>/` (`extras["tokenizer_cache"]`, or the
    `extras["tokenizer"]["version"]` that manifests written before that field carry; none for `tokenizer_path`).
A cache is removed only when no kept version of its stage names it, no run of that stage in progress
(a young `.tmp-*` version dir) may use it, and it is older than `stale_after` (a run that has just built it
has not written its reference yet). A decontaminate run names its index in `_work/index.json`; quality
and tokenize runs name nothing, so while one is in progress every cache of that stage is kept. A kept
version whose manifest does not say which cache it used (written before gc tracked it) keeps every cache
of its stage; the plan says so in `why`.

Also removed: leftovers of killed runs older than `stale_after` (default one hour), where the age is
that of the newest file inside: `.tmp-*` version directories being written, `.old-*` copies from a
forced recompute, `.gc-*` half-deleted versions and `latest.tmp-*` pointer files (also `.tmp-*`/`.gc-*`
inside the side-artifact dirs). Younger ones may belong to a stage that is running right now. On a local
data root a `<stage>/.tmp-<version>-*` dir is kept, however old, while a run holds that version's lock
(`<stage>/.lock-<version>`, storage.manifest.VersionLock): a long phase, or a training run (which writes
into its work dir and leaves its `train/.tmp-*` empty for hours), is alive. Lock files no run holds
(left by killed runs) are removed whatever their age.

Sizes (`bytes`, the `mb` column) are measured for every version, kept or deleted.

Not touched: training work directories (`train/.work-*`: the checkpoints of a running or killed training
run, which a re-run resumes from; listed as `train_work`, delete them by hand), directories outside
the stage directories (`_inputs/`), a stage's
other `_`-prefixed directories, and a version directory without a manifest that is not hidden (that
cannot come from our commit protocol; it is reported).
Caveat: a run that reads an explicit old `input_version` while gc runs can lose its input; gc keeps
`latest` and the N newest, so run it when no run pins an old version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from storage import paths
from storage.manifest import (
    LATEST,
    LOCK_PREFIX,
    MANIFEST,
    Manifest,
    Stage,
    VersionLock,
    latest_version,
    list_versions,
    lock_is_held,
    remove_lock_if_free,
)

log = logging.getLogger(__name__)

# pipeline stages and the artifacts they reference (e.g. the quality classifier): all are collected
ALL_STAGES: list[Stage] = list(Stage)
STALE_PREFIXES = (".tmp-", ".old-", ".gc-", f"{LATEST}.tmp-")
WORK_PREFIX = ".tmp-"
DEFAULT_STALE_AFTER_S = 3600.0
# training work dirs, never removed: `.work-<version>/` holds the checkpoints a failed or killed run resumes
# from (flows/train.py WORK_PREFIX; a test checks they agree). `train/.tmp-*` is an ordinary temp dir: it
# only ever holds hard links to the work dir's files, and the version lock says whether its run is alive
TRAIN_WORK_PREFIXES = (".work-",)


@dataclass(frozen=True)
class SideArtifact:
    """A versioned directory `<stage>/<subdir>/<id>/` that stage versions reference (not a stage version)."""

    stage: Stage
    subdir: str
    # the ids a committed version of `stage` uses; None when its manifest does not say (then all are kept)
    refs: Callable[[Manifest], set[str] | None]
    # file in an in-progress `.tmp-*` version dir naming the id it uses (JSON {"version": id}); None when the
    # stage writes none, so that any run of the stage in progress keeps every id
    work_ref: str | None


def _index_refs(m: Manifest) -> set[str] | None:
    ids = {m.inputs.get("decontaminate_index"), (m.extras.get("index") or {}).get("version")}
    found = {str(i) for i in ids if i}
    return found or None


def _scores_refs(m: Manifest) -> set[str] | None:
    if "scores_version" not in m.extras:
        return None
    return {str(m.extras["scores_version"])} if m.extras["scores_version"] else set()


def _tokenizer_refs(m: Manifest) -> set[str] | None:
    if "tokenizer_cache" in m.extras:
        return {str(m.extras["tokenizer_cache"])} if m.extras["tokenizer_cache"] else set()
    tok = m.extras.get("tokenizer") or {}
    if tok.get("source") == "file":  # given `tokenizer_path`: no cache used
        return set()
    return {str(tok["version"])} if tok.get("source") == "trained" and tok.get("version") else None


# the names agree with tasks.decontaminate (INDEX_DIR, WORK_REF), tasks.quality (SCORES_DIR) and
# tasks.tokenization (TOKENIZER_DIR); tests check that
SIDE_ARTIFACTS: list[SideArtifact] = [
    SideArtifact(Stage.DECONTAMINATE, "_index", _index_refs, "_work/index.json"),
    SideArtifact(Stage.QUALITY, "_scores", _scores_refs, None),
    SideArtifact(Stage.TOKENIZE, "_tokenizer", _tokenizer_refs, None),
]


@dataclass
class VersionDecision:
    stage: str
    version: str
    created_at: str
    keep: bool
    why: str
    bytes: int = 0
    parent: str = ""  # "" for a stage version, else the side-artifact subdir (`_index`)

    @property
    def name(self) -> str:
        return f"{self.parent}/{self.version}" if self.parent else self.version


@dataclass
class GcPlan:
    """What `collect` decided; `removed` is filled when the plan is applied."""

    root: str
    keep: int
    versions: list[VersionDecision] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    train_work: list[str] = field(default_factory=list)
    applied: bool = False

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
                "version": d.name,
                "created_at": d.created_at,
                "action": "keep" if d.keep else ("deleted" if self.applied else "delete"),
                "why": d.why,
                "mb": round(d.bytes / 1e6, 3),
            }
            for d in self.versions
        ]


def _stage_inputs(m: Manifest) -> list[tuple[Stage, str]]:
    """Upstream stage versions a manifest was built from (other inputs, e.g. file digests, skipped)."""
    names = {str(s) for s in Stage}
    return [(Stage(k), v) for k, v in m.inputs.items() if k in names]


def _mtime(fs: object, path: str) -> float | None:
    info = fs.info(path)  # type: ignore[attr-defined]
    return _info_mtime(info)


def _info_mtime(info: dict[str, object]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)  # type: ignore[arg-type]
    return None


def _newest_mtime(fs: object, path: str) -> float | None:
    """Newest mtime of `path` and everything under it: a long phase may write only in a subdirectory."""
    times = [_mtime(fs, path)]
    if fs.isdir(path):  # type: ignore[attr-defined]
        found = fs.find(path, withdirs=True, detail=True)  # type: ignore[attr-defined]
        times += [_info_mtime(info) for info in found.values()]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _du(fs: object, path: str) -> int:
    try:
        return int(fs.du(path, total=True))  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return 0


def _entries(fs: object, d: str) -> list[str]:
    if not fs.exists(d):  # type: ignore[attr-defined]
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(d, detail=False))  # type: ignore[attr-defined]


def _iso(t: float | None) -> str:
    return "" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def _scan(plan: GcPlan, fs: object, base: str, now: float, stale_after_s: float) -> None:
    """Stale temp leftovers (removed), train work dirs (listed, kept) and dirs without a manifest (reported)."""
    for stage in ALL_STAGES:
        d = paths.join(base, str(stage))
        # a phase may write only into a side cache's temp dir (quality scoring into _scores/.tmp-*): that
        # is a sign of life of the stage's run dirs too
        side_life = max(
            [
                t
                for side in SIDE_ARTIFACTS
                if side.stage == stage
                for name in _entries(fs, paths.join(d, side.subdir))
                if name.startswith(STALE_PREFIXES)
                for t in [_newest_mtime(fs, paths.join(d, side.subdir, name))]
                if t is not None
            ],
            default=None,
        )
        for name in _entries(fs, d):
            path = paths.join(d, name)
            if name.startswith(LOCK_PREFIX):
                if not _locked(plan.root, stage, name.removeprefix(LOCK_PREFIX)):
                    plan.stale.append(path)  # left by a killed run (the kernel dropped its lock)
            elif stage == Stage.TRAIN and name.startswith(TRAIN_WORK_PREFIXES):
                plan.train_work.append(path)
            elif name.startswith(STALE_PREFIXES):
                mtime = _newest_mtime(fs, path)
                if mtime is not None and side_life is not None and name.startswith(".tmp-"):
                    mtime = max(mtime, side_life)
                if (
                    mtime is not None
                    and now - mtime > stale_after_s
                    and not (name.startswith(WORK_PREFIX) and _locked(plan.root, stage, _tmp_version(name)))
                ):
                    plan.stale.append(path)
            elif name != LATEST and not name.startswith((".", "_")) and not fs.exists(paths.join(path, MANIFEST)):  # type: ignore[attr-defined]
                plan.unknown.append(path)
    for side in SIDE_ARTIFACTS:
        d = paths.join(base, str(side.stage), side.subdir)
        for name in _entries(fs, d):
            path = paths.join(d, name)
            mtime = _newest_mtime(fs, path) if name.startswith(STALE_PREFIXES) else None
            if mtime is not None and now - mtime > stale_after_s:
                plan.stale.append(path)


def _tmp_version(name: str) -> str:
    """The version of a `.tmp-<version>-<nonce>` dir (VersionWriter's naming)."""
    return name.removeprefix(WORK_PREFIX).rsplit("-", 1)[0]


def _locked(root: str, stage: Stage, version: str) -> bool:
    """Whether a run holds the lock of stage@version (never on object stores: they have no locks)."""
    path = VersionLock(root, stage, version).path
    return path is not None and lock_is_held(path)


def _running_refs(fs: object, base: str, side: SideArtifact, stale: set[str]) -> tuple[dict[str, str], str | None]:
    """(id -> temp dir for the ids that in-progress (not stale) versions of side.stage name, a temp dir of an
    in-progress version that names none when the stage writes no work_ref, else None)."""
    d = paths.join(base, str(side.stage))
    out: dict[str, str] = {}
    unnamed: str | None = None
    for name in _entries(fs, d):
        path = paths.join(d, name)
        if not name.startswith(WORK_PREFIX) or path in stale or not fs.isdir(path):  # type: ignore[attr-defined]
            continue
        if side.work_ref is None:
            unnamed = unnamed or name
            continue
        ref = paths.join(path, side.work_ref)
        if fs.exists(ref):  # type: ignore[attr-defined]
            with fs.open(ref, "r") as f:  # type: ignore[attr-defined]
                out[str(json.load(f)["version"])] = name
    return out, unnamed


def _side_decisions(
    plan: GcPlan, fs: object, base: str, kept: dict[tuple[Stage, str], Manifest], now: float, stale_after_s: float
) -> None:
    stale = set(plan.stale)
    for side in SIDE_ARTIFACTS:
        users: dict[str, str] = {}
        keep_all: str | None = None  # why every id of this side artifact is kept
        for (stage, version), m in sorted(kept.items()):
            if stage != side.stage:
                continue
            refs = side.refs(m)
            if refs is None:
                keep_all = keep_all or (
                    f"{stage}@{version} does not record which {side.subdir} it uses (manifest "
                    f"from before gc tracked it): kept to be safe"
                )
            for ref in refs or ():
                users.setdefault(ref, f"used by {stage}@{version}")
        running, unnamed = _running_refs(fs, base, side, stale)
        for ref, tmp in running.items():
            users.setdefault(ref, f"used by the run in progress {side.stage}/{tmp}")
        if unnamed is not None:
            keep_all = keep_all or f"a {side.stage} run is in progress ({side.stage}/{unnamed}) and may use it"
        d = paths.join(base, str(side.stage), side.subdir)
        for name in _entries(fs, d):
            path = paths.join(d, name)
            if name.startswith(".") or not fs.isdir(path):  # type: ignore[attr-defined]
                continue
            mtime = _newest_mtime(fs, path)
            why = users.get(name) or keep_all
            if why is None and mtime is not None and now - mtime <= stale_after_s:
                why = "built less than stale_after ago (a run may be about to use it)"
            plan.versions.append(
                VersionDecision(
                    str(side.stage),
                    name,
                    _iso(mtime),
                    why is not None,
                    why or "unreferenced",
                    _du(fs, path),
                    side.subdir,
                )
            )


def collect(root: str, keep: int, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: float | None = None) -> GcPlan:
    """Decide what to keep and what to delete; touches nothing."""
    if keep < 1:
        raise ValueError(f"--keep {keep}: must be at least 1 (the newest version of every stage is always kept)")
    root = paths.resolve_data_root(root)
    fs, base = paths.filesystem(root)
    now = time.time() if now is None else now
    plan = GcPlan(root=root, keep=keep)
    manifests: dict[tuple[Stage, str], Manifest] = {}
    why: dict[tuple[Stage, str], str] = {}
    for stage in ALL_STAGES:
        versions = list_versions(root, stage)
        for m in versions:
            manifests[(stage, m.version)] = m
        for m in versions[-keep:]:
            why[(stage, m.version)] = f"newest {keep}"
        latest = latest_version(root, stage)
        if latest is not None:
            why[(stage, latest)] = "latest"
    # lineage closure: walk inputs from every kept version up to ingest
    todo = list(why)
    while todo:
        key = todo.pop()
        kept = manifests.get(key)
        if kept is None:
            continue
        for up in _stage_inputs(kept):
            if up not in why:
                why[up] = f"input of {key[0]}@{key[1]}"
                todo.append(up)
    for (stage, version), m in manifests.items():
        keep_it = (stage, version) in why
        plan.versions.append(
            VersionDecision(
                str(stage),
                version,
                m.created_at,
                keep_it,
                why.get((stage, version), "unreferenced"),
                _du(fs, paths.join(base, str(stage), version)),
            )
        )
    _scan(plan, fs, base, now, stale_after_s)
    _side_decisions(plan, fs, base, {k: m for k, m in manifests.items() if k in why}, now, stale_after_s)
    plan.versions.sort(key=lambda d: (ALL_STAGES.index(Stage(d.stage)), d.parent, d.created_at))
    return plan


def apply(plan: GcPlan) -> GcPlan:
    """Delete what the plan marks for deletion (hide by rename first, then remove)."""
    fs, base = paths.filesystem(plan.root)
    for d in plan.to_delete:
        parent = paths.join(base, d.stage, d.parent)
        hidden = paths.join(parent, f".gc-{d.version}-{uuid.uuid4().hex[:8]}")
        fs.mv(paths.join(parent, d.version), hidden, recursive=True)
        fs.rm(hidden, recursive=True)
        log.info("gc: deleted %s@%s (%s)", d.stage, d.name, d.why)
    for path in plan.stale:
        if path.rsplit("/", 1)[-1].startswith(LOCK_PREFIX):
            if remove_lock_if_free(path):  # taken first: a run that started since collect keeps its lock
                log.info("gc: removed stale %s", path)
        elif fs.exists(path):
            fs.rm(path, recursive=fs.isdir(path))
            log.info("gc: removed stale %s", path)
    plan.applied = True
    return plan


def gc(root: str, keep: int, dry_run: bool = False, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> GcPlan:
    """Collect and (unless dry_run) apply; returns the plan."""
    plan = collect(root, keep, stale_after_s)
    return plan if dry_run else apply(plan)
