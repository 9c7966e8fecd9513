"""`@task` for the stage modules without importing Prefect at import time.

`from prefect import task` costs ~1 s (Prefect imports its settings, client and schemas). The stage
packages are also imported by things that never run a task: `pretrain status`/`inspect`/`config`
(reports, params), and the pipeline table. `task(...)` here returns a `LazyTask` that keeps the
function and the decorator's arguments and builds the real `prefect.Task` on first use (`.map`,
`.submit`, `.with_options`, calling it inside a flow, any other attribute). `.fn` is the plain
function and needs no Prefect at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")


class LazyTask(Generic[P, R]):
    """A `prefect.Task` built on first use; see the module doc."""

    def __init__(self, fn: Callable[P, R], options: dict[str, Any]) -> None:
        self.fn = fn
        self._options = options
        self._task: Any = None
        functools.update_wrapper(self, fn)

    @property
    def task(self) -> Any:
        """The `prefect.Task` (imports Prefect the first time)."""
        if self._task is None:
            from prefect import task

            self._task = task(**self._options)(self.fn)
        return self._task

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.task(*args, **kwargs)
        return result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("fn", "_options", "_task"):
            raise AttributeError(name)
        return getattr(self.task, name)

    def __reduce__(self) -> Any:  # pickled as the real task (Dask and process pools ship it to workers)
        return (_identity, (self.task,))

    def __repr__(self) -> str:
        return f"LazyTask({self.fn.__module__}.{self.fn.__qualname__})"


def _identity(x: Any) -> Any:
    return x


@overload
def task(fn: Callable[P, R], /) -> LazyTask[P, R]: ...


@overload
def task(**options: Any) -> Callable[[Callable[P, R]], LazyTask[P, R]]: ...


def task(fn: Any = None, /, **options: Any) -> Any:
    """`prefect.task`, deferred: `@task` or `@task(name=..., retries=..., ...)` (the same keywords)."""
    if fn is not None:
        return LazyTask(fn, options)
    return lambda f: LazyTask(f, options)
