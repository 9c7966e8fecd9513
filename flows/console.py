"""What a failure looks like on the terminal: one clear `error:` line, tracebacks only with `--debug`.

Prefect logs every failure with its traceback (the task, each enclosing flow, chained causes): ~150
lines and three tracebacks before the line that says what went wrong. Those tracebacks stay in the
Prefect logs (UI/API handler, unchanged); the console handlers get a copy of each record without
them, unless `pretrain --debug` (or PRETRAIN_DEBUG=1, inherited by pool workers) asks for them.

A pool worker started while a live progress display runs (flows/progress.py) writes its console (fd 2,
and fd 1 when that is a terminal) into the display's pipe instead of the terminal, so its log lines are
printed by the parent above the bars instead of tearing them (`join_live_display`, run by the pool's
initializer through `quiet_console_tracebacks`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from typing import Any

from storage import paths

_MARK = "_pretrain_quiet"


def _quiet_emit(emit: Any) -> Any:
    def emit_without_traceback(self: logging.Handler, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        emit(self, record)

    return emit_without_traceback


def quiet_console_tracebacks() -> None:
    """Prefect's console handler prints records without tracebacks (no-op with --debug; idempotent).

    Patched on the class, not on handler instances: Prefect re-creates its handlers when a worker
    process sets up logging for a task run, after the pool's initializer has run.
    In a pool worker it also joins the parent's live display, if one runs (`join_live_display`).
    """
    join_live_display()
    if paths.debug_enabled():
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    if not getattr(PrefectConsoleHandler, _MARK, False):
        PrefectConsoleHandler.emit = _quiet_emit(PrefectConsoleHandler.emit)  # type: ignore[method-assign]
        setattr(PrefectConsoleHandler, _MARK, True)


def join_live_display() -> bool:
    """In a child of a process showing a live display: point this process's fd 2 (and fd 1 if it is a
    terminal) at the display's FIFO, whose lines the parent prints above its bars. Whether it did.

    Only a direct child does it (the FIFO is announced with the parent's pid); one that finds nobody
    reading the FIFO (the display ended) keeps its terminal. Lines up to 4 KiB from several workers
    never mix: pipe writes that small are atomic."""
    target = paths.live_pipe()
    if target is None or target[0] != os.getppid():
        return False
    try:
        fd = os.open(target[1], os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when no reader: keep the terminal
    except OSError:
        return False
    os.set_blocking(fd, True)
    for stream, num in ((sys.stdout, 1), (sys.stderr, 2)):
        with contextlib.suppress(Exception):
            stream.flush()
        if num == 2 or os.isatty(num):
            os.dup2(fd, num)
    os.close(fd)
    return True
