"""Stage versions and their manifests: the lineage record of every artifact.

A stage output is `<root>/<stage>/<version>/`. The version id is a 12-hex sha256 of the stage name, the
stage's `STAGE_VERSION` code constant, the canonical JSON of its validated params, and the versions of
its inputs, so the same inputs and params always give the same id and a rerun is a no-op.

Commit protocol (`VersionWriter`): everything is written under `<stage>/.tmp-<version>-<nonce>/`; the
manifest is written last, the directory is renamed to `<version>/`, then the `latest` pointer is
replaced (write `latest.tmp-*`, rename). A directory without `manifest.json` does not exist to readers,
so a killed stage never leaves a version that looks complete. Before the manifest is written the
conservation law `docs_in == docs_out + sum(dropped)` is checked.

Concurrent runs (`VersionLock`): on local data roots a run holds `<stage>/.lock-<version>` while it
decides, computes and commits a version, so an identical second run waits and reuses the result.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from storage import paths
from storage.stats import StageStats

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
VERSION_ID = re.compile(r"[0-9a-f]{12}")  # compute_version's output
_DIR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


class Stage(StrEnum):
    INGEST = "ingest"
    LANGID = "langid"
    QUALITY = "quality"
    DEDUP = "dedup"
    DECONTAMINATE = "decontaminate"
    MIX = "mix"
    TOKENIZE = "tokenize"
    TRAIN = "train"
    # not a pipeline stage: a versioned model artifact that `quality` references (trained from langid docs)
    QUALITY_CLASSIFIER = "quality_classifier"


# the pipeline's stages, in order; artifacts such as QUALITY_CLASSIFIER are not listed
STAGE_ORDER: list[Stage] = [
    Stage.INGEST,
    Stage.LANGID,
    Stage.QUALITY,
    Stage.DEDUP,
    Stage.DECONTAMINATE,
    Stage.MIX,
    Stage.TOKENIZE,
    Stage.TRAIN,
]
# upstream of artifacts outside STAGE_ORDER
ARTIFACT_UPSTREAM: dict[Stage, Stage] = {Stage.QUALITY_CLASSIFIER: Stage.LANGID}


def upstream_of(stage: Stage) -> Stage | None:
    if stage in ARTIFACT_UPSTREAM:
        return ARTIFACT_UPSTREAM[stage]
    i = STAGE_ORDER.index(stage)
    return STAGE_ORDER[i - 1] if i > 0 else None


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="File name relative to the version directory.")
    rows: int = Field(description="Documents (or sequences / tokens, see the stage) in the shard.")
    bytes: int = Field(description="File size in bytes.")


class Manifest(BaseModel):
    """The lineage record of one stage version; `pretrain inspect` prints it."""

    model_config = ConfigDict(extra="forbid")
    stage: Stage
    stage_version: int
    version: str
    created_at: str
    code_version: str = Field(description="git commit of the code (with -dirty), or 'unknown'.")
    params: dict[str, Any]
    inputs: dict[str, str] = Field(description="Upstream artifact -> version it was built from.")
    shards: list[ShardInfo]
    rejected: list[ShardInfo] = Field(default_factory=list)
    stats: StageStats
    extras: dict[str, Any] = Field(default_factory=dict, description="Stage-specific facts.")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def compute_version(stage: str, stage_version: int, params: dict[str, Any], inputs: dict[str, str]) -> str:
    """Short content hash identifying a stage output (same inputs + params -> same id)."""
    blob = canonical_json({"stage": str(stage), "stage_version": stage_version, "params": params, "inputs": inputs})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def code_version() -> str:
    """git commit of this checkout (suffix -dirty when modified), or 'unknown' outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _read_text(root: str, *parts: str) -> str | None:
    fs, base = paths.filesystem(root)
    p = paths.join(base, *parts)
    if not fs.exists(p):
        return None
    with fs.open(p, "r") as f:
        return str(f.read())


def latest_version(root: str, stage: Stage | str) -> str | None:
    text = _read_text(root, str(stage), LATEST)
    return text.strip() if text else None


def check_version(version: str, param: str = "version", strict: bool = True) -> str:
    """`version` if it is 'latest' or a version id (12 lowercase hex), else ValueError naming `param`.

    strict=False accepts any single safe directory name (hand-made fixture versions such as `ing1`) and
    still refuses `/`, `..` and the like, so no caller can read outside `<root>/<stage>/`.
    """
    pattern = VERSION_ID if strict else _DIR_NAME
    if version == LATEST or (isinstance(version, str) and pattern.fullmatch(version)):
        return version
    raise ValueError(
        f"{param}: expected 'latest' or a version id (12 lowercase hex characters, as `pretrain status` lists them)"
    )


