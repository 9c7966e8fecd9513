"""Where the pipeline's data lives: the one module that reads the data-root setting.

The data root is resolved once per command, in this order: the `--data-root` CLI flag (passed in as
`explicit`), the environment variable `PRETRAIN_DATA_ROOT`, else `./pretrain-data`. Any fsspec URL is
accepted (`s3://bucket/prefix`, `file:///srv/data`), so a data root can be an object store; plain paths
are made absolute so that Prefect workers in other directories see the same place.

Layout under the root (see README "Artifacts on disk"):
    <root>/<stage>/<version>/manifest.json   complete version (manifest written last)
    <root>/<stage>/<version>/part-NNNNN.parquet, rejected/part-NNNNN.parquet, _work/...
    <root>/<stage>/.tmp-<version>-<nonce>/   a version being written (invisible to readers)
    <root>/<stage>/latest                    text file holding the latest complete version id

Local files named by parameters (benchmark files) must lie under an allowed root (`allowed_roots`):
the repository (the directory holding the packages), the working directory (a deployment's), the data
root, and the directories listed in `PRETRAIN_ALLOWED_ROOTS` (os.pathsep-separated). `check_allowed`
resolves symlinks and `..` first, so a link inside a root that points outside is refused too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.core import url_to_fs

ENV_DATA_ROOT = "PRETRAIN_DATA_ROOT"
DEFAULT_DATA_ROOT = "./pretrain-data"
ENV_ALLOWED_ROOTS = "PRETRAIN_ALLOWED_ROOTS"
ENV_CACHE_MAX_GB = "PRETRAIN_CACHE_MAX_GB"
ENV_CACHE_DIR = "PRETRAIN_CACHE_DIR"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_LOG_ENV = "PREFECT_LOGGING_EXTRA_LOGGERS"


def resolve_data_root(explicit: str | None = None) -> str:
    """Return the data root as an absolute path or a URL (flag, then env, then default)."""
    root = explicit or os.environ.get(ENV_DATA_ROOT) or DEFAULT_DATA_ROOT
    if "://" in root:
        return root.rstrip("/")
    return os.path.abspath(os.path.expanduser(root))


def allowed_roots() -> list[str]:
    """Real paths of the directories local files named by parameters may lie under (see module docstring)."""
    data_root = resolve_data_root()
    listed = [r for r in os.environ.get(ENV_ALLOWED_ROOTS, "").split(os.pathsep) if r.strip()]
    candidates = [REPO_ROOT, os.getcwd(), *([] if "://" in data_root else [data_root]), *listed]
    out: list[str] = []
    for root in candidates:
        real = os.path.realpath(os.path.expanduser(root.removeprefix("file://")))
        if real not in out:
            out.append(real)
    return out


def allow_root(directory: str) -> None:
    """Add `directory` to $PRETRAIN_ALLOWED_ROOTS of this process and its children (scripts, benches)."""
    listed = [r for r in os.environ.get(ENV_ALLOWED_ROOTS, "").split(os.pathsep) if r.strip()]
    os.environ[ENV_ALLOWED_ROOTS] = os.pathsep.join(dict.fromkeys([*listed, str(directory)]))


def check_allowed(path: str, key: str) -> str:
    """The real path of local `path` if it lies under an allowed root, else ValueError naming `key`."""
    real = os.path.realpath(os.path.expanduser(path.removeprefix("file://")))
    roots = allowed_roots()
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        raise ValueError(
            f"{key}: {path} is outside the allowed directories {roots}; put the file under one of "
            f"them (e.g. the data root) or add its directory to ${ENV_ALLOWED_ROOTS} "
            f"({os.pathsep!r}-separated) on the machine that runs the stage"
        )
    return real


def filesystem(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and the path inside it for a root (local path or URL)."""
    fs, path = url_to_fs(root)
    return fs, path


