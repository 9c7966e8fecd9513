"""Stage versions and their manifests: the lineage record of every artifact.

A stage output is `<root>/<stage>/<version>/`. The version id is a 12-hex sha256 of the stage name, the
stage's `STAGE_VERSION` code constant, the canonical JSON of its validated params, and the versions of
its inputs, so the same inputs and params always give the same id and a rerun is a no-op.

Commit protocol (`VersionWriter`): everything is written under `<stage>/.tmp-<version>-<nonce>/`; the
manifest is written last, the directory is renamed to `<version>/`, then the `latest` pointer is
replaced (write `latest.tmp-*`, rename). A directory without `manifest.json` does not exist to readers,
so a killed stage never leaves a version that looks complete. Before the manifest is written the
conservation law `docs_in == docs_out + sum(dropped)` is checked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from storage import paths
from storage.stats import StageStats

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"


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
STAGE_ORDER: list[Stage] = [Stage.INGEST, Stage.LANGID, Stage.QUALITY, Stage.DEDUP, Stage.DECONTAMINATE,
                            Stage.MIX, Stage.TOKENIZE, Stage.TRAIN]
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
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
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


def load_manifest(root: str, stage: Stage | str, version: str = "latest") -> Manifest:
    """Manifest of a complete version; 'latest' follows the pointer. Raises FileNotFoundError with the fix."""
    ver = latest_version(root, stage) if version == "latest" else version
    if ver is None:
        raise FileNotFoundError(f"no complete '{stage}' version under {root}; run `pretrain run --to {stage}` first")
    text = _read_text(root, str(stage), ver, MANIFEST)
    if text is None:
        raise FileNotFoundError(
            f"'{stage}' version {ver} under {root} is not complete (no {MANIFEST}); "
            f"`pretrain status` lists complete versions")
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


def new_manifest(stage: Stage, stage_version: int, version: str, params: dict[str, Any],
                 inputs: dict[str, str], shards: list[ShardInfo], rejected: list[ShardInfo],
                 stats: StageStats, extras: dict[str, Any] | None = None) -> Manifest:
    return Manifest(stage=stage, stage_version=stage_version, version=version,
                    created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                    code_version=code_version(), params=params, inputs=inputs, shards=shards,
                    rejected=rejected, stats=stats, extras=extras or {})
