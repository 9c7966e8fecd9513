"""Live progress on the terminal: one rich display per process, every log line printed above its bars.

`live_display()` (used by `pretrain run` around the whole run) starts a `rich.progress.Progress` on a
stderr console and, for the duration of the block, makes everything this process prints to stderr go
through that console, so a log line is printed whole above the bars instead of being torn by them:
- Prefect's console handlers (`PrefectConsoleHandler`: their rich Console's file) and plain `logging`
  StreamHandlers writing to stderr get a stream (`_LineProxy`) that prints whole lines through the
  display's console;
- `sys.stderr` (and `sys.stdout` when it is the terminal too) are proxied by rich's Live itself;
- pool workers: they print their console (Prefect's console handler in the worker) to their own fd 2,
  straight to the terminal; only their API logs travel to the parent over Prefect's message queue. So the
  display makes a FIFO, announces it to the workers it spawns (`$PRETRAIN_LIVE_PIPE`, with its pid) and
  each pool worker points its fd 2 at it from the pool initializer (flows/console.py
  `join_live_display`); a reader thread prints the FIFO's lines through the console. After the block
  the thread keeps passing lines through (plain) until the last writer is gone.
Everything is restored on exit, also on exceptions and Ctrl-C, and the interrupt watchdog stops the
display before it prints its last line (flows/interrupt.py `MARKER.cleanups`).

`stage_progress(stage, total)` is one bar per stage (done/total, elapsed, ETA, docs/kept) inside a live
display; without one it shows nothing. At a successful close it logs one summary line through the
`flows.stage` logger (`<stage>: N shards, D docs, K kept in S s`), display or not, so the bar leaves a
line behind. `train_progress(total_steps, tokens_per_step)` is the training bar (step/total, loss,
tokens/s, ETA from the recent steps per second); without a display it shows and logs nothing (the
trainer logs every `log_interval` steps). Enabled by default when stderr is a terminal and
`PRETRAIN_NO_PROGRESS` is not set (storage/paths.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any, cast

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from storage import paths

log = logging.getLogger("flows.stage")
Clock = Callable[[], float]
READ_CHUNK = 65536
DRAIN_S = 1.0  # at exit: how long to wait for the workers' last lines
ABANDON_S = 1.0  # interrupt watchdog: how long stopping the display may take


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _EtaColumn(ProgressColumn):
    """`eta H:MM:SS`: the task's own `eta` field when it sets one (training), else rich's estimate."""

    def render(self, task: Task) -> Text:
        eta = task.fields["eta"] if "eta" in task.fields else task.time_remaining
        return Text(f"eta {_fmt_seconds(None if task.finished else eta)}", style="progress.remaining")


class _Display:
    """The process's live display: a Progress on `console`, handlers redirected, the workers' FIFO read."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[count]}", markup=False),
            TimeElapsedColumn(),
            _EtaColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=console,
            redirect_stdout=_is_terminal(sys.stdout),  # a redirected stdout stays where it goes
            redirect_stderr=True,
            refresh_per_second=5,
            transient=True,  # bars are removed as they finish; an interrupted one goes too
        )
        self._lock = threading.Lock()
        self._stopped = False

    def add(self, description: str, total: int, completed: int = 0, **fields: Any) -> TaskID:
        return self.progress.add_task(description, total=total, completed=completed, **fields)

    def update(self, task: TaskID, **kw: Any) -> None:
        with contextlib.suppress(KeyError):  # removed meanwhile
            self.progress.update(task, **kw)

    def remove(self, task: TaskID) -> None:
        with contextlib.suppress(KeyError):
            self.progress.remove_task(task)

    def print_line(self, line: str) -> None:
        """A line of a worker's console (may hold ANSI styles), above the bars."""
        self.console.print(Text.from_ansi(line), soft_wrap=True)

    def stop(self) -> None:
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self.progress.stop()

    def abandon(self) -> None:
        """Stop from another thread that must not hang (the interrupt watchdog, about to `os._exit`): give
        `stop` a second, else just end the line and show the cursor again."""
        worker = threading.Thread(target=self.stop, daemon=True)
        worker.start()
        worker.join(ABANDON_S)
        if worker.is_alive():
            with contextlib.suppress(Exception):
                self.console.file.write("\n\x1b[?25h")
                self.console.file.flush()


class _LineProxy(io.TextIOBase):
    """A text stream printing each whole line through the display's console (above the bars). Not rich's
    FileProxy: a rich Console given a FileProxy as its file unwraps it back to the real stream."""

    def __init__(self, display: _Display, real: Any) -> None:
        self._display, self._real = display, real
        self._buffer = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._buffer = (self._buffer + text).split("\n")
        for line in lines:
            self._display.print_line(line)
        return len(text)

    def flush(self) -> None:  # a partial line waits for its end
        pass

    def isatty(self) -> bool:
        return _is_terminal(self._real)

    def fileno(self) -> int:
        return int(self._real.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._real, "encoding", None) or "utf-8")


_DISPLAY: _Display | None = None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def display_active() -> bool:
    """Whether a live display runs in this process."""
    return _DISPLAY is not None