def is_remote(path: str) -> bool:
    """Whether `path` is on a non-local filesystem (an object store URL such as `s3://...`); `file://` and plain
    paths are local. Libraries that need local files (memory maps, sentencepiece, torch checkpoints) stage
    remote data through `local_work_dir` / `local_copy`; local roots are used in place."""
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    """A local path or `file://` URL as a plain path (ValueError for an object store URL)."""
    if is_remote(path):
        raise ValueError(f"{path} is not on a local disk")
    return path.removeprefix("file://")


def cache_dir() -> str:
    """Local directory for copies of remote files and work files of remote data roots: `$PRETRAIN_CACHE_DIR`, else
    `<tmp>/pretrain-cache`."""
    return os.environ.get(ENV_CACHE_DIR) or os.path.join(tempfile.gettempdir(), "pretrain-cache")


def local_work_dir(path: str, purpose: str) -> str:
    """A local directory standing in for the remote directory `path` (same name on every call in every process of
    this machine, so shard tasks agree): `<cache>/work/<purpose>-<hash of path>`. Created; the caller removes it."""
    key = hashlib.sha256(path.encode()).hexdigest()[:16]
    out = os.path.join(cache_dir(), "work", f"{purpose}-{key}")
    os.makedirs(out, exist_ok=True)
    return out


def local_copy(path: str) -> str:
    """A local file with the content of `path`: `path` itself when local, else a cached download keyed by the URL
    and the object's identity (`fs.ukey`: its ETag on S3), so a replaced object is fetched again."""
    if not is_remote(path):
        return path.removeprefix("file://")
    fs, p = filesystem(path)
    key = hashlib.sha256(f"{path}\0{fs.ukey(p)}".encode()).hexdigest()[:24]
    target = os.path.join(cache_dir(), "files", key, p.rstrip("/").rsplit("/", 1)[-1])
    if os.path.isfile(target):
        os.utime(os.path.dirname(target))  # recently used: evicted last
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.get_file(p, tmp)
        os.replace(tmp, target)  # concurrent downloads of the same object write the same bytes
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    os.utime(os.path.dirname(target))
    prune_cache()
    return target


def cache_limit() -> int:
    """Bytes the downloads under `<cache>/files` may take: `$PRETRAIN_CACHE_MAX_GB` (default 50)."""
    raw = os.environ.get(ENV_CACHE_MAX_GB) or "50"
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise ValueError(f"${ENV_CACHE_MAX_GB}={raw!r}: expected a number of GB >= 0 (e.g. 50), or unset it for 50")
    return int(gb * 2**30)


def prune_cache(max_bytes: int | None = None, min_age_s: float = 3600.0) -> list[str]:
    """Evict the least recently used downloads of `<cache>/files` until they take at most `max_bytes`
    (`cache_limit()`); an entry used within `min_age_s` is never evicted (a task may be about to open it; one
    already open stays readable after the unlink). Returns the removed entries. Run after each download, and by
    `pretrain gc`."""
    limit = cache_limit() if max_bytes is None else max_bytes
    top = os.path.join(cache_dir(), "files")
    if not os.path.isdir(top):
        return []
    entries = []
    for entry in os.scandir(top):
        if entry.is_dir(follow_symlinks=False):
            size = sum(f.stat().st_size for f in os.scandir(entry.path) if f.is_file(follow_symlinks=False))
            entries.append((entry.stat().st_mtime, size, entry.path))
    total = sum(size for _, size, _ in entries)
    removed: list[str] = []
    now = time.time()
    for used, size, path in sorted(entries):
        if total <= limit:
            break
        if now - used < min_age_s:
            continue
        shutil.rmtree(path, ignore_errors=True)
        total -= size
        removed.append(path)
    return removed


def upload_dir(local_dir: str, remote_dir: str, names: list[str] | None = None) -> None:
    """Upload the files under `local_dir` (or just `names`, relative paths, in that order) to `remote_dir`."""
    fs, base = filesystem(remote_dir)
    if names is None:
        names = sorted(
            os.path.relpath(os.path.join(d, f), local_dir) for d, _, files in os.walk(local_dir) for f in files
        )
    for name in names:
        target = join(base, name.replace(os.sep, "/"))
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(os.path.join(local_dir, name), target)


