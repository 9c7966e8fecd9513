"""What a failure looks like on the terminal: one clear `error:` line, tracebacks only with `--debug`.

Prefect logs every failure with its traceback (the task, each enclosing flow, chained causes): ~150
lines and three tracebacks before the line that says what went wrong. Those tracebacks stay in the
Prefect logs (UI/API handler, unchanged); the console handlers get a copy of each record without
them, unless `pretrain --debug` (or PRETRAIN_DEBUG=1, inherited by pool workers) asks for them.
"""

from __future__ import annotations

import copy
import logging
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
    """
    if paths.debug_enabled():
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    if not getattr(PrefectConsoleHandler, _MARK, False):
        PrefectConsoleHandler.emit = _quiet_emit(PrefectConsoleHandler.emit)  # type: ignore[method-assign]
        setattr(PrefectConsoleHandler, _MARK, True)