@contextlib.contextmanager
def live_display(enabled: bool | None = None, console: Console | None = None) -> Iterator[bool]:
    """Show stage and training bars on stderr for the duration of the block; yields whether it does.

    enabled: None = when stderr is a terminal and `PRETRAIN_NO_PROGRESS` is not set. `console`: the
    console to draw on (tests; default: one on the real stderr). Nested blocks and disabled ones do
    nothing. Pool workers join it only when spawned inside the block: enter it outside
    `shared_process_pools()`."""
    global _DISPLAY
    real_err = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
    if enabled is None:
        enabled = _is_terminal(real_err) and not paths.progress_disabled()
    if not enabled or _DISPLAY is not None:
        yield False
        return
    display = _Display(console or Console(file=real_err))
    restore: list[Callable[[], None]] = []
    try:
        display.progress.start()
        restore.append(display.stop)
        restore.extend(_redirect_handlers(cast("IO[str]", _LineProxy(display, real_err)), real_err))
        try:
            restore.append(_read_worker_consoles(display))
        except OSError as err:  # no FIFO here: workers keep printing to the terminal directly
            logging.getLogger(__name__).debug("live display: worker consoles not captured (%s)", err)
        restore.append(_on_watchdog(display.abandon))
        _DISPLAY = display
        restore.append(_clear_display)
        yield True
    finally:
        for undo in reversed(restore):
            with contextlib.suppress(Exception):
                undo()


def _clear_display() -> None:
    global _DISPLAY
    _DISPLAY = None


def _writes_to(stream: Any, target: Any) -> bool:
    """Whether `stream` is the process's stderr (`target`, the original one, or fd 2)."""
    if isinstance(stream, (FileProxy, _LineProxy)):
        return False
    if stream is target or stream is sys.__stderr__:
        return True
    try:
        return bool(stream.fileno() == 2)
    except (AttributeError, ValueError, OSError):
        return False


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    found: dict[int, logging.Handler] = {}
    for lg in loggers:
        for h in list(lg.handlers):
            found.setdefault(id(h), h)
    return list(found.values())


def _redirect_handlers(proxy: IO[str], real_err: Any) -> list[Callable[[], None]]:
    """Point every stderr log handler at `proxy`; returns the undo of each."""
    undo: list[Callable[[], None]] = []
    for h in _all_handlers():
        if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler):
            continue
        rich_console = getattr(h, "console", None)
        if isinstance(rich_console, Console):  # Prefect's console handler prints through its own rich Console
            if _writes_to(rich_console.file, real_err):
                undo.append(_swap_console_file(rich_console, proxy))
        elif not _writes_to(h.stream, real_err):
            continue
        if _writes_to(h.stream, real_err):
            undo.append(_swap_stream(h, proxy))
    return undo


def _swap_console_file(rich_console: Console, proxy: IO[str]) -> Callable[[], None]:
    old = rich_console.file
    rich_console.file = proxy
    return lambda: setattr(rich_console, "file", old)


def _swap_stream(handler: logging.StreamHandler[Any], proxy: IO[str]) -> Callable[[], None]:
    with handler.lock or contextlib.nullcontext():
        old = handler.stream
        handler.stream = proxy

    def back() -> None:
        with handler.lock or contextlib.nullcontext():
            if handler.stream is proxy:
                handler.stream = old

    return back


def _read_worker_consoles(display: _Display) -> Callable[[], None]:
    """Make the FIFO pool workers write their console to (flows/console.py `join_live_display`), announce it
    and print its lines through the display; returns the undo (withdraw, close, drain, remove)."""
    directory = tempfile.mkdtemp(prefix="pretrain-live-")
    fifo = os.path.join(directory, "console")
    os.mkfifo(fifo, 0o600)
    read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    own_write_fd = os.open(fifo, os.O_WRONLY)  # held until the end: no EOF before the first worker opens it
    os.set_blocking(read_fd, True)
    thread = threading.Thread(target=_pump, args=(read_fd, display), name="live-display-workers", daemon=True)
    thread.start()
    paths.set_live_pipe(os.getpid(), fifo)

    def undo() -> None:
        paths.set_live_pipe(None)
        os.close(own_write_fd)  # EOF once the workers (ended with their pools) are gone too
        thread.join(timeout=DRAIN_S)  # a worker still alive: the daemon thread passes its lines on, plain
        shutil.rmtree(directory, ignore_errors=True)  # open ends stay valid

    return undo


