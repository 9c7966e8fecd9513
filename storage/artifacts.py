"""The one writer of versioned artifacts, and the commit protocol every artifact shares.

Every artifact — a stage version, the quality classifier, a quality score cache, a trained tokenizer,
the decontamination index, a training run — is written by `ArtifactWriter` into
`<root>/<kind>/<version>/` and described by its `manifest.json` (storage.manifest), whose `inputs`
name the artifacts it was built from.

Commit protocol (correct on local disks and on object stores, where a rename is a copy):
  1. `ArtifactWriter(...)` marks the directory as being written: `_writing.json` (who, since when, the
     inputs it reads, whether a later attempt may resume from what it leaves). If an earlier attempt left
     files there (it was killed), they are removed first, unless `resumable` (training keeps its
     checkpoints and resumes from them). A forced recompute removes the old manifest first, so the old
     version stops existing before any of its files change: readers never see a half-replaced version.
  2. The caller writes its files under `writer.path`, the version's final path (no temporary
     directory, no rename).
  3. `commit(manifest)` checks conservation, writes `manifest.json` last, then removes `_writing.json`.
     A directory without `manifest.json` does not exist to readers (`load_manifest`, `list_versions`,
     `latest`); `gc` removes it once stale, or lists it when it is resumable.
  4. `abort()` removes the directory (kept when resumable, or when a manifest is there: a concurrent
     identical run committed).

Concurrency: on local data roots the caller holds the version's lock (storage.locks) from before it
decides until commit/abort, so an identical run waits and reuses. Object stores have no lock: two
identical writers write the same file names with the same content (same params and inputs), and
neither removes leftovers at the start, so they cannot delete each other's files; the first manifest
makes the version exist.

`ensure_artifact(root, kind, version, build)` is the one way any artifact is made: reused when complete
(no lock taken, nothing written: a read-only root works), else built under its version lock by
`build(writer)` and committed, or aborted on any error. The stage frame (flows/stage.py) and every
side artifact (score caches, tokenizers, indexes, classifiers) go through it.

`commit_marker_dir` / `finish_marker_dir` are the same protocol for directories inside an artifact
whose completeness marker is another file (training checkpoints: `step-NNNNNN/meta.json`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage import paths
from storage.locks import VersionLock
from storage.manifest import MANIFEST, Manifest, ShardInfo, is_complete, load_manifest, new_manifest, set_latest
from storage.stats import StageStats

log = logging.getLogger(__name__)

WRITING = "_writing.json"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def commit_marker_dir(fs: fsspec.AbstractFileSystem, path: str, marker: str, clear: bool = True) -> None:
    """Prepare `path` to be (re)written: its marker goes first (it stops being complete), then, with
    `clear`, whatever an earlier attempt left there."""
    done = paths.join(path, marker)
    if fs.exists(done):
        fs.rm(done)
    if clear and fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)


def finish_marker_dir(fs: fsspec.AbstractFileSystem, path: str, marker: str, text: str) -> None:
    """Write the completeness marker of `path`, last."""
    with fs.open(paths.join(path, marker), "w") as f:
        f.write(text)


def read_writing(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The `_writing.json` of an incomplete artifact directory, or None."""
    p = paths.join(path, WRITING)
    if not fs.exists(p):
        return None
    try:
        with fs.open(p, "r") as f:
            data: dict[str, Any] = json.load(f)
        return data
    except (OSError, ValueError):
        return {}


