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

Also removed: leftovers of killed runs older than `stale_after` (default one hour): `.tmp-*` version
directories being written, `.old-*` copies from a forced recompute, `.gc-*` half-deleted versions and
`latest.tmp-*` pointer files. Younger ones may belong to a stage that is running right now.

Not touched: directories outside the stage directories (`_inputs/`), a stage's own `_`-prefixed
directories (e.g. decontaminate's `_index/`, which its stage manages), and a version directory without a
manifest that is not hidden (that cannot come from our commit protocol; it is reported).
Caveat: a run that reads an explicit old `input_version` while gc runs can lose its input; gc keeps
`latest` and the N newest, so run it when no run pins an old version.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from storage import paths
from storage.manifest import LATEST, MANIFEST, Manifest, Stage, latest_version, list_versions

log = logging.getLogger(__name__)

# pipeline stages and the artifacts they reference (e.g. the quality classifier): all are collected
ALL_STAGES: list[Stage] = list(Stage)
STALE_PREFIXES = (".tmp-", ".old-", ".gc-", f"{LATEST}.tmp-")
DEFAULT_STALE_AFTER_S = 3600.0


@dataclass
class VersionDecision:
    stage: str
    version: str
    created_at: str
    keep: bool
    why: str
    bytes: int = 0


@dataclass
class GcPlan:
    """What `collect` decided; `removed` is filled when the plan is applied."""

    root: str
    keep: int
    versions: list[VersionDecision] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    applied: bool = False

    @property
    def to_delete(self) -> list[VersionDecision]:
        return [d for d in self.versions if not d.keep]

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.to_delete)

    def rows(self) -> list[dict[str, object]]:
        return [{"stage": d.stage, "version": d.version, "created_at": d.created_at,
                 "action": "keep" if d.keep else ("deleted" if self.applied else "delete"), "why": d.why,
                 "mb": round(d.bytes / 1e6, 2)} for d in self.versions]


def _stage_inputs(m: Manifest) -> list[tuple[Stage, str]]:
    """Upstream stage versions a manifest was built from (other inputs, e.g. file digests, skipped)."""
    names = {str(s) for s in Stage}
    return [(Stage(k), v) for k, v in m.inputs.items() if k in names]


def _mtime(fs: object, path: str) -> float | None:
    info = fs.info(path)  # type: ignore[attr-defined]
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)
    return None


def _du(fs: object, path: str) -> int:
    try:
        return int(fs.du(path, total=True))  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return 0


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
        m = manifests.get(key)
        if m is None:
            continue
        for up in _stage_inputs(m):
            if up not in why:
                why[up] = f"input of {key[0]}@{key[1]}"
                todo.append(up)
    for (stage, version), m in manifests.items():
        keep_it = (stage, version) in why
        plan.versions.append(VersionDecision(
            str(stage), version, m.created_at, keep_it, why.get((stage, version), "unreferenced"),
            0 if keep_it else _du(fs, paths.join(base, str(stage), version))))
    plan.versions.sort(key=lambda d: (ALL_STAGES.index(Stage(d.stage)), d.created_at))
    for stage in ALL_STAGES:
        d = paths.join(base, str(stage))
        if not fs.exists(d):
            continue
        for entry in fs.ls(d, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            path = paths.join(d, name)
            if name.startswith(STALE_PREFIXES):
                mtime = _mtime(fs, path)
                if mtime is not None and now - mtime > stale_after_s:
                    plan.stale.append(path)
            elif name != LATEST and not name.startswith((".", "_")) and not fs.exists(paths.join(path, MANIFEST)):
                plan.unknown.append(path)
    return plan


def apply(plan: GcPlan) -> GcPlan:
    """Delete what the plan marks for deletion (hide by rename first, then remove)."""
    fs, base = paths.filesystem(plan.root)
    for d in plan.to_delete:
        src = paths.join(base, d.stage, d.version)
        hidden = paths.join(base, d.stage, f".gc-{d.version}-{uuid.uuid4().hex[:8]}")
        fs.mv(src, hidden, recursive=True)
        fs.rm(hidden, recursive=True)
        log.info("gc: deleted %s@%s (%s)", d.stage, d.version, d.why)
    for path in plan.stale:
        if fs.exists(path):
            fs.rm(path, recursive=fs.isdir(path))
            log.info("gc: removed stale %s", path)
    plan.applied = True
    return plan


def gc(root: str, keep: int, dry_run: bool = False, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> GcPlan:
    """Collect and (unless dry_run) apply; returns the plan."""
    plan = collect(root, keep, stale_after_s)
    return plan if dry_run else apply(plan)