def load_manifest(root: str, stage: Stage | str, version: str = "latest") -> Manifest:
    """Manifest of a complete version; 'latest' follows the pointer. Raises FileNotFoundError with the fix
    (ValueError for a version that is not a plain version name)."""
    check_version(version, f"'{stage}' version", strict=False)
    ver = latest_version(root, stage) if version == "latest" else version
    if ver is not None:
        check_version(ver, f"'{stage}' latest pointer", strict=False)
    if ver is None:
        raise FileNotFoundError(f"no complete '{stage}' version under {root}; run `pretrain run --to {stage}` first")
    text = _read_text(root, str(stage), ver, MANIFEST)
    if text is None:
        raise FileNotFoundError(
            f"'{stage}' version {ver} under {root} is not complete (no {MANIFEST}); "
            f"`pretrain status` lists complete versions"
        )
    return Manifest.model_validate_json(text)


def is_complete(root: str, stage: Stage | str, version: str) -> bool:
    fs, base = paths.filesystem(root)
    return bool(fs.exists(paths.join(base, str(stage), version, MANIFEST)))


def list_versions(root: str, stage: Stage | str) -> list[Manifest]:
    """All complete versions of a stage, oldest first."""
    fs, base = paths.filesystem(root)
    d = paths.join(base, str(stage))
    if not fs.exists(d):
        return []
    out = []
    for entry in fs.ls(d, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(".") or name == LATEST or not fs.exists(paths.join(d, name, MANIFEST)):
            continue
        out.append(load_manifest(root, stage, name))
    return sorted(out, key=lambda m: m.created_at)


def set_latest(root: str, stage: Stage | str, version: str) -> None:
    """Atomically point `<stage>/latest` at a complete version."""
    assert is_complete(root, stage, version), f"refusing to point latest at incomplete {stage}@{version}"
    if latest_version(root, stage) == version:
        return  # reusing complete versions writes nothing (a read-only data root must work)
    fs, base = paths.filesystem(root)
    tmp = paths.join(base, str(stage), f"{LATEST}.tmp-{uuid.uuid4().hex[:8]}")
    with fs.open(tmp, "w") as f:
        f.write(version + "\n")
    fs.mv(tmp, paths.join(base, str(stage), LATEST))


class VersionWriter:
    """Writes one stage version into a temporary directory and commits it atomically.

    Usage: `w = VersionWriter(root, stage, version)`; write files under `w.tmp_path`; then
    `w.commit(manifest)`; or `w.abort()` on failure (removes the temporary directory).
    """

    def __init__(self, root: str, stage: Stage | str, version: str, replace: bool = False):
        self.root, self.stage, self.version, self.replace = root, Stage(stage), version, replace
        self.fs, base = paths.filesystem(root)
        self.final_path = paths.join(base, str(stage), version)
        self.tmp_path = paths.join(base, str(stage), f".tmp-{version}-{uuid.uuid4().hex[:8]}")
        self.fs.makedirs(self.tmp_path, exist_ok=True)

    def local_tmp(self) -> Path:
        """The temporary directory as a local Path (for libraries that need one, e.g. sentencepiece)."""
        assert "://" not in self.root or self.root.startswith("file://"), "local path needed for this stage"
        return Path(self.tmp_path)

    def commit(self, manifest: Manifest) -> Manifest:
        manifest.stats.check_conservation(f"{manifest.stage}@{manifest.version}")
        with self.fs.open(paths.join(self.tmp_path, MANIFEST), "w") as f:
            f.write(manifest.model_dump_json(indent=2))
        if self.fs.exists(self.final_path) and self.replace:
            # forced recompute: swap the old copy out first so readers never see a half-replaced version
            old = self.tmp_path.replace("/.tmp-", "/.old-")
            self.fs.mv(self.final_path, old, recursive=True)
            self.fs.mv(self.tmp_path, self.final_path, recursive=True)
            self.fs.rm(old, recursive=True)
        elif self.fs.exists(self.final_path):
            # a concurrent identical run committed first; identical inputs -> identical content
            log.warning("%s@%s already committed by another run; discarding this copy", self.stage, self.version)
            self.fs.rm(self.tmp_path, recursive=True)
        else:
            self.fs.mv(self.tmp_path, self.final_path, recursive=True)
        set_latest(self.root, self.stage, self.version)
        return manifest

    def abort(self) -> None:
        if self.fs.exists(self.tmp_path):
            self.fs.rm(self.tmp_path, recursive=True)


LOCK_PREFIX = ".lock-"
LOCK_WAIT_S = 6 * 3600.0  # how long a run waits for another run of the same stage version before giving up
LOCK_POLL_S = 0.5


class VersionLock:
    """Advisory lock of one stage version, `<root>/<stage>/.lock-<version>` (fcntl.flock), on local data roots.

    A run holds it from before it checks whether its version is complete until it commits or aborts, so a
    second run of the same version waits and then reuses the first one's result; other versions do not
    contend. The kernel drops a flock when its process dies, however it dies, so a killed run never
    blocks the next one (Python opens the file non-inheritable, and Prefect's process pool spawns its
    workers, so no worker or subprocess keeps it). The file holds the holder's pid and host (for the waiting
    message) and is
    removed on release; `acquire` re-checks that the path still names the file it locked, so removing it
    cannot let two runs in. On object stores (non-local fsspec roots) there is no lock: `acquire` returns
    at once and identical concurrent runs both compute (the commit keeps the first, see VersionWriter).
    """

    def __init__(self, root: str, stage: Stage | str, version: str):
        self.where = f"{stage}@{version}"
        local = "://" not in root or root.startswith("file://")
        self.path = paths.join(root.removeprefix("file://"), str(stage), LOCK_PREFIX + version) if local else None
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits)."""
        if self.path is None or self._file is not None:
            return True
        while True:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                f = open(self.path, "a+")
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                # a read-only data root: this run can only reuse (set_latest writes nothing then)
                log.info("no lock for %s: %s cannot be created (%s)", self.where, self.path, err.strerror)
                self.path = None
                return True
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()  # its holder removed it on release after we opened it: lock the current file
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return True

    def holder(self) -> str:
        """What the holder wrote (pid and host), or 'pid unknown'."""
        try:
            with open(str(self.path)) as f:
                return f.read().strip() or "pid unknown"
        except OSError:
            return "pid unknown"

    def acquire(self, timeout_s: float | None = None, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting up to `timeout_s` (default LOCK_WAIT_S) for another run to release it;
        `on_wait(message)` is called once when the lock is held elsewhere. TimeoutError names the holder."""
        if self.try_acquire():
            return
        timeout_s = LOCK_WAIT_S if timeout_s is None else timeout_s
        holder = self.holder()
        if on_wait is not None:
            on_wait(
                f"waiting for another run of {self.where} ({holder}) to finish (lock {self.path}); waiting up "
                f"to {timeout_s / 3600:.3g} h, then reusing its result"
            )
        deadline = time.monotonic() + timeout_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.where}: another run ({holder}) still holds {self.path} after "
                    f"{timeout_s / 3600:.3g} h; wait for it to finish or stop it, then run again"
                )
            time.sleep(min(LOCK_POLL_S, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            if os.stat(str(self.path)).st_ino == os.fstat(f.fileno()).st_ino:
                os.unlink(str(self.path))
        except FileNotFoundError:
            pass
        finally:
            f.close()  # closing drops the flock


def remove_lock_if_free(path: str) -> bool:
    """Remove a `.lock-*` file no run holds (a leftover); False when a run holds it."""
    stage_dir, name = os.path.split(path)
    lock = VersionLock(os.path.dirname(stage_dir), os.path.basename(stage_dir), name.removeprefix(LOCK_PREFIX))
    if not lock.try_acquire():
        return False
    lock.release()
    return True


def lock_is_held(path: str) -> bool:
    """Whether a run holds the lock file at `path` (a missing file is not held); takes nothing."""
    try:
        f = open(path)
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def new_manifest(
    stage: Stage,
    stage_version: int,
    version: str,
    params: dict[str, Any],
    inputs: dict[str, str],
    shards: list[ShardInfo],
    rejected: list[ShardInfo],
    stats: StageStats,
    extras: dict[str, Any] | None = None,
) -> Manifest:
    return Manifest(
        stage=stage,
        stage_version=stage_version,
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        code_version=code_version(),
        params=params,
        inputs=inputs,
        shards=shards,
        rejected=rejected,
        stats=stats,
        extras=extras or {},
    )