def remove_local(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def staged_dir(path: str, purpose: str, names: list[str] | None = None) -> Iterator[str]:
    """A local directory to make the files of directory `path` in, for libraries that write local files only:
    `path` itself when it is local; else a fresh `local_work_dir` whose files (or just `names`, uploaded in that
    order: put a completeness marker last) go to `path` when the block succeeds. Removed either way."""
    if not is_remote(path):
        yield local_path(path)
        return
    local = local_work_dir(path, purpose)
    remove_local(local)  # a killed attempt's files would be read as this one's
    os.makedirs(local)
    try:
        yield local
        upload_dir(local, path, names)
    finally:
        remove_local(local)


def join(*parts: str) -> str:
    """Join path parts with '/', keeping a URL scheme intact."""
    head, *rest = parts
    return "/".join([head.rstrip("/")] + [p.strip("/") for p in rest if p])


def stage_dir(root: str, stage: str) -> str:
    return join(root, stage)


def version_dir(root: str, stage: str, version: str) -> str:
    return join(root, stage, version)


def shard_name(index: int, kind: str = "part", ext: str = "parquet") -> str:
    """Zero-padded shard file name: part-00003.parquet, tokens-00000.arrow."""
    return f"{kind}-{index:05d}.{ext}"


def prefect_logging_env() -> dict[str, Any]:
    """Environment that makes our library loggers reach the Prefect UI (STYLE 8)."""
    current = os.environ.get(_LOG_ENV, "")
    wanted = {"tasks", "storage", "models", "flows"}
    have = {x for x in current.split(",") if x}
    return {_LOG_ENV: ",".join(sorted(have | wanted))}


def prefect_env_defaults() -> dict[str, str]:
    """Prefect settings our commands need on a machine without internet (applied only when unset):
    no telemetry (it logs DNS errors offline) and a startup timeout that a busy 2-core box meets."""
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        **prefect_logging_env(),
    }
    return {k: v for k, v in defaults.items() if k not in os.environ or k == _LOG_ENV}


def apply_prefect_env_defaults() -> None:
    """Set the defaults above in this process (before prefect is imported)."""
    os.environ.update(prefect_env_defaults())


ENV_DEBUG = "PRETRAIN_DEBUG"


def debug_enabled() -> bool:
    """`pretrain --debug` (inherited by worker processes): show tracebacks on the console."""
    return os.environ.get(ENV_DEBUG, "") not in ("", "0")


def set_debug(on: bool) -> None:
    if on:
        os.environ[ENV_DEBUG] = "1"
    else:
        os.environ.pop(ENV_DEBUG, None)


ENV_NO_PROGRESS = "PRETRAIN_NO_PROGRESS"
ENV_LIVE_PIPE = "PRETRAIN_LIVE_PIPE"  # set by flows.progress.live_display for the pool workers it spawns


def progress_disabled() -> bool:
    """`PRETRAIN_NO_PROGRESS=1`: no live progress display, even on a terminal (flows/progress.py)."""
    return os.environ.get(ENV_NO_PROGRESS, "") not in ("", "0")


def live_pipe() -> tuple[int, str] | None:
    """(pid of the process showing a live display, path of the FIFO its workers write their console to), or
    None; a pool worker started inside `flows.progress.live_display` reads it (flows/console.py)."""
    pid, _, path = os.environ.get(ENV_LIVE_PIPE, "").partition(":")
    return (int(pid), path) if pid.isdigit() and path else None


def set_live_pipe(pid: int | None, path: str = "") -> None:
    """Announce (or, with None, withdraw) the live display's FIFO to the worker processes started from now on."""
    if pid is None:
        os.environ.pop(ENV_LIVE_PIPE, None)
    else:
        os.environ[ENV_LIVE_PIPE] = f"{pid}:{path}"