def _pump(read_fd: int, display: _Display) -> None:
    pending = b""
    try:
        while chunk := os.read(read_fd, READ_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                display.print_line(line.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            display.print_line(pending.decode("utf-8", "replace"))
    except Exception:  # the console went away: the workers' lines have nowhere to go
        pass
    finally:
        os.close(read_fd)


def _on_watchdog(stop: Callable[[], None]) -> Callable[[], None]:
    """Stop the display before the interrupt watchdog prints its line and exits (flows/interrupt.py)."""
    from flows.interrupt import MARKER

    MARKER.cleanups.append(stop)

    def undo() -> None:
        with contextlib.suppress(ValueError):  # guard_run cleared it already
            MARKER.cleanups.remove(stop)

    return undo


class StageProgress:
    """One stage's bar (`stage_progress`); `advance(n, **fields)` counts n more units done and sets the
    shown fields (current totals, e.g. docs=..., kept=...)."""

    def __init__(self, stage: str, total: int, unit: str = "shard", clock: Clock = time.perf_counter) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.done = 0
        self.fields: dict[str, Any] = {}
        self._clock = clock
        self._started: float | None = None
        self._display: _Display | None = None
        self._task: TaskID | None = None
        self._closed = False

    def __enter__(self) -> StageProgress:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=exc_type is None)

    def start(self) -> None:
        if self._started is not None:
            return
        self._started = self._clock()
        self._display = _DISPLAY
        if self._display is not None:
            self._task = self._display.add(self.stage, self.total, count=self._count(), info="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        if self._display is not None and self._task is not None:
            self._display.update(self._task, advance=n, count=self._count(), info=self._info())

    def seconds(self) -> float:
        return self._clock() - self._started if self._started is not None else 0.0

    def summary(self) -> str:
        """`<stage>: N shards, D docs, K kept in S s`."""
        info = f", {self._info()}" if self.fields else ""
        return f"{self.stage}: {self.done} {self._units(self.done)}{info} in {self.seconds():.1f} s"

    def close(self, ok: bool = True) -> None:
        """Remove the bar; on success log the summary line (once)."""
        if self._closed:
            return
        self._closed = True
        if self._display is not None and self._task is not None:
            self._display.remove(self._task)
        if ok:
            log.info("%s", self.summary())

    def _units(self, n: int) -> str:
        return self.unit if n == 1 else f"{self.unit}s"

    def _count(self) -> str:
        return f"{self.done}/{self.total} {self._units(self.total)}"

    def _info(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in self.fields.items())


def stage_progress(stage: str, total: int, unit: str = "shard") -> StageProgress:
    """A stage's progress (see the module docstring); use as a context manager."""
    return StageProgress(stage, total, unit)


class TrainProgress:
    """The training bar: `update(step, loss)` after each optimizer step (or pass `on_step` to the trainer).

    Rates come from the last `window` steps seen by this process (a resumed run starts its window at
    its first step): steps/s = steps between the first and last of them / seconds between; tokens/s =
    steps/s x tokens_per_step; ETA = remaining steps / steps/s. A step number lower than the last (a
    loss-spike rollback) restarts the window."""

    def __init__(
        self, total_steps: int, tokens_per_step: int, window: int = 20, clock: Clock = time.perf_counter
    ) -> None:
        self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
        self.step = 0
        self.loss: float | None = None
        self._reported_tps: float | None = None
        self._recent: deque[tuple[float, int]] = deque(maxlen=max(2, window))
        self._clock = clock
        self._display: _Display | None = None
        self._task: TaskID | None = None
        self._closed = False

    def __enter__(self) -> TrainProgress:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        if self._display is None and _DISPLAY is not None and not self._closed:
            self._display = _DISPLAY
            self._task = self._display.add("train", self.total_steps, count=self._count(), info="", eta=None)
            self._recent.append((self._clock(), self.step))

    def steps_per_second(self) -> float | None:
        if len(self._recent) < 2:
            return None
        (t0, s0), (t1, s1) = self._recent[0], self._recent[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def tokens_per_second(self) -> float | None:
        """From the recent steps; before there are two, what the trainer reported."""
        rate = self.steps_per_second()
        return rate * self.tokens_per_step if rate is not None else self._reported_tps

    def eta(self) -> float | None:
        """Seconds to total_steps at the recent rate (None until there is one)."""
        rate = self.steps_per_second()
        return max(0, self.total_steps - self.step) / rate if rate else None

    def update(self, step: int, loss: float, tokens_per_second: float | None = None, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        if self._recent and step < self._recent[-1][1]:
            self._recent.clear()
        self._recent.append((now, step))
        self.step, self.loss, self._reported_tps = step, loss, tokens_per_second
        if self._display is not None and self._task is not None:
            self._display.update(self._task, completed=step, count=self._count(), info=self._info(), eta=self.eta())

    def on_step(self, step: int, total_steps: int, loss: float, tokens_per_second: float) -> None:
        """The trainer's per-step callback (tasks/train/run.py `train(on_step=...)`)."""
        if total_steps != self.total_steps:
            self.total_steps = total_steps
            if self._display is not None and self._task is not None:
                self._display.update(self._task, total=total_steps)
        self.update(step, loss, tokens_per_second)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._display is not None and self._task is not None:
            self._display.remove(self._task)

    def _count(self) -> str:
        return f"step {self.step}/{self.total_steps}"

    def _info(self) -> str:
        tps = self.tokens_per_second()
        parts = [f"loss {self.loss:.4f}" if self.loss is not None else ""]
        parts.append(f"{tps:,.0f} tok/s" if tps is not None else "")
        return "  ".join(p for p in parts if p)


def train_progress(total_steps: int, tokens_per_step: int) -> TrainProgress:
    """The training bar (see the module docstring); use as a context manager."""
    return TrainProgress(total_steps, tokens_per_step)
