"""Manifests: the lineage record of every artifact, version ids, and the `latest` pointers.

An artifact is a directory `<root>/<kind>/<version>/` with a `manifest.json` (written last, see
storage.artifacts). Kinds are plain names: the pipeline's stages (`ingest`, `langid`, ...) and the
artifacts stages build beside them (`quality_classifier`, `quality_scores`, `tokenizer`,
`decontaminate_index`); this module knows none of them. The version id is a 12-hex sha256 of the kind,
its code's `STAGE_VERSION`, the canonical JSON of its validated params and the versions of its inputs
(`compute_version`), so the same inputs and params always give the same id and a rerun is a no-op.
`Manifest.inputs` is the lineage: every artifact (kind -> version) the version was built from, plus
content digests of raw files (`files`); `gc` follows it and nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from storage import paths
from storage.files import write_atomic
from storage.stats import StageStats

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
VERSION_ID = re.compile(r"[0-9a-f]{12}")  # compute_version's output
_DIR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="File name relative to the version directory.")
    rows: int = Field(description="Documents (or sequences / tokens, see the stage) in the shard.")
    bytes: int = Field(description="File size in bytes.")


class Manifest(BaseModel):
    """The lineage record of one stage version; `pretrain inspect` prints it."""

    model_config = ConfigDict(extra="forbid")
    stage: str = Field(description="The artifact kind: a stage name or a side artifact (quality_scores, ...).")
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


def content_id(obj: Any) -> str:
    """12-hex sha256 of the canonical JSON of `obj`: version ids and file-content digests."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


def compute_version(stage: str, stage_version: int, params: dict[str, Any], inputs: dict[str, str]) -> str:
    """Short content hash identifying an artifact (same inputs + params -> same id)."""
    return content_id({"stage": str(stage), "stage_version": stage_version, "params": params, "inputs": inputs})


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


def latest_version(root: str, stage: str) -> str | None:
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


def load_manifest(root: str, stage: str, version: str = "latest") -> Manifest:
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


def is_complete(root: str, stage: str, version: str) -> bool:
    fs, base = paths.filesystem(root)
    return bool(fs.exists(paths.join(base, str(stage), version, MANIFEST)))


def list_versions(root: str, stage: str) -> list[Manifest]:
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


def set_latest(root: str, stage: str, version: str) -> None:
    """Point `<kind>/latest` at a complete version (one atomic file write)."""
    assert is_complete(root, stage, version), f"refusing to point latest at incomplete {stage}@{version}"
    if latest_version(root, stage) == version:
        return  # reusing complete versions writes nothing (a read-only data root must work)
    fs, base = paths.filesystem(root)
    write_atomic(fs, paths.join(base, str(stage), LATEST), (version + "\n").encode())


def new_manifest(
    stage: str,
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
