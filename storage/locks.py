"""Advisory locks of artifact versions on local data roots (`<root>/<kind>/.lock-<version>`, fcntl.flock).

A run holds the lock of the version it makes from before it checks whether that version is complete
until it commits or aborts, so an identical second run waits and then reuses the first one's result;
other versions do not contend. Object stores have no locks (see storage.artifacts for why that is safe).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import IO

from storage import paths

log = logging.getLogger(__name__)


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

    def __init__(self, root: str, kind: str, version: str):
        self.where = f"{kind}@{version}"
        local = not paths.is_remote(root)
        self.path = paths.join(root.removeprefix("file://"), kind, LOCK_PREFIX + version) if local else None
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
