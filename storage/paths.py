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

import os
from typing import Any

import fsspec
from fsspec.core import url_to_fs

ENV_DATA_ROOT = "PRETRAIN_DATA_ROOT"
DEFAULT_DATA_ROOT = "./pretrain-data"
ENV_ALLOWED_ROOTS = "PRETRAIN_ALLOWED_ROOTS"
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