class ArtifactWriter:
    """Writes one artifact version in place and commits it by writing its manifest last (module docstring).

    Usage: `w = ArtifactWriter(root, kind, version, inputs)`; write files under `w.path`; then
    `w.commit(manifest)`, or `w.abort()` on failure.
    """

    def __init__(
        self,
        root: str,
        kind: str,
        version: str,
        inputs: dict[str, str] | None = None,
        replace: bool = False,
        resumable: bool = False,
    ):
        self.root, self.kind, self.version, self.resumable = root, kind, version, resumable
        self.fs, _ = paths.filesystem(root)
        self.path = paths.join(root, kind, version)  # the URL (protocol kept): shard tasks open it by itself
        self.inputs = dict(inputs or {})
        self.replaced = bool(self.fs.exists(paths.join(self.path, MANIFEST)))
        if self.replaced and not replace:
            raise FileExistsError(f"{kind}@{version} is complete already; reuse it (or pass replace=True)")
        # leftovers of a killed attempt go, unless resumable (a forced recompute clears those too); on object
        # stores nothing is removed at the start
        # (no lock there: an identical writer may be writing the same files right now)
        commit_marker_dir(self.fs, self.path, MANIFEST, clear=is_local(self.fs) and (replace or not resumable))
        self._write_marker()

    def _write_marker(self) -> None:
        who = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "inputs": self.inputs,
            "resumable": self.resumable,
        }
        with self.fs.open(paths.join(self.path, WRITING), "w") as f:
            f.write(json.dumps(who))

    def local_path(self) -> str:
        """The directory as a local path, for libraries that need one (sentencepiece, torch, fastText)."""
        if not is_local(self.fs):
            raise ValueError(f"{self.kind} writes with a library that needs a local directory; got {self.root}")
        return self.path

    def note_input(self, kind: str, version: str) -> None:
        """Record an artifact this run reads that was made after it started (gc keeps it while the run lives)."""
        self.inputs[kind] = version
        self._write_marker()

    def commit(self, manifest: Manifest) -> Manifest:
        """Check conservation, write the manifest (the version exists from here on), drop the in-progress marker,
        point `latest` at it."""
        manifest.stats.check_conservation(f"{manifest.stage}@{manifest.version}")
        with self.fs.open(paths.join(self.path, MANIFEST), "w") as f:
            f.write(manifest.model_dump_json(indent=2))
        # after the manifest: a run killed in between leaves a complete version with a stray marker (harmless),
        # never a finished resumable run without one
        writing = paths.join(self.path, WRITING)
        if self.fs.exists(writing):
            self.fs.rm(writing)
        set_latest(self.root, self.kind, self.version)
        return manifest

    def manifest(
        self,
        stage_version: int,
        params: dict[str, Any],
        shards: list[ShardInfo],
        stats: StageStats,
        rejected: list[ShardInfo] | None = None,
        extras: dict[str, Any] | None = None,
    ) -> Manifest:
        """The manifest of this version (its kind, version and recorded inputs), to return from a `build`."""
        return new_manifest(
            self.kind, stage_version, self.version, params, self.inputs, shards, rejected or [], stats, extras
        )

    def abort(self) -> None:
        """Remove what this attempt wrote (kept when resumable, or when an identical run has committed)."""
        if self.resumable:
            return
        if self.fs.exists(paths.join(self.path, MANIFEST)):
            log.warning("%s@%s was committed by another run; leaving it", self.kind, self.version)
            return
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)


def ensure_artifact(
    root: str,
    kind: str,
    version: str,
    build: Callable[[ArtifactWriter], Manifest],
    inputs: dict[str, str] | None = None,
    force: bool = False,
    resumable: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[Manifest, bool]:
    """`kind@version` as (manifest, reused): a complete version is reused (unless `force`); else, holding the
    version's lock (an identical run waits, `on_wait(message)` says so, then reuses), `build(writer)` writes
    the files under `writer.path` and returns the manifest (`writer.manifest(...)`), which is committed last.
    Any error aborts the version (storage.artifacts.ArtifactWriter.abort) and propagates."""
    if not force and is_complete(root, kind, version):
        return load_manifest(root, kind, version), True
    lock = VersionLock(root, kind, version)
    lock.acquire(on_wait=on_wait or log.info)
    try:
        if not force and is_complete(root, kind, version):
            return load_manifest(root, kind, version), True
        writer = ArtifactWriter(root, kind, version, inputs, replace=force, resumable=resumable)
        try:
            return writer.commit(build(writer)), False
        except BaseException:
            writer.abort()
            raise
    finally:
        lock.release()
