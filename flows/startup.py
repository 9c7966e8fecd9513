"""Garbage-collector settings for the start-up of `pretrain` processes (standard library only).

Starting a run imports Prefect, its server or the stage packages in every process: hundreds of modules and
pydantic models that make millions of objects and no garbage, while CPython's cyclic collector keeps
scanning them (~20% of the import time; issue 14, from `pretrain run` to the first shard task on 2 cores).
So a process being set up collects lazily (`lazy_collector`) or not at all (`collector_paused`), and goes
back to the normal settings (`normal_collector`) before it does the work it was started for.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

NORMAL = gc.get_threshold()  # as at the process start: this module is imported before lazy_collector()
LAZY = (100_000, 50, 100)  # a young-generation collection per 100,000 allocations instead of 700


def lazy_collector() -> None:
    """Collect rarely while the process imports (it still collects: the setting is safe to leave on)."""
    gc.set_threshold(*LAZY)


def normal_collector() -> None:
    """The process's start-up collector settings again, collection on."""
    gc.set_threshold(*NORMAL)
    gc.enable()


@contextlib.contextmanager
def collector_paused() -> Iterator[Callable[[], None]]:
    """No cyclic collection inside the block; yields `resume()`, which restores the normal settings early
    (called before the work starts) and is called anyway when the block ends, if it was on before."""
    was_enabled = gc.isenabled()
    gc.disable()

    def resume() -> None:
        if was_enabled:
            normal_collector()

    try:
        yield resume
    finally:
        resume()
