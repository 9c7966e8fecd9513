"""Operating-system failures as one readable line: what happened, where, and the fix.

A failure deep in a library often reaches the user as something unreadable: torch's checkpoint writer
turns ENOSPC into `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos …` (the errno
only in the exception context), pyarrow says `[Errno 28] Error writing bytes to file` without the
path. `find_os_error` digs the OSError out of an exception chain, `reraise_os_error` re-raises it with
the path attached (for writers that know their path), and `describe_os_error` gives the line the CLI
prints: `disk full at /data/dedup/.tmp-…: free space there or use another --data-root …`.
"""

from __future__ import annotations

import errno
import re
from typing import NoReturn

SHARD_NOTE = "input shard: "  # the note a failed shard task's error gets, naming its input (flows/stage.py)

_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
_RERUN = "then run the same command again (complete stages are reused)"
MEANINGS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full at {path}", "free space on that disk or point --data-root at a larger one, " + _RERUN),
    errno.EDQUOT: ("disk quota exceeded at {path}", "free space or raise the quota, " + _RERUN),
    errno.EACCES: ("permission denied at {path}", "fix the permissions or use another --data-root, " + _RERUN),
    errno.EPERM: ("operation not permitted at {path}", "fix the permissions or use another --data-root, " + _RERUN),
    errno.EROFS: (
        "read-only file system at {path}",
        "use a writable --data-root (re-running complete versions writes nothing), " + _RERUN,
    ),
    errno.ENOENT: ("no such file or directory: {path}", "check the path"),
    errno.EMFILE: ("too many open files (at {path})", "raise the limit (`ulimit -n`), " + _RERUN),
    errno.EIO: ("input/output error at {path}", "check the disk (dmesg), " + _RERUN),
}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        stack += [e.__context__, e.__cause__]
    return seen


def errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, also when a library only wrote it into the message ("[errno 28]")."""
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    m = _ERRNO_IN_TEXT.search(str(exc))
    return int(m.group(1)) if m else None


def find_os_error(exc: BaseException) -> OSError | None:
    """The first OSError with a known errno in exc's cause/context chain (exc itself included)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and errno_of(e) is not None:
            return e
    return None


def reraise_os_error(exc: BaseException, path: str) -> NoReturn:
    """Re-raise `exc` as an OSError naming `path` when its chain holds one (else re-raise it as is)."""
    found = find_os_error(exc)
    if found is None:
        raise exc
    code = errno_of(found)
    assert code is not None
    raise OSError(code, found.strerror or str(found), found.filename or path) from exc


def describe_os_error(exc: BaseException, where: str | None = None) -> str | None:
    """`<meaning> at <path>: <fix>` for an exception whose chain holds an OSError, else None."""
    found = find_os_error(exc)
    if found is None:
        return None
    code = errno_of(found)
    assert code is not None
    path = found.filename or where or "(path unknown)"
    meaning, fix = MEANINGS.get(
        code,
        (
            f"{errno.errorcode.get(code, code)} ({found.strerror or found}) at {{path}}",
            "check the path and the disk, " + _RERUN,
        ),
    )
    return f"{meaning.format(path=path)}: {fix}"
