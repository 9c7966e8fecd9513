"""Single files written whole or not at all, on local disks and object stores.

`AtomicFile` is the one way a single file is written (shards, `latest` pointers, exported token files;
`write_atomic` for bytes in hand): on a local disk it writes `<name>.tmp-<nonce>` and renames it over
the target on `commit` (`os.replace`, atomic on POSIX); on an object store an object appears only when
its upload completes, so it is written directly (a rename there would be a copy, and a reader could see
the copy half done). `discard` removes what was written.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


class AtomicFile:
    """A binary file being written to `path` (in `fs`): `.file` to write to, then `commit()` or `discard()`."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self.fs, self.path = fs, path
        self.local = isinstance(fs, LocalFileSystem)
        self._target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if self.local else path
        # a filesystem that shows a file while it is written (memory://) must not keep a discarded new one
        self._existed = self.local or bool(fs.exists(path))
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.file: IO[bytes] = fs.open(self._target, "wb")

    def commit(self) -> int:
        """Close and put the file in place; returns its size in bytes."""
        self.file.close()
        if self.local:
            os.replace(self._target, self.path)
        return int(self.fs.size(self.path))

    def discard(self) -> None:
        """Stop writing and drop what was written: locally the target keeps its old content; on an object store
        the upload is abandoned (fsspec's `discard`), so no object is created or replaced."""
        if self.local:
            self.file.close()
            if self.fs.exists(self._target):
                self.fs.rm(self._target)
            return
        discard = getattr(self.file, "discard", None)
        if discard is not None:
            discard()
        else:
            self.file.close()
        if not self._existed and self.fs.exists(self._target):  # written through regardless: remove it
            self.fs.rm(self._target)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or chunks of it) to `path` so that readers see the old file or the whole new one."""
    with AtomicFile(fs, path) as out:
        for chunk in [data] if isinstance(data, bytes) else data:
            out.file.write(chunk)
